"""The OpenAI-compatible server, tested with real clients over 127.0.0.1: the official `openai` client, plain HTTP,
32 concurrent streams, and every kind of bad request."""

from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from llm_core.inference.loading import load
from llm_core.inference.server import create_app
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
    ({"stream": "yes"}, 400, "stream"),
    ({"model": "gpt-9"}, 404, "model"),
])
def test_bad_chat_requests_get_4xx_naming_the_field(server, body, status, param):
    full = {"model": "sft", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    full.update(body)
    got, reply = request(server, "POST", "/v1/chat/completions", full)
    assert got == status, reply
    assert reply["error"]["param"] == param and param.split("[")[0] in reply["error"]["message"]


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


def test_full_queue_answers_503(served_models):
    loaded = load(served_models / "sft", device="cpu")
    with running(create_app(loaded, max_batch=1, queue_size=1)) as base:
        # a prompt whose greedy continuation runs to the token limit keeps the two requests below in the server
        for prompt in ("hi", "a", "Once", "The", "One day", "Lily", "x", "cat", "Then", "It"):
            body = {"prompt": prompt, "max_tokens": 300, "temperature": 0}
            if request(base, "POST", "/v1/completions", body)[1]["choices"][0]["finish_reason"] == "length":
                break
        else:
            pytest.fail("no prompt runs to the limit with this test model")
        body["max_tokens"] = 4000
        body["stream"] = True
        host, port = base.removeprefix("http://").split(":")
        conns = []
        for _ in range(2):  # one holds the only row, one waits in the queue
            c = http.client.HTTPConnection(host, int(port), timeout=60)
            c.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                      headers={"Content-Type": "application/json"})
            conns.append(c)
        deadline = time.monotonic() + 30
        while (lambda h: h["active"] + h["waiting"])(request(base, "GET", "/health")[1]) < 2:
            assert time.monotonic() < deadline, "the two requests never reached the server"
            time.sleep(0.02)
        status, reply = request(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 503 and "capacity" in reply["error"]["message"]
        for c in conns:
            c.close()
        # clients that hang up free their row and their queue place
        while (lambda h: h["active"] + h["waiting"])(request(base, "GET", "/health")[1]) > 0:
            assert time.monotonic() < deadline + 30, "a closed stream kept decoding"
            time.sleep(0.05)
        assert request(base, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 2})[0] == 200


def test_llm_serve_without_a_model_says_which_stage_to_run(tmp_path, capsys):
    from llm_core.inference.server import main

    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "sft")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "llm-serve: error: no model in" in err and "dvc repro sft" in err


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
