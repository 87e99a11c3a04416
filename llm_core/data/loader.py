"""(rank, world)-aware batch loader with exact resume.

Both datasets are seen as a list of fixed-length rows of `seq_len + 1` tokens (inputs and shifted targets):
- pretraining: whole documents packed into rows (`DocRows`; a document longer than a row is cut into windows);
- SFT: whole conversations packed into rows (`PackedRows`), so an answer is never cut off from its question.
Both pack first-fit (`FirstFit`) and keep each row as segments of the token arrays; padding is never predicted.
Each epoch visits the rows in a fresh permutation drawn from (seed, epoch). A global batch takes the next
`world * batch_size` rows of the permutation and rank r keeps its slice, so the order does not depend on how many
ranks share the work. The state is just (epoch, cursor): a resumed loader continues with exactly the next batch.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

IGNORE = -1  # target id excluded from the loss
SKIP_WARNING = 0.05  # share of SFT chats left out for length past which the stage warns


class Rows:
    """Random access to (input, target) rows; targets are IGNORE where no loss is taken."""

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class FirstFit:
    """First-fit packing of pieces into rows of `row_len` tokens, over the WINDOW most recently opened rows: packing
    stays linear-time and rows come out nearly full. `add` returns the rows it closes, oldest first; `close` returns
    the rest."""

    WINDOW = 64

    def __init__(self, row_len: int):
        self.row_len = row_len
        self.open: list[list] = []  # [room left, items] of rows still taking pieces

    def add(self, length: int, item, join: bool = True) -> list[list]:
        """Place a piece of `length` tokens; `join=False` opens a new row for it (later pieces may still join it)."""
        for slot in self.open if join else ():
            if slot[0] >= length:
                break
        else:
            slot = [self.row_len, []]
            self.open.append(slot)
        slot[0] -= length
        slot[1].append(item)
        return [self.open.pop(0)[1]] if len(self.open) > self.WINDOW else []

    def close(self) -> list[list]:
        rows, self.open = [items for _, items in self.open], []
        return rows


class SegmentRows(Rows):
    """Rows stored as segments of the source arrays, one flat array for all rows (not a list per row: a
    billion-token corpus is millions of rows)."""

    def _store(self, rows: list[list[tuple]], width: int) -> None:
        self.segments = np.asarray([seg for row in rows for seg in row], dtype=np.int64).reshape(-1, width)
        self.row_start = np.cumsum([0] + [len(row) for row in rows])

    def __len__(self) -> int:
        return len(self.row_start) - 1

    def row_segments(self, index: int) -> np.ndarray:
        """The segments of row `index`, in order."""
        return self.segments[self.row_start[index]:self.row_start[index + 1]]


class DocRows(SegmentRows):
    """Rows cut from token shards so that every predicted token sees its document from the start.

    The pretraining shards open every document with `bos_id`. A document of at most seq_len + 1 tokens lies whole in
    one row, packed first-fit with others; what a row has left is padding with no loss. A longer document fills rows
    of its own (consecutive windows, each overlapping the next by the one target token) and its remainder opens a row
    that later documents may fill. Cutting the stream into fixed windows instead starts most rows in the middle of
    a document: names and facts introduced before the cut cannot be predicted there, so training sees noise and
    validation bpb stays above the entropy of the text. Without `bos_id` each shard is one document: plain
    consecutive windows. A segment is (shard, start, end).
    """

    def __init__(self, shards: list[np.ndarray], seq_len: int, bos_id: int | None = None):
        self.shards, self.seq_len, self.pad_id = shards, seq_len, 0 if bos_id is None else bos_id
        row_len = seq_len + 1
        total = sum(len(s) for s in shards)
        if total < row_len:
            raise ValueError(f"the token shards hold {total} tokens, fewer than one sequence of {row_len}; use more "
                             "data or a smaller seq_len")
        rows: list[list[tuple[int, int, int]]] = []
        packer = FirstFit(row_len)
        for k, shard in enumerate(shards):
            starts = [0] if bos_id is None else np.flatnonzero(np.asarray(shard) == bos_id).tolist()
            if not starts or starts[0] != 0:
                starts.insert(0, 0)  # text before the first <|bos|> is a document too
            for a, b in zip(starts, starts[1:] + [len(shard)]):
                starts_at = a
                while b - a >= row_len:
                    rows.append([(k, a, a + row_len)])
                    a += seq_len
                if b - a >= 2:  # something left to predict
                    # a long document's remainder has no <|bos|> of its own: it opens a row, so that it never shares
                    # a document (and, with the training loop's document mask, an attention span) with the one before
                    rows += packer.add(b - a, (k, a, b), join=a == starts_at)
        self._store(rows + packer.close(), 3)

    def get(self, index: int):
        row = np.full(self.seq_len + 1, self.pad_id, dtype=np.int64)
        pos = 0
        for k, a, b in self.row_segments(index).tolist():
            row[pos:pos + b - a] = self.shards[k][a:b]
            pos += b - a
        y = row[1:].copy()
        y[pos - 1:] = IGNORE  # padding is not predicted
        return row[:-1], y


class PackedRows(SegmentRows):
    """Conversations packed first-fit into rows of seq_len + 1 tokens; the rest of a row is masked padding. A segment
    is (start, end) of one conversation in `tokens` / `mask`."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, offsets: np.ndarray, seq_len: int, pad_id: int):
        self.tokens, self.mask, self.seq_len, self.pad_id = tokens, mask, seq_len, pad_id
        row_len = seq_len + 1
        rows: list[list[tuple[int, int]]] = []
        packer = FirstFit(row_len)
        self.skipped_too_long = 0
        for a, b in zip(np.asarray(offsets[:-1]).tolist(), np.asarray(offsets[1:]).tolist()):
            if b - a > row_len:  # cutting a chat would separate answers from their questions: leave it out
                self.skipped_too_long += 1
                continue
            rows += packer.add(b - a, (a, b))
        rows += packer.close()
        if not rows:
            raise ValueError(f"no SFT conversation fits in seq_len + 1 = {row_len} tokens ({self.skipped_too_long} "
                             "too long); raise sft.seq_len (and model.max_seq_len) or use shorter chats")
        if self.skipped_too_long:
            # a few long chats left out is the price of whole chats per row; a share that changes what the model
            # learns is worth a warning
            share = self.skipped_too_long / (len(offsets) - 1)
            log.log(logging.WARNING if share > SKIP_WARNING else logging.INFO,
                    "%d of %d conversations (%.1f%%) longer than %d tokens left out%s", self.skipped_too_long,
                    len(offsets) - 1, 100 * share, row_len,
                    "; raise sft.seq_len (and model.max_seq_len) to keep them" if share > SKIP_WARNING else "")
        self._store(rows, 2)

    def get(self, index: int):
        row_len = self.seq_len + 1
        t = np.full(row_len, self.pad_id, dtype=np.int64)
        m = np.zeros(row_len, dtype=bool)
        pos = 0
        for a, b in self.row_segments(index).tolist():
            t[pos:pos + b - a] = self.tokens[a:b]
            m[pos:pos + b - a] = self.mask[a:b]
            pos += b - a
        return t[:-1], np.where(m[1:], t[1:], IGNORE)  # the mask marks tokens to predict, i.e. targets


class Loader:
    def __init__(self, rows: Rows, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if shuffle and len(rows) < batch_size * world:
            raise ValueError(f"only {len(rows)} sequences, fewer than one global batch ({world} ranks x batch_size "
                             f"{batch_size}); use more data or a smaller batch_size / seq_len")
        self.rows, self.batch_size, self.rank, self.world = rows, batch_size, rank, world
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.batch_size * self.world
        if self.cursor + step > len(self._order):  # drop the ragged tail, start the next epoch
            self.epoch += 1
            self.cursor = 0
            self._order = self._permutation(self.epoch)
        picked = self._order[self.cursor + self.rank * self.batch_size:self.cursor + (self.rank + 1) * self.batch_size]
        self.cursor += step
        xs, ys = zip(*(self.rows.get(int(i)) for i in picked))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "num_rows": len(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        if state["num_rows"] != len(self.rows) or state["seed"] != self.seed:
            raise ValueError("loader state was saved for other data (row count or seed differ); start a fresh run")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation(self.epoch)

    def eval_batches(self, num_rows: int):
        """The first `num_rows` rows (all of them when there are fewer), unshuffled, split across ranks: global batch
        b is rows [b * G, (b + 1) * G) with G = world x batch_size, and rank r takes the r-th batch_size slice of it.
        The rows scored are the same whatever the rank count (the validation set is global), so are the sums the
        ranks add up. Every rank yields the same number of batches, since a rank that ran one forward more than
        the others would wait forever in FSDP's all-gather: a rank whose slice of the last batch is empty scores
        one row with no target instead, which adds nothing."""
        n = min(num_rows, len(self.rows))
        for start in range(0, n, self.batch_size * self.world):
            lo = min(start + self.rank * self.batch_size, n)
            hi = min(lo + self.batch_size, n)
            if hi > lo:
                xs, ys = zip(*(self.rows.get(i) for i in range(lo, hi)))
                yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
            else:
                x, y = self.rows.get(0)
                yield torch.from_numpy(x[None]), torch.full((1, len(y)), IGNORE, dtype=torch.int64)


def pretrain_rows(token_dir, split: str, seq_len: int, manifest: dict) -> DocRows:
    from llm_core.data import shards

    return DocRows(shards.pretrain_shards(token_dir, split, manifest), seq_len, manifest["bos_id"])


def sft_rows(token_dir, split: str, seq_len: int, manifest: dict, pad_id: int) -> PackedRows:
    from llm_core.data import shards

    tokens, mask, offsets = shards.sft_arrays(token_dir, split, manifest)
    return PackedRows(tokens, mask, offsets, seq_len, pad_id)
