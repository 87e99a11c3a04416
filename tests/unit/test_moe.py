"""Mixture of Experts: the two expert paths agree, routing uses the bias for the choice only, counts are exact."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llm_core.config import PRESETS, ModelConfig
from llm_core.model.moe import (MoE, Router, experts_grouped, experts_loop, grouped_mm_aligned, grouped_mm_runs,
                                sequence_balance_loss)
from llm_core.model.transformer import Transformer
from llm_core.training.recompute import apply_activation_checkpointing
from tests.helpers import tiny_model_config

MOE = dict(ffn="moe", n_experts=4, top_k=2, n_shared_experts=1, expert_hidden=32)
GROUPED_SKIP = "" if grouped_mm_runs("cpu", torch.float32) else "torch._grouped_mm does not run on this CPU build"


@pytest.mark.skipif(bool(GROUPED_SKIP), reason=GROUPED_SKIP or "ok")
def test_grouped_path_equals_the_loop_forward_and_backward():
    torch.manual_seed(1)
    N, D, E, F, K = 37, 16, 5, 24, 2  # odd sizes, and one expert left without tokens below
    x = torch.randn(N, D, requires_grad=True)
    idx = torch.stack([torch.randint(0, E - 1, (N,)), torch.randint(0, E - 1, (N,))], dim=1)
    weights = torch.rand(N, K)
    w = [torch.randn(E, F, D) * 0.2, torch.randn(E, F, D) * 0.2, torch.randn(E, D, F) * 0.2]
    for t in w:
        t.requires_grad_(True)
    ref = experts_loop(x, idx, weights, *w)
    grads_ref = torch.autograd.grad(ref.square().sum(), [x, *w])
    out = experts_grouped(x, idx, weights, *w)
    grads = torch.autograd.grad(out.square().sum(), [x, *w])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


def test_bias_steers_the_choice_but_not_the_gate_weights():
    torch.manual_seed(0)
    router = Router(d_model=8, n_experts=4, top_k=2, score_func="sigmoid")
    torch.nn.init.normal_(router.weight)
    x = torch.randn(50, 8)
    router.expert_bias.copy_(torch.tensor([0.0, 0.0, 5.0, 5.0]))  # experts 2 and 3 always win the choice
    weights, idx, scores = router(x)
    assert set(idx.flatten().tolist()) == {2, 3}
    expected = scores[:, 2:4] / scores[:, 2:4].sum(-1, keepdim=True)  # unbiased scores, renormalised
    torch.testing.assert_close(weights.gather(-1, idx.argsort(-1)), expected)
    soft = Router(d_model=8, n_experts=4, top_k=2, score_func="softmax")
    torch.nn.init.normal_(soft.weight)  # a bare Router's weight is uninitialised memory (the model initialises it)
    w_soft, idx_soft, s_soft = soft(x)
    torch.testing.assert_close(w_soft, s_soft.gather(-1, idx_soft))  # softmax weights are used as they are


def test_update_bias_raises_underused_and_lowers_overused_experts():
    moe = MoE(tiny_model_config(d_model=16, n_heads=2, n_kv_heads=1, bias_update_rate=0.01, **MOE))
    moe.update_bias(torch.tensor([10.0, 2.0, 4.0, 4.0]))  # mean 5
    torch.testing.assert_close(moe.router.expert_bias, torch.tensor([-0.01, 0.01, 0.01, 0.01]))


def test_moe_num_params_active_and_flops_equal_the_module():
    cfg = tiny_model_config(attention="naive", moe_path="loop", first_dense_layers=1, n_layers=3, **MOE)
    model = Transformer(cfg)
    assert model.num_params() == cfg.num_params()
    expert = 3 * cfg.d_model * 32
    assert cfg.num_params() - cfg.num_params(active=True) == 2 * expert * (4 - 2)  # 2 MoE layers, 2 idle experts
    seq = 12
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.randint(0, 512, (2, seq))).sum().backward()
    assert counter.get_total_flops() == 2 * seq * cfg.flops_per_token(seq)


def test_load_counts_training_tokens_once_even_with_recomputation():
    cfg = tiny_model_config(**MOE)
    x = torch.randint(0, 512, (3, 10))
    plain = Transformer(cfg).train()
    again = Transformer(cfg).train()
    again.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(again, "full")
    for model in (plain, again):
        model(x).sum().backward()
    a, b = plain.take_expert_load(), again.take_expert_load()
    assert a.shape == (2, 4) and torch.equal(a, b) and a.sum() == 2 * 3 * 10 * 2  # layers x tokens x top_k
    assert plain.take_expert_load().sum() == 0  # taking resets
    with torch.no_grad():
        plain.eval()(x)  # evaluation is not counted
    assert plain.take_expert_load().sum() == 0


def test_sequence_balance_loss_is_one_when_balanced_and_reaches_the_loop():
    scores = torch.full((2, 8, 4), 0.5)
    idx = torch.tensor([[0, 1], [2, 3]] * 8).view(2, 8, 2)  # every expert chosen equally often
    assert sequence_balance_loss(scores, idx).item() == pytest.approx(1.0)
    model = Transformer(tiny_model_config(aux_loss_weight=0.01, **MOE)).train()
    model(torch.randint(0, 512, (2, 8)))
    aux = model.take_aux_loss()
    assert aux is not None and aux.requires_grad and aux.item() > 0
    assert model.take_aux_loss() is None


# --------------------------------------------------------------------------------------------------------------------
# the grouped path on GPUs: widths torch._grouped_mm accepts, the autocast dtype, the same function as the loop


def _preset_moe(preset: str) -> ModelConfig:
    return ModelConfig(preset=preset, ffn="moe").resolved(2048)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_default_expert_width_meets_the_grouped_mm_alignment_rule(preset):
    cfg = _preset_moe(preset)
    active = cfg.ffn_hidden // (cfg.top_k + cfg.n_shared_experts)
    assert cfg.expert_hidden % 64 == 0 and active <= cfg.expert_hidden < active + 64
    assert grouped_mm_aligned(torch.bfloat16, cfg.d_model, cfg.expert_hidden)
    # the same rule torch applies (its meta kernel runs the CUDA checks): the grouped path accepts these shapes in bf16
    D, Fh, E = cfg.d_model, cfg.expert_hidden, cfg.n_experts
    with torch.device("meta"):
        x, idx = torch.empty(16, D, dtype=torch.bfloat16), torch.zeros(16, cfg.top_k, dtype=torch.long)
        w = [torch.empty(E, Fh, D), torch.empty(E, Fh, D), torch.empty(E, D, Fh)]
        assert experts_grouped(x, idx, torch.empty(16, cfg.top_k), *w).shape == (16, D)


def test_alignment_rule_matches_torch_grouped_mm_checks():
    """682 (124m's old default width) is rejected by torch's own check in bf16, 704 is accepted: our rule agrees."""
    assert not grouped_mm_aligned(torch.bfloat16, 768, 682) and grouped_mm_aligned(torch.bfloat16, 768, 704)
    assert grouped_mm_aligned(torch.float32, 768, 684) and not grouped_mm_aligned(torch.float32, 768, 682)
    for width, ok in ((682, False), (704, True)):
        with torch.device("meta"):
            w = [torch.empty(8, width, 768), torch.empty(8, width, 768), torch.empty(8, 768, width)]
            args = (torch.empty(4, 768, dtype=torch.bfloat16), torch.zeros(4, 2, dtype=torch.long), torch.empty(4, 2))
        if ok:
            experts_grouped(*args, *w)
        else:
            with pytest.raises(RuntimeError, match="16 bytes"):
                experts_grouped(*args, *w)


@pytest.mark.skipif(bool(GROUPED_SKIP), reason=GROUPED_SKIP or "ok")
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_grouped_equals_loop_at_every_preset_shape(preset):
    """Real tensors at each preset's expert matrices (d_model x expert_hidden), fp32 and under bf16 autocast. Three
    experts, top 2, keep the largest presets to seconds; the 8-expert shapes pass torch's checks above (meta)."""
    cfg = _preset_moe(preset)
    D, Fh, E, K = cfg.d_model, cfg.expert_hidden, 3, 2
    gen = torch.Generator().manual_seed(0)
    N = 24
    x = torch.randn(N, D, generator=gen)
    idx = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(N)])
    weights = torch.rand(N, K, generator=gen)
    w = [torch.randn(E, Fh, D, generator=gen) * D**-0.5, torch.randn(E, Fh, D, generator=gen) * D**-0.5,
         torch.randn(E, D, Fh, generator=gen) * Fh**-0.5]
    torch.testing.assert_close(experts_grouped(x, idx, weights, *w), experts_loop(x, idx, weights, *w),
                               atol=1e-5, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        grouped, loop = experts_grouped(x, idx, weights, *w), experts_loop(x, idx, weights, *w)
    assert grouped.dtype == loop.dtype == torch.float32  # the residual stream's dtype comes back
    torch.testing.assert_close(grouped, loop, atol=2e-2, rtol=2e-2)  # bf16 matmuls, accumulated in another order


def test_experts_run_in_the_autocast_dtype_and_auto_chooses_by_it(monkeypatch):
    seen = []
    real = torch._grouped_mm

    def recording(a, b, **kw):
        seen.append((a.dtype, b.dtype))
        return real(a, b, **kw)

    monkeypatch.setattr(torch, "_grouped_mm", recording)
    x = torch.randn(2, 5, 64)
    moe = MoE(tiny_model_config(**dict(MOE, expert_hidden=64)))
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = moe(x)
    assert out.dtype == torch.float32 and seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}
    assert moe.grouped_runs(x) is True  # fp32 input, so the path was chosen by the compute dtype
    # a width the grouped kernel cannot take in bf16 (36 x 2 bytes is no multiple of 16): auto takes the loop
    odd = MoE(tiny_model_config(**dict(MOE, expert_hidden=36)))
    for p in odd.parameters():
        torch.nn.init.normal_(p, std=0.05)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert odd.grouped_runs(x) is False
        odd(x)
    assert not seen
