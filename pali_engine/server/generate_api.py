"""``POST /v1/generate``: the engine's own API over HTTP, every generation option by its name.

Why beside the chat API: a chat completion has no place for the engine's
options, its tokens, score and timings, or the boxes and masks of a detection
or segmentation answer; this route returns all of them, and the playground
page uses it. The body is ``{"image", "prompt", "stream"?, OPTION: value...}``:
every other field is a generation option, checked by the engine itself
(``generation.parse_options``), so an unknown name or a bad value gets the
engine's own message.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from .errors import bad_request
from .images import load_image
from .service import Service, read_json_object

#: The fields that are not generation options ("model" is taken, as OpenAI clients send it, and ignored).
REQUEST_FIELDS = ("image", "prompt", "stream", "model")


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class GenerateRoute:
    """The route's handler, bound to the service."""

    def __init__(self, service: Service):
        self.service = service

    async def _sequence(self, result, parsed) -> dict:
        objects = await self.service.objects_json(result.objects, result.image_size) if result.image_size else []
        return {"text": result.text, "tokens": result.tokens, "score": result.score,
                "finish_reason": self.service.finish_reason(result.tokens, parsed.max_new_tokens),
                "objects": objects}

    async def __call__(self, request: Request):
        arrived = time.perf_counter()
        service = self.service
        body = await read_json_object(request, service.settings.max_request_bytes)
        if "prompt" not in body:
            raise bad_request("the request needs a prompt (\"caption en\", \"detect circle ; star\", ...)",
                              param="prompt", code="missing_prompt")
        if "image" not in body:
            raise bad_request("the request needs an image: a data: URL (data:image/png;base64,...) or base64",
                              param="image", code="missing_image")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise bad_request("stream must be true or false", param="stream")
        options = {name: value for name, value in body.items() if name not in REQUEST_FIELDS}
        parsed = service.check_options(options)
        if stream and parsed.num_return_sequences != 1:
            raise bad_request("stream: true returns one sequence; num_return_sequences must be 1",
                              param="num_return_sequences")
        prompt_tokens = service.check_prompt(body["prompt"], "prompt") + service.image_tokens
        image = await load_image(body["image"], service.settings.images, "image", bare_base64=True)
        request_id = "gen-" + secrets.token_hex(12)
        if stream:
            return await self._stream(request_id, image, body["prompt"], options, parsed, prompt_tokens, arrived)

        generated = await service.generate(image, body["prompt"], options, parsed)
        results = generated.result if isinstance(generated.result, list) else [generated.result]
        sequences = [await self._sequence(r, parsed) for r in results]
        completion_tokens = sum(len(r.tokens) for r in results)
        service.observe_tokens(prompt_tokens, completion_tokens)
        service.observe_generated("generate", arrived, generated, results)
        answer = {"id": request_id, "model": service.settings.model_id, **sequences[0],
                  "image_size": list(image.size),
                  "timings": {"queue_ms": generated.queue_wait_s * 1e3, **results[0].timings,
                              "batch_size": generated.batch_size},
                  "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                            "total_tokens": prompt_tokens + completion_tokens}}
        if len(sequences) > 1:
            answer["sequences"] = sequences
        return JSONResponse(answer)

    async def _stream(self, request_id: str, image, prompt: str, options: dict, parsed, prompt_tokens: int,
                      arrived: float) -> StreamingResponse:
        service = self.service
        stream, first, waited = await service.stream(image, prompt, options)
        service.metrics.queue_wait.observe(waited)

        async def events() -> AsyncIterator[str]:
            text = ""
            first_token_s = time.perf_counter() - arrived
            service.metrics.first_token.observe(first_token_s, route="generate")
            try:
                if first is not None:
                    text += first
                    yield _sse({"type": "text", "text": first})
                async for piece in stream:
                    text += piece
                    yield _sse({"type": "text", "text": piece})
            except (ValueError, MemoryError) as error:  # the engine failed after the first piece
                yield _sse({"type": "error", "error": {"message": str(error), "type": "server_error",
                                                       "param": None, "code": None}})
                return
            finally:
                stream.stop()
                tokens, finish = service.streamed_tokens(text, parsed.max_new_tokens)
                service.observe_tokens(prompt_tokens, tokens)
            objects = await service.objects_json(service.parse_objects(text, image.size), image.size)
            total_s = time.perf_counter() - arrived
            service.metrics.latency.observe(total_s, route="generate")
            yield _sse({"type": "done", "id": request_id, "model": service.settings.model_id, "text": text,
                        "finish_reason": finish, "objects": objects, "image_size": list(image.size),
                        "timings": {"queue_ms": waited * 1e3, "first_token_ms": first_token_s * 1e3,
                                    "total_ms": total_s * 1e3},
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                                  "total_tokens": prompt_tokens + tokens}})

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
