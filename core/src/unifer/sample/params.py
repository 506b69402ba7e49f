"""SamplingParams: what a request asks of the sampler and the stop checks, validated at the API boundary.

Field names and defaults follow vLLM/OpenAI so that user code carries over. Validation happens here, once, so the
sampler and the engine can trust the values; every error names the offending field (pydantic prefixes it).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    n: int = Field(1, ge=1, description="number of sequences to generate for the prompt")
    max_tokens: int | None = Field(16, ge=1, description="None: generate up to max_model_len")
    min_tokens: int = Field(0, ge=0, description="tokens generated before EOS, stop_token_ids or stop strings may "
                                                 "end the sequence (vLLM's)")
    temperature: float = Field(1.0, ge=0.0, description="0 means greedy")
    top_k: int = Field(0, description="0 or -1: off")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    seed: int | None = None
    stop: list[str] | None = None
    stop_token_ids: list[int] = Field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                 description="top-N logprobs per generated token, plus the sampled token's")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] | None = Field(
        None, description="token id -> a bias added to its logit before penalties and sampling (-100 to 100, as "
                          "OpenAI; -100 in effect bans the token)")

    @field_validator("top_k")
    @classmethod
    def _check_top_k(cls, v: int) -> int:
        if v < -1:
            raise ValueError(f"top_k must be 0 or -1 (off) or >= 1, got {v}")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _normalise_stop(cls, v: object) -> object:
        # One string is the common case in OpenAI requests; store a list so callers need not branch.
        if isinstance(v, str):
            v = [v]
        if isinstance(v, (list, tuple)):
            if any(isinstance(s, str) and s == "" for s in v):
                raise ValueError("stop strings must be non-empty")
            return list(v)
        return v

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, v: dict[int, float] | None) -> dict[int, float] | None:
        for token, bias in (v or {}).items():
            if token < 0:
                raise ValueError(f"logit_bias token id {token} is negative")
            if not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
                raise ValueError(f"logit_bias of token {token} is {bias}, outside [-100, 100]")
        return v or None

    @model_validator(mode="after")
    def _check_min_tokens(self) -> SamplingParams:
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) exceeds max_tokens ({self.max_tokens})")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def uses_penalties(self) -> bool:
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    @property
    def uses_top_k_top_p_min_p(self) -> bool:
        return self.top_k > 1 or self.top_p < 1.0 or self.min_p > 0.0
