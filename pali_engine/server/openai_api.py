"""``POST /v1/chat/completions``: OpenAI's chat completions API on the engine.

Why this mapping: OpenAI clients (the official SDKs, chat front ends) speak
this API; the engine takes one image and one prompt. So the request's last
message must be the user's; its text parts, joined, are the prompt; the image
is the ``image_url`` part of that message, or of the latest earlier user
message that has one (a follow-up question about an image sent before). System
and assistant messages are not part of a PaLI prompt and are left out.

Options: ``max_tokens`` (or ``max_completion_tokens``) -> max_new_tokens;
``temperature`` > 0 samples at that temperature over the whole vocabulary, as
OpenAI does (no top-k), 0 is greedy, and without it the answer is greedy unless
``top_p`` is given (then it samples, at temperature 1); ``top_p``, ``seed``;
``n`` -> num_return_sequences (sampling, or beams via ``num_beams``); ``stop``
strings cut the text. Every engine option (``num_beams``, ``top_k``,
``repetition_penalty``, ...) may also be given by its own name, as an
extension (the SDKs' ``extra_body``); it wins over the mapped value.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, List, Optional

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .. import generation
from .errors import bad_request
from .images import load_image
from .service import Service, read_json_object

#: OpenAI fields taken as they are, with no effect on a PaLI answer.
IGNORED_FIELDS = {"model", "user", "metadata", "store", "service_tier", "parallel_tool_calls", "safety_identifier",
                  "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "verbosity",
                  "reasoning_effort"}
#: OpenAI fields the server takes only at their "off" value: (accepted values, why not).
OFF_ONLY_FIELDS = {
    "frequency_penalty": ((0, 0.0, None), "repetition_penalty is the engine's penalty"),
    "presence_penalty": ((0, 0.0, None), "repetition_penalty is the engine's penalty"),
    "logprobs": ((False, None), "log-probabilities are not returned"),
    "top_logprobs": ((0, None), "log-probabilities are not returned"),
    "logit_bias": (({}, None), "logit biases are not supported"),
    "tools": (([], None), "the model does not call tools"),
    "tool_choice": (("none", None), "the model does not call tools"),
    "functions": (([], None), "the model does not call functions"),
    "function_call": (("none", None), "the model does not call functions"),
    "modalities": ((["text"], None), "the model answers in text only"),
    "audio": ((None,), "the model answers in text only"),
    "prediction": ((None,), "predicted outputs are not supported"),
    "web_search_options": ((None,), "the model does not search"),
}
HANDLED_FIELDS = {"messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed", "stop",
                  "stream", "stream_options", "response_format"}
MAX_STOP_STRINGS = 4


@dataclass
class ChatRequest:
    prompt: str
    image_source: str
    options: dict
    stop: List[str]
    stream: bool
    include_usage: bool


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _content_parts(content: Any, index: int) -> List[dict]:
    """A message's content as parts: a string is one text part."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if content is None:
        return []
    if not isinstance(content, list):
        raise bad_request(f"messages[{index}].content must be a string or a list of parts",
                          param=f"messages[{index}].content")
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        if not isinstance(part, dict) or part.get("type") not in ("text", "image_url"):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise bad_request(f"{where} must be a text or image_url part, got {kind!r}", param=where)
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise bad_request(f"{where}.text must be a string", param=f"{where}.text")
    return content


def _image_url(part: dict, where: str) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise bad_request(f"{where}.image_url must be {{\"url\": \"data:image/png;base64,...\"}}",
                          param=f"{where}.image_url")
    return url


def prompt_and_image(messages: Any) -> tuple:
    """(prompt, image URL) of a chat: the last user message's text, and its image or the latest before."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a role", param=f"messages[{i}]")
    last = len(messages) - 1
    if messages[last]["role"] != "user":
        raise bad_request(f"the last message must be the user's, got role {messages[last]['role']!r}",
                          param=f"messages[{last}].role")
    parts = _content_parts(messages[last].get("content"), last)
    prompt = " ".join(p["text"].strip() for p in parts if p["type"] == "text" and p["text"].strip())
    for i in range(last, -1, -1):
        if messages[i]["role"] != "user":
            continue
        images = [(j, p) for j, p in enumerate(_content_parts(messages[i].get("content"), i))
                  if p["type"] == "image_url"]
        if len(images) > 1:
            raise bad_request(f"messages[{i}] has {len(images)} images; the model takes one image per request",
                              param=f"messages[{i}].content")
        if images:
            j, part = images[0]
            return prompt, _image_url(part, f"messages[{i}].content[{j}]")
    raise bad_request("the chat has no image: the model answers about an image, sent as an image_url part "
                      "(data:image/png;base64,...) of a user message", param="messages", code="missing_image")


def parse_chat_request(body: dict) -> ChatRequest:
    """The chat request's prompt, image, engine options, stop strings and stream flags; 400 for the rest."""
    for name, value in body.items():
        if name in OFF_ONLY_FIELDS:
            accepted, why = OFF_ONLY_FIELDS[name]
            if value not in accepted:
                raise bad_request(f"{name} is not supported: {why}", param=name, code="unsupported_parameter")
        elif name not in IGNORED_FIELDS and name not in HANDLED_FIELDS and name not in generation.OPTION_NAMES:
            raise bad_request(f"unrecognized request argument: {name}", param=name, code="unknown_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("model must be a string", param="model")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise bad_request("response_format: the model answers in plain text only", param="response_format",
                          code="unsupported_parameter")
    prompt, image_source = prompt_and_image(body.get("messages"))

    options: dict = {}
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise bad_request("give max_tokens or max_completion_tokens, not both", param="max_completion_tokens")
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None:
            options["max_new_tokens"] = body[name]
    temperature, top_p = body.get("temperature"), body.get("top_p")
    if temperature is None:
        sampling = top_p is not None
    elif _is_number(temperature) and temperature > 0:
        sampling = True
        options["temperature"] = temperature
    elif _is_number(temperature) and temperature == 0:
        sampling = False
    else:
        sampling = False
        options["temperature"] = temperature  # the engine's message says what is wrong with it
    if sampling:
        options["do_sample"] = True
        options["top_k"] = 0  # OpenAI samples from the whole distribution
    if top_p is not None:
        options["top_p"] = top_p
    if body.get("seed") is not None:
        options["seed"] = body["seed"]
    n = body.get("n")
    if n is not None:
        options["num_return_sequences"] = n
    options.update({name: body[name] for name in generation.OPTION_NAMES if name in body and name != "temperature"})

    stop = body.get("stop")
    if stop is None:
        stops: List[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = list(stop)
    else:
        raise bad_request("stop must be a string or a list of strings", param="stop")
    if len(stops) > MAX_STOP_STRINGS or any(not s for s in stops):
        raise bad_request(f"stop takes at most {MAX_STOP_STRINGS} non-empty strings", param="stop")

    beams = options.get("num_beams", 1)
    if (_is_number(n) and n > 1 and not options.get("do_sample")
            and (not _is_number(beams) or beams < n)):
        raise bad_request("n > 1 needs sampling (temperature > 0) or num_beams >= n", param="n")

    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise bad_request("stream must be true or false", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad_request("stream_options must be an object", param="stream_options")
    return ChatRequest(prompt, image_source, options, stops, bool(stream),
                       bool(stream_options.get("include_usage", False)))


def cut_at_stop(text: str, stops: List[str]) -> tuple:
    """(text before the first stop string, whether one was found)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)


class StopCutter:
    """Streams text with stop strings cut: holds back a tail that could be the start of one."""

    def __init__(self, stops: List[str]):
        self.stops = stops
        self.held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that is safe to send after ``piece``; sets ``stopped`` at a stop string."""
        text = self.held + piece
        cut, found = cut_at_stop(text, self.stops)
        if found:
            self.stopped, self.held = True, ""
            return cut
        keep = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:length]):
                    keep = length
                    break
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class ChatRoute:
    """The route's handler, bound to the service."""

    def __init__(self, service: Service):
        self.service = service

    def _envelope(self, completion_id: str, created: int, kind: str) -> dict:
        return {"id": completion_id, "object": kind, "created": created, "model": self.service.settings.model_id,
                "system_fingerprint": self.service.fingerprint}

    async def __call__(self, request: Request):
        arrived = time.perf_counter()
        service = self.service
        body = await read_json_object(request, service.settings.max_request_bytes)
        chat = parse_chat_request(body)
        names = {"max_new_tokens": "max_tokens", "num_return_sequences": "n"}
        parsed = service.check_options(chat.options, names)
        if chat.stream and parsed.num_return_sequences > 1:
            raise bad_request("stream: true takes n = 1", param="n", code="unsupported_parameter")
        prompt_tokens = service.check_prompt(chat.prompt, "messages") + service.image_tokens
        image = await load_image(chat.image_source, service.settings.images, "messages", bare_base64=False)
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if chat.stream:
            return await self._stream(chat, image, parsed, prompt_tokens, completion_id, created, arrived)

        generated = await service.generate(image, chat.prompt, chat.options, parsed)
        results = generated.result if isinstance(generated.result, list) else [generated.result]
        choices, completion_tokens = [], 0
        for index, result in enumerate(results):
            text, stopped = cut_at_stop(result.text, chat.stop)
            finish = "stop" if stopped else service.finish_reason(result.tokens, parsed.max_new_tokens)
            completion_tokens += len(result.tokens)
            choices.append({"index": index, "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None, "finish_reason": finish})
        service.observe_tokens(prompt_tokens, completion_tokens)
        service.observe_generated("chat", arrived, generated, results)
        return JSONResponse({**self._envelope(completion_id, created, "chat.completion"), "choices": choices,
                             "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                       "total_tokens": prompt_tokens + completion_tokens}})

    async def _stream(self, chat: ChatRequest, image, parsed, prompt_tokens: int, completion_id: str, created: int,
                      arrived: float) -> StreamingResponse:
        service = self.service
        stream, first, waited = await service.stream(image, chat.prompt, chat.options)
        service.metrics.queue_wait.observe(waited)
        envelope = self._envelope(completion_id, created, "chat.completion.chunk")

        def chunk(delta: dict, finish: Optional[str] = None) -> str:
            return _sse({**envelope, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                  "finish_reason": finish}]})

        async def events() -> AsyncIterator[str]:
            cutter = StopCutter(chat.stop)
            generated = ""
            try:
                yield chunk({"role": "assistant", "content": ""})
                pieces = [first] if first is not None else []
                service.metrics.first_token.observe(time.perf_counter() - arrived, route="chat")
                while not cutter.stopped:
                    if not pieces:
                        try:
                            pieces.append(await stream.__anext__())
                        except StopAsyncIteration:
                            break
                    piece = pieces.pop(0)
                    generated += piece
                    text = cutter.feed(piece)
                    if text:
                        yield chunk({"content": text})
                if not cutter.stopped:
                    rest = cutter.flush()
                    if rest:
                        yield chunk({"content": rest})
            except (ValueError, MemoryError) as error:  # the engine failed after the first piece
                yield _sse({"error": {"message": str(error), "type": "server_error", "param": None, "code": None}})
                return
            finally:
                stream.stop()
                tokens, finish = service.streamed_tokens(generated, parsed.max_new_tokens)
                service.observe_tokens(prompt_tokens, tokens)
                service.metrics.latency.observe(time.perf_counter() - arrived, route="chat")
            yield chunk({}, "stop" if cutter.stopped else finish)
            if chat.include_usage:
                yield _sse({**envelope, "choices": [], "usage": {
                    "prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                    "total_tokens": prompt_tokens + tokens}})
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

