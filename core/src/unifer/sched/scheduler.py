"""Token-budget scheduler (vLLM v1 style): each step hands every request some tokens to compute, running requests
first, then waiting ones FCFS. A prefill, a prefill chunk and a decode are the same thing here: the tokens between
``num_computed_tokens`` and ``num_tokens``. When KV blocks run out, the newest running request is preempted and
recomputed later, so the oldest requests always make progress.

``schedule()`` only decides; ``finish_step()`` (after the model ran) advances ``num_computed_tokens``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from unifer.config import SchedulerConfig
from unifer.kv.manager import KVCacheManager
from unifer.sched.request import Request, RequestStatus


@dataclass(slots=True)
class ScheduledRequest:
    request: Request
    num_new_tokens: int
    start: int  # num_computed_tokens when scheduled (after any prefix-cache hit)
    # True when this step computes the request's last known token, so its logits give the next one. Fixed at
    # schedule time: appending the sampled token afterwards must not change the answer.
    samples: bool = field(init=False)

    def __post_init__(self) -> None:
        self.samples = self.start + self.num_new_tokens == self.request.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_batched_tokens: int = 0
    preempted: list[Request] = field(default_factory=list)


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KVCacheManager, max_model_len: int) -> None:
        if max_model_len <= 0:
            raise ValueError(f"max_model_len must be positive, got {max_model_len}")
        self.config = config
        self.kv = kv
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # admission order: the newest is last and preempted first
        self._requests: dict[str, Request] = {}
        self.num_preemptions = 0  # over the scheduler's life, for metrics and tests

    # bookkeeping ----------------------------------------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    def get(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def add_request(self, request: Request) -> None:
        """Queue a request; rejects at once one that could never run, rather than letting it wait forever."""
        rid = request.request_id
        if rid in self._requests:
            raise ValueError(f"request id {rid!r} is already scheduled")
        n = request.num_prompt_tokens
        if n > self.max_model_len:
            raise ValueError(f"prompt has {n} tokens, more than max_model_len {self.max_model_len}")
        if not self.config.enable_chunked_prefill and n > self.config.max_num_batched_tokens:
            raise ValueError(f"prompt has {n} tokens, more than max_num_batched_tokens "
                             f"{self.config.max_num_batched_tokens}, and chunked prefill is off")
        need = self.kv.blocks_needed(n)
        if need > self.kv.num_usable_blocks:
            raise ValueError(f"prompt has {n} tokens, which needs {need} KV blocks of {self.kv.block_size}, but the "
                             f"cache has only {self.kv.num_usable_blocks}")
        request.status = RequestStatus.WAITING
        self._requests[rid] = request
        self.waiting.append(request)

    def finish_request(self, request_id: str, status: RequestStatus) -> bool:
        """Remove a request wherever it is and free its blocks. Returns False for an unknown id."""
        if not status.finished:
            raise ValueError(f"finish_request needs a finished status, got {status}")
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self.kv.free(request)
        request.status = status
        return True

    def abort(self, request_id: str) -> bool:
        return self.finish_request(request_id, RequestStatus.FINISHED_ABORTED)

    def _preempt(self, request: Request) -> None:
        """Drop the request's KV and send it to the front of the queue to be recomputed."""
        self.kv.free(request)
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(request)

    # the step -------------------------------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        chunked = self.config.enable_chunked_prefill
        kv, running = self.kv, self.running
        scheduled: list[ScheduledRequest] = []
        preempted: list[Request] = []

        i = 0
        while i < len(running) and budget > 0:
            request = running[i]
            computed = request.num_computed_tokens
            n = request.num_tokens - computed
            if n > budget:
                if not chunked:  # a (re)prefill must run whole; later requests may still fit
                    i += 1
                    continue
                n = budget
            if n <= 0:
                i += 1
                continue
            while not kv.allocate_slots(request, n):
                victim = running.pop()
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            else:
                scheduled.append(ScheduledRequest(request, n, computed))
                budget -= n
                i += 1
                continue
            break  # the request preempted itself: nothing after it is left running

        if not preempted:
            max_seqs = self.config.max_num_seqs
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < max_seqs:
                request = waiting[0]
                blocks, num_cached = kv.get_computed_blocks(request)
                n = request.num_tokens - num_cached
                if n > budget:
                    if not chunked:
                        break
                    n = budget
                if not kv.allocate_slots(request, n, blocks):
                    break
                waiting.popleft()
                request.num_computed_tokens = num_cached
                if request.num_preemptions == 0:
                    request.num_cached_prompt_tokens = num_cached
                request.status = RequestStatus.RUNNING
                running.append(request)
                scheduled.append(ScheduledRequest(request, n, num_cached))
                budget -= n

        return SchedulerOutput(scheduled, self.config.max_num_batched_tokens - budget, preempted)

    def finish_step(self, output: SchedulerOutput) -> None:
        """Record that the model computed the scheduled tokens, and offer newly filled blocks to the cache."""
        cache = self.kv.cache_full_blocks
        running = RequestStatus.RUNNING
        for s in output.scheduled:
            request = s.request
            if request.status is not running:  # finished or aborted since schedule(): its blocks are gone
                continue
            request.num_computed_tokens = s.start + s.num_new_tokens
            cache(request)
