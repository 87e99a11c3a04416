"""(rank, world)-aware batch loader with exact resume.

Both datasets are seen as a list of fixed-length rows of `seq_len + 1` tokens (inputs and shifted targets):
- pretraining: non-overlapping windows of the token stream (each window overlaps the next by the one target token);
- SFT: whole conversations packed into rows (padding masked out), so an answer is never cut off from its question.
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


class Rows:
    """Random access to (input, target) rows; targets are IGNORE where no loss is taken."""

    def __len__(self) -> int:
        raise NotImplementedError

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class StreamRows(Rows):
    """Windows of one or more token shards (a window never spans two shards)."""

    def __init__(self, shards: list[np.ndarray], seq_len: int):
        self.shards, self.seq_len = shards, seq_len
        counts = [max(0, (len(s) - 1) // seq_len) for s in shards]
        self.starts = np.cumsum([0] + counts)
        if self.starts[-1] == 0:
            raise ValueError(f"the token shards hold {sum(len(s) for s in shards)} tokens, fewer than one sequence of "
                             f"{seq_len + 1}; use more data or a smaller seq_len")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def get(self, index: int):
        shard = int(np.searchsorted(self.starts, index, side="right") - 1)
        off = (index - self.starts[shard]) * self.seq_len
        window = np.asarray(self.shards[shard][off:off + self.seq_len + 1], dtype=np.int64)
        return window[:-1], window[1:]


class PackedRows(Rows):
    """Conversations packed first-fit into rows of seq_len + 1 tokens; the rest of a row is masked padding."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, offsets: np.ndarray, seq_len: int, pad_id: int):
        row_len = seq_len + 1
        self.x: list | np.ndarray = []
        self.y: list | np.ndarray = []
        rows_t: list[list[int]] = []
        rows_m: list[list[int]] = []
        self.skipped_too_long = 0
        for a, b in zip(offsets[:-1], offsets[1:]):
            if b - a > row_len:  # cutting a chat would separate answers from their questions: leave it out
                self.skipped_too_long += 1
                continue
            t = [int(x) for x in tokens[a:b]]
            m = [int(x) for x in mask[a:b]]
            for rt, rm in zip(rows_t, rows_m):
                if len(rt) + len(t) <= row_len:
                    rt.extend(t)
                    rm.extend(m)
                    break
            else:
                rows_t.append(t)
                rows_m.append(m)
            if len(rows_t) > 64:  # first-fit over a bounded window keeps packing linear-time
                self._finish(rows_t.pop(0), rows_m.pop(0), row_len, pad_id)
        for rt, rm in zip(rows_t, rows_m):
            self._finish(rt, rm, row_len, pad_id)
        if not self.x:
            raise ValueError(f"no SFT conversation fits in seq_len + 1 = {row_len} tokens ({self.skipped_too_long} "
                             "too long); raise sft.seq_len (and model.max_seq_len) or use shorter chats")
        if self.skipped_too_long:
            log.warning("%d conversations longer than %d tokens left out", self.skipped_too_long, row_len)
        self.x, self.y = np.stack(self.x), np.stack(self.y)

    def _finish(self, t, m, row_len, pad_id):
        t = np.asarray(t + [pad_id] * (row_len - len(t)), dtype=np.int64)
        m = np.asarray(m + [0] * (row_len - len(m)), dtype=bool)
        y = np.where(m[1:], t[1:], IGNORE)  # the mask marks tokens to predict, i.e. targets
        self.x.append(t[:-1])
        self.y.append(y)

    def __len__(self) -> int:
        return len(self.x)

    def get(self, index: int):
        return self.x[index], self.y[index]


class Loader:
    def __init__(self, rows: Rows, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle: bool = True):
        if len(rows) < batch_size * world:
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

    def eval_batches(self, num_batches: int):
        """A fixed, unshuffled prefix of the rows split across ranks. Every rank yields the same number of batches
        (only whole global batches are used): a rank that ran one forward more than the others would wait forever in
        FSDP's all-gather."""
        global_batch = self.batch_size * self.world
        for b in range(min(num_batches, len(self.rows) // global_batch)):
            start = b * global_batch + self.rank * self.batch_size
            xs, ys = zip(*(self.rows.get(i) for i in range(start, start + self.batch_size)))
            yield torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def pretrain_rows(token_dir, split: str, seq_len: int, manifest: dict) -> StreamRows:
    from llm_core.data import shards

    return StreamRows(shards.pretrain_shards(token_dir, split, manifest), seq_len)


def sft_rows(token_dir, split: str, seq_len: int, manifest: dict, pad_id: int) -> PackedRows:
    from llm_core.data import shards

    tokens, mask, offsets = shards.sft_arrays(token_dir, split, manifest)
    return PackedRows(tokens, mask, offsets, seq_len, pad_id)
