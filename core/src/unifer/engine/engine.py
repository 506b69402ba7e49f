"""The step loop: schedule -> run the model -> sample -> detokenize and check stops -> outputs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from unifer.backends.registry import select_backend
from unifer.config import EngineConfig
from unifer.engine.detokenizer import IncrementalDetokenizer
from unifer.engine.outputs import CompletionOutput, RequestOutput
from unifer.engine.runner import ModelRunner
from unifer.kv.manager import KVCacheManager
from unifer.model.loader import checkpoint_dir, iter_weights, read_config, resolve_dtype
from unifer.model.registry import ModelRegistry
from unifer.model.tokenizer import Tokenizer
from unifer.sample.params import SamplingParams
from unifer.sample.sampler import PendingSample, Sampler, SamplerOutput, SamplingState
from unifer.sched.request import Request, RequestStatus
from unifer.sched.scheduler import Scheduler

PromptType = str | list[int] | dict


@dataclass
class _Sequence:
    """One generated sequence (a request has ``n`` of them)."""

    request: Request
    output: CompletionOutput
    detokenizer: IncrementalDetokenizer | None
    generator: torch.Generator | None


@dataclass
class _Parent:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    sequences: list[_Sequence] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return all(s.output.finished for s in self.sequences)

    def to_output(self) -> RequestOutput:
        return RequestOutput(self.request_id, self.prompt, self.prompt_token_ids,
                             [s.output for s in self.sequences], self.finished,
                             self.sequences[0].request.num_cached_prompt_tokens)


@dataclass
class _InFlight:
    """A step whose sampled tokens the host has not read yet."""

    sampling: list[tuple[_Parent, _Sequence]]  # its sampled rows, in order
    pending: PendingSample
    placed: list[Request]  # the requests holding a placeholder for their row's token


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.backend = select_backend(config.backend)
        self.backend.init_device()
        self.device = self.backend.device()
        folder = checkpoint_dir(config.model.model)
        hf_config = read_config(folder)
        architecture, model_class = ModelRegistry.discover().resolve(hf_config)
        self.dtype = resolve_dtype(config.model.dtype, hf_config)
        self.backend.seed(config.model.seed)
        self.model = model_class(hf_config, self.backend.ops, self.dtype, self.device, architecture=architecture)
        self.model.load_weights(iter_weights(folder, self.device))
        self.model.eval()
        self.tokenizer = Tokenizer.from_pretrained(folder) if (folder / "tokenizer.json").is_file() else None
        spec = self.model.spec
        self.max_model_len = config.model.max_model_len or spec.max_positions
        if self.max_model_len > spec.max_positions:
            raise ValueError(f"max_model_len {self.max_model_len} exceeds the model's max_position_embeddings "
                             f"{spec.max_positions}")
        block_size = config.cache.block_size
        self.backend.check_supported(dtype=self.dtype, head_size=spec.head_dim, block_size=block_size,
                                     gqa_ratio=spec.heads // spec.kv_heads,
                                     sliding_window=any(spec.windows) or None, soft_cap=spec.soft_cap)
        self.num_blocks = self._num_blocks(spec)
        shape = self.backend.kv_cache_shape(self.num_blocks, block_size, spec.kv_heads, spec.head_dim)
        self.kv_caches = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(spec.layers)]
        self.kv = KVCacheManager(self.num_blocks, block_size, config.cache.enable_prefix_caching)
        self.scheduler = Scheduler(config.scheduler, self.kv, self.max_model_len)
        self.runner = ModelRunner(self.model, self.backend, self.kv_caches, block_size, self.device)
        graph_runner = None if config.enforce_eager else self.backend.graph_runner()
        if graph_runner is not None:
            self.runner.capture_graphs(graph_runner, config.scheduler.max_num_seqs, self.max_model_len,
                                       config.graph_batch_sizes, config.mixed_graph_sizes)
        self.sampler = Sampler(self.backend.ops)
        sched = config.scheduler
        self.backend.warm_up(runner=self.runner, sampler=self.sampler, max_model_len=self.max_model_len,
                             max_num_batched_tokens=sched.max_num_batched_tokens, max_num_seqs=sched.max_num_seqs,
                             block_size=block_size)
        has_events = self.backend.step_event() is not None
        if config.async_scheduling and not has_events:
            raise ValueError(f"backend {self.backend.name!r} has no step events, which asynchronous scheduling "
                             "needs; leave async_scheduling unset or False")
        # May be switched between steps: a step in flight is resolved either way.
        self.async_scheduling = has_events if config.async_scheduling is None else config.async_scheduling
        self._inflight: _InFlight | None = None
        self._parents: dict[str, _Parent] = {}
        self._sequences: dict[str, tuple[_Parent, _Sequence]] = {}
        self.num_generated_tokens = 0
        self.num_prompt_tokens = 0

    def _num_blocks(self, spec) -> int:
        cache = self.config.cache
        if cache.num_blocks:
            return cache.num_blocks
        per_block = math.prod(self.backend.kv_cache_shape(1, cache.block_size, spec.kv_heads, spec.head_dim))
        bytes_per_block = per_block * spec.layers * self.dtype.itemsize
        budget = self.backend.kv_cache_budget(cache.memory_fraction) - self._profile_activation_bytes(spec)
        if cache.max_cache_bytes:
            budget = min(budget, cache.max_cache_bytes)
        blocks_per_seq = -(-self.max_model_len // cache.block_size)
        usable = blocks_per_seq * self.config.scheduler.max_num_seqs  # more could never be used
        num_blocks = min(usable, budget // bytes_per_block) + 1  # + the null block
        if num_blocks < blocks_per_seq + 1:
            raise ValueError(
                f"the KV cache fits {num_blocks - 1} blocks of {cache.block_size} tokens, fewer than one sequence of "
                f"max_model_len {self.max_model_len} needs ({blocks_per_seq}); lower max_model_len or give the "
                "cache more memory")
        return num_blocks

    @torch.inference_mode()
    def _profile_activation_bytes(self, spec) -> int:
        """Peak memory of the largest step the scheduler can issue (a full token budget spread over the most
        sequences, every one sampling), run on a throwaway cache; the KV cache must leave room for it."""
        backend, block_size = self.backend, self.config.cache.block_size
        backend.synchronize()
        backend.reset_peak_memory()
        base = backend.peak_memory()
        if base is None:
            return 0
        tokens = min(self.config.scheduler.max_num_batched_tokens, self.max_model_len)
        seqs = min(self.config.scheduler.max_num_seqs, tokens)
        lengths = [tokens // seqs + (i < tokens % seqs) for i in range(seqs)]
        shape = backend.kv_cache_shape(tokens // block_size + seqs + 1, block_size, spec.kv_heads, spec.head_dim)
        caches = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(spec.layers)]
        rows, next_block = [], 1
        for n in lengths:
            count = -(-n // block_size)
            rows.append(([0] * n, 0, n, list(range(next_block, next_block + count)), True))
            next_block += count
        logits = ModelRunner(self.model, backend, caches, block_size, self.device).execute(rows)
        # The sampler's softmax, sort and top-k work on copies of the logits.
        sampler_bytes = 3 * logits.numel() * logits.element_size()
        backend.synchronize()
        peak = backend.peak_memory() or base
        del caches, logits
        backend.empty_cache()
        kv_bytes = math.prod(shape) * spec.layers * self.dtype.itemsize
        return max(0, peak - base - kv_bytes) + sampler_bytes

    # requests -------------------------------------------------------------------------------------------------
    def _prompt_ids(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this checkpoint has no tokenizer.json: pass {'prompt_token_ids': [...]}")
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" not in prompt:
                raise ValueError("a dict prompt needs the key 'prompt_token_ids'")
            ids = prompt["prompt_token_ids"]
            text = prompt.get("prompt")
        else:
            ids, text = prompt, None
        ids = list(ids)
        vocab = self.model.spec.vocab_size
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]!r} is outside the vocabulary [0, {vocab})")
        return text, ids

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams | None = None) -> None:
        params = params or SamplingParams()
        if request_id in self._parents:
            raise ValueError(f"request id {request_id!r} is already in use")
        text, ids = self._prompt_ids(prompt)
        vocab = self.model.spec.vocab_size
        biased = [t for t in params.logit_bias or {} if t >= vocab]
        if biased:
            raise ValueError(f"logit_bias token id {biased[0]} is outside the vocabulary [0, {vocab})")
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"the prompt has {len(ids)} tokens; max_model_len is {self.max_model_len}, which "
                             "leaves no room to generate")
        parent = _Parent(request_id, text, ids, params)
        for i in range(params.n):
            child_id = request_id if params.n == 1 else f"{request_id}#{i}"
            request = Request(child_id, ids, params)
            detok = None
            if self.tokenizer is not None:
                detok = IncrementalDetokenizer(self.tokenizer, ids, skip_special_tokens=params.skip_special_tokens,
                                               stop=params.stop or (),
                                               include_stop_str_in_output=params.include_stop_str_in_output,
                                               min_tokens=params.min_tokens)
            generator = None
            if params.seed is not None and not params.greedy:
                generator = self.backend.make_generator(params.seed + i)
            output = CompletionOutput(i, logprobs=[] if params.logprobs is not None else None,
                                      cumulative_logprob=0.0 if params.logprobs is not None else None)
            parent.sequences.append(_Sequence(request, output, detok, generator))
        for seq in parent.sequences:
            try:
                self.scheduler.add_request(seq.request)
            except ValueError:
                for added in parent.sequences:
                    self.scheduler.abort(added.request.request_id)
                raise
        self._parents[request_id] = parent
        for seq in parent.sequences:
            self._sequences[seq.request.request_id] = (parent, seq)
        self.num_prompt_tokens += len(ids) * params.n

    def abort_request(self, request_id: str) -> bool:
        """Abort a request and free its KV blocks at once. Unknown ids are ignored (returns False)."""
        parent = self._parents.pop(request_id, None)
        if parent is None:
            return False
        for seq in parent.sequences:
            self.scheduler.abort(seq.request.request_id)
            self._sequences.pop(seq.request.request_id, None)
            if seq.output.finish_reason is None:
                seq.output.finish_reason = "abort"
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._parents)

    # the step -------------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduling step; returns an output for every request that got a token.

        Under asynchronous scheduling those tokens are the previous step's: this step is scheduled and launched
        first, with each running sequence's unread token as a placeholder that the device fills in, so the host's
        work overlaps the device's. A sequence that stopped on that token has had one token too many computed,
        which is dropped."""
        inflight, self._inflight = self._inflight, None
        plan = self.scheduler.schedule()
        if not plan.scheduled:
            if inflight is not None:
                return self._resolve(inflight)
            if self._parents:  # admission control guarantees progress; never spin silently
                raise RuntimeError(f"the scheduler made no progress with {len(self._parents)} requests pending")
            return []
        rows = [(s.request.all_token_ids, s.start, s.num_new_tokens, self.kv.block_ids(s.request.request_id),
                 s.samples) for s in plan.scheduled]
        sampling = [self._sequences[s.request.request_id] for s in plan.scheduled if s.samples]
        outputs: list[RequestOutput] = []
        if inflight is not None and any(seq.request.sampling_params.uses_penalties for _, seq in sampling):
            # Penalties count every output token on the host: resolve the placeholders before sampling.
            outputs, inflight = self._resolve(inflight), None
        logits = self.runner.execute(rows, inflight.pending.tokens if inflight is not None and inflight.placed
                                     else None)
        pending = None
        if sampling:
            states = [SamplingState(seq.request.sampling_params, seq.request.prompt_token_ids,
                                    seq.request.output_token_ids, seq.generator, self._banned(seq.request))
                      for _, seq in sampling]
            event = self.backend.step_event() if self.async_scheduling else None
            pending = self.sampler.launch(logits, states, event)
        if inflight is not None:
            outputs = self._resolve(inflight)
        # After the resolve: the blocks this step filled are hashed by their real tokens.
        self.scheduler.finish_step(plan)
        if pending is None:
            return outputs
        if self.async_scheduling:
            self._inflight = self._place(sampling, pending)
            return outputs
        return self._finish(sampling, pending.result())

    def _place(self, sampling: list[tuple[_Parent, _Sequence]], pending: PendingSample) -> _InFlight:
        """Append a placeholder for each sampled row's unread token, so the next step can be scheduled now. A
        sequence that the token must end by length gets none: it is left with nothing to compute."""
        placed = []
        for j, (_, seq) in enumerate(sampling):
            request = seq.request
            if request.status is not RequestStatus.RUNNING or self._reaches_length(request, extra=1):
                continue
            request.append_token(-(j + 1))
            placed.append(request)
        return _InFlight(sampling, pending, placed)

    def _banned(self, request: Request) -> tuple[int, ...]:
        """The tokens that may not end the request at the row being sampled: before ``min_tokens`` outputs (counting
        a placeholder still on the device), EOS and the stop ids."""
        params = request.sampling_params
        if request.num_output_tokens >= params.min_tokens:
            return ()
        eos = () if params.ignore_eos or self.tokenizer is None else tuple(sorted(self.tokenizer.eos_token_ids))
        return eos + tuple(params.stop_token_ids)

    def _reaches_length(self, request: Request, extra: int = 0) -> bool:
        """Whether ``extra`` more tokens bring the request to its max_tokens or to max_model_len."""
        max_tokens = request.sampling_params.max_tokens
        return (request.num_tokens + extra >= self.max_model_len
                or (max_tokens is not None and request.num_output_tokens + extra >= max_tokens))

    def _resolve(self, inflight: _InFlight) -> list[RequestOutput]:
        for request in inflight.placed:
            request.all_token_ids.pop()  # the placeholder; _append adds the token in its place
        return self._finish(inflight.sampling, inflight.pending.result())

    def _finish(self, sampling: list[tuple[_Parent, _Sequence]], result: SamplerOutput) -> list[RequestOutput]:
        touched: dict[str, _Parent] = {}
        for (parent, seq), token, logprobs in zip(sampling, result.token_ids, result.logprobs, strict=True):
            if seq.output.finished:  # stopped on the previous token, or aborted, since this row was launched
                continue
            self._append(seq, token, logprobs)
            touched[parent.request_id] = parent
        outputs = []
        for parent in touched.values():
            outputs.append(parent.to_output())
            if parent.finished:
                del self._parents[parent.request_id]
                for seq in parent.sequences:
                    self._sequences.pop(seq.request.request_id, None)
        return outputs

    def _append(self, seq: _Sequence, token: int, logprobs: dict[int, float] | None) -> None:
        request, out, params = seq.request, seq.output, seq.request.sampling_params
        request.append_token(token)
        out.token_ids.append(token)
        self.num_generated_tokens += 1
        if logprobs is not None and out.logprobs is not None:
            out.logprobs.append(logprobs)
            out.cumulative_logprob += logprobs[token]
        reason, stop_reason = None, None
        if seq.detokenizer is not None:
            stop = seq.detokenizer.append(token)
            out.text = seq.detokenizer.text
            if stop.stopped:
                reason, stop_reason = "stop", stop.stop_string
        if reason is None:
            if not params.ignore_eos and self.tokenizer is not None and token in self.tokenizer.eos_token_ids:
                reason = "stop"
            elif token in params.stop_token_ids:
                reason, stop_reason = "stop", token
            elif self._reaches_length(request):
                reason = "length"
        if reason is not None:
            out.finish_reason, out.stop_reason = reason, stop_reason
            self.scheduler.finish_request(request.request_id,
                                          RequestStatus.FINISHED_STOPPED if reason == "stop"
                                          else RequestStatus.FINISHED_LENGTH)
            if seq.detokenizer is not None:
                seq.detokenizer.flush()
                out.text = seq.detokenizer.text
