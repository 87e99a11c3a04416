"""`acc_norm_tokens` against a scorer written here from build-nanogpt's published description (karpathy/build-nanogpt,
hellaswag.py): `render_example` tokenizes the item's raw `ctx` and, for each ending, " " + ending, and lays out one
row per ending, ctx tokens then ending tokens, zero-padded, with a mask that is 1 over the ending; `get_most_likely_row`
runs the rows through the model, takes the cross-entropy of every next token, shifts the mask by one, averages the
loss over the masked positions and picks the ending with the lowest average. No <|bos|>: the rows start with ctx."""

import pytest
import torch
import torch.nn.functional as F

from llm_core.config import DataConfig, SourceConfig
from llm_core.data import sources, synthetic
from llm_core.evaluation import hellaswag
from llm_core.model.transformer import Transformer
from tests.helpers import HELLASWAG_FIXTURE, tiny_model_config


def render(item: dict, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    ctx = tokenizer.encode(item["ctx"])
    rows, masks = [], []
    for ending in item["endings"]:
        end = tokenizer.encode(" " + ending)
        rows.append(ctx + end)
        masks.append([0] * len(ctx) + [1] * len(end))
    width = max(len(r) for r in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (row, m) in enumerate(zip(rows, masks)):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, :len(m)] = torch.tensor(m)
    return tokens, mask


@torch.no_grad()
def most_likely_row(model, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[int, torch.Tensor]:
    logits = model(tokens)
    losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1),
                             reduction="none").view(tokens.size(0), -1)
    shifted = mask[:, 1:]
    average = (losses * shifted).sum(1) / shifted.sum(1)
    return int(average.argmin()), average


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """The official-schema fixture as the download stage stores it, and items of the built-in world."""
    out = tmp_path_factory.mktemp("hs") / "hellaswag"
    data = DataConfig(hellaswag=SourceConfig(source="local", paths=[str(HELLASWAG_FIXTURE)]))
    sources.write_dataset("hellaswag", data, out)
    return list(sources.read_dataset(out, "val", "download_hellaswag")) + synthetic.generate_hellaswag(5, 12)


def test_acc_norm_tokens_is_build_nanogpts_acc_norm(items, tokenizer):
    torch.manual_seed(0)
    # a context long enough for every row: build-nanogpt never cuts one
    model = Transformer(tiny_model_config(vocab_size=tokenizer.vocab_size, max_seq_len=1024, init_std=0.1)).eval()
    metrics, records = hellaswag.evaluate(model, items, tokenizer, batch_size=8)
    right = 0
    for item, rec in zip(items, records):
        tokens, mask = render(item, tokenizer)
        pick, average = most_likely_row(model, tokens, mask)
        assert rec["pick"]["acc_norm_tokens"] == pick
        torch.testing.assert_close(torch.tensor(rec["mean_loss_tokens"], dtype=torch.float64), average.double(),
                                   atol=1e-5, rtol=0)
        assert rec["tokens_nanogpt"] == mask.sum(1).tolist()
        right += pick == item["label"]
    assert metrics["acc_norm_tokens"] == pytest.approx(right / len(items))
    assert metrics["num_items"] == len(items) == 22
