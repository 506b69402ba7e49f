"""The OpenAI-compatible FastAPI app: ``build_app(engine, served_model_name, api_key=None)``.

Every failure a client can cause maps to a 4xx with the OpenAI error object; requests are aborted (and their KV
blocks freed) whenever the client goes away, streamed or not.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import unifer
from unifer.engine.async_engine import AsyncLLMEngine, EngineStepError, Overloaded, RequestStream
from unifer.engine.outputs import RequestOutput
from unifer.server.chat import render_conversation
from unifer.server.metrics import ServerMetrics
from unifer.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
    ParamError,
    TokenizeRequest,
    TokenizeResponse,
)
from unifer.server.render import ChatRenderer, CompletionRenderer, Renderer

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_PROMPTS = 256  # prompts in one /v1/completions batch
_ERROR_RESPONSES = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 503)}


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def _dumps(obj: object) -> str:
    # ensure_ascii: a lone surrogate from a client's JSON can never make the encoder fail (a 500).
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _error_response(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
                    headers: dict[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return Response(_dumps(body), status_code=status, media_type="application/json", headers=headers)


class BodyLimit:
    """Pure ASGI middleware: reads at most ``limit`` bytes of a request body, else 413 (BaseHTTPMiddleware would
    break disconnect detection for streams)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > self.limit)
        chunks, size = [], 0
        while not too_big:
            message = await receive()
            if message["type"] != "http.request":
                chunks.append(message)
                break
            size += len(message.get("body", b""))
            too_big = size > self.limit
            chunks.append(message)
            if not message.get("more_body", False):
                break
        if too_big:
            resp = _error_response(413, f"the request body exceeds {self.limit} bytes", "invalid_request_error",
                                   code="request_too_large")
            return await resp(scope, receive, send)
        body = b"".join(m.get("body", b"") for m in chunks if m["type"] == "http.request")
        replay = [{"type": "http.request", "body": body, "more_body": False}]
        replay += [m for m in chunks if m["type"] != "http.request"]

        async def replay_receive():
            # After the body, further receives wait on the real channel: that is how a disconnect is seen.
            return replay.pop(0) if replay else await receive()

        return await self.app(scope, replay_receive, send)


class _SSE(StreamingResponse):
    """Server-sent events that cancel the generator when the client disconnects, whatever the ASGI version
    (Starlette only listens for the disconnect below ASGI spec 2.4)."""

    def __init__(self, body: AsyncIterator[str]) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._body = body

    async def __call__(self, scope, receive, send):
        async def stream():
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        streaming = asyncio.ensure_future(stream())
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({streaming, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (streaming, watcher):
                task.cancel()
            await asyncio.gather(streaming, watcher, return_exceptions=True)
            await self._body.aclose()  # runs the generator's finally: aborts the requests


async def _wait_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _merge(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Interleave several requests' outputs as they come; aborts all of them when closed early."""
    if len(streams) == 1:
        async for out in streams[0]:
            yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for out in s:
                queue.put_nowait((i, out))
        except Exception as e:
            queue.put_nowait((i, e))
        queue.put_nowait((i, None))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


class _Server:
    """Request handling shared by both endpoints; holds the engine and the names."""

    def __init__(self, engine: AsyncLLMEngine, model_name: str) -> None:
        self.engine, self.model_name = engine, model_name

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def encode(self, text: str, add_special_tokens: bool = True, param: str = "prompt") -> list[int]:
        tok = self.engine.tokenizer
        if tok is None:
            raise ParamError("this checkpoint has no tokenizer.json: send token ids instead of text", param)
        try:
            return tok.encode(text, add_special_tokens=add_special_tokens)
        except Exception as e:  # e.g. lone surrogates the tokenizer cannot take
            raise ParamError(f"the text cannot be tokenized: {e}", param) from e

    def max_tokens_for(self, ids: list[int], requested: int | None, explicit: bool, param: str) -> int:
        limit = self.engine.max_model_len
        if len(ids) >= limit:
            raise ParamError(f"the prompt has {len(ids)} tokens, but this model's maximum context length is "
                             f"{limit} tokens, which leaves no room to generate", "prompt" if param == "max_tokens"
                             else "messages", "context_length_exceeded")
        room = limit - len(ids)
        if requested is not None and requested > room:
            if explicit:
                raise ParamError(f"the prompt ({len(ids)} tokens) plus {param} ({requested}) exceeds this "
                                 f"model's maximum context length of {limit} tokens", param,
                                 "context_length_exceeded")
            requested = room  # an OpenAI default (16) is clamped rather than refused
        return room if requested is None else requested

    async def start(self, prefix: str, prompts: list[tuple[str | None, list[int]]], params_for) -> list[RequestStream]:
        """Add every prompt's request, or none: a later failure aborts the earlier ones."""
        streams: list[RequestStream] = []
        try:
            for i, (text, ids) in enumerate(prompts):
                prompt = {"prompt_token_ids": ids, "prompt": text}
                streams.append(await self.engine.add_request(f"{prefix}-{i}", prompt, params_for(ids)))
        except BaseException:
            for s in streams:
                s.abort()
            raise
        return streams

    async def respond(self, request: Request, streams: list[RequestStream], renderer: Renderer, stream: bool,
                      include_usage: bool) -> Response:
        if stream:
            return _SSE(self._sse(streams, renderer, include_usage))
        finals: list[RequestOutput | None] = [None] * len(streams)

        async def collect() -> None:
            async for i, out in _merge(streams):
                finals[i] = out

        work = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
        try:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():  # the client left: stop generating for nobody
                return Response(status_code=499)
            work.result()
        finally:
            work.cancel()
            watcher.cancel()
            for s in streams:
                s.abort()
        return Response(_dumps(renderer.full([o for o in finals if o is not None])), media_type="application/json")

    async def _sse(self, streams: list[RequestStream], renderer: Renderer, include_usage: bool
                   ) -> AsyncIterator[str]:
        merged = _merge(streams)
        try:
            for chunk in renderer.first_chunks(include_usage):
                yield f"data: {_dumps(chunk)}\n\n"
            async for i, out in merged:
                for chunk in renderer.chunks(i, out, include_usage):
                    yield f"data: {_dumps(chunk)}\n\n"
            if include_usage:
                yield f"data: {_dumps(renderer.usage_chunk())}\n\n"
        except EngineStepError as e:  # headers are sent: report in-band, as OpenAI does
            error = {"message": str(e), "type": "internal_error", "param": None, "code": None}
            yield f"data: {_dumps({'error': error})}\n\n"
        finally:
            await merged.aclose()
            for s in streams:
                s.abort()
        yield "data: [DONE]\n\n"


def build_app(engine: AsyncLLMEngine, served_model_name: str, api_key: str | None = None, *,
              max_body_bytes: int = MAX_BODY_BYTES, retry_after_s: int = 1,
              chat_template: str | None = None) -> FastAPI:
    """``chat_template`` replaces the checkpoint's (vLLM's ``--chat-template``)."""
    server = _Server(engine, served_model_name)
    metrics = ServerMetrics(engine, served_model_name)
    engine.listeners.append(metrics)

    async def lifespan(app: FastAPI):
        yield
        await engine.shutdown()

    app = FastAPI(title="unifer", version=unifer.__version__, lifespan=lifespan)
    app.state.metrics = metrics

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError):
        return _error_response(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(ParamError)
    async def _param_error(_: Request, e: ParamError):
        return _error_response(400, str(e), "invalid_request_error", e.param, e.code)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, e: Overloaded):
        return _error_response(503, f"the server is overloaded: {e}; retry later", "server_overloaded",
                               code="overloaded", headers={"Retry-After": str(retry_after_s)})

    @app.exception_handler(ValueError)
    async def _value_error(_: Request, e: ValueError):  # the engine's validation of a request
        return _error_response(400, str(e), "invalid_request_error")

    @app.exception_handler(EngineStepError)
    async def _engine_error(_: Request, e: EngineStepError):
        return _error_response(500, str(e), "internal_error")

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        errors = e.errors()
        err = errors[0] if errors else {"msg": "invalid request", "loc": ()}
        if err.get("type") == "json_invalid":
            return _error_response(400, f"the body is not valid JSON: {err.get('ctx', {}).get('error', '')}",
                                   "invalid_request_error", code="invalid_json")
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        # For a union field pydantic appends the branch tried ("prompt.str"); the field itself is the param.
        param = loc[0] if loc else None
        message = f"{'.'.join(loc)}: {err['msg']}" if loc else err["msg"]
        return _error_response(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException):
        type_ = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error_response(e.status_code, str(e.detail), type_, headers=getattr(e, "headers", None))

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           "authentication_error", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)], responses=_ERROR_RESPONSES)

    def render(messages, add_generation_prompt: bool) -> str:
        return render_conversation(engine.tokenizer, messages, add_generation_prompt=add_generation_prompt,
                                   template=chat_template)

    @v1.get("/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=served_model_name, max_model_len=engine.max_model_len)])

    @v1.post("/completions")
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        body.check_supported()
        prompts = _completion_prompts(server, body.prompt)
        explicit = "max_tokens" in body.model_fields_set and body.max_tokens is not None
        rid = f"cmpl-{uuid.uuid4().hex}"

        def params_for(ids):
            return body.sampling_params(server.max_tokens_for(ids, body.max_tokens, explicit, "max_tokens"),
                                        body.logprobs)

        for _, ids in prompts:  # validate all before adding any
            params_for(ids)
        streams = await server.start(rid, prompts, params_for)
        renderer = CompletionRenderer(rid, served_model_name, body.n, engine.tokenizer, body.logprobs)
        return await server.respond(request, streams, renderer, body.stream, _usage(body))

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        server.check_model(body.model)
        body.check_supported()
        text = render(body.messages, body.add_generation_prompt)
        ids = server.encode(text, add_special_tokens=False, param="messages")
        if not body.logprobs and body.top_logprobs:
            raise ParamError("top_logprobs needs logprobs: true", "top_logprobs")
        param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
        requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        params = body.sampling_params(server.max_tokens_for(ids, requested, True, param),
                                      (body.top_logprobs or 0) if body.logprobs else None)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        streams = await server.start(rid, [(text, ids)], lambda _: params)
        renderer = ChatRenderer(rid, served_model_name, body.n, engine.tokenizer,
                                (body.top_logprobs or 0) if body.logprobs else None)
        return await server.respond(request, streams, renderer, body.stream, _usage(body))

    app.include_router(v1)

    # vLLM's token utilities, behind the same key as /v1.
    tools = APIRouter(dependencies=[Depends(check_key)], responses=_ERROR_RESPONSES)

    @tools.post("/tokenize", response_model=TokenizeResponse)
    async def tokenize(body: TokenizeRequest):
        server.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ParamError("send either a prompt or messages", "prompt")
        if body.messages is not None:
            text, param = render(body.messages, body.add_generation_prompt), "messages"
        else:
            text, param = body.prompt, "prompt"
        special = body.add_special_tokens if body.add_special_tokens is not None else body.messages is None
        ids = server.encode(text, add_special_tokens=special, param=param)
        return TokenizeResponse(count=len(ids), max_model_len=engine.max_model_len, tokens=ids)

    @tools.post("/detokenize", response_model=DetokenizeResponse)
    async def detokenize(body: DetokenizeRequest):
        server.check_model(body.model)
        tok = engine.tokenizer
        if tok is None:
            raise ParamError("this checkpoint has no tokenizer.json", "tokens")
        bad = next((t for t in body.tokens if t >= tok.vocab_size), None)
        if bad is not None:
            raise ParamError(f"token id {bad} is outside the vocabulary [0, {tok.vocab_size})", "tokens")
        return DetokenizeResponse(prompt=tok.decode(body.tokens, skip_special_tokens=False))

    app.include_router(tools)

    @app.get("/health")
    async def health():
        if not engine.is_running:
            return _error_response(503, "the engine loop has stopped", "internal_error")
        return {"status": "ok"}

    @app.get("/version")
    async def version():
        return {"version": unifer.__version__}

    @app.get("/metrics")
    async def prometheus():
        data, content_type = metrics.render()
        return Response(data, media_type=content_type)

    if max_body_bytes:
        app.add_middleware(BodyLimit, limit=max_body_bytes)
    return app


def _usage(body) -> bool:
    return bool(body.stream and body.stream_options and body.stream_options.include_usage)


def _completion_prompts(server: _Server, prompt) -> list[tuple[str | None, list[int]]]:
    if isinstance(prompt, str):
        return [(prompt, server.encode(prompt))]
    if not prompt:
        raise ParamError("the prompt is empty", "prompt")
    if len(prompt) > MAX_PROMPTS and not isinstance(prompt[0], int):
        raise ParamError(f"at most {MAX_PROMPTS} prompts per request", "prompt")
    if isinstance(prompt[0], int):
        return [(None, list(prompt))]
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append((p, server.encode(p)))
        elif not p:
            raise ParamError("a prompt is empty", "prompt")
        else:
            out.append((None, list(p)))
    return out
