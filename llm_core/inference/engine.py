"""Batched KV-cache decoding with continuous batching: many sequences decode together, one forward pass per step.

Each row of the batch is one request with its own prompt length and position (a ragged KV cache), its own sampling
settings, stop tokens and seed. A request submitted between steps joins at the next step (its prompt is prefilled
into a free row); a finished one leaves at once and the last row moves into its place, so the active rows are
always 0..n-1 and a step costs a forward over n rows, never over the whole capacity.

When a row's context reaches `max_seq_len`, a rolling window keeps its most recent tokens (and a leading BOS, which
the model saw at the start of every training document) and rebuilds the row's cache from them; the quarter of the
context dropped at once keeps the rebuild rare. A prompt longer than the context is windowed the same way.
Special tokens (chat markers, BOS, end) are never penalised by the repetition penalty.

A decode step waits on the device once: for the drawn tokens, which decide the events. Everything else it needs on
the host (each row's cache length, for the window; each row's settings) is kept on the host, and the drawn tokens
feed the next forward pass from the device. The one-token forward pass is `fused.FusedDecoder` where the model's
blocks allow it (grouped-query attention + SwiGLU), the model's own forward pass otherwise.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from llm_core.inference.fused import FusedDecoder
from llm_core.inference.generate import SamplingParams, sample_rows
from llm_core.model.transformer import KVCache, Transformer

STOP, LENGTH = "stop", "length"


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    stop_ids: Sequence[int] = ()
    seed: int | None = None  # a seeded request draws the same tokens whatever shares the batch


@dataclass
class Event:
    """What one step did to one request: a new token, a finish, or both (`token` is None when the step drew a
    stop token, which is never emitted). `rolled` counts the context tokens the window has dropped so far."""

    rid: int
    token: int | None
    finish: str | None = None  # "stop" | "length"
    rolled: int = 0


@dataclass
class Result:
    tokens: list[int]
    finish: str
    prompt_tokens: int
    rolled: int


@dataclass
class _Row:
    rid: int
    req: Request
    context: list[int]  # the tokens in the cache, then the newest token (not in the cache yet)
    generator: torch.Generator | None
    stops: frozenset[int]
    new: int = 0
    rolled: int = 0


class Engine:
    def __init__(self, model: Transformer, max_batch: int = 16, special_ids: Iterable[int] = (),
                 bos_id: int | None = None, seed: int = 0, vocab_size: int | None = None):
        model.eval()
        self.model, self.cfg = model, model.cfg
        self.max_batch = max_batch
        self.bos_id = bos_id
        p = next(model.parameters())
        self.device = p.device
        V = self.cfg.vocab_size
        self.cache = KVCache.empty(self.cfg, max_batch, self.cfg.max_seq_len, p.device, p.dtype, ragged=True)
        self.lengths = [0] * max_batch  # cache.lengths, mirrored on the host: reading the device's would wait on it
        self.next_tokens = torch.zeros(max_batch, dtype=torch.long, device=p.device)  # each row's newest token
        self.decoder = FusedDecoder(model) if FusedDecoder.supports(model) else None
        self.logits = torch.zeros(max_batch, V, device=p.device)  # next-token logits of each row
        self.seen = torch.zeros(max_batch, V, dtype=torch.bool, device=p.device)  # tokens the penalty applies to
        # a model's vocabulary may be padded past its tokenizer's: ids with no text are never drawn
        self.vocab_size = min(vocab_size or V, V)
        self.special_ids = {i for i in special_ids if 0 <= i < V}
        self.special = torch.zeros(V, dtype=torch.bool, device=p.device)
        self.special[list(self.special_ids)] = True
        self.temperature = torch.zeros(max_batch, device=p.device)
        self.top_k = torch.zeros(max_batch, dtype=torch.long, device=p.device)
        self.top_p = torch.ones(max_batch, device=p.device)
        self.penalty = torch.ones(max_batch, device=p.device)
        self.rows: list[_Row] = []
        self.pending: deque[tuple[int, Request]] = deque()
        self.generator = torch.Generator(device=p.device).manual_seed(seed)
        self._next_rid = 0
        self.tokens_out = 0  # counters for throughput reports
        self.decode_s = 0.0

    # ---------------------------------------------------------------------------------------------------- requests

    def submit(self, req: Request) -> int:
        """Queue a request; it joins the batch at the next step with a free row. Returns its id."""
        if not req.prompt:
            raise ValueError("a prompt needs at least one token; start it with the BOS token")
        if req.params.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {req.params.max_new_tokens})")
        rid = self._next_rid
        self._next_rid += 1
        self.pending.append((rid, req))
        return rid

    def cancel(self, rid: int) -> None:
        """Forget a request (its client went away): queued or running, it produces no more events."""
        self.pending = deque((r, q) for r, q in self.pending if r != rid)
        for i, row in enumerate(self.rows):
            if row.rid == rid:
                self._remove(i)
                break

    @property
    def active(self) -> int:
        return len(self.rows)

    def has_work(self) -> bool:
        return bool(self.rows or self.pending)

    # ---------------------------------------------------------------------------------------------------- stepping

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Admit queued requests, draw one token for every row, advance the cache. Returns what happened."""
        joining = []
        while self.pending and len(self.rows) + len(joining) < self.max_batch:
            joining.append(self.pending.popleft())
        if joining:
            self._admit(joining)
        n = len(self.rows)
        if n == 0:
            return []
        t0 = time.perf_counter()
        # the rows' settings, read on the host: asking the device would wait for it
        hot = [i for i, row in enumerate(self.rows) if row.req.params.temperature > 0]
        penalise = any(row.req.params.repetition_penalty != 1.0 for row in self.rows)
        gens, width = [], 0
        if hot:
            gens = [row.generator or self.generator for row in self.rows]
            V = self.cfg.vocab_size
            width = max(k if 0 < k <= V else V for k in (self.rows[i].req.params.top_k for i in hot))
        if hot or penalise:
            drawn = sample_rows(self.logits[:n], self.seen[:n], self.temperature[:n], self.top_k[:n],
                                self.top_p[:n], self.penalty[:n], gens, hot, penalise, width)
        else:  # all greedy, no penalty: what sample_rows would do, without cutting six buffers to n rows
            drawn = self.logits[:n].argmax(-1)
        self.next_tokens[:n] = drawn  # the next forward pass reads them from the device
        tokens = drawn.tolist()  # the step's one wait on the device
        events, done, seen_rows, seen_tokens = [], [], [], []
        for i, (row, tok) in enumerate(zip(self.rows, tokens)):
            if tok in row.stops:
                events.append(Event(row.rid, None, STOP, row.rolled))
                done.append(i)
                continue
            row.new += 1
            row.context.append(tok)
            if penalise and tok not in self.special_ids:
                seen_rows.append(i)
                seen_tokens.append(tok)
            finish = LENGTH if row.new >= row.req.params.max_new_tokens else None
            events.append(Event(row.rid, tok, finish, row.rolled))
            if finish:
                done.append(i)
        if seen_rows:  # before rows move: indices are this step's
            self.seen[seen_rows, seen_tokens] = True
        self.tokens_out += sum(e.token is not None for e in events)
        for i in reversed(done):
            self._remove(i)
        if self.rows:
            self._advance()
        self.decode_s += time.perf_counter() - t0
        return events

    def _advance(self) -> None:
        """Feed every row's newest token through the model: one forward pass over all rows."""
        limit = self.cfg.max_seq_len
        for i in range(len(self.rows)):
            if self.lengths[i] >= limit:
                self._roll(i)
        n = len(self.rows)
        if self.decoder is not None and self.logits.dtype == self.cache.layers[0][0].dtype:
            self.decoder(self.next_tokens[:n], self.cache, self.lengths[:n], out=self.logits[:n])
        elif self.decoder is not None:
            self.logits[:n] = self.decoder(self.next_tokens[:n], self.cache, self.lengths[:n]).float()
        else:
            self.logits[:n] = self.model(self.next_tokens[:n, None], self.cache.rows(0, n))[:, -1].float()
        self.lengths[:n] = [length + 1 for length in self.lengths[:n]]
        if self.vocab_size < self.cfg.vocab_size:
            self.logits[:n, self.vocab_size:] = float("-inf")

    def _window(self, tokens: list[int], room: int) -> list[int]:
        """The most recent `room` tokens, keeping a leading BOS."""
        if len(tokens) <= room:
            return tokens
        if self.bos_id is not None and tokens[0] == self.bos_id:
            return tokens[:1] + tokens[len(tokens) - room + 1:]
        return tokens[len(tokens) - room:]

    def _room(self) -> int:
        # drop a quarter of the context at once: the rebuild (a prefill) then happens once per max_seq_len/4 tokens
        return max(1, self.cfg.max_seq_len - max(1, self.cfg.max_seq_len // 4))

    def _prefill(self, i: int, tokens: list[list[int]]) -> None:
        """Run rows i.. (prompts of one length) through the model from an empty cache: one forward for all."""
        view = self.cache.rows(i, i + len(tokens))
        view.lengths.zero_()
        ids = torch.tensor(tokens, device=self.device)
        self.logits[i:i + len(tokens)] = self.model(ids, view)[:, -1].float()
        self.lengths[i:i + len(tokens)] = [len(t) for t in tokens]
        if self.vocab_size < self.cfg.vocab_size:
            self.logits[i:i + len(tokens), self.vocab_size:] = float("-inf")

    def _roll(self, i: int) -> None:
        """Rebuild row i's cache from the window of its context (the newest token stays out: `_advance` feeds it)."""
        row = self.rows[i]
        kept = self._window(row.context[:-1], self._room() - 1)
        row.rolled += len(row.context) - 1 - len(kept)
        self._prefill(i, [kept])
        row.context = kept + row.context[-1:]

    def _admit(self, joining: list[tuple[int, Request]]) -> None:
        """Give each new request a row and prefill it; prompts of equal length are prefilled together."""
        kept = {}
        for rid, req in joining:
            prompt = list(req.prompt)
            kept[rid] = prompt if len(prompt) < self.cfg.max_seq_len else self._window(prompt, self._room())
        first = len(self.rows)
        for rid, req in sorted(joining, key=lambda j: len(kept[j[0]])):
            i = len(self.rows)
            row = _Row(rid, req, kept[rid], None, frozenset(req.stop_ids), rolled=len(req.prompt) - len(kept[rid]))
            if req.seed is not None:
                row.generator = torch.Generator(device=self.device).manual_seed(req.seed)
            self.rows.append(row)
            p = req.params
            self.temperature[i], self.top_k[i], self.top_p[i] = p.temperature, p.top_k, p.top_p
            self.penalty[i] = p.repetition_penalty
            self.seen[i] = False
            self.seen[i, torch.tensor(list(req.prompt), device=self.device)] = True
            self.seen[i] &= ~self.special
        i = first
        while i < len(self.rows):
            j = i
            while j < len(self.rows) and len(self.rows[j].context) == len(self.rows[i].context):
                j += 1
            self._prefill(i, [row.context for row in self.rows[i:j]])
            i = j

    def _remove(self, i: int) -> None:
        """Free row i: the last row moves into it (cache, logits, settings) so rows stay 0..n-1."""
        last = len(self.rows) - 1
        if i != last:
            self.cache.move_row(last, i, self.lengths[last])
            for t in (self.cache.lengths, self.logits, self.seen, self.temperature, self.top_k, self.top_p,
                      self.penalty, self.next_tokens):
                t[i] = t[last]
            self.rows[i] = self.rows[last]
            self.lengths[i] = self.lengths[last]
        self.rows.pop()
        self.cache.lengths[last] = 0
        self.lengths[last] = 0


def run_batch(engine: Engine, requests: Sequence[Request]) -> list[Result]:
    """Decode every request together until all are finished; results in the order of `requests`."""
    ids = [engine.submit(r) for r in requests]
    tokens: dict[int, list[int]] = {rid: [] for rid in ids}
    finished: dict[int, Event] = {}
    while len(finished) < len(ids):
        for ev in engine.step():
            if ev.token is not None:
                tokens[ev.rid].append(ev.token)
            if ev.finish:
                finished[ev.rid] = ev
    return [Result(tokens[rid], finished[rid].finish, len(req.prompt), finished[rid].rolled)
            for rid, req in zip(ids, requests)]
