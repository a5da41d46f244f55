"""The HTTP server (pali_engine/server, ``pali-engine serve``) from the outside.

A real uvicorn server runs in a thread on a free local port, with the bundled
model; the official ``openai`` client is the client of the chat API and httpx of
the rest. Covered: answers equal to the engine's own, streaming in OpenAI's
chunk format, the options' mapping, every kind of bad request (a 4xx in
OpenAI's error shape, and the server answering right afterwards), image URLs
against a local http server, a full server's 429, a client that disconnects
mid-stream (the generation stops), concurrent requests, masks with a mask
decoder, the metrics, the command itself, ``Engine.agenerate`` /
``Engine.astream``, and the playground page in a headless browser when
chromium and chromedriver are installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from pali_engine import Engine  # noqa: E402
from pali_engine.generation import OPTION_NAMES, GenerationResult  # noqa: E402
from pali_engine.segmentation import DECODER_SHAPES, MaskDecoder, parse_segmentation  # noqa: E402
from pali_engine.server import ImageLimits, ServerSettings, create_app  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
EXAMPLE = REPOSITORY / "examples" / "shapes.png"
CAPTION = "a blue circle and a red star"
#: Each call, connection or wait of these tests is bounded by this many seconds.
TIMEOUT = 20


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode("ascii")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


EXAMPLE_BYTES = EXAMPLE.read_bytes()
EXAMPLE_URL = data_url(EXAMPLE_BYTES)


def chat_messages(prompt: str, image: str = EXAMPLE_URL) -> list:
    return [{"role": "user", "content": [{"type": "text", "text": prompt},
                                         {"type": "image_url", "image_url": {"url": image}}]}]


@contextlib.contextmanager
def running_server(engine, settings: ServerSettings, mask_decoder=None):
    """A uvicorn server for ``engine`` on a free port of 127.0.0.1, in a thread; yields its URL; always stopped."""
    app = create_app(engine, settings, mask_decoder)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


class ImageHost(http.server.BaseHTTPRequestHandler):
    """A local http server of images: the example, an oversized body, a slow one, a 404 and a redirect."""

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        if self.path == "/shapes.png":
            self._send(200, EXAMPLE_BYTES)
        elif self.path == "/big.png":
            self._send(200, b"\x89PNG" + b"\0" * 300_000)
        elif self.path == "/slow.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(EXAMPLE_BYTES)))
            self.end_headers()
            self.wfile.write(EXAMPLE_BYTES[:100])
            self.wfile.flush()
            time.sleep(3)
        elif self.path == "/elsewhere.png":
            self.send_response(302)
            self.send_header("Location", "http://example.com/shapes.png")
            self.end_headers()
        else:
            self._send(404, b"not here")

    def _send(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def engine():
    return Engine.load(threads=1)


@pytest.fixture(scope="module")
def image_host():
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    host.daemon_threads = True
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{host.server_address[1]}"
    host.shutdown()
    host.server_close()


@pytest.fixture(scope="module")
def server(engine):
    limits = ImageLimits(max_bytes=200_000, max_pixels=1_000_000, url_hosts=frozenset({"127.0.0.1"}),
                         url_timeout_s=1.0)
    settings = ServerSettings(parallel=2, max_batch=4, max_queue=32, max_request_bytes=1_000_000, images=limits)
    with running_server(engine, settings) as url:
        yield url


@pytest.fixture(scope="module")
def small_server(engine):
    """One engine call at a time and one waiting: fills up at once. Caps high enough for long runs."""
    settings = ServerSettings(parallel=1, max_batch=1, max_queue=1, max_new_tokens_limit=20_000,
                              max_beams=10 ** 9)
    with running_server(engine, settings) as url:
        yield url


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server, timeout=TIMEOUT) as c:
        yield c


def openai_client(url: str):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def sse_events(response) -> list:
    """The data: payloads of a server-sent event stream, JSON decoded ("[DONE]" kept as is)."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def metric(text: str, name: str) -> float:
    """The value of a metric line without labels, or the sum over a metric's labelled lines."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    assert values, f"no {name} in the metrics"
    return sum(values)


def wait_until(condition, what: str, timeout: float = TIMEOUT, every: float = 0.02):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def assert_error(response, status: int, fragment: str, param=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert fragment in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param, error


# ---- the routes that describe the server ----

def test_health_models_and_options(client):
    assert client.get("/health").json() == {"status": "ok", "model": "pali-default", "active": 0, "queued": 0}
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["pali-default"]
    card = client.get("/v1/models/pali-default").json()
    assert card["object"] == "model" and card["architecture"] == "pali" and card["image_size"] == 64
    assert_error(client.get("/v1/models/gpt-4"), 404, "serves 'pali-default'", param="model")
    options = client.get("/v1/options").json()
    assert tuple(o["name"] for o in options["options"]) == OPTION_NAMES
    assert options["limits"]["max_image_bytes"] == 200_000


# ---- chat completions, with the official client ----

def test_chat_completion_with_the_openai_client(server, engine):
    reply = openai_client(server).chat.completions.create(model="pali-default", messages=chat_messages("caption en"))
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == "pali-default" and abs(reply.created - time.time()) < 60
    [choice] = reply.choices
    assert choice.message.role == "assistant" and choice.message.content == CAPTION
    assert choice.finish_reason == "stop"
    expected = engine.generate(str(EXAMPLE), "caption en")
    assert reply.usage.completion_tokens == len(expected.tokens)
    assert reply.usage.prompt_tokens == 64 + len(engine.tokenizer.encode("caption en"))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_streaming_with_the_openai_client(server):
    chunks = list(openai_client(server).chat.completions.create(
        model="pali-default", messages=chat_messages("caption en"), stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in with_choices) == CAPTION
    assert len(with_choices) > 3, "the answer came in one piece, not streamed"
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 9


def test_chat_streaming_ends_with_done(client):
    body = {"model": "pali-default", "messages": chat_messages("caption fr"), "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    assert events[-1] == "[DONE]"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == "un cercle bleu et une étoile rouge"


def test_chat_options_map_onto_the_engine(server, engine):
    chat = openai_client(server).chat.completions
    short = chat.create(model="m", messages=chat_messages("caption en"), max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    assert short.choices[0].message.content == engine.tokenizer.decode(
        engine.generate(str(EXAMPLE), "caption en", max_new_tokens=3).tokens)
    cut = chat.create(model="m", messages=chat_messages("caption en"), stop=[" red", "zzz"])
    assert cut.choices[0].message.content == "a blue circle and a" and cut.choices[0].finish_reason == "stop"
    streamed_cut = chat.create(model="m", messages=chat_messages("caption en"), stop=" red", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed_cut if c.choices) == "a blue circle and a"
    greedy = chat.create(model="m", messages=chat_messages("caption en"), temperature=0)
    assert greedy.choices[0].message.content == CAPTION
    # temperature > 0 samples (n answers, the same for the same seed); extra_body carries engine options.
    hot = dict(model="m", messages=chat_messages("caption en"), temperature=5.0, seed=7, n=3)
    first, again = chat.create(**hot), chat.create(**hot)
    assert len(first.choices) == 3 and [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    sampled = engine.generate(str(EXAMPLE), "caption en", do_sample=True, temperature=5.0, top_k=0, seed=7,
                              num_return_sequences=3)
    assert [c.message.content for c in first.choices] == [r.text for r in sampled]
    beams = chat.create(model="m", messages=chat_messages("caption en"), n=2, extra_body={"num_beams": 3})
    expected = engine.generate(str(EXAMPLE), "caption en", num_beams=3, num_return_sequences=2)
    assert [c.message.content for c in beams.choices] == [r.text for r in expected]


def test_chat_prompt_and_image_come_from_the_user_messages(client):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": EXAMPLE_URL}},
                                     {"type": "text", "text": "caption en"}]},
        {"role": "assistant", "content": CAPTION},
        {"role": "user", "content": "answer en how many circles?"},
    ]
    reply = client.post("/v1/chat/completions", json={"model": "m", "messages": messages}).json()
    assert reply["choices"][0]["message"]["content"] == "1"
    # A bare image_url string, the text split into parts.
    parts = [{"type": "text", "text": "caption"}, {"type": "text", "text": "de"},
             {"type": "image_url", "image_url": EXAMPLE_URL}]
    reply = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}]}).json()
    assert reply["choices"][0]["message"]["content"] == "ein blauer Kreis und ein roter Stern"


# ---- the engine's own route ----

def test_generate_returns_the_engine_s_answer_and_objects(client, engine):
    picture = Image.open(EXAMPLE).convert("RGB").resize((256, 256))
    answer = client.post("/v1/generate", json={"image": data_url(png_bytes(picture)),
                                               "prompt": "detect circle ; star"}).json()
    expected = engine.generate(picture, "detect circle ; star")
    assert answer["text"] == expected.text and answer["tokens"] == expected.tokens
    assert answer["score"] == pytest.approx(expected.score, abs=1e-4)
    assert answer["finish_reason"] == "stop" and answer["image_size"] == [256, 256]
    assert [o["label"] for o in answer["objects"]] == ["circle", "star"]
    for got, want in zip(answer["objects"], expected.objects):
        assert got["box"] == pytest.approx(want.box, abs=0.01) and got["mask"] is None
    assert {"queue_ms", "vision_ms", "first_token_ms", "total_ms", "batch_size"} <= set(answer["timings"])
    assert answer["usage"]["completion_tokens"] == len(expected.tokens)
    # Bare base64, options by their engine names, several sequences; "model" is taken and ignored.
    answer = client.post("/v1/generate", json={"image": base64.b64encode(EXAMPLE_BYTES).decode(),
                                               "model": "pali-default", "prompt": "caption en", "num_beams": 3,
                                               "num_return_sequences": 2}).json()
    expected = engine.generate(str(EXAMPLE), "caption en", num_beams=3, num_return_sequences=2)
    assert [s["text"] for s in answer["sequences"]] == [r.text for r in expected]
    assert answer["text"] == expected[0].text


def test_a_photo_is_turned_upright_by_its_exif_orientation(client, engine):
    upright = Image.open(EXAMPLE).convert("RGB").crop((0, 0, 32, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left: shown turned back a quarter right
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", exif=exif, quality=95)
    answer = client.post("/v1/generate", json={"image": data_url(buffer.getvalue(), "image/jpeg"),
                                               "prompt": "caption en"}).json()
    assert answer["image_size"] == [32, 64]


def test_generate_streams_text_then_the_objects(client):
    body = {"image": EXAMPLE_URL, "prompt": "detect circle ; star", "stream": True}
    with client.stream("POST", "/v1/generate", json=body) as response:
        assert response.status_code == 200
        events = sse_events(response)
    texts = [e["text"] for e in events if e["type"] == "text"]
    done = events[-1]
    assert done["type"] == "done" and "".join(texts) == done["text"] and len(texts) > 3
    assert [o["label"] for o in done["objects"]] == ["circle", "star"]
    assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] == 15
    assert {"queue_ms", "first_token_ms", "total_ms"} <= set(done["timings"])


# ---- bad requests ----

def _png_of(width: int, height: int) -> str:
    return data_url(png_bytes(Image.new("RGB", (width, height), (200, 200, 200))))


TRUNCATED_PNG = data_url(EXAMPLE_BYTES[: len(EXAMPLE_BYTES) // 2])
GOOD = {"image": EXAMPLE_URL, "prompt": "caption en"}

BAD_GENERATE = [
    ("malformed JSON", b'{"image": ', 400, "not valid JSON", None),
    ("a list, not an object", b"[1, 2]", 400, "must be a JSON object", None),
    ("NaN", b'{"image": "x", "prompt": "caption en", "temperature": NaN}', 400, "not valid JSON", None),
    ("invalid UTF-8", b'{"prompt": "\xff"}', 400, "not valid JSON", None),
    ("no image", {"prompt": "caption en"}, 400, "needs an image", "image"),
    ("no prompt", {"image": EXAMPLE_URL}, 400, "needs a prompt", "prompt"),
    ("not an image", {**GOOD, "image": data_url(b"hello, world")}, 400, "cannot be read", "image"),
    ("truncated image", {**GOOD, "image": TRUNCATED_PNG}, 400, "cannot be", "image"),
    ("not base64", {**GOOD, "image": "data:image/png;base64,@@@@"}, 400, "not valid base64", "image"),
    ("not an image type", {**GOOD, "image": "data:text/plain;base64,aGVsbG8="}, 400, "not an image", "image"),
    ("image not a string", {**GOOD, "image": 42}, 400, "non-empty string", "image"),
    ("over the byte limit", {**GOOD, "image": data_url(os.urandom(300_000))}, 413, "--max-image-bytes", "image"),
    ("over the pixel limit", {**GOOD, "image": _png_of(2000, 1000)}, 413, "--max-image-pixels", "image"),
    ("prompt too long", {**GOOD, "prompt": "caption " * 40}, 400, "takes at most 32", "prompt"),
    ("prompt not a string", {**GOOD, "prompt": ["caption en"]}, 400, "must be a string", "prompt"),
    ("unknown option", {**GOOD, "beams": 3}, 400, "unknown generation option(s): beams", "beams"),
    ("bad value", {**GOOD, "temperature": -1}, 400, "temperature must be >= 0", "temperature"),
    ("bad type", {**GOOD, "max_new_tokens": "many"}, 400, "max_new_tokens must be an integer", "max_new_tokens"),
    ("out of range", {**GOOD, "top_p": 2}, 400, "top_p must be in (0, 1]", "top_p"),
    ("beams past the options' rules", {**GOOD, "num_return_sequences": 2}, 400, "num_return_sequences",
     "num_return_sequences"),
    ("over the server's token cap", {**GOOD, "max_new_tokens": 5000}, 400, "--max-new-tokens-limit",
     "max_new_tokens"),
    ("stream not a boolean", {**GOOD, "stream": "yes"}, 400, "stream must be true or false", "stream"),
    ("a stream of several sequences", {**GOOD, "stream": True, "num_beams": 2, "num_return_sequences": 2}, 400,
     "num_return_sequences must be 1", "num_return_sequences"),
    ("a body over the limit", {**GOOD, "prompt": "x" * 1_100_000}, 413, "--max-request-bytes", None),
]


@pytest.mark.parametrize("body, status, fragment, param", [case[1:] for case in BAD_GENERATE],
                         ids=[case[0] for case in BAD_GENERATE])
def test_a_bad_generate_request_is_a_4xx_in_openai_s_shape(client, body, status, fragment, param):
    if isinstance(body, bytes):
        response = client.post("/v1/generate", content=body, headers={"Content-Type": "application/json"})
    else:
        response = client.post("/v1/generate", json=body)
    assert_error(response, status, fragment, param)


def _chat(messages=None, **fields):
    return {"model": "pali-default", "messages": chat_messages("caption en") if messages is None else messages,
            **fields}


BAD_CHAT = [
    ("no messages", {"model": "m"}, 400, "messages must be a non-empty list", "messages"),
    ("the last message is not the user's",
     _chat(chat_messages("caption en") + [{"role": "assistant", "content": "a"}]), 400, "must be the user's", None),
    ("no image", _chat([{"role": "user", "content": "caption en"}]), 400, "has no image", "messages"),
    ("two images", _chat([{"role": "user", "content": chat_messages("caption en")[0]["content"] * 2}]), 400,
     "one image per request", None),
    ("an audio part", _chat([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]), 400,
     "text or image_url part", None),
    ("a bare base64 image", _chat(chat_messages("caption en", base64.b64encode(EXAMPLE_BYTES).decode())), 400,
     "data: URL", "messages"),
    ("an unknown field", _chat(frequency="high"), 400, "unrecognized request argument: frequency", "frequency"),
    ("tools", _chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400, "does not call tools", "tools"),
    ("logprobs", _chat(logprobs=True), 400, "log-probabilities", "logprobs"),
    ("a JSON response format", _chat(response_format={"type": "json_object"}), 400, "plain text",
     "response_format"),
    ("n > 1 without sampling", _chat(n=2), 400, "n > 1 needs sampling", "n"),
    ("a stream of n > 1", _chat(n=2, temperature=1, stream=True), 400, "takes n = 1", "n"),
    ("a bad max_tokens", _chat(max_tokens=0), 400, "max_tokens must be between 1", "max_tokens"),
    ("over the token cap", _chat(max_tokens=100_000), 400, "max_tokens is 100000", "max_tokens"),
    ("a bad temperature", _chat(temperature="hot"), 400, "temperature must be", "temperature"),
    ("a bad stop", _chat(stop=[1, 2]), 400, "stop must be a string", "stop"),
    ("too many stops", _chat(stop=list("abcde")), 400, "at most 4", "stop"),
    ("an image URL of a host not allowed", _chat(chat_messages("caption en", "http://localhost:1/x.png")), 400,
     "only from 127.0.0.1", "messages"),
    ("an ftp URL", _chat(chat_messages("caption en", "ftp://127.0.0.1/x.png")), 400, "data: URL", "messages"),
    ("a URL with a bad port", _chat(chat_messages("caption en", "http://127.0.0.1:99999/x.png")), 400,
     "not valid", "messages"),
]


@pytest.mark.parametrize("body, status, fragment, param", [case[1:] for case in BAD_CHAT],
                         ids=[case[0] for case in BAD_CHAT])
def test_a_bad_chat_request_is_a_4xx_in_openai_s_shape(client, body, status, fragment, param):
    assert_error(client.post("/v1/chat/completions", json=body), status, fragment, param)


def test_the_openai_client_reads_the_errors(server):
    openai = pytest.importorskip("openai")
    chat = openai_client(server).chat.completions
    with pytest.raises(openai.BadRequestError, match="has no image"):
        chat.create(model="m", messages=[{"role": "user", "content": "caption en"}])
    with pytest.raises(openai.BadRequestError, match="max_tokens is 100000"):
        chat.create(model="m", messages=chat_messages("caption en"), max_tokens=100_000, stream=True)


def test_unknown_routes_and_methods_answer_in_the_error_shape(client):
    assert_error(client.get("/v1/completions"), 404, "no route GET /v1/completions")
    assert_error(client.get("/v1/generate"), 405, "Method Not Allowed")


def test_the_server_answers_right_after_bad_requests(client):
    for body, *_ in [case[1:] for case in BAD_GENERATE]:
        if isinstance(body, bytes):
            client.post("/v1/generate", content=body)
        else:
            client.post("/v1/generate", json=body)
    assert client.post("/v1/generate", json=GOOD).json()["text"] == CAPTION
    assert client.get("/health").json()["active"] == 0


# ---- image URLs ----

def test_image_urls_are_fetched_within_limits(client, image_host):
    answer = client.post("/v1/generate", json={**GOOD, "image": image_host + "/shapes.png"})
    assert answer.status_code == 200 and answer.json()["text"] == CAPTION
    reply = client.post("/v1/chat/completions", json=_chat(chat_messages("caption en", image_host + "/shapes.png")))
    assert reply.json()["choices"][0]["message"]["content"] == CAPTION
    assert_error(client.post("/v1/generate", json={**GOOD, "image": image_host + "/missing.png"}), 400,
                 "answered HTTP 404", "image")
    assert_error(client.post("/v1/generate", json={**GOOD, "image": image_host + "/big.png"}), 413,
                 "--max-image-bytes", "image")
    assert_error(client.post("/v1/generate", json={**GOOD, "image": image_host + "/elsewhere.png"}), 400,
                 "answered HTTP 302", "image")
    started = time.monotonic()
    assert_error(client.post("/v1/generate", json={**GOOD, "image": image_host + "/slow.png"}), 400,
                 "took longer than 1 s", "image")
    assert time.monotonic() - started < 2.5


def test_image_urls_are_refused_by_default(engine):
    with running_server(engine, ServerSettings()) as url:
        response = httpx.post(url + "/v1/generate", json={**GOOD, "image": "http://127.0.0.1:1/x.png"},
                              timeout=TIMEOUT)
    assert_error(response, 400, "does not fetch image URLs", "image")


# ---- a full server, a client that leaves, concurrency ----

#: Far more generation than any test waits for (5000 tokens took from under 1 s to 6 s across machines);
#: the tests that start it leave early.
LONG = {"image": EXAMPLE_URL, "prompt": "caption en", "max_new_tokens": 20_000, "min_new_tokens": 20_000}


def test_a_full_server_answers_429_and_recovers(small_server):
    with httpx.Client(base_url=small_server, timeout=TIMEOUT) as c, ThreadPoolExecutor(2) as pool:
        with c.stream("POST", "/v1/generate", json={**LONG, "stream": True}) as running:
            assert running.status_code == 200
            lines = running.iter_lines()  # kept: dropping the iterator would close the connection
            next(lines)
            queued = pool.submit(c.post, "/v1/generate", json=GOOD)
            wait_until(lambda: c.get("/health").json()["queued"] == 1, "the second request to wait")
            refused = c.post("/v1/generate", json=GOOD)
            assert_error(refused, 429, "the server is full", None)
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert refused.headers["retry-after"] == "1"
            openai = pytest.importorskip("openai")
            with pytest.raises(openai.RateLimitError):
                openai_client(small_server).chat.completions.create(model="m", messages=chat_messages("ocr"))
        # Leaving the stream frees its slot for the waiting request, which then gets its answer.
        assert queued.result(TIMEOUT).json()["text"] == CAPTION
        assert c.post("/v1/generate", json=GOOD).json()["text"] == CAPTION
        assert c.get("/health").json() == {"status": "ok", "model": "pali-default", "active": 0, "queued": 0}


def test_a_memory_error_of_the_engine_is_a_400(small_server):
    response = httpx.post(small_server + "/v1/generate", json={**GOOD, "num_beams": 10 ** 8}, timeout=TIMEOUT)
    assert_error(response, 400, "would take", None)
    assert response.json()["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("route", ["generate", "chat"])
def test_a_client_that_disconnects_mid_stream_stops_its_generation(small_server, route):
    with httpx.Client(base_url=small_server, timeout=TIMEOUT) as c:
        if route == "generate":
            with c.stream("POST", "/v1/generate", json={**LONG, "stream": True}) as response:
                lines = response.iter_lines()
                assert json.loads(next(lines)[len("data: "):])["type"] == "text"
                time.sleep(0.3)
                assert c.get("/health").json()["active"] == 1, "the stream stopped before the client left"
            left = time.monotonic()
        else:
            stream = openai_client(small_server).chat.completions.create(
                model="m", messages=chat_messages("caption en"), stream=True,
                extra_body={name: LONG[name] for name in ("max_new_tokens", "min_new_tokens")})
            chunks = iter(stream)
            next(chunks)
            time.sleep(0.3)
            assert c.get("/health").json()["active"] == 1, "the stream stopped before the client left"
            stream.close()
            left = time.monotonic()
        # The slot is free once the engine's stream is closed: long before the 20000 tokens.
        wait_until(lambda: c.get("/health").json()["active"] == 0, "the engine call to stop", timeout=5)
        assert time.monotonic() - left < 3, "the generation ran on after the client left"
        assert c.post("/v1/generate", json=GOOD).json()["text"] == CAPTION


def test_concurrent_requests_get_their_own_answers(client, engine):
    prompts = ["caption en", "ocr", "caption fr", "detect circle ; star", "answer en how many circles?",
               "caption ru", "caption es", "caption de"] * 2
    expected = {p: engine.generate(str(EXAMPLE), p).text for p in set(prompts)}
    batches_before = metric(client.get("/metrics").text, "pali_batch_size_count")

    def generate(prompt):
        return client.post("/v1/generate", json={**GOOD, "prompt": prompt}).json()["text"]

    def stream(prompt):
        with client.stream("POST", "/v1/generate", json={**GOOD, "prompt": prompt, "stream": True}) as response:
            return sse_events(response)[-1]["text"]

    def chat(prompt):
        return client.post("/v1/chat/completions", json=_chat(chat_messages(prompt))).json()[
            "choices"][0]["message"]["content"]

    calls = [(generate, p) for p in prompts] + [(stream, p) for p in prompts[:4]] + [(chat, p) for p in prompts[:4]]
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda call: call[0](call[1]), calls))
    assert answers == [expected[p] for _, p in calls]
    text = client.get("/metrics").text
    engine_calls = metric(text, "pali_batch_size_count") - batches_before
    assert engine_calls <= len(prompts) + 4  # streams do not batch; the rest may
    assert metric(text, "pali_active_requests") == 0 and metric(text, "pali_queue_depth") == 0


# ---- masks, metrics, the command ----

class SegmentingEngine:
    """The bundled engine's tokenizer and config, answering every prompt with one segmented object, as a
    PaliGemma model does: the box is the image's centre half, the 16 mask codes arbitrary."""

    ANSWER = "<loc0256><loc0256><loc0768><loc0768>" + "".join(f"<seg{c:03d}>" for c in range(16)) + " circle"

    def __init__(self, engine):
        self.config = engine.config
        self.tokenizer = engine.tokenizer
        self._backend = SimpleNamespace(parse_objects=parse_segmentation)

    def generate(self, image, prompt, **options):
        return GenerationResult(self.ANSWER, [3, 4, self.tokenizer.eos_id], 0.0, {}, image.size, parse_segmentation)

    def stream(self, image, prompt, **options):
        yield from (self.ANSWER[:30], self.ANSWER[30:])


def full_box_decoder() -> MaskDecoder:
    """A mask decoder whose every mask fills its box (only the last bias is non-zero)."""
    params = {name: np.zeros(shape, np.float32) for name, shape in DECODER_SHAPES.items()}
    params["decoder.12.bias"][:] = 1.0
    return MaskDecoder(params)


def decode_mask(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))


def test_masks_with_a_mask_decoder(engine):
    with running_server(SegmentingEngine(engine), ServerSettings(), full_box_decoder()) as url:
        picture = data_url(png_bytes(Image.new("RGB", (80, 40), (255, 255, 255))))
        answer = httpx.post(url + "/v1/generate", json={"image": picture, "prompt": "segment circle"},
                            timeout=TIMEOUT).json()
        with httpx.stream("POST", url + "/v1/generate", json={"image": picture, "prompt": "segment circle",
                                                              "stream": True}, timeout=TIMEOUT) as response:
            done = sse_events(response)[-1]
    for objects in (answer["objects"], done["objects"]):
        [obj] = objects
        assert obj["label"] == "circle" and obj["codes"] == list(range(16))
        assert obj["box"] == [20.0, 10.0, 60.0, 30.0]
        mask = decode_mask(obj["mask"])
        assert mask.shape == (40, 80)
        assert (mask[10:30, 20:60] == 255).all() and mask.sum() == 255 * 20 * 40


def test_metrics_in_prometheus_text_format(client):
    client.post("/v1/generate", json=GOOD)
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for name, kind in [("pali_queue_depth", "gauge"), ("pali_active_requests", "gauge"),
                       ("pali_tokens_per_second", "gauge"), ("pali_tokens_generated_total", "counter"),
                       ("pali_requests_total", "counter"), ("pali_request_duration_seconds", "histogram"),
                       ("pali_time_to_first_token_seconds", "histogram"), ("pali_batch_size", "histogram"),
                       ("pali_queue_wait_seconds", "histogram")]:
        assert f"# TYPE {name} {kind}\n" in text
    assert metric(text, "pali_tokens_generated_total") >= 9
    assert metric(text, "pali_tokens_per_second") > 0
    assert 'pali_requests_total{code="200",route="/v1/generate"}' in text
    buckets = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('pali_request_duration_seconds_bucket{route="generate"')]
    assert buckets == sorted(buckets) and buckets[-1] == metric(
        text, 'pali_request_duration_seconds_count{route="generate"}')
    for line in text.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2, line


def test_the_serve_command(tmp_path):
    from pali_engine import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = "import sys; from pali_engine.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen([sys.executable, "-c", code, "serve", "--port", str(port), "--parallel", "1",
                                "--threads", "1", "--model-name", "shapes", "--log-level", "warning"],
                               cwd=tempfile.gettempdir(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            assert process.poll() is None, process.communicate()[0]
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "the server to answer", every=0.1)
        assert httpx.get(url + "/v1/models", timeout=TIMEOUT).json()["data"][0]["id"] == "shapes"
        reply = httpx.post(url + "/v1/chat/completions", json=_chat(), timeout=TIMEOUT).json()
        assert reply["model"] == "shapes" and reply["choices"][0]["message"]["content"] == CAPTION
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=TIMEOUT)[0]
        assert process.returncode == 0, output
        assert f"on http://127.0.0.1:{port}/" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


# ---- Engine.agenerate and Engine.astream ----

def test_agenerate_and_astream(engine):
    async def main():
        result = await engine.agenerate(str(EXAMPLE), "caption en")
        assert result.text == CAPTION
        async with engine.astream(str(EXAMPLE), "caption en") as stream:
            assert "".join([piece async for piece in stream]) == CAPTION
        stream = engine.astream(str(EXAMPLE), "caption en", max_new_tokens=20_000, min_new_tokens=20_000)
        async for _ in stream:
            break
        closed = time.monotonic()
        await stream.aclose()
        await asyncio.wait_for(stream.finished, TIMEOUT)
        assert time.monotonic() - closed < 3, "the stream ran on after it was closed"
        with pytest.raises(ValueError, match="unknown generation option"):
            async for _ in engine.astream(str(EXAMPLE), "caption en", beams=2):
                pass
        # Many at once on a bounded pool: the loop keeps running while they do.
        with ThreadPoolExecutor(2) as pool:
            texts = await asyncio.gather(*[engine.agenerate(str(EXAMPLE), p, executor=pool)
                                           for p in ["ocr", "caption en"] * 3])
        assert [t.text for t in texts] == ["tree", CAPTION] * 3

    asyncio.run(asyncio.wait_for(main(), TIMEOUT * 2))


# ---- the playground in a browser ----

def _browser():
    """A headless chromium driven by chromedriver, or a skip naming what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    binary = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                  None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1100"):
        options.add_argument(argument)
    # The browser is not part of what is tested: a sanitizer runtime preloaded into
    # the test process (.ci/sanitized-tests) stays out of it.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver, env=env))


#: A pixel of the canvas as [r, g, b, a], read in the page.
CANVAS_PIXEL = "return Array.from(document.getElementById('canvas').getContext('2d')" \
               ".getImageData(arguments[0], arguments[1], 1, 1).data);"


def test_playground_in_a_headless_browser(server, engine, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    try:
        wait = WebDriverWait(browser, TIMEOUT)
        browser.get(server + "/")
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#options [data-name]"))
        assert "pali-default" in browser.find_element(By.ID, "model-info").text
        assert len(browser.find_elements(By.CSS_SELECTOR, "#options [data-name]")) == len(OPTION_NAMES)
        browser.find_element(By.ID, "file-input").send_keys(str(EXAMPLE))
        wait.until(lambda b: "64×64" in b.find_element(By.ID, "image-info").text)
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("detect circle ; star")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#objects li")) == 2)
        assert browser.find_element(By.ID, "output").text == engine.generate(str(EXAMPLE), "detect circle ; star").text
        assert "first_token_ms" in browser.find_element(By.ID, "timings").text
        # The 64 px image is drawn 7x at (0, 0): the circle's box edge at x = 12 px is orange.
        edge_x = round(engine.generate(str(EXAMPLE), "detect circle ; star").objects[0].box[0] * 7)
        r, g, b, _ = browser.execute_script(CANVAS_PIXEL, edge_x, 7 * 25)
        assert (r, g, b) == (0xe8, 0x59, 0x0c), "the detection box is not drawn"
        # An option and a non-streamed answer; a bad value shows the engine's message.
        browser.find_element(By.CSS_SELECTOR, "#options-panel summary").click()
        browser.find_element(By.ID, "option-max_new_tokens").send_keys("2")
        browser.find_element(By.ID, "stream").click()
        prompt.clear()
        prompt.send_keys("caption en")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: b.find_element(By.ID, "output").text == "a blue")
        browser.find_element(By.ID, "option-temperature").send_keys("-1")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: "temperature must be" in b.find_element(By.ID, "error").text)
        for name in ("max_new_tokens", "temperature"):
            browser.find_element(By.ID, f"option-{name}").clear()
        browser.find_element(By.ID, "stream").click()
        prompt.clear()
        prompt.send_keys("detect circle ; star")
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#objects li")) == 2
                   and not b.find_element(By.ID, "error").is_displayed())
        screenshot = os.environ.get("PALI_ENGINE_PLAYGROUND_SCREENSHOT") or str(tmp_path / "playground.png")
        browser.save_screenshot(screenshot)
        assert Image.open(screenshot).size[0] >= 1000
        severe = [e for e in browser.get_log("browser")
                  if e["level"] == "SEVERE" and "status of 400" not in e["message"]]  # the bad temperature's
        assert not severe, severe
    finally:
        browser.quit()


def test_playground_draws_masks(engine):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    picture = tempfile.NamedTemporaryFile(suffix=".png", delete=False)
    try:
        Image.new("RGB", (64, 64), (255, 255, 255)).save(picture.name)
        with running_server(SegmentingEngine(engine), ServerSettings(), full_box_decoder()) as url:
            wait = WebDriverWait(browser, TIMEOUT)
            browser.get(url + "/")
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#options [data-name]"))
            browser.find_element(By.ID, "file-input").send_keys(picture.name)
            wait.until(lambda b: "64×64" in b.find_element(By.ID, "image-info").text)
            browser.find_element(By.ID, "generate").click()
            wait.until(lambda b: "mask" in b.find_element(By.ID, "objects").text)
            centre = browser.execute_script(CANVAS_PIXEL, 7 * 32, 7 * 32)
            assert centre[:3] != [255, 255, 255], "the mask is not drawn over the image"
            browser.find_element(By.ID, "show-masks").click()
            assert browser.execute_script(CANVAS_PIXEL, 7 * 32, 7 * 32)[:3] == [255, 255, 255]
    finally:
        browser.quit()
        os.unlink(picture.name)


# ---- the scheduler on its own ----

class GatedEngine:
    """An engine stand-in whose calls wait for ``gate``; a batch holding the prompt "bad" fails as a whole,
    as the engine does when one input of a batch is wrong."""

    def __init__(self):
        self.gate = threading.Event()
        self.calls = []

    def generate(self, image, prompt, **options):
        self.gate.wait(TIMEOUT)
        prompts = prompt if isinstance(prompt, list) else [prompt]
        self.calls.append(prompts)
        if "bad" in prompts:
            raise ValueError("prompt 1: bad")
        return [p.upper() for p in prompts] if isinstance(prompt, list) else prompt.upper()


def test_the_scheduler_batches_waiting_requests_and_isolates_a_bad_one():
    from pali_engine.server.scheduler import Scheduler

    async def main():
        engine = GatedEngine()
        batches = []
        scheduler = Scheduler(engine, parallel=1, max_batch=3, max_queue=4, on_batch=batches.append)
        first = asyncio.ensure_future(scheduler.generate(None, "first", {}, "greedy"))
        await asyncio.sleep(0.05)
        waiting = [asyncio.ensure_future(scheduler.generate(None, p, {}, key))
                   for p, key in [("a", "greedy"), ("bad", "greedy"), ("sampled", None), ("c", "greedy")]]
        await asyncio.sleep(0.05)
        assert scheduler.active == 1 and scheduler.queue_depth == 4
        with pytest.raises(Exception, match="the server is full"):
            await scheduler.generate(None, "one too many", {}, "greedy")
        engine.gate.set()
        assert (await first).result == "FIRST"
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
        assert [o.result for o in (outcomes[0], outcomes[2], outcomes[3])] == ["A", "SAMPLED", "C"]
        assert isinstance(outcomes[1], ValueError) and str(outcomes[1]) == "prompt 1: bad"
        assert outcomes[0].batch_size == 3 and outcomes[2].batch_size == 1
        # The batch of three failed on "bad"; each of its inputs then ran alone.
        assert engine.calls == [["first"], ["a", "bad", "c"], ["a"], ["bad"], ["c"], ["sampled"]]
        assert batches == [1, 3, 1]
        assert scheduler.active == 0 and scheduler.queue_depth == 0
        scheduler.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
