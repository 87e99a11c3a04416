"""Mixture of Experts: the two expert paths agree, routing uses the bias for the choice only, counts are exact."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from llm_core.model.moe import MoE, Router, experts_grouped, experts_loop, grouped_mm_runs, sequence_balance_loss
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
