"""Serving under load: aggregate tokens/s of `llm-serve` with 1 and with 16 concurrent streaming clients, and the
time to first token (p50 / p95).

The server runs as its own process (as users run it) on 127.0.0.1 with a tiny-preset model of random weights and a
throwaway tokenizer trained here; clients are asyncio tasks in this process sending streaming `/v1/completions`
requests and reading every event. With one client each request decodes alone; with 16, continuous batching decodes
them together, so the ratio is the gain of batching on the whole serving path (HTTP, JSON and SSE included). Tokens
are counted from the usage each stream reports. Rounds alternate the two loads; each figure is the best round. The
last line is JSON: `ratio_16_vs_1` (target >= 4), `ttft_p50_s`, `ttft_p95_s`.

    python bench/serve_load.py [--requests 8] [--max-tokens 64] [--threads 1] [--rounds 3]
    python bench/serve_load.py --smoke    # 2 clients, 1 request of 4 tokens each, 1 round: proves the command
"""

from __future__ import annotations

import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from llm_core.config import ModelConfig  # noqa: E402
from llm_core.data import synthetic  # noqa: E402
from llm_core.data.tokenizer import train_tokenizer  # noqa: E402
from llm_core.model.io import write_model  # noqa: E402
from llm_core.model.transformer import Transformer  # noqa: E402

PROMPTS = ["Once upon a time", "One day, a little", "The cat", "Lily and her dog", "It was a sunny day"]


def build_models(root: Path, vocab: int, num_docs: int = 2000) -> Path:
    texts, _ = synthetic.generate_stories(7, num_docs)
    tok = train_tokenizer(texts, vocab, root / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(preset="tiny", tie_embeddings=False).resolved(tok.vocab_size)
    write_model(root / "sft", Transformer(cfg))
    return root / "sft"


async def one_stream(port: int, prompt: str, max_tokens: int, seed: int) -> tuple[float, float, int]:
    """(seconds to first text, seconds in all, completion tokens) of one streamed completion."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0, "top_k": 50, "seed": seed,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    raw, first, tokens, done = b"", None, 0, False
    while chunk := await reader.read(65536):
        raw += chunk
        # every event is one HTTP chunk, so "data: ...\n\n" never straddles the chunked framing
        while (start := raw.find(b"data: ")) >= 0 and (end := raw.find(b"\n\n", start)) >= 0:
            payload, raw = raw[start + 6:end], raw[end + 2:]
            if payload == b"[DONE]":
                done = True
                continue
            event = json.loads(payload)
            if event["choices"] and event["choices"][0]["text"] and first is None:
                first = time.perf_counter() - t0
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    writer.close()
    assert done, "a stream ended without [DONE]"
    total = time.perf_counter() - t0
    return (first if first is not None else total), total, tokens


def load_phase(port: int, clients: int, requests: int, max_tokens: int) -> tuple[float, list[float]]:
    """Aggregate tokens/s and every request's time to first token: `clients` concurrent clients, `requests` each
    one after the other (asyncio in this process: cheap clients leave the CPU to the server)."""
    async def client(c: int) -> list[tuple[float, float, int]]:
        return [await one_stream(port, PROMPTS[(c + r) % len(PROMPTS)], max_tokens, c * 1000 + r)
                for r in range(requests)]

    async def run() -> list[list[tuple[float, float, int]]]:
        return await asyncio.gather(*(client(c) for c in range(clients)))

    t0 = time.perf_counter()
    results = [x for part in asyncio.run(run()) for x in part]
    wall = time.perf_counter() - t0
    return sum(r[2] for r in results) / wall, [r[0] for r in results]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="the server's CPU threads")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="2 clients, 1 request of 4 tokens each, 1 round, a "
                    "tokenizer of 300 ids trained on 200 stories (seconds; the figures mean nothing)")
    args = ap.parse_args()
    num_docs = 2000
    if args.smoke:
        args.clients, args.requests, args.max_tokens, args.rounds, args.vocab, num_docs = 2, 1, 4, 1, 300, 200
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_models(Path(tmp), args.vocab, num_docs)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "llm_core.inference.server", "--model", str(model_dir),
                                   "--port", str(port), "--max-batch", str(args.clients),
                                   "--threads", str(args.threads)],
                                  cwd=os.path.dirname(_here), stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/health")
                    break
                except OSError:
                    assert server.poll() is None and time.monotonic() < deadline, "llm-serve did not start"
                    time.sleep(0.2)
            load_phase(port, 2, 1, 8)  # warm-up
            # rounds alternate the two loads, so a burst of other jobs on the machine hits both alike; best of rounds
            ones, manys, one_ttft, many_ttft = [], [], [], []
            for _ in range(args.rounds):
                tps, ttft = load_phase(port, 1, args.requests, args.max_tokens)
                ones.append(tps)
                one_ttft += ttft
                tps, ttft = load_phase(port, args.clients, args.requests, args.max_tokens)
                manys.append(tps)
                many_ttft += ttft
            one_tps, many_tps = max(ones), max(manys)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"\nllm-serve, tiny preset (random weights, vocab {args.vocab}), {args.threads} server thread(s), "
          f"{args.requests} streamed requests per client, <= {args.max_tokens} tokens each, best of {args.rounds} "
          "rounds (TTFT over all)")
    print(f"{'clients':<10}{'tokens/s':>10}{'TTFT p50 (ms)':>16}{'TTFT p95 (ms)':>16}")
    for n, tps, ttft in ((1, one_tps, one_ttft), (args.clients, many_tps, many_ttft)):
        print(f"{n:<10}{tps:>10.0f}{pct(ttft, 50) * 1e3:>16.1f}{pct(ttft, 95) * 1e3:>16.1f}")
    print(f"ratio {args.clients} clients / 1 client: {many_tps / one_tps:.2f}x")
    print(json.dumps({f"ratio_{args.clients}_vs_1": round(many_tps / one_tps, 2),
                      "tokens_per_sec_1": round(one_tps, 1), f"tokens_per_sec_{args.clients}": round(many_tps, 1),
                      "ttft_p50_s": round(pct(many_ttft, 50), 4), "ttft_p95_s": round(pct(many_ttft, 95), 4),
                      "ttft_p50_s_1_client": round(pct(one_ttft, 50), 4), "threads": args.threads}))


if __name__ == "__main__":
    main()
