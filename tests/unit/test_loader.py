import numpy as np
import pytest
import torch

from llm_core.data.loader import IGNORE, DocRows, FirstFit, Loader, PackedRows


def stream(n=10_000):
    return [np.arange(n, dtype=np.uint16) % 1000]


def test_windows_are_shifted_pairs():
    rows = DocRows(stream(), seq_len=16)
    x, y = rows.get(3)
    assert np.array_equal(x[1:], y[:-1]) and x[0] == 48


@pytest.mark.parametrize("world", [1, 2])
def test_resume_gives_exactly_the_next_batches(world):
    rows = DocRows(stream(), seq_len=16)
    for rank in range(world):
        ref = Loader(rows, 4, rank, world, seed=3)
        ref_batches = [ref.next_batch() for _ in range(48)]
        a = Loader(rows, 4, rank, world, seed=3)
        for _ in range(40):
            a.next_batch()
        b = Loader(rows, 4, rank, world, seed=3)
        b.load_state_dict(a.state_dict())
        for i in range(8):
            x, y = b.next_batch()
            assert torch.equal(x, ref_batches[40 + i][0]) and torch.equal(y, ref_batches[40 + i][1])


def test_ranks_partition_the_global_batch_and_epochs_reshuffle():
    rows = DocRows(stream(2000), seq_len=16)  # 125 rows (124 windows + the padded remainder)
    r0, r1 = Loader(rows, 4, 0, 2, seed=1), Loader(rows, 4, 1, 2, seed=1)
    seen = []
    for _ in range(15):
        seen += [int(r[0]) for r in r0.next_batch()[0]] + [int(r[0]) for r in r1.next_batch()[0]]
    assert len(seen) == len(set(seen))  # one epoch: no row twice across ranks
    first_epoch = r0._order.copy()
    r0.next_batch()
    assert r0.epoch == 1 and not np.array_equal(first_epoch, r0._order)


def test_packed_rows_keep_conversations_whole_and_mask_targets():
    tokens = np.array([1, 5, 6, 7, 1, 8, 9], dtype=np.uint16)
    mask = np.array([0, 0, 1, 1, 0, 0, 1], dtype=np.uint8)
    offsets = np.array([0, 4, 7])
    rows = PackedRows(tokens, mask, offsets, seq_len=7, pad_id=0)
    assert len(rows) == 1
    x, y = rows.get(0)
    assert x.tolist() == [1, 5, 6, 7, 1, 8, 9]
    assert y.tolist() == [IGNORE, 6, 7, IGNORE, IGNORE, 9, IGNORE]


def test_too_little_data_is_a_clear_error():
    with pytest.raises(ValueError, match="fewer than one sequence"):
        DocRows([np.arange(5, dtype=np.uint16)], seq_len=16)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        Loader(DocRows(stream(100), seq_len=16), 8)


def test_overlong_conversations_are_left_out_not_cut():
    tokens = np.arange(12, dtype=np.uint16)
    mask = np.ones(12, dtype=np.uint8)
    rows = PackedRows(tokens, mask, np.array([0, 3, 12]), seq_len=4, pad_id=0)
    assert len(rows) == 1 and rows.skipped_too_long == 1
    with pytest.raises(ValueError, match="raise sft.seq_len"):
        PackedRows(tokens, mask, np.array([0, 12]), seq_len=4, pad_id=0)


def docs_stream(lengths, bos=0, seed=0):
    """Documents of the given lengths, each opened by `bos`, the rest random tokens."""
    gen = np.random.default_rng(seed)
    out = []
    for n in lengths:
        out += [bos] + list(gen.integers(1, 1000, size=n - 1))
    return np.asarray(out, dtype=np.uint16)


def test_doc_rows_keep_documents_whole_and_predict_every_token_once():
    lengths = [5, 9, 3, 17, 2, 11, 8, 6, 40, 4]  # the 40-token document is longer than a row (seq_len 16 -> 17)
    shard = docs_stream(lengths)
    rows = DocRows([shard], seq_len=16, bos_id=0)
    starts = np.cumsum([0] + lengths[:-1])
    predicted = []  # stream position of every target
    for i in range(len(rows)):
        x, y = rows.get(i)
        segments = rows.row_segments(i).tolist()
        assert x.shape == y.shape == (16,)
        pos = 0
        for _, a, b in segments:
            assert pos + b - a <= 17 and np.array_equal(x[pos:pos + b - a][:16 - pos], shard[a:b][:16 - pos])
            # a short document is never cut: it opens its segment and ends with it
            if b - a < 17:
                assert a in starts or a > starts[8] and a < starts[8] + 40 and pos == 0  # a remainder opens its row
                assert b in list(starts[1:]) + [len(shard)]
            predicted += list(range(a + 1, b))
            pos += b - a
        assert np.all(y[pos - 1:] == IGNORE) and not np.any(y[:pos - 1] == IGNORE)  # only padding is not predicted
    # every token but a document's opening <|bos|> is a target exactly once (long-document windows overlap by one)
    assert sorted(predicted) == sorted(set(range(len(shard))) - set(starts.tolist()))


def test_doc_rows_without_bos_are_consecutive_windows():
    rows = DocRows(stream(100), seq_len=16)  # 6 windows, then the 4 tokens left in a padded row
    assert len(rows) == 7 and rows.get(1)[0][0] == 16
    x, y = rows.get(6)
    assert x[:4].tolist() == [96, 97, 98, 99] and y[:3].tolist() == [97, 98, 99] and np.all(y[3:] == IGNORE)


def test_first_fit_fills_the_first_open_row_with_room_and_closes_the_oldest(monkeypatch):
    monkeypatch.setattr(FirstFit, "WINDOW", 2)
    packer = FirstFit(10)
    closed = [packer.add(6, "a"), packer.add(5, "b"), packer.add(4, "c")]  # c fits after a; b waits in row 2
    closed.append(packer.add(3, "d", join=False))  # opens row 3: three open rows, so row 1 (a, c) closes
    closed.append(packer.add(2, "e"))  # row 1 is closed, so e joins row 2
    assert closed == [[], [], [], [["a", "c"]], []]
    assert packer.close() == [["b", "e"], ["d"]] and packer.close() == []


def test_packed_rows_fill_rows_first_fit():
    tokens = np.arange(1, 13, dtype=np.uint16)  # conversations of 6, 5 and 1 tokens
    mask = np.ones(12, dtype=np.uint8)
    rows = PackedRows(tokens, mask, np.array([0, 6, 11, 12]), seq_len=6, pad_id=0)
    assert [r.tolist() for r in (rows.row_segments(0), rows.row_segments(1))] == [[[0, 6], [11, 12]], [[6, 11]]]
    x, y = rows.get(1)
    assert x.tolist() == [7, 8, 9, 10, 11, 0] and y.tolist() == [8, 9, 10, 11, IGNORE, IGNORE]


def test_a_few_long_chats_left_out_is_said_a_large_share_is_a_warning(caplog):
    import logging

    def offsets(n_short: int, n_long: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lengths = [3] * n_short + [9] * n_long
        ends = np.cumsum([0] + lengths)
        return np.zeros(ends[-1], dtype=np.uint16), np.ones(ends[-1], dtype=np.uint8), ends

    with caplog.at_level(logging.INFO, logger="llm_core.data.loader"):
        PackedRows(*offsets(99, 1), seq_len=4, pad_id=0)  # 1% left out: said, not a warning
        PackedRows(*offsets(80, 20), seq_len=4, pad_id=0)  # 20%: a warning with the fix
    (few, many) = caplog.records
    assert few.levelno == logging.INFO and "1 of 100 conversations (1.0%)" in few.getMessage()
    assert many.levelno == logging.WARNING and "raise sft.seq_len" in many.getMessage()
