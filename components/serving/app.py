"""The OpenAI-compatible HTTP API (FastAPI): /v1/models, /v1/completions, /v1/chat/completions.

- Validation answers 4xx in OpenAI's error shape {"error": {"message", "type", "param", "code"}}:
  400 malformed JSON / bad or out-of-range fields / prompt + max_tokens over the context,
  401 wrong or missing API key (when one is configured), 404 unknown model, 503 queue full.
- A bounded queue: at most `max_queue` requests are admitted (decoding or waiting); more get a
  503 at once instead of piling up, so a burst never takes the server down.
- Streaming is Server-Sent Events; the decode runs on one executor thread and hands deltas to the
  event loop, so the loop keeps answering while a request decodes.
"""
from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.decoding.engine import DecodeStats
from components.decoding.sampling import SamplingParams
from components.serving.service import GenerationRequest, GenerationService

MAX_STOP_SEQUENCES = 4


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error"):
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
    seed: Optional[int] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if value is None:
            return []
        value = [value] if isinstance(value, str) else value
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
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


def create_app(service: GenerationService, api_key: Optional[str] = None, max_queue: int = 256,
               default_max_tokens: int = 256) -> FastAPI:
    """The app for one served model; `service` decodes, this layer validates, queues and formats."""
    app = FastAPI(title="mlsys serve (PEARL)", docs_url=None, redoc_url=None)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode")
    state = {"admitted": 0, "rejected_busy": 0, "created": int(time.time())}
    app.state.service, app.state.queue_state, app.state.executor = service, state, executor

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return _error(exc.status, exc.message, exc.param, exc.code, exc.kind)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            return _error(400, f"malformed JSON body: {first.get('msg')}", None, "invalid_json")
        message = f"{'.'.join(loc) or 'body'}: {first.get('msg')}"
        return _error(400, message, ".".join(loc) or None, "invalid_value")

    @app.on_event("shutdown")
    async def _shutdown():
        executor.shutdown(wait=False, cancel_futures=True)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key", kind="authentication_error")

    def resolve(body: _Sampling, prompt_ids: list[int], max_tokens: Optional[int]) -> GenerationRequest:
        if body.model != service.model_name:
            raise APIError(404, f"model {body.model!r} does not exist; this server serves {service.model_name!r}",
                           "model", "model_not_found")
        max_tokens = max_tokens or default_max_tokens
        if len(prompt_ids) + max_tokens > service.max_context:
            raise APIError(400, f"the prompt ({len(prompt_ids)} tokens) plus max_tokens ({max_tokens}) exceeds "
                                f"the context of {service.max_context} tokens", "max_tokens", "context_length_exceeded")
        params = SamplingParams(temperature=body.temperature, top_p=body.top_p)
        return GenerationRequest(prompt_ids, max_tokens, params, list(body.stop or []), body.seed)

    @app.get("/health")
    async def health():
        return {"status": "ok", "queued": state["admitted"]}

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [
            {"id": service.model_name, "object": "model", "created": state["created"], "owned_by": "mlsys"}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_key(request)
        gen = resolve(body, service.codec.encode(body.prompt), body.max_tokens)
        return await respond(body, gen, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check_key(request)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        gen = resolve(body, service.codec.chat_prompt(messages), body.max_completion_tokens or body.max_tokens)
        return await respond(body, gen, chat=True)

    async def respond(body: _Sampling, gen: GenerationRequest, chat: bool):
        if state["admitted"] >= max_queue:
            state["rejected_busy"] += 1
            raise APIError(503, f"server busy: {max_queue} requests already queued, retry later",
                           code="queue_full", kind="server_error")
        state["admitted"] += 1
        release = _Release(state)
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return _AdmittedStream(sse(gen, rid, chat, include_usage, release), release,
                                   media_type="text/event-stream")
        try:
            loop = asyncio.get_running_loop()
            text, stats = await loop.run_in_executor(executor, service.complete, gen)
        finally:
            release()
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": stats.finish_reason}
                  if chat else {"index": 0, "text": text, "logprobs": None, "finish_reason": stats.finish_reason})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": service.model_name, "choices": [choice], "usage": _usage(stats),
                "decoding": _decoding(stats)}

    async def sse(gen: GenerationRequest, rid: str, chat: bool, include_usage: bool, release: "_Release"):
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stats = DecodeStats(method=service.decoder.method)
        cancelled = {"flag": False}
        done = object()

        def work():
            try:
                for delta in service.stream(gen, stats, cancelled=lambda: cancelled["flag"]):
                    loop.call_soon_threadsafe(queue.put_nowait, delta)
            except BaseException as exc:  # surfaced to the client as an error event
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: Optional[str], finish: Optional[str] = None, first: bool = False) -> str:
            if chat:
                d = {"role": "assistant", "content": ""} if first else ({"content": delta} if delta is not None else {})
                choice = {"index": 0, "delta": d, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            return _event({"id": rid, "object": kind, "created": created, "model": service.model_name,
                           "choices": [choice]})

        future = loop.run_in_executor(executor, work)
        try:
            if chat:
                yield chunk(None, first=True)
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    yield _event({"error": {"message": f"decoding failed: {item}", "type": "server_error"}})
                    break
                yield chunk(item)
            yield chunk(None, finish=stats.finish_reason)
            if include_usage:
                yield _event({"id": rid, "object": kind, "created": created, "model": service.model_name,
                              "choices": [], "usage": _usage(stats)})
            yield "data: [DONE]\n\n"
        finally:
            cancelled["flag"] = True  # a client that went away stops the decode at the next round
            release()
            await asyncio.shield(future)

    return app


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
    import json

    return f"data: {json.dumps(payload)}\n\n"


def _usage(stats: DecodeStats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens}


def _decoding(stats: DecodeStats) -> dict:
    return {"method": stats.method, "acceptance_rate": round(stats.acceptance_rate, 4),
            "mean_accepted_tokens": round(stats.mean_accepted_tokens, 4),
            "target_forwards": stats.target_forwards, "draft_forwards": stats.draft_forwards}


def _error(status: int, message: str, param: Optional[str], code: Optional[str],
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param,
                                                               "code": code}})
