"""The HTTP server under load on loopback: what the HTTP layer costs, and 64 clients at once.

Why: a served engine's users see the server, not the engine. This starts
``pali-engine serve`` on the bundled model in a process of its own (on
127.0.0.1, a free port) and, from this process, measures

* the HTTP layer's cost: one client (httpx, as the ``openai`` client uses),
  one request at a time, ``POST /v1/generate`` and non-streamed ``POST
  /v1/chat/completions`` with the image as a PNG ``data:`` URL, against the
  same request in this process (the same threads): the same PNG bytes
  decoded with PIL, as a user holding them would, then ``Engine.generate``
  with the same prompt and options; and ``GET /health``, which does no work,
  for what the round trip alone costs. Two layouts: ``blocks`` (``--block``
  requests of one kind one after the other, as a client that sends its next
  request when the last is answered, then the next kind) and ``alternated``
  (the kinds alternate request by request, so that every HTTP request finds
  the server's process asleep while the in-process engine ran). Either way
  the kinds take turns, so that a slower spell of the machine falls on all
  of them. Reported: each median and the HTTP medians over the in-process
  one;
* a bounded load: ``--clients`` concurrent clients (asyncio tasks sharing one
  connection pool) each sending ``--per-client`` streamed chat completions
  (``stream: true``, OpenAI's server-sent events) one after the other;
  reported: requests per second, median and p99 time to the first text
  chunk and to the last byte, and every failure by kind (HTTP status,
  connection error, an answer without ``[DONE]``). A request that fails is
  not retried: the count is what a client would see.

    python -m pali_engine.benchmarks.http_load [--clients 64] [--per-client 8] [--sequential 64]
        [--block 8] [--threads N] [--shield NICE] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

from .caption_latency import _requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def start_server(port: int, threads: Optional[int], log) -> subprocess.Popen:
    import httpx

    command = [sys.executable, "-m", "pali_engine.cli", "serve", "--port", str(port), "--log-level", "warning"]
    if threads:
        command += ["--threads", str(threads)]
    server = subprocess.Popen(command)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                log(f"[http] server up on port {port}")
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the server did not answer /health within 120 s")


def percentile(values: List[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if values else None


def chat_body(url: str, prompt: str, stream: bool) -> Dict:
    return {"model": "pali-default", "stream": stream, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": prompt}]}]}


SEQUENTIAL_KINDS = ("in_process", "generate", "chat", "health")


def sequential_overhead(base: str, requests, pngs: List[bytes], urls: List[str], threads: Optional[int],
                        n: int, block: int) -> Dict:
    """One request at a time, in blocks of ``block`` of each kind and alternated kind by kind."""
    import httpx
    from PIL import Image

    from pali_engine import Engine

    engine = Engine.load(threads=threads)
    texts = [engine.generate(Image.open(io.BytesIO(png)), prompt).text for png, (_, prompt) in zip(pngs, requests)]

    def one(client, kind: str, k: int) -> float:
        prompt = requests[k][1]
        start = time.perf_counter()
        if kind == "in_process":
            text = engine.generate(Image.open(io.BytesIO(pngs[k])), prompt).text
        elif kind == "generate":
            answer = client.post(f"{base}/v1/generate", json={"image": urls[k], "prompt": prompt})
        elif kind == "chat":
            answer = client.post(f"{base}/v1/chat/completions", json=chat_body(urls[k], prompt, False))
        else:
            answer = client.get(f"{base}/health")
        elapsed = (time.perf_counter() - start) * 1e3
        if kind != "in_process":
            answer.raise_for_status()
            text = {"generate": lambda a: a["text"], "chat": lambda a: a["choices"][0]["message"]["content"],
                    "health": lambda a: texts[k]}[kind](answer.json())
        if text != texts[k]:
            raise RuntimeError(f"request {k} ({kind}): {text!r}, not the engine's {texts[k]!r}")
        return elapsed

    result: Dict = {"requests": n, "block": block}
    with httpx.Client(timeout=60) as client:
        for layout, size in (("blocks", block), ("alternated", 1)):
            times: Dict[str, List[float]] = {kind: [] for kind in SEQUENTIAL_KINDS}
            for kind in SEQUENTIAL_KINDS:  # warm-up
                one(client, kind, 0)
            for first in range(0, n, size):
                for kind in SEQUENTIAL_KINDS:
                    for i in range(first, min(first + size, n)):
                        times[kind].append(one(client, kind, i % len(requests)))
            local = percentile(times["in_process"], 50)
            row = {f"{kind}_p50_ms": percentile(t, 50) for kind, t in times.items()}
            row.update({f"{kind}_p99_ms": percentile(t, 99) for kind, t in times.items()})
            row.update({f"{kind}_over_in_process_p50_ms": row[f"{kind}_p50_ms"] - local
                        for kind in ("generate", "chat")})
            result[layout] = row
    return result


async def _load(base: str, prompts, urls, clients: int, per_client: int) -> Dict:
    import httpx

    ttft, latency = [], []
    failures: Dict[str, int] = {}

    def failed(kind: str) -> None:
        failures[kind] = failures.get(kind, 0) + 1

    async def one(client, k: int) -> None:
        body = chat_body(urls[k % len(urls)], prompts[k % len(prompts)], True)
        start = time.perf_counter()
        first = None
        done = False
        try:
            async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as answer:
                if answer.status_code != 200:
                    failed(f"HTTP {answer.status_code}")
                    await answer.aread()
                    return
                async for line in answer.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: "):]
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter()
        except httpx.HTTPError as error:
            failed(type(error).__name__)
            return
        end = time.perf_counter()
        if not done:
            failed("no [DONE]")
            return
        latency.append((end - start) * 1e3)
        ttft.append(((first or end) - start) * 1e3)

    async def client_task(client, c: int) -> None:
        for j in range(per_client):
            await one(client, c * per_client + j)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120), limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_task(client, c) for c in range(clients)))
        wall = time.perf_counter() - start
    total = clients * per_client
    return {"clients": clients, "requests": total, "completed": len(latency), "wall_s": wall,
            "requests_per_s": len(latency) / wall, "ttft_p50_ms": percentile(ttft, 50),
            "ttft_p99_ms": percentile(ttft, 99), "latency_p50_ms": percentile(latency, 50),
            "latency_p99_ms": percentile(latency, 99), "failures": failures,
            "server_errors": sum(n for kind, n in failures.items() if kind.startswith("HTTP 5"))}


def measure(clients: int = 64, per_client: int = 8, sequential: int = 64, threads: Optional[int] = None,
            log=None, block: int = 8) -> Dict:
    from pali_engine import Engine

    log = log or (lambda s: None)
    image_size = Engine.load(threads=1).config["image_size"]
    requests = _requests(max(sequential, 32), image_size, 0)
    pngs = [png_bytes(image) for image, _ in requests]
    urls = [png_data_url(png) for png in pngs]
    prompts = [prompt for _, prompt in requests]
    port = free_port()
    server = start_server(port, threads, log)
    base = f"http://127.0.0.1:{port}"
    try:
        log("[http] one request at a time, HTTP and in-process alternated ...")
        overhead = sequential_overhead(base, requests, pngs, urls, threads, sequential, block)
        log(f"[http] {clients} clients x {per_client} streamed chat completions ...")
        load = asyncio.run(_load(base, prompts, urls, clients, per_client))
    finally:
        server.terminate()
        server.wait(30)
    return {"benchmark": "http_load", "threads": threads or os.cpu_count(), "sequential": overhead, "load": load}


def table(result: Dict) -> str:
    s, ld = result["sequential"], result["load"]
    return "\n".join([
        *[f"one request at a time ({s['requests']}, {layout}): in-process p50 {r['in_process_p50_ms']:.2f} ms; "
          f"/v1/generate p50 {r['generate_p50_ms']:.2f} ms (+{r['generate_over_in_process_p50_ms']:.2f} ms); "
          f"/v1/chat/completions p50 {r['chat_p50_ms']:.2f} ms (+{r['chat_over_in_process_p50_ms']:.2f} ms); "
          f"GET /health p50 {r['health_p50_ms']:.2f} ms"
          for layout, r in ((layout, s[layout]) for layout in ("blocks", "alternated"))],
        f"{ld['clients']} clients, {ld['requests']} streamed requests: {ld['completed']} completed, "
        f"{ld['requests_per_s']:.1f} requests/s, time to first token p50 {ld['ttft_p50_ms']:.1f} ms / p99 "
        f"{ld['ttft_p99_ms']:.1f} ms, latency p50 {ld['latency_p50_ms']:.1f} ms / p99 {ld['latency_p99_ms']:.1f} ms, "
        f"failures {ld['failures'] or 'none'}, 5xx {ld['server_errors']}"])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pali_engine.benchmarks.http_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--per-client", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=64)
    parser.add_argument("--block", type=int, default=8, help="requests of one kind in a row (the blocks layout)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shield", type=int, default=None, metavar="NICE",
                        help="run in an autogroup of this nice value (e.g. -15), away from other tenants' load")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args(argv)
    if args.shield is not None:
        from .harness import shield

        shield(args.shield)
    result = measure(args.clients, args.per_client, args.sequential, args.threads,
                     log=lambda s: print(s, file=sys.stderr, flush=True), block=args.block)
    from .harness import report

    report(result, "http_load", argv, table(result), args.json)
    return 0 if result["load"]["completed"] == result["load"]["requests"] else 1


if __name__ == "__main__":
    sys.exit(main())
