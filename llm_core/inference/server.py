"""`llm-serve`: an OpenAI-compatible HTTP server and the browser chat page, over the batched engine.

The model runs in one background thread (`scheduler.py`: continuous batching, a bounded queue, 503 past it). A
completion request goes through three named phases: `parse` (read and validate the body, build the engine request;
every mistake a 4xx in OpenAI's error shape), `collect` (the one loop that turns the request's engine events into
text, shared by streamed and whole responses) and an encoder (`encode_whole` for one JSON object, `encode_stream` for
server-sent events). Every request leaves one access-log line on stdout (method, path, status, prompt and completion
tokens, latency); `--log-level warning` silences them.

Routes: POST /v1/chat/completions, POST /v1/completions (JSON or server-sent events), GET /v1/models, GET /health,
GET / (the chat page, a static file shipped in the package, no network needed), GET /favicon.ico.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llm_core import cli
from llm_core.errors import UserError
from llm_core.inference import api
from llm_core.inference.engine import Request
from llm_core.inference.loading import LoadedModel, find_model, load
from llm_core.inference.scheduler import Job, QueueFull, Scheduler
from llm_core.inference.text import TextStream

DEFAULT_MODEL = "models/sft"
# A stream sends at most one chunk per interval (the first at once): nobody reads faster than 50 updates a
# second, and under load every send costs the server a syscall and a turn of the GIL that decoding needs.
STREAM_INTERVAL_S = 0.02
LOG = logging.getLogger("llm_core.serve")
ACCESS = logging.getLogger("llm_core.serve.access")
FAILED = "generation failed inside the server; see its log"


@dataclass
class Served:
    """What every handler shares: the model, the engine's thread, the page and the limits."""

    loaded: LoadedModel
    scheduler: Scheduler
    max_batch: int
    queue_size: int
    page: str

    @property
    def model_id(self) -> str:
        return self.loaded.name


@dataclass
class Prepared:
    """A validated completion request, ready for the engine."""

    parsed: api.ParsedRequest
    prompt: list[int]
    stops: list[int]


class Tally:
    """What `collect` counted for a request: tokens, how it finished, the prompt tokens the context dropped."""

    def __init__(self, prompt_tokens: int):
        self.prompt_tokens = prompt_tokens
        self.tokens = 0
        self.finish: str | None = None
        self.dropped = 0

    def usage(self) -> dict:
        return api.usage(self.prompt_tokens, self.tokens, self.dropped)


# ---------------------------------------------------------------------------------------------------------- phases

async def read_body(request: HttpRequest) -> bytes:
    """The request body, refused (413) as soon as it passes the limit: a huge upload is never held in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > api.MAX_BODY_BYTES:
        raise api.too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > api.MAX_BODY_BYTES:
            raise api.too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def parse(served: Served, raw: bytes, kind: str) -> Prepared:
    """Phase 1: the body checked field by field (ApiError names the first bad one) and turned into token ids."""
    lm = served.loaded
    parsed = api.parse_request(api.parse_json(raw), kind, served.model_id, lm.tokenizer.vocab_size)
    if kind == "chat":
        return Prepared(parsed, lm.chat_prompt(parsed.messages), lm.chat_stop_ids)
    return Prepared(parsed, lm.plain_prompt(parsed.prompt), lm.stop_ids)


async def collect(served: Served, job: Job, tally: Tally, interval_s: float = 0.0) -> AsyncIterator[str]:
    """Phase 2, the one collecting loop: the request's text as the engine produces it, at most one piece per
    `interval_s` (0: whatever has arrived), counted into `tally`. A consumer that stops early (a client gone)
    frees the request's batch row."""
    text = TextStream(served.loaded.tokenizer)
    loop, last = asyncio.get_running_loop(), 0.0
    first = True
    try:
        while tally.finish is None:
            events = await job.next_events()
            wait = last + interval_s - loop.time()
            if wait > 0 and not events[-1].finish:
                await asyncio.sleep(wait)
                events += job.drain()
            if first:  # the window the engine cut the prompt to
                tally.dropped, first = events[0].rolled, False
            pieces = []
            for ev in events:
                if ev.token is not None:
                    tally.tokens += 1
                    pieces.append(text.push(ev.token))
                tally.finish = ev.finish
            if tally.finish:
                pieces.append(text.flush())
            if any(pieces):
                yield "".join(pieces)
                last = loop.time()
    finally:
        if tally.finish is None:
            served.scheduler.cancel(job)


def _sse(obj) -> bytes:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def encode_whole(served: Served, job: Job, prep: Prepared, tally: Tally) -> Response:
    """Phase 3 for `stream: false`: one JSON completion with its usage."""
    kind = prep.parsed.kind
    text = "".join([piece async for piece in collect(served, job, tally)])
    if tally.finish == "error":
        return _error(api.ApiError(500, FAILED))
    return JSONResponse(api.completion(kind, api.new_id(kind), served.model_id, text, tally.finish, tally.usage()))


async def encode_stream(served: Served, job: Job, prep: Prepared, tally: Tally) -> AsyncIterator[bytes]:
    """Phase 3 for `stream: true`: OpenAI's chunks as server-sent events, then the usage chunk when asked for."""
    kind, model_id = prep.parsed.kind, served.model_id
    rid, created = api.new_id(kind), int(time.time())
    try:
        if kind == "chat":
            yield _sse(api.chunk(kind, rid, model_id, created, "", None, first=True))
        async for piece in collect(served, job, tally, STREAM_INTERVAL_S):
            yield _sse(api.chunk(kind, rid, model_id, created, piece, None))
        if tally.finish == "error":
            yield _sse(api.ApiError(500, FAILED).body())
        else:
            yield _sse(api.chunk(kind, rid, model_id, created, None, tally.finish))
            if prep.parsed.include_usage:
                yield _sse(api.usage_chunk(kind, rid, model_id, created, tally.usage()))
        yield b"data: [DONE]\n\n"
    except Exception:  # a bug of ours mid-stream: the client gets an error event, the server goes on
        LOG.exception("stream failed")
        yield _sse(api.ApiError(500, FAILED).body())
        yield b"data: [DONE]\n\n"
    finally:
        if tally.finish is None:  # the client went away: free its row now, not when this generator is collected
            served.scheduler.cancel(job)


def _error(e: api.ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


# ---------------------------------------------------------------------------------------------------------- routes

async def completions(served: Served, request: HttpRequest, kind: str) -> Response:
    try:
        prep = parse(served, await read_body(request), kind)
    except api.ApiError as e:
        return _error(e)
    params = prep.parsed.params
    job = Job(Request(prep.prompt, params, prep.stops, prep.parsed.seed), asyncio.get_running_loop())
    try:
        served.scheduler.submit(job)
    except QueueFull:
        return _error(api.ApiError(503, "the server is at capacity (every batch row busy and the queue full); "
                                        "retry in a moment", code="overloaded"))
    tally = request.state.access["tally"] = Tally(len(prep.prompt))  # the access log reads its counts
    if prep.parsed.stream:
        return StreamingResponse(encode_stream(served, job, prep, tally), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await encode_whole(served, job, prep, tally)


class AccessLog:
    """ASGI middleware: one line per request once its response has ended (a stream included): client, method, path,
    status, prompt and completion tokens (completions), latency, and whether the client left before the end.
    A completion handler leaves its `Tally` in `request.state.access`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        record: dict = {}
        scope.setdefault("state", {})["access"] = record
        seen = {"status": None, "ended": False}
        t0 = time.perf_counter()

        async def watch(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                seen["ended"] = True
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, watch)
        except Exception:
            failed = True  # Starlette's outer layer answers 500 (our handler: OpenAI's shape) and logs it
            raise
        finally:
            ACCESS.info(self.line(scope, seen, record.get("tally"), failed, time.perf_counter() - t0))

    @staticmethod
    def line(scope, seen: dict, tally: Tally | None, failed: bool, seconds: float) -> str:
        client = scope.get("client")
        status = 500 if failed else (seen["status"] or "-")
        out = f"{client[0] if client else '-'} \"{scope['method']} {scope['path']}\" {status}"
        if tally is not None:
            out += f" prompt_tokens={tally.prompt_tokens} completion_tokens={tally.tokens}"
            if tally.dropped:
                out += f" prompt_tokens_dropped={tally.dropped}"
        out += f" {seconds:.3f}s"
        if not failed and not seen["ended"]:
            out += " (client closed)"
        return out


def create_app(loaded: LoadedModel, max_batch: int = 16, queue_size: int = 64) -> Starlette:
    """The ASGI app; the engine thread starts with the app and stops with it."""
    page = resources.files("llm_core.inference").joinpath("static/index.html").read_text(encoding="utf-8")
    # the page's sliders stop where the API does
    page = (page.replace("%MAX_TOKENS%", str(api.MAX_TOKENS))
            .replace("%MAX_TOP_K%", str(min(api.MAX_TOP_K, loaded.tokenizer.vocab_size))))
    icon = resources.files("llm_core.inference").joinpath("static/favicon.ico").read_bytes()
    served = Served(loaded, Scheduler(loaded.engine(max_batch), queue_size), max_batch, queue_size, page)

    async def chat_completions(request):
        return await completions(served, request, "chat")

    async def text_completions(request):
        return await completions(served, request, "completion")

    async def models(request):
        return JSONResponse({"object": "list", "data": [
            {"id": served.model_id, "object": "model", "created": 0, "owned_by": "llm-core",
             "max_seq_len": loaded.context, "chat": loaded.chat}]})

    async def health(request):
        s = served.scheduler
        return JSONResponse({"status": "ok", "model": served.model_id, "active": s.active, "waiting": s.waiting,
                             "max_batch": max_batch, "queue_size": queue_size})

    async def index(request):
        return HTMLResponse(served.page)

    async def favicon(request):
        return Response(icon, media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})

    async def http_error(request, exc: HTTPException):
        if exc.status_code == 404:
            message = (f"no route {request.method} {request.url.path}; see /v1/models, /v1/chat/completions, "
                       "/v1/completions, /health")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return _error(api.ApiError(exc.status_code, message))

    async def server_error(request, exc: Exception):  # a bug of ours; the server logs its traceback
        return _error(api.ApiError(500, "the server failed on this request; see its log"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        served.scheduler.start()
        yield
        served.scheduler.close()

    app = Starlette(
        routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/completions", text_completions, methods=["POST"]),
                Route("/v1/models", models, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
                Route("/", index, methods=["GET"]),
                Route("/favicon.ico", favicon, methods=["GET"])],
        middleware=[Middleware(AccessLog)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.scheduler = served.scheduler
    return app


# ---------------------------------------------------------------------------------------------------------- command

def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or a UserError saying why not: checked before the model loads and before the
    banner, so a busy port is one short error, not a banner followed by a crash."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT after a restart is free
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is already in use (another llm-serve, or another server); "
                            f"stop that one or pass another port, e.g. --port {port + 1}") from None
        if e.errno == errno.EACCES:
            raise UserError(f"port {port} needs more privileges than this user has (ports below 1024 do); "
                            "pass --port 8000") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass --host 127.0.0.1 (this "
                        "machine) or --host 0.0.0.0 (every interface)") from None
    return sock


def configure_logging(level: str) -> None:
    """Access lines on stdout (one per request, the record of what was served), everything else on stderr."""
    lvl = getattr(logging, level.upper())
    logging.basicConfig(stream=sys.stderr, level=lvl, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    access = logging.StreamHandler(sys.stdout)
    access.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    ACCESS.addHandler(access)
    ACCESS.propagate = False
    ACCESS.setLevel(lvl)
    # uvicorn's own start-up lines repeat the banner: shown at debug only
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(lvl if lvl <= logging.DEBUG else max(lvl, logging.WARNING))


def main(argv: list[str] | None = None) -> None:
    def run() -> None:
        ap = argparse.ArgumentParser(prog="llm-serve", description="OpenAI-compatible server and chat page for "
                                                                    "a trained model")
        ap.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder (default: {DEFAULT_MODEL}); also a "
                        "checkpoint, e.g. models/sft/best")
        ap.add_argument("--tokenizer", default=None,
                        help="tokenizer folder (default: the model's own, else a tokenizer/ folder beside or above it)")
        ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
        ap.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one)")
        ap.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most")
        ap.add_argument("--queue", type=int, default=64, help="requests waiting for a row at most (then 503)")
        ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
        ap.add_argument("--threads", type=int, default=0, help="CPU threads for the model (default: PyTorch's)")
        ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="info: one access line per request on stdout (default); warning: errors only")
        args = ap.parse_args(argv)
        if args.max_batch < 1 or args.queue < 0:
            raise ValueError(f"--max-batch must be >= 1 and --queue >= 0 (got {args.max_batch} and {args.queue}); "
                             "pass e.g. --max-batch 16 --queue 64")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be between 0 and 65535 (got {args.port}); pass e.g. --port 8000")
        model_dir = find_model(args.model, DEFAULT_MODEL)
        sock = listen(args.host, args.port)
        import torch
        import uvicorn

        if args.threads > 0:
            torch.set_num_threads(args.threads)
        configure_logging(args.log_level)
        loaded = load(model_dir, args.tokenizer, args.device)
        app = create_app(loaded, args.max_batch, args.queue)
        host, port = args.host, sock.getsockname()[1]
        kind = "chat" if loaded.chat else "base (plain continuation: use /v1/completions)"
        print(f"llm-serve: {loaded.name} ({kind} model) on http://{host}:{port}/ (chat page) and "
              f"http://{host}:{port}/v1 (OpenAI API); Ctrl-C stops", flush=True)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
        uvicorn.Server(config).run(sockets=[sock])

    cli.run("llm-serve", run)


if __name__ == "__main__":
    main()
