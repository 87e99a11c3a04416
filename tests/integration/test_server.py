"""The OpenAI-compatible server, tested with real clients over 127.0.0.1: the official `openai` client, plain HTTP,
32 concurrent streams, every kind of bad request (bodies the JSON parser cannot take included), the access log,
the favicon, a prompt longer than the context, and `llm-serve` itself on a busy port and on a free one."""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from llm_core.inference.loading import load
from llm_core.inference.server import create_app
from tests.helpers import ROOT, project_env
from tests.serving import request, running, stream_events

openai = pytest.importorskip("openai", reason="the openai client is in the dev extra: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def server(served_models):
    loaded = load(served_models / "sft", device="cpu")
    with running(create_app(loaded, max_batch=8, queue_size=64)) as base:
        yield base


def test_openai_client_chat_and_completions(server):
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["sft"]
    msgs = [{"role": "user", "content": "Tell me a story."}]
    reply = client.chat.completions.create(model="sft", messages=msgs, max_tokens=8, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # streamed with the same greedy settings: the same text, piece by piece, then the usage chunk
    parts, finish, use = [], None, None
    for ch in client.chat.completions.create(model="sft", messages=msgs, max_tokens=8, temperature=0, stream=True,
                                             stream_options={"include_usage": True}):
        if ch.choices:
            parts.append(ch.choices[0].delta.content or "")
            finish = ch.choices[0].finish_reason or finish
        if ch.usage:
            use = ch.usage
    assert "".join(parts) == choice.message.content and finish == choice.finish_reason
    assert use.completion_tokens == reply.usage.completion_tokens
    # plain completions, extensions through extra_body
    comp = client.completions.create(model="sft", prompt="Once upon a time", max_tokens=5, temperature=0.7,
                                     top_p=0.9, seed=1, extra_body={"top_k": 20, "repetition_penalty": 1.2})
    assert comp.choices[0].finish_reason in ("stop", "length") and comp.usage.completion_tokens <= 5
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="sft", prompt="Once upon a time", max_tokens=5, temperature=0.7, top_p=0.9, seed=1, stream=True,
        extra_body={"top_k": 20, "repetition_penalty": 1.2}))
    assert streamed == comp.choices[0].text  # a seeded request draws the same tokens


def test_32_concurrent_streams_are_complete_and_health_answers(server):
    body = {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 12,
            "temperature": 1.0, "stream_options": {"include_usage": True}}

    def one(i):
        return stream_events(server, "/v1/chat/completions", dict(body, seed=i))

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(one, i) for i in range(32)]
        status, health = request(server, "GET", "/health")  # answers while 32 streams run
        results = [f.result(timeout=120) for f in futures]
    assert status == 200 and health["status"] == "ok"
    for events in results:
        assert events[-1] == "[DONE]"
        chunks = events[:-1]
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert len({c["id"] for c in chunks}) == 1
        finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 12
    assert request(server, "GET", "/health")[1]["active"] == 0


@pytest.mark.parametrize("body,status,param", [
    ({"messages": [{"role": "user", "content": "x"}] * 501}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 8001}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 100000}, 400, "max_tokens"),
    ({"max_tokens": "many"}, 400, "max_tokens"),
    ({"temperature": 2.5}, 400, "temperature"),
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"top_k": -3}, 400, "top_k"),
    ({"repetition_penalty": 0}, 400, "repetition_penalty"),
    ({"n": 3}, 400, "n"),
    ({"n": 0}, 400, "n"),
    ({"stream": "yes"}, 400, "stream"),
    ({"model": "gpt-9"}, 404, "model"),
])
def test_bad_chat_requests_get_4xx_naming_the_field(server, body, status, param):
    full = {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    full.update(body)
    got, reply = request(server, "POST", "/v1/chat/completions", full)
    assert got == status, reply
    assert reply["error"]["param"] == param and param.split("[")[0] in reply["error"]["message"]
    assert reply["error"]["type"] == "invalid_request_error" and "between 1 and 1" not in reply["error"]["message"]


def test_range_messages_read_clearly(server):
    def message(body):
        full = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
        return request(server, "POST", "/v1/chat/completions", full)[1]["error"]["message"]

    assert message({"n": 2}).startswith("n must be 1: this server returns one choice per request (got 2)")
    assert message({"top_p": 0}) == "top_p must be greater than 0 and at most 1 (got 0)"
    assert message({"temperature": 2.5}) == "temperature must be between 0 and 2 (got 2.5)"
    assert message({"max_tokens": 5000}) == "max_tokens must be between 1 and 4096 (got 5000)"
    assert message({"temperature": 10 ** 400}).startswith("temperature must be between 0 and 2 (got 1000000")


def test_malformed_bodies_and_routes_get_4xx_and_the_server_keeps_serving(server):
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        status, reply = request(server, "POST", "/v1/chat/completions", raw=raw)
        assert status == 400 and "JSON" in reply["error"]["message"]
    status, reply = request(server, "POST", "/v1/completions", {"prompt": ["a", "b"]})
    assert status == 400 and reply["error"]["param"] == "prompt"
    assert request(server, "GET", "/v1/nothing")[0] == 404
    assert request(server, "GET", "/v1/chat/completions")[0] == 405
    status, reply = request(server, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert status == 200 and reply["choices"][0]["finish_reason"] in ("stop", "length")


def in_flight(base: str) -> int:
    """Requests the server holds: decoding in a batch row or waiting in the queue."""
    health = request(base, "GET", "/health")[1]
    return health["active"] + health["waiting"]


def test_full_queue_answers_503(served_models, monkeypatch):
    """The engine's step waits on a gate, so the two requests below hold the only row and the only queue place for as
    long as the test needs, however loaded the machine (a request that finished early made this race)."""
    import threading

    from llm_core.inference import scheduler

    loaded = load(served_models / "sft", device="cpu")
    gate, steps, cancels = threading.Event(), [], []
    make_engine = loaded.engine

    def gated_engine(max_batch, **kw):
        engine = make_engine(max_batch, **kw)
        step = engine.step

        def gated_step():
            gate.wait()
            steps.append(1)
            return step()
        engine.step = gated_step
        return engine

    cancel = scheduler.Scheduler.cancel

    def counted_cancel(self, job):
        cancels.append(job)
        cancel(self, job)
    monkeypatch.setattr(loaded, "engine", gated_engine)
    monkeypatch.setattr(scheduler.Scheduler, "cancel", counted_cancel)
    with running(create_app(loaded, max_batch=1, queue_size=1)) as base:
        body = {"prompt": "Once", "max_tokens": 4000, "temperature": 0, "stream": True}
        host, port = base.removeprefix("http://").split(":")
        conns = []
        for _ in range(2):  # one holds the only row, one waits in the queue
            c = http.client.HTTPConnection(host, int(port), timeout=60)
            c.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"})
            conns.append(c)
        deadline = time.monotonic() + 60
        while in_flight(base) < 2:
            assert time.monotonic() < deadline, "the two requests never reached the server"
            time.sleep(0.02)
        status, reply = request(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 503 and "capacity" in reply["error"]["message"]
        # clients that hang up free their row and their queue place: both streams are cancelled while the engine
        # waits, so it stops after the step it is in instead of decoding 2 x 4000 tokens for nobody
        for c in conns:
            c.close()
        while len(cancels) < 2:
            assert time.monotonic() < deadline, "the server never noticed the clients hang up"
            time.sleep(0.02)
        gate.set()
        while in_flight(base) > 0:
            assert time.monotonic() < deadline, "a closed stream kept decoding"
            time.sleep(0.02)
        assert len(steps) <= 2, f"the engine decoded {len(steps)} steps for streams nobody reads"
        assert request(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200


def test_llm_serve_without_a_model_names_the_folder(tmp_path, monkeypatch, capsys):
    from llm_core.inference.server import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    for args, says in ((["--model", "models/sfft"], "no model folder models/sfft (--model models/sfft)"),
                       ([], "no model in models/sft yet (the default --model)")):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and f"llm-serve: error: {says}" in err and "Traceback" not in err
        assert ("dvc repro sft" in err) == (args == [])  # only the default folder is a stage's output


def test_a_failing_decode_step_fails_its_requests_and_the_server_goes_on(served_models):
    app = create_app(load(served_models / "sft", device="cpu"), max_batch=2)
    engine = app.state.scheduler.engine
    step, calls = engine.step, []

    def broken_once():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated bug")
        return step()

    engine.step = broken_once
    with running(app) as base:
        status, reply = request(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 3})
        assert status == 500 and "generation failed" in reply["error"]["message"]
        status, reply = request(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 3})
        assert status == 200 and reply["usage"]["completion_tokens"] <= 3


def test_bodies_the_parser_cannot_take_get_4xx_in_openais_shape(server):
    for raw, status, says in ((b"[" * 50_000 + b"]" * 50_000, 400, "nested too deeply"),
                              (b'{"messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "nested too deeply"),
                              (b'{"prompt": "' + b"x" * (1 << 20) + b'"}', 413, "over 1048576 bytes")):
        got, reply = request(server, "POST", "/v1/completions", raw=raw)
        assert got == status and says in reply["error"]["message"], (got, reply)
        assert set(reply["error"]) == {"message", "type", "param", "code"}
        assert reply["error"]["type"] == "invalid_request_error"
    assert request(server, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200


def test_a_prompt_longer_than_the_context_is_reported_in_usage(server):
    long_text = "Once upon a time there was a cat. " * 60  # far over the test model's 128-token context
    status, reply = request(server, "POST", "/v1/completions", {"prompt": long_text, "max_tokens": 2})
    use = reply["usage"]
    assert status == 200 and use["prompt_tokens_dropped"] > 0
    assert 0 < use["prompt_tokens"] - use["prompt_tokens_dropped"] < 128
    events = stream_events(server, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": long_text}], "max_tokens": 2, "stream": True,
        "stream_options": {"include_usage": True}})
    assert events[-2]["usage"]["prompt_tokens_dropped"] > 0
    short = request(server, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[1]
    assert short["usage"]["prompt_tokens_dropped"] == 0


def test_favicon_and_the_pages_slider_bounds(server):
    from llm_core.inference import api

    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/favicon.ico")
    resp = conn.getresponse()
    icon = resp.read()
    assert resp.status == 200 and resp.getheader("content-type") == "image/x-icon"
    assert icon[:4] == b"\x00\x00\x01\x00" and icon[22:30] == b"\x89PNG\r\n\x1a\n"  # an ICO holding a PNG
    status, page = request(server, "GET", "/")
    assert status == 200 and '<link rel="icon" href="/favicon.ico">' in page and "%MAX_" not in page
    assert f'id="max_tokens" type="range" min="1" max="{api.MAX_TOKENS}"' in page
    assert 'id="top_k" type="range" min="0" max="512"' in page  # the test tokenizer's vocabulary, under 1000


def test_one_access_log_line_per_request(server, caplog):
    caplog.set_level(logging.INFO, logger="llm_core.serve.access")
    request(server, "GET", "/health")
    request(server, "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                      "max_tokens": 3, "temperature": 0})
    stream_events(server, "/v1/completions", {"prompt": "Once", "max_tokens": 4, "stream": True})
    request(server, "POST", "/v1/chat/completions", {"messages": [], "max_tokens": 3})
    deadline = time.monotonic() + 10
    while len(caplog.records) < 4:  # a line is written once its response has ended
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "llm_core.serve.access"]
    assert len(lines) == 4, lines
    pattern = r'^127\.0\.0\.1 "(GET|POST) (/\S*)" (\d{3})( prompt_tokens=\d+ completion_tokens=(\d+))? \d+\.\d{3}s$'
    parsed = [re.match(pattern, line) for line in lines]
    assert all(parsed), lines
    assert [(m[1], m[2], m[3]) for m in parsed] == [("GET", "/health", "200"),
                                                   ("POST", "/v1/chat/completions", "200"),
                                                   ("POST", "/v1/completions", "200"),
                                                   ("POST", "/v1/chat/completions", "400")]
    assert parsed[0][4] is None and parsed[3][4] is None  # tokens only where a completion ran
    assert 1 <= int(parsed[1][5]) <= 3 and 1 <= int(parsed[2][5]) <= 4


def test_a_bug_in_a_handler_gets_a_500_in_openais_shape(served_models, monkeypatch):
    from llm_core.inference import server as server_module

    app = create_app(load(served_models / "sft", device="cpu"), max_batch=1)

    def broken(*args):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(server_module, "parse", broken)
    logging.getLogger("uvicorn.error").disabled = True  # its traceback of the simulated bug is expected noise
    try:
        with running(app) as base:
            status, reply = request(base, "POST", "/v1/completions", {"prompt": "hi"})
            assert status == 500 and reply["error"]["type"] == "server_error"
            assert request(base, "GET", "/health")[0] == 200
    finally:
        logging.getLogger("uvicorn.error").disabled = False


def _serve(model, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "llm_core.inference.server", "--model", str(model), *args],
                            cwd=ROOT, env=project_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_llm_serve_checks_the_port_before_the_banner(served_models, capsys):
    from llm_core.inference.server import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            main(["--model", str(served_models / "sft"), "--port", str(port)])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and out == "", out  # no banner
    assert err.splitlines() == [
        f"llm-serve: error: port {port} on 127.0.0.1 is already in use (another llm-serve, or another server)",
        f"llm-serve: fix: stop that one or pass another port, e.g. --port {port + 1}",
        "(LLM_CORE_DEBUG=1 shows the traceback)"], err


def test_llm_serve_logs_one_line_per_request_on_stdout(served_models):
    proc = _serve(served_models / "sft", "--port", "0")  # any free port: the banner names it
    try:
        banner = proc.stdout.readline()
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/ \(chat page\)", banner)
        assert found and banner.startswith("llm-serve: sft (chat model)"), banner + proc.stderr.read()
        base = found[1]
        deadline = time.monotonic() + 60
        while True:
            try:
                request(base, "GET", "/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "llm-serve did not start"
                time.sleep(0.1)
        request(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        first, second = proc.stdout.readline(), proc.stdout.readline()
        assert '"GET /health" 200' in first
        assert re.search(r'"POST /v1/completions" 200 prompt_tokens=\d+ completion_tokens=\d \d+\.\d{3}s$',
                         second.rstrip()), second
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "Traceback" not in proc.stderr.read()
