"""`llm-serve`: an OpenAI-compatible HTTP server and the browser chat page, over the batched engine.

One background thread owns the model and the engine and loops: take new and cancelled requests, run one decode
step for every active request, hand each request its events. So concurrent requests are decoded together, a new
one joins the running batch at the next step and a finished one leaves it (continuous batching). Requests that
find every row busy wait in a bounded queue; past it the server answers 503 at once instead of letting latency
grow without limit. Web handlers never touch the model: they validate, submit, and read their request's events.

Routes: POST /v1/chat/completions, POST /v1/completions (JSON or server-sent events), GET /v1/models, GET /health,
GET / (the chat page, a static file shipped in the package, no network needed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.routing import Route

from llm_core import cli
from llm_core.inference import api
from llm_core.inference.engine import Engine, Event, Request
from llm_core.inference.loading import LoadedModel, load
from llm_core.inference.text import TextStream


class _Job:
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


def _deliver(batch: list[tuple[_Job, Event]]) -> None:
    """Runs in the event loop: one wake-up per engine step, not one per token."""
    for job, ev in batch:
        job.events.put_nowait(ev)


# A stream sends at most one chunk per interval (the first at once): nobody reads faster than 50 updates a
# second, and under load every send costs the server a syscall and a turn of the GIL that decoding needs.
STREAM_INTERVAL_S = 0.02


class QueueFull(Exception):
    pass


class Scheduler:
    """The engine's thread: all model work happens here."""

    def __init__(self, engine: Engine, queue_size: int):
        self.engine, self.queue_size = engine, queue_size
        self._inbox: queue.Queue[tuple[str, _Job]] = queue.Queue()
        self._jobs: dict[int, _Job] = {}
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

    def submit(self, job: _Job) -> None:
        with self._lock:
            free_rows = self.engine.max_batch - self.engine.active
            if self._waiting >= free_rows + self.queue_size:
                raise QueueFull
            self._waiting += 1
        self._inbox.put(("add", job))

    def cancel(self, job: _Job) -> None:
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

    def _count_admitted(self, job: _Job) -> None:
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
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Event]]] = {}
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


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


def create_app(loaded: LoadedModel, max_batch: int = 16, queue_size: int = 64) -> Starlette:
    """The ASGI app; the engine thread starts with the app and stops with it."""
    engine = loaded.engine(max_batch)
    scheduler = Scheduler(engine, queue_size)
    model_id = loaded.name
    vocab = loaded.tokenizer.vocab_size
    page = resources.files("llm_core.inference").joinpath("static/index.html").read_text(encoding="utf-8")

    def error(e: api.ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    async def completions(request: HttpRequest, kind: str):
        try:
            body = api.parse_json(await request.body())
            parsed = api.parse_request(body, kind, model_id, vocab)
            if kind == "chat":
                prompt = loaded.chat_prompt(parsed.messages)
            else:
                prompt = loaded.plain_prompt(parsed.prompt)
        except api.ApiError as e:
            return error(e)
        stops = loaded.chat_stop_ids if kind == "chat" else loaded.stop_ids
        job = _Job(Request(prompt, parsed.params, stops, parsed.seed), asyncio.get_running_loop())
        try:
            scheduler.submit(job)
        except QueueFull:
            return error(api.ApiError(503, "the server is at capacity (every batch row busy and the queue full); "
                                           "retry in a moment", code="overloaded"))
        rid, created = api.new_id(kind), int(time.time())
        if parsed.stream:
            return StreamingResponse(_stream(job, parsed, kind, rid, created, len(prompt)),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        text, count, finish = [], 0, None
        stream = TextStream(loaded.tokenizer)
        try:
            while finish is None:
                for ev in await job.next_events():
                    if ev.token is not None:
                        count += 1
                        text.append(stream.push(ev.token))
                    finish = ev.finish
        except asyncio.CancelledError:
            scheduler.cancel(job)
            raise
        if finish == "error":
            return error(api.ApiError(500, "generation failed inside the server; see its log"))
        text.append(stream.flush())
        return JSONResponse(api.completion(kind, rid, model_id, "".join(text), finish,
                                           api.usage(len(prompt), count)))

    async def _stream(job: _Job, parsed: api.ParsedRequest, kind: str, rid: str, created: int, n_prompt: int):
        stream = TextStream(loaded.tokenizer)
        count, finish = 0, None
        try:
            if kind == "chat":
                yield _sse(api.chunk(kind, rid, model_id, created, "", None, first=True))
            loop, last = asyncio.get_running_loop(), 0.0
            while finish is None:
                pieces = []
                events = await job.next_events()
                wait = last + STREAM_INTERVAL_S - loop.time()
                if wait > 0 and not events[-1].finish:
                    await asyncio.sleep(wait)
                    events += job.drain()
                for ev in events:
                    if ev.token is not None:
                        count += 1
                        pieces.append(stream.push(ev.token))
                    finish = ev.finish
                if finish:
                    pieces.append(stream.flush())
                if any(pieces):
                    yield _sse(api.chunk(kind, rid, model_id, created, "".join(pieces), None))
                    last = loop.time()
            if finish == "error":
                yield _sse(api.ApiError(500, "generation failed inside the server; see its log").body())
            else:
                yield _sse(api.chunk(kind, rid, model_id, created, None, finish))
                if parsed.include_usage:
                    yield _sse(api.usage_chunk(kind, rid, model_id, created, api.usage(n_prompt, count)))
            yield b"data: [DONE]\n\n"
        except Exception:  # a bug of ours mid-stream: the client gets an error event, the server goes on
            logging.getLogger("llm_core.serve").exception("stream failed")
            yield _sse(api.ApiError(500, "generation failed inside the server; see its log").body())
            yield b"data: [DONE]\n\n"
        finally:
            if finish is None:  # the client went away: free its batch row
                scheduler.cancel(job)

    async def chat_completions(request):
        return await completions(request, "chat")

    async def text_completions(request):
        return await completions(request, "completion")

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": model_id, "object": "model", "created": 0, "owned_by": "llm-core",
             "max_seq_len": loaded.model.cfg.max_seq_len}]})

    async def health(request):
        return JSONResponse({"status": "ok", "model": model_id, "active": scheduler.active,
                             "waiting": scheduler.waiting, "max_batch": max_batch, "queue_size": queue_size})

    async def index(request):
        return HTMLResponse(page)

    async def not_found(request, exc):
        return error(api.ApiError(404, f"no route {request.method} {request.url.path}; see /v1/models, "
                                       "/v1/chat/completions, /v1/completions, /health"))

    async def bad_method(request, exc):
        return error(api.ApiError(405, f"{request.method} is not allowed on {request.url.path}"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        scheduler.close()

    app = Starlette(
        routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/completions", text_completions, methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
                Route("/", index, methods=["GET"])],
        exception_handlers={404: not_found, 405: bad_method},
        lifespan=lifespan,
    )
    app.state.scheduler = scheduler
    return app


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        ap = argparse.ArgumentParser(prog="llm-serve", description="OpenAI-compatible server and chat page for "
                                                                    "a trained model")
        ap.add_argument("--model", default="models/sft", help="model folder (default: models/sft)")
        ap.add_argument("--tokenizer", default=None, help="tokenizer folder (default: models/tokenizer beside it)")
        ap.add_argument("--host", default="127.0.0.1")
        ap.add_argument("--port", type=int, default=8000)
        ap.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most")
        ap.add_argument("--queue", type=int, default=64, help="requests waiting for a row at most (then 503)")
        ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
        ap.add_argument("--threads", type=int, default=0, help="CPU threads for the model (default: PyTorch's)")
        args = ap.parse_args(argv)
        if args.max_batch < 1 or args.queue < 0:
            raise ValueError("--max-batch must be >= 1 and --queue >= 0")
        import torch
        import uvicorn

        if args.threads > 0:
            torch.set_num_threads(args.threads)

        loaded = load(args.model, args.tokenizer, args.device)
        app = create_app(loaded, args.max_batch, args.queue)
        print(f"llm-serve: {loaded.name} on http://{args.host}:{args.port}/ (chat page) and "
              f"http://{args.host}:{args.port}/v1 (OpenAI API)", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")

    cli.run("llm-serve", run)


if __name__ == "__main__":
    main()
