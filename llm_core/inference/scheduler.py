"""The engine's thread for `llm-serve`: one background thread owns the model and the engine and loops: take new and
cancelled requests, run one decode step for every active request, hand each request its events. So concurrent
requests are decoded together, a new one joins the running batch at the next step and a finished one leaves it
(continuous batching). Requests that find every row busy wait in a bounded queue; past it `submit` raises QueueFull
at once instead of letting latency grow without limit. Web handlers never touch the model: they submit a `Job` and
read its events.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading

from llm_core.inference.engine import Engine, Event, Request


class Job:
    """One request in flight: its engine request and the asyncio queue its handler reads events from."""

    def __init__(self, req: Request, loop: asyncio.AbstractEventLoop):
        self.req, self.loop = req, loop
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.rid: int | None = None
        self.admitted = False

    async def next_events(self) -> list[Event]:
        """Every event delivered so far (at least one): a handler that fell behind sends them as one chunk."""
        return [await self.events.get()] + self.drain()

    def drain(self) -> list[Event]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out


def _deliver(batch: list[tuple[Job, Event]]) -> None:
    """Runs in the event loop: one wake-up per engine step, not one per token."""
    for job, ev in batch:
        job.events.put_nowait(ev)


class QueueFull(Exception):
    """Every batch row is busy and the queue is full: the server answers 503."""


class Scheduler:
    """The engine's thread: all model work happens here."""

    def __init__(self, engine: Engine, queue_size: int):
        self.engine, self.queue_size = engine, queue_size
        self._inbox: queue.Queue[tuple[str, Job]] = queue.Queue()
        self._jobs: dict[int, Job] = {}
        self._waiting = 0  # submitted, not yet holding a batch row
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def active(self) -> int:
        return self.engine.active

    def submit(self, job: Job) -> None:
        with self._lock:
            free_rows = self.engine.max_batch - self.engine.active
            if self._waiting >= free_rows + self.queue_size:
                raise QueueFull
            self._waiting += 1
        self._inbox.put(("add", job))

    def cancel(self, job: Job) -> None:
        self._inbox.put(("cancel", job))

    def _take_inbox(self) -> None:
        block = not self.engine.has_work()
        while True:
            try:
                op, job = self._inbox.get(timeout=0.05) if block else self._inbox.get_nowait()
            except queue.Empty:
                return
            block = False
            if op == "add":
                job.rid = self.engine.submit(job.req)
                self._jobs[job.rid] = job
            elif job.rid is not None and job.rid in self._jobs:
                self.engine.cancel(job.rid)
                del self._jobs[job.rid]
                if not job.admitted:
                    self._count_admitted(job)

    def _count_admitted(self, job: Job) -> None:
        job.admitted = True
        with self._lock:
            self._waiting -= 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._take_inbox()
            if not self.engine.has_work():
                continue
            try:
                events = self.engine.step()
            except Exception as e:  # a bug, not a request's fault: fail the requests in flight, keep serving
                logging.getLogger("llm_core.serve").exception("decode step failed")
                self.error = e
                for rid, job in list(self._jobs.items()):
                    self.engine.cancel(rid)
                    job.loop.call_soon_threadsafe(_deliver, [(job, Event(rid, None, "error"))])
                self._jobs.clear()
                with self._lock:
                    self._waiting = 0
                continue
            in_batch = {row.rid for row in self.engine.rows}
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Event]]] = {}
            for ev in events:
                job = self._jobs.get(ev.rid)
                if job is None:
                    continue
                if not job.admitted:
                    self._count_admitted(job)
                by_loop.setdefault(job.loop, []).append((job, ev))
                if ev.finish:
                    del self._jobs[ev.rid]
            for loop, batch in by_loop.items():
                loop.call_soon_threadsafe(_deliver, batch)
            for rid in in_batch:
                job = self._jobs.get(rid)
                if job is not None and not job.admitted:
                    self._count_admitted(job)
