"""The offline API: ``LLM(model=PATH).generate(prompts, SamplingParams(...))``, and ``chat(messages)``."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from tqdm.auto import tqdm

from unifer.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from unifer.engine.engine import LLMEngine, PromptType
from unifer.engine.outputs import RequestOutput
from unifer.sample.params import SamplingParams


class LLM:
    def __init__(
        self,
        model: str,
        backend: str | None = None,
        dtype: str = "auto",
        *,
        max_model_len: int | None = None,
        seed: int = 0,
        block_size: int = 16,
        num_blocks: int | None = None,
        memory_fraction: float = 0.9,
        enable_prefix_caching: bool = True,
        max_num_batched_tokens: int = 8192,  # offline: throughput first (the server defaults to 2048, latency first)
        max_num_seqs: int = 256,
        enable_chunked_prefill: bool = True,
        gpu_memory_utilization: float | None = None,
        enforce_eager: bool = False,
        graph_batch_sizes: list[int] | None = None,
        mixed_graph_sizes: list[int] | None = None,
        async_scheduling: bool | None = None,
    ) -> None:
        if gpu_memory_utilization is not None:  # vLLM's name for the same setting
            memory_fraction = gpu_memory_utilization
        config = EngineConfig(
            model=ModelConfig(model=str(model), dtype=dtype, max_model_len=max_model_len, seed=seed),
            cache=CacheConfig(block_size=block_size, num_blocks=num_blocks, memory_fraction=memory_fraction,
                              enable_prefix_caching=enable_prefix_caching),
            scheduler=SchedulerConfig(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs,
                                      enable_chunked_prefill=enable_chunked_prefill),
            backend=backend,
            enforce_eager=enforce_eager,
            graph_batch_sizes=graph_batch_sizes,
            mixed_graph_sizes=mixed_graph_sizes,
            async_scheduling=async_scheduling,
        )
        self.engine = LLMEngine(config)
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def chat(
        self,
        messages: Sequence[dict] | Sequence[Sequence[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
    ) -> list[RequestOutput]:
        """vLLM's ``LLM.chat``: one conversation (a list of ``{"role": ..., "content": ...}``) or a list of them,
        each rendered with the checkpoint's chat template (or ``chat_template``, a file or the template itself) as
        ``/v1/chat/completions`` renders it, then generated as ``generate`` does."""
        # The server's renderer and message schema, so both entry points format a conversation alike; neither
        # module imports the web framework.
        from unifer.server.chat import load_chat_template, render_conversation
        from unifer.server.protocol import ChatMessage

        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        tok = self.engine.tokenizer
        if tok is None:
            raise ValueError("this checkpoint has no tokenizer.json, which chat needs; use generate with token ids")
        template = load_chat_template(chat_template) if chat_template else None
        prompts = []
        for conversation in conversations:
            text = render_conversation(tok, [ChatMessage.model_validate(m) for m in conversation],
                                       add_generation_prompt=add_generation_prompt, template=template)
            prompts.append({"prompt_token_ids": tok.encode(text, add_special_tokens=False), "prompt": text})
        return self.generate(prompts, sampling_params, use_tqdm)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Generate for every prompt (strings, token-id lists or {"prompt_token_ids": [...]}); outputs in order."""
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                 and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params = list(sampling_params)
            if len(params) != len(prompts):
                raise ValueError(f"{len(params)} sampling params for {len(prompts)} prompts")
        ids = [f"gen-{next(self._ids)}" for _ in prompts]
        try:
            for rid, prompt, p in zip(ids, prompts, params, strict=True):
                self.engine.add_request(rid, prompt, p)
            finished: dict[str, RequestOutput] = {}
            with tqdm(total=len(prompts), desc="generate", disable=not use_tqdm or len(prompts) < 2) as bar:
                while self.engine.has_unfinished_requests():
                    for out in self.engine.step():
                        if out.finished:
                            finished[out.request_id] = out
                            bar.update(1)
        except BaseException:
            for rid in ids:
                self.engine.abort_request(rid)
            raise
        return [finished[rid] for rid in ids]
