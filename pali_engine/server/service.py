"""What both APIs of the server share: settings, request bodies, option and prompt checks, engine
calls through the scheduler, token counts, finish reasons and detection / segmentation objects.

Why here and not in each route: the OpenAI-compatible chat route and the
engine's own ``/v1/generate`` differ only in how a request names things and how
the answer is laid out; the checks that keep a bad request a 4xx (the engine's
own option messages, the prompt's length, the server's caps), the metrics and
the engine calls are the same for both.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from fastapi import Request

from .. import generation
from ..errors import EngineBusy
from .._version import __version__
from .errors import APIError, bad_request
from .images import ImageLimits
from .metrics import ServerMetrics
from .scheduler import Generated, Scheduler


@dataclass(frozen=True)
class ServerSettings:
    """The server's limits (``pali-engine serve --help`` names each one's flag)."""

    model_id: str = "pali-default"
    parallel: int = 16
    max_batch: int = 8
    max_queue: int = 64
    max_request_bytes: int = 32 * 1024 * 1024
    max_new_tokens_limit: int = 1024
    max_beams: int = 16
    images: ImageLimits = field(default_factory=ImageLimits)


async def read_json_object(request: Request, max_bytes: int) -> dict:
    """The request's body as a JSON object: 413 past ``max_bytes`` (counted while reading), 400 when it is
    not JSON or not an object."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"the request body is {int(declared):,} bytes; this server takes at most {max_bytes:,} "
                       "(--max-request-bytes)", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise APIError(413, f"the request body is over {max_bytes:,} bytes, the most this server takes "
                           "(--max-request-bytes)", code="request_too_large")

    def no_constants(name: str):
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(bytes(body), parse_constant=no_constants)
    except RecursionError:
        raise bad_request("the request body is nested too deeply", code="invalid_json") from None
    except ValueError as error:
        raise bad_request(f"the request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(value).__name__}",
                          code="invalid_json")
    return value


_UNKNOWN_OPTION = re.compile(r"unknown generation option\(s\): ([^;,\s]+)")
_FIRST_WORD = re.compile(r"(\w+)")


def option_param(message: str) -> Optional[str]:
    """The option an engine's message is about (its messages start with the option's name)."""
    unknown = _UNKNOWN_OPTION.match(message)
    if unknown:
        return unknown.group(1)
    first = _FIRST_WORD.match(message)
    return first.group(1) if first and first.group(1) in generation.OPTION_NAMES else None


def engine_error(error: BaseException) -> APIError:
    """An engine's refusal of a request as a 400 (a MemoryError: the request needs more memory than there is;
    EngineBusy, the engine's own queue full: 429)."""
    message = str(error)
    if isinstance(error, EngineBusy):
        return APIError(429, message, code="engine_full")
    if isinstance(error, MemoryError):
        return APIError(400, message or "the request needs more memory than the server has",
                        code="request_too_large")
    return APIError(400, message, param=option_param(message), code="invalid_value")


def png_data_url(mask) -> str:
    """A bool mask -> a grayscale PNG (255: the object) as a data: URL."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(mask.astype("uint8") * 255, "L").save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Service:
    """The engine behind the routes: checks, scheduling, metrics."""

    def __init__(self, engine, settings: ServerSettings, mask_decoder=None):
        self.engine = engine
        self.settings = settings
        self.mask_decoder = mask_decoder
        self.created = int(time.time())
        self.fingerprint = f"pali-engine-{__version__}"
        self.scheduler = Scheduler(engine, parallel=settings.parallel, max_batch=settings.max_batch,
                                   max_queue=settings.max_queue)
        self.metrics = ServerMetrics(lambda: self.scheduler.queue_depth, lambda: self.scheduler.active,
                                     getattr(engine, "scheduler_stats", lambda: None))
        self.scheduler.on_batch = self.metrics.batch_size.observe
        config = engine.config
        if config.get("num_image_tokens"):
            self.image_tokens = int(config["num_image_tokens"])
        elif config.get("image_size") and config.get("patch_size"):
            self.image_tokens = (int(config["image_size"]) // int(config["patch_size"])) ** 2
        else:
            self.image_tokens = 0

    # ---- checks ----
    def check_options(self, options: dict, names: Optional[dict] = None):
        """The engine's parsed options (``generation.parse_options``: its own messages), within the server's caps.

        ``names``: how the request calls an option, where it differs (chat's ``max_tokens``).
        """
        names = names or {}
        try:
            parsed = generation.parse_options(options, self.engine.config)
        except (ValueError, TypeError) as error:
            api_error = engine_error(error)
            if api_error.param in names:  # said with the request's own name for the option
                engine_name, api_error.param = api_error.param, names[api_error.param]
                if api_error.message.startswith(engine_name):
                    api_error.message = api_error.param + api_error.message[len(engine_name):]
            raise api_error from None
        caps = (("max_new_tokens", parsed.max_new_tokens, self.settings.max_new_tokens_limit,
                 "--max-new-tokens-limit"),
                ("num_beams", parsed.num_beams, self.settings.max_beams, "--max-beams"),
                ("num_return_sequences", parsed.num_return_sequences, self.settings.max_beams, "--max-beams"))
        for name, value, limit, flag in caps:
            if value is not None and value > limit:
                shown = names.get(name, name)
                raise bad_request(f"{shown} is {value}; this server takes at most {limit} ({flag})", param=shown)
        return parsed

    def check_prompt(self, prompt: Any, param: str) -> int:
        """The prompt's token count (eos included); 400 when it is not text or longer than the model takes."""
        if not isinstance(prompt, str):
            raise bad_request(f"the prompt must be a string, got {type(prompt).__name__}", param=param)
        try:
            count = len(self.engine.tokenizer.encode(prompt))
        except ValueError as error:
            raise bad_request(f"the prompt cannot be tokenized: {error}", param=param) from None
        limit = self.engine.config.get("max_prompt_tokens")
        if limit is not None and count > int(limit):
            raise bad_request(f"the prompt is {count} tokens long (eos included); this model takes at most {limit}",
                              param=param, code="context_length_exceeded")
        return count

    # ---- engine calls ----
    async def generate(self, image, prompt: str, options: dict, parsed) -> Generated:
        """One request's results through the scheduler (batched with its like when deterministic)."""
        batch_key = None if parsed.do_sample else parsed
        try:
            return await self.scheduler.generate(image, prompt, options, batch_key)
        except (ValueError, MemoryError, EngineBusy) as error:
            raise engine_error(error) from None

    async def stream(self, image, prompt: str, options: dict):
        """(the engine's stream, its first piece or None when the answer is empty, seconds waited for a slot).

        The first piece is awaited here, before any byte of the response is sent, so that an
        error of the engine is still an HTTP status and not an event in a 200 stream.
        """
        stream, waited = await self.scheduler.stream(image, prompt, options)
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            first = None
        except (ValueError, MemoryError, EngineBusy) as error:
            raise engine_error(error) from None
        except BaseException:
            stream.stop()
            raise
        return stream, first, waited

    # ---- answers ----
    def finish_reason(self, tokens: List[int], max_new_tokens: int) -> str:
        """OpenAI's finish_reason: "length" when the answer ran to max_new_tokens without eos."""
        if tokens and tokens[-1] == self.engine.tokenizer.eos_id:
            return "stop"
        return "length" if len(tokens) >= max_new_tokens else "stop"

    def streamed_tokens(self, text: str, max_new_tokens: int) -> Tuple[int, str]:
        """(tokens, finish_reason) of a streamed answer: its text encoded again (the stream gives text only)."""
        content = len(self.engine.tokenizer.encode(text, add_eos=False))
        if content >= max_new_tokens:
            return max_new_tokens, "length"
        return content + 1, "stop"

    def observe_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.add_tokens(completion_tokens)

    def observe_generated(self, route: str, arrived: float, generated: Generated, results: list) -> None:
        """Latency, time to first token (the wait, then the engine's timings up to its first token) and tokens."""
        self.metrics.queue_wait.observe(generated.queue_wait_s)
        timings = results[0].timings
        parts = ("preprocess_ms", "vision_ms", "encoder_ms", "first_token_ms")
        if all(p in timings for p in parts):
            first = generated.queue_wait_s + sum(timings[p] for p in parts) / 1e3
            self.metrics.first_token.observe(first, route=route)
        self.metrics.latency.observe(time.perf_counter() - arrived, route=route)

    def parse_objects(self, text: str, image_size: Tuple[int, int]) -> list:
        """The boxes (and mask codes) of an answer, in the image's pixels, as the model's backend reads them."""
        parser = getattr(getattr(self.engine, "_backend", None), "parse_objects", None)
        return parser(text, image_size) if parser is not None else []

    async def objects_json(self, objects: list, image_size: Tuple[int, int]) -> list:
        """Objects as JSON: box (x0, y0, x1, y1 in pixels), label, mask codes, and with a mask decoder
        (``--vae``) each mask as a PNG of the whole image."""
        decoder = self.mask_decoder

        def convert() -> list:
            from ..segmentation import box_mask

            out = []
            for obj in objects:
                mask = None
                if decoder is not None and obj.codes is not None:
                    mask = png_data_url(box_mask(decoder, obj, image_size))
                out.append({"box": [round(float(v), 2) for v in obj.box], "label": obj.label,
                            "codes": obj.codes, "mask": mask})
            return out

        if decoder is None or not any(o.codes for o in objects):
            return convert()
        # Decoding masks is NumPy work of tens of milliseconds per object: off the event loop.
        return await asyncio.to_thread(convert)
