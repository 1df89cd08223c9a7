"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/completions, /v1/chat/completions.

- Every invalid request is a 4xx in OpenAI's error shape {"error": {"message", "type", "param", "code"}},
  checked cheapest first: 401 wrong or missing API key (when one is configured); 413 a body over
  `max_body_bytes` (the declared length before reading, the bytes as they arrive); 408 a body that
  does not arrive within `body_timeout_s`; 400 malformed JSON, NaN/Infinity, JSON nested deeper
  than `max_json_depth`, a lone UTF-16 surrogate in any string, bad or out-of-range fields (seed
  outside int64, ...), a prompt longer than the context could hold (by characters, before it is
  tokenized) or prompt + max_tokens over the context; 404 unknown model; 503 queue full.
- A bounded queue: at most `max_queue` requests are admitted (decoding or waiting); more get a
  503 at once instead of piling up, so a burst never takes the server down.
- Nothing slow runs on the event loop: prompts are tokenized on a small thread pool, decoding and
  detokenizing run on the one decode thread and hand text to the loop.
- A request whose client has gone is cancelled, streamed or not: it is skipped if it was still
  waiting and stops at the next decoding round if it was running.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import ClientDisconnect

from components.checks import at_least
from components.decoding.engine import DecodeStats
from components.decoding.sampling import SamplingParams
from components.serving.service import GenerationRequest, GenerationService

MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
INT64 = (-(2**63), 2**63 - 1)


@dataclass
class RequestLimits:
    max_body_bytes: int = 1 << 20  # 1 MiB: far above any prompt the context holds
    body_timeout_s: float = 30.0  # the whole body must arrive within this
    max_json_depth: int = 32  # OpenAI's request bodies nest 5 levels deep
    # Refuse, before tokenizing, a prompt longer than max_context x this many characters: no token of
    # a BPE vocabulary covers more, so such a prompt cannot fit anyway (and tokenizing it costs seconds).
    max_chars_per_token: int = 16
    tokenize_threads: int = 2

    def __post_init__(self):
        at_least("max_body_bytes", self.max_body_bytes, 1024)
        at_least("body_timeout_s", self.body_timeout_s, 0.01)
        at_least("max_json_depth", self.max_json_depth, 2)
        at_least("max_chars_per_token", self.max_chars_per_token, 1)
        at_least("tokenize_threads", self.tokenize_threads, 1)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        code: Optional[str] = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, logit_bias...)

    model: str
    max_tokens: Optional[int] = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    stop: Optional[Union[str, list[str]]] = None
    seed: Optional[int] = Field(default=None, ge=INT64[0], le=INT64[1])  # OpenAI's seed is an int64

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if value is None:
            return []
        value = [value] if isinstance(value, str) else value
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(len(stop) > MAX_STOP_CHARS for stop in value):
            raise ValueError(f"a stop sequence is at most {MAX_STOP_CHARS} characters")
        return value


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(default=16, ge=1)  # OpenAI's default for /v1/completions

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("exactly one prompt per request")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Union[str, list[dict[str, Any]]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise APIError(400, f"only text content parts are supported, got {part.get('type')!r}", "messages")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)


class OpenAIRoutes:
    """The route handlers of one served model: `service` decodes; this layer validates, queues and formats."""

    def __init__(
        self,
        service: GenerationService,
        api_key: Optional[str],
        max_queue: int,
        default_max_tokens: int,
        limits: RequestLimits,
    ):
        at_least("max_queue", max_queue, 1)
        at_least("default_max_tokens", default_max_tokens, 1)
        self.service, self.api_key, self.limits = service, api_key, limits
        self.max_queue, self.default_max_tokens = max_queue, default_max_tokens
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
        self.tokenizer_pool = ThreadPoolExecutor(max_workers=limits.tokenize_threads, thread_name_prefix="tokenize")
        self.state = {"admitted": 0, "rejected_busy": 0, "cancelled": 0, "created": int(time.time())}
        self.max_prompt_chars = service.max_context * limits.max_chars_per_token

    # --- the routes ------------------------------------------------------------------------------
    async def health(self):
        return {"status": "ok", "queued": self.state["admitted"]}

    async def models(self, request: Request):
        self.check_key(request)
        model = {
            "id": self.service.model_name,
            "object": "model",
            "created": self.state["created"],
            "owned_by": "mlsys",
        }
        return {"object": "list", "data": [model]}

    async def completions(self, request: Request):
        self.check_key(request)
        body = await self.read_body(request, CompletionRequest)
        self.check_model_and_length(body, len(body.prompt), "prompt")
        prompt_ids = await _off_loop(self.tokenizer_pool, self.service.codec.encode, body.prompt)
        return await self.respond(request, body, self.resolve(body, prompt_ids, body.max_tokens), chat=False)

    async def chat_completions(self, request: Request):
        self.check_key(request)
        body = await self.read_body(request, ChatRequest)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        self.check_model_and_length(body, sum(len(m["content"]) for m in messages), "messages")
        prompt_ids = await _off_loop(self.tokenizer_pool, self.service.codec.chat_prompt, messages)
        gen = self.resolve(body, prompt_ids, body.max_completion_tokens or body.max_tokens)
        return await self.respond(request, body, gen, chat=True)

    async def shutdown(self):
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    # --- the checks, cheapest first --------------------------------------------------------------
    def check_key(self, request: Request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode("utf-8", "replace"), self.api_key.encode()):
            raise APIError(
                401,
                "invalid or missing API key (send 'Authorization: Bearer <key>')",
                code="invalid_api_key",
                kind="authentication_error",
            )

    async def read_body(self, request: Request, model: type[BaseModel]) -> Any:
        """Size (declared, then counted), arrival time, JSON, depth and unicode, then the fields."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise APIError(
                413, f"the body is {int(declared)} bytes; at most {limit} are accepted", code="body_too_large"
            )
        chunks: list[bytes] = []

        async def pull() -> None:
            size = 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise APIError(413, f"the body is over {limit} bytes", code="body_too_large")
                chunks.append(chunk)

        try:
            await asyncio.wait_for(pull(), self.limits.body_timeout_s)
        except TimeoutError:
            raise APIError(
                408, f"the body did not arrive within {self.limits.body_timeout_s} s", code="request_timeout"
            ) from None
        except ClientDisconnect:
            raise APIError(
                400, "the client disconnected before sending the whole body", code="client_disconnected"
            ) from None
        payload = parse_json(b"".join(chunks), self.limits.max_json_depth)
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise _validation_api_error(exc.errors()) from None

    def check_model_and_length(self, body: _Sampling, prompt_chars: int, param: str) -> None:
        service = self.service
        if body.model != service.model_name:
            raise APIError(
                404,
                f"model {body.model!r} does not exist; this server serves {service.model_name!r}",
                "model",
                "model_not_found",
            )
        if prompt_chars > self.max_prompt_chars:
            raise APIError(
                400,
                f"the prompt has {prompt_chars} characters; the context of {service.max_context} "
                f"tokens holds at most {self.max_prompt_chars}",
                param,
                "context_length_exceeded",
            )

    def resolve(self, body: _Sampling, prompt_ids: list[int], max_tokens: Optional[int]) -> GenerationRequest:
        max_tokens = max_tokens or self.default_max_tokens
        if len(prompt_ids) + max_tokens > self.service.max_context:
            raise APIError(
                400,
                f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds "
                f"the context of {self.service.max_context} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        params = SamplingParams(temperature=body.temperature, top_p=body.top_p)
        return GenerationRequest(prompt_ids, max_tokens, params, list(body.stop or []), body.seed)

    def admit(self) -> _Release:
        """A place in the bounded queue, or 503 at once when it is full."""
        if self.state["admitted"] >= self.max_queue:
            self.state["rejected_busy"] += 1
            raise APIError(
                503,
                f"server busy: {self.max_queue} requests already queued, retry later",
                code="queue_full",
                kind="server_error",
            )
        self.state["admitted"] += 1
        return _Release(self.state)

    # --- answering -------------------------------------------------------------------------------
    async def respond(self, request: Request, body: _Sampling, gen: GenerationRequest, chat: bool):
        release = self.admit()
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            events = self.sse(gen, rid, chat, include_usage, release)
            return _AdmittedStream(events, release, media_type="text/event-stream")
        cancelled = threading.Event()
        watcher = asyncio.ensure_future(_wait_for_disconnect(request, cancelled))
        try:
            text, stats = await _off_loop(self.executor, self.service.complete, gen, cancelled.is_set)
        except asyncio.CancelledError:  # the server is stopping (drain time over) or the task was cancelled
            cancelled.set()
            raise
        finally:
            watcher.cancel()
            release()
        if cancelled.is_set():
            self.state["cancelled"] += 1
        choice = (
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": stats.finish_reason}
            if chat
            else {"index": 0, "text": text, "logprobs": None, "finish_reason": stats.finish_reason}
        )
        return {
            "id": rid,
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.service.model_name,
            "choices": [choice],
            "usage": _usage(stats),
            "decoding": _decoding(stats),
        }

    async def sse(self, gen: GenerationRequest, rid: str, chat: bool, include_usage: bool, release: _Release):
        """Server-sent events: the decode thread hands each text delta to the loop through a queue."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stats = DecodeStats(method=self.service.decoder.method)
        cancelled = threading.Event()
        done = object()

        def work():
            try:
                for delta in self.service.stream(gen, stats, cancelled=cancelled.is_set):
                    loop.call_soon_threadsafe(queue.put_nowait, delta)
            except BaseException as exc:  # surfaced to the client as an error event
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        chunks = _ChunkFormat(rid, chat, self.service.model_name)
        future = loop.run_in_executor(self.executor, work)
        finished = False
        try:
            if chat:
                yield chunks.delta(None, first=True)
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    yield _event({"error": {"message": f"decoding failed: {item}", "type": "server_error"}})
                    break
                yield chunks.delta(item)
            yield chunks.delta(None, finish=stats.finish_reason)
            if include_usage:
                yield chunks.usage(stats)
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not finished:
                cancelled.set()  # a client that went away: skipped if still queued, else stops at the next round
                self.state["cancelled"] += 1
            release()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # never an unobserved exception


class _ChunkFormat:
    """The streamed chunks of one response, in OpenAI's completion or chat-completion shape."""

    def __init__(self, rid: str, chat: bool, model: str):
        self.head = {
            "id": rid,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        self.chat = chat

    def delta(self, text: Optional[str], finish: Optional[str] = None, first: bool = False) -> str:
        if self.chat:
            d = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": d, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return _event({**self.head, "choices": [choice]})

    def usage(self, stats: DecodeStats) -> str:
        return _event({**self.head, "choices": [], "usage": _usage(stats)})


def create_app(
    service: GenerationService,
    api_key: Optional[str] = None,
    max_queue: int = 256,
    default_max_tokens: int = 256,
    limits: Optional[RequestLimits] = None,
) -> FastAPI:
    """The app for one served model: `OpenAIRoutes`' handlers on their paths, OpenAI-shaped errors."""
    routes = OpenAIRoutes(service, api_key, max_queue, default_max_tokens, limits or RequestLimits())
    app = FastAPI(title="mlsys serve (PEARL)", docs_url=None, redoc_url=None, on_shutdown=[routes.shutdown])
    app.state.service, app.state.queue_state, app.state.executor = service, routes.state, routes.executor
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_api_route("/health", routes.health, methods=["GET"])
    app.add_api_route("/v1/models", routes.models, methods=["GET"])
    app.add_api_route("/v1/completions", routes.completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", routes.chat_completions, methods=["POST"])
    return app


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return _error(exc.status, exc.message, exc.param, exc.code, exc.kind)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _validation_response(exc.errors())


async def _off_loop(pool: ThreadPoolExecutor, fn, *args):
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def _wait_for_disconnect(request: Request, cancelled: threading.Event) -> None:
    """Sets `cancelled` when the client goes away (the body has been read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancelled.set()
            return


def parse_json(raw: bytes, max_depth: int) -> Any:
    """JSON that Python can hold safely: no NaN/Infinity, at most `max_depth` levels, valid UTF-8 text."""

    def no_constants(name: str):
        raise ValueError(f"{name} is not a valid JSON number")

    try:
        payload = json.loads(raw, parse_constant=no_constants)
    except RecursionError:
        raise APIError(400, f"the JSON body nests deeper than {max_depth} levels", code="json_too_deep") from None
    except UnicodeDecodeError as exc:
        raise APIError(
            400, f"the body is not UTF-8 text: {exc.reason} at byte {exc.start}", code="invalid_json"
        ) from None
    except ValueError as exc:  # JSONDecodeError, and ints past Python's digit limit
        raise APIError(400, f"malformed JSON body: {exc}", code="invalid_json") from None
    stack = [(payload, 1, "body")]
    while stack:  # iterative: a deep body must not overflow this walk either
        node, depth, where = stack.pop()
        if isinstance(node, str):
            _check_text(node, where)
        elif isinstance(node, float) and not math.isfinite(node):
            raise APIError(400, f"{where}: {node} is not a valid JSON number", where, "invalid_value")
        elif isinstance(node, (dict, list)):
            if depth > max_depth:
                raise APIError(400, f"the JSON body nests deeper than {max_depth} levels", code="json_too_deep")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                if isinstance(key, str):
                    _check_text(key, where)
                stack.append((value, depth + 1, f"{where}.{key}" if where != "body" else str(key)))
    return payload


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(
            400,
            f"{where}: invalid unicode: a lone surrogate \\u{ord(text[exc.start]):04x} at character "
            f"{exc.start} (surrogates must come in pairs)",
            where,
            "invalid_unicode",
        ) from None


def _validation_api_error(errors: list) -> APIError:
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, f"malformed JSON body: {first.get('msg')}", None, "invalid_json")
    return APIError(400, f"{'.'.join(loc) or 'body'}: {first.get('msg')}", ".".join(loc) or None, "invalid_value")


def _validation_response(errors: list) -> JSONResponse:
    exc = _validation_api_error(errors)
    return _error(exc.status, exc.message, exc.param, exc.code, exc.kind)


class _Release:
    """Gives a request's admission back exactly once, whichever path finishes it first."""

    def __init__(self, state: dict):
        self._state, self._done = state, False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._state["admitted"] -= 1


class _AdmittedStream(StreamingResponse):
    """A streamed response that releases its admission even if its body never starts.

    A client that disconnects before the first byte gets its response task cancelled before the
    body generator runs, so the generator's own `finally` never does; this one always runs.
    """

    def __init__(self, content, release: _Release, **kwargs):
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(stats: DecodeStats) -> dict:
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.new_tokens,
        "total_tokens": stats.prompt_tokens + stats.new_tokens,
    }


def _decoding(stats: DecodeStats) -> dict:
    return {
        "method": stats.method,
        "acceptance_rate": round(stats.acceptance_rate, 4),
        "mean_accepted_tokens": round(stats.mean_accepted_tokens, 4),
        "target_forwards": stats.target_forwards,
        "draft_forwards": stats.draft_forwards,
    }


def _error(
    status: int, message: str, param: Optional[str], code: Optional[str], kind: str = "invalid_request_error"
) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"message": message, "type": kind, "param": param, "code": code}}
    )
