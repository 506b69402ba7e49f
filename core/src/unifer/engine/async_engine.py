"""AsyncLLMEngine: the synchronous LLMEngine driven from asyncio, for the server.

The engine is single-threaded, so every call into it (add, abort, step) runs on ONE worker thread, in submission
order: adds and aborts are serialised with steps without locks, and the event loop never blocks on a model call.
One loop task steps while requests exist and hands each request's outputs to its own asyncio queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from unifer.engine.engine import LLMEngine, PromptType
from unifer.engine.outputs import CompletionOutput, RequestOutput
from unifer.sample.params import SamplingParams


class Overloaded(RuntimeError):
    """The waiting queue is full: the caller should retry later (the server answers 503 with Retry-After)."""


class EngineStepError(RuntimeError):
    """An engine step failed; every request in flight gets this error and is aborted."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot taken on the engine thread after each step, so readers never touch live engine state."""

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0
    num_free_blocks: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    num_prompt_tokens: int = 0
    num_generated_tokens: int = 0
    backend: tuple[tuple[str, float], ...] = ()  # the numeric entries of Backend.stats()


class StatsListener(Protocol):
    def on_first_token(self, seconds: float) -> None: ...
    def on_token_gap(self, seconds: float) -> None: ...
    def on_finish(self, output: RequestOutput) -> None: ...


def _snapshot(out: RequestOutput) -> RequestOutput:
    # The engine keeps mutating its CompletionOutputs on the worker thread; consumers get private copies.
    outputs = [CompletionOutput(o.index, o.text, list(o.token_ids),
                                list(o.logprobs) if o.logprobs is not None else None,
                                o.cumulative_logprob, o.finish_reason, o.stop_reason) for o in out.outputs]
    return RequestOutput(out.request_id, out.prompt, list(out.prompt_token_ids), outputs, out.finished,
                         out.num_cached_tokens)


class RequestStream:
    """The outputs of one request, as an async iterator. ``abort()`` (or closing the iterator) frees its KV blocks."""

    def __init__(self, request_id: str, owner: AsyncLLMEngine) -> None:
        self.request_id = request_id
        self._owner = owner
        self._queue: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self.finished = False
        self.arrival = time.monotonic()
        self.last_token_time: float | None = None

    def _put(self, item: RequestOutput | BaseException) -> None:
        self._queue.put_nowait(item)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        # Outputs are cumulative: a slow consumer skips straight to the newest one instead of replaying a backlog.
        while not isinstance(item, BaseException) and not self._queue.empty():
            item = self._queue.get_nowait()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item

    def abort(self) -> None:
        """Idempotent; a no-op once the request has finished."""
        if not self.finished:
            self.finished = True
            self._owner._abort(self.request_id)


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, max_waiting: int = 1024) -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.engine = engine
        self.max_waiting = max_waiting
        self.listeners: list[StatsListener] = []
        self.stats = EngineStats()
        self.num_step_errors = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unifer-engine")
        self._streams: dict[str, RequestStream] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # facts the server needs ---------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        return self.engine.tokenizer

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    @property
    def vocab_size(self) -> int:
        return self.engine.model.spec.vocab_size

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    # lifecycle ----------------------------------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        """Start the stepping task on the running loop (again if a previous loop went away, as in tests)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._run(), name="unifer-engine-loop")

    async def shutdown(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for stream in list(self._streams.values()):
            stream._put(EngineStepError("the engine is shutting down"))
        self._streams.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def is_running(self) -> bool:
        return self._task is None or not self._task.done()

    # requests -----------------------------------------------------------------------------------------------
    def _add_on_worker(self, request_id: str, prompt: PromptType, params: SamplingParams) -> None:
        # Checked on the worker so the count includes every add queued before this one.
        if params.n > self.max_waiting:
            raise ValueError(f"n={params.n} exceeds the server's waiting-queue bound {self.max_waiting}")
        if self.engine.scheduler.num_waiting + params.n > self.max_waiting:
            raise Overloaded(f"{self.engine.scheduler.num_waiting} requests are waiting (bound {self.max_waiting})")
        self.engine.add_request(request_id, prompt, params)

    async def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams) -> RequestStream:
        """Queue a request and return its stream. Raises ValueError for bad input and Overloaded when full."""
        self._ensure_loop()
        if request_id in self._streams:
            raise ValueError(f"request id {request_id!r} is already in use")
        stream = RequestStream(request_id, self)
        # Registered before the add runs, so the first step's outputs always find their queue.
        self._streams[request_id] = stream
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._add_on_worker, request_id,
                                                             prompt, params)
        except BaseException as exc:
            self._streams.pop(request_id, None)
            stream.finished = True
            if isinstance(exc, asyncio.CancelledError):
                # The add may still run on the worker after we were cancelled; the queued abort follows it.
                self._executor.submit(self.engine.abort_request, request_id)
            raise
        assert self._wake is not None
        self._wake.set()
        return stream

    async def generate(self, request_id: str, prompt: PromptType, params: SamplingParams
                       ) -> AsyncIterator[RequestOutput]:
        """Cumulative outputs of one request; closing the iterator early (or cancellation) aborts it."""
        stream = await self.add_request(request_id, prompt, params)
        try:
            async for out in stream:
                yield out
        finally:
            stream.abort()

    def _abort(self, request_id: str) -> None:
        # Non-blocking so it can run from a finally during cancellation; the worker frees the blocks right after
        # the step in progress (if any).
        if self._streams.pop(request_id, None) is not None:
            try:
                self._executor.submit(self._abort_on_worker, request_id)
            except RuntimeError:  # executor shut down: the engine is gone with its blocks
                pass

    def _abort_on_worker(self, request_id: str) -> None:
        self.engine.abort_request(request_id)
        self.stats = self._stats()

    # the loop -----------------------------------------------------------------------------------------------
    def _stats(self) -> EngineStats:
        e = self.engine
        backend = tuple((k, float(v)) for k, v in e.backend.stats().items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool))
        return EngineStats(e.scheduler.num_running, e.scheduler.num_waiting, e.kv.usage, e.kv.num_free_blocks,
                           e.kv.prefix_queries, e.kv.prefix_hits, e.num_prompt_tokens, e.num_generated_tokens,
                           backend)

    def _step_on_worker(self) -> tuple[list[RequestOutput], bool]:
        outputs = [_snapshot(o) for o in self.engine.step()] if self.engine.has_unfinished_requests() else []
        self.stats = self._stats()
        return outputs, self.engine.has_unfinished_requests()

    def _abort_all_on_worker(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            try:
                self.engine.abort_request(rid)
            except Exception:  # keep freeing the others; the engine is already in trouble
                pass
        self.stats = self._stats()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            more = True
            while more:
                try:
                    outputs, more = await loop.run_in_executor(self._executor, self._step_on_worker)
                except Exception as exc:  # propagate to every waiting stream rather than leave them hanging
                    self._fail_all(exc)
                    break
                self._dispatch(outputs)

    def _fail_all(self, exc: Exception) -> None:
        self.num_step_errors += 1
        error = EngineStepError(f"engine step failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._put(error)
        self._executor.submit(self._abort_all_on_worker, list(streams))

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        now = time.monotonic()
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is None:  # aborted while the step ran
                continue
            for listener in self.listeners:
                if stream.last_token_time is None:
                    listener.on_first_token(now - stream.arrival)
                else:
                    listener.on_token_gap(now - stream.last_token_time)
                if out.finished:
                    listener.on_finish(out)
            stream.last_token_time = now
            if out.finished:
                del self._streams[out.request_id]
            stream._put(out)


__all__ = ["AsyncLLMEngine", "EngineStats", "EngineStepError", "Overloaded", "RequestStream"]
