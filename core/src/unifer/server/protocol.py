"""OpenAI request and response schemas (the subset unifer serves), plus the conversion to SamplingParams.

Requests ignore unknown fields, as OpenAI clients send extras (``user``, ``metadata``) that change nothing here;
fields that would change what is generated and are not implemented are refused with a 400 that names them.
Bounds live in the schema so that the OpenAPI document (and schemathesis, which reads it) knows them.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from unifer.sample.params import MAX_LOGPROBS, SamplingParams

MAX_N = 16  # choices per prompt: more is an easy way to flood the engine from one request
MAX_STOP = 16
TokenIds = list[Annotated[int, Field(ge=0)]]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


# vLLM's request extras that change what is generated and that this server does not implement: refused by name.
# Other unknown fields are ignored (OpenAI clients send ``user``, ``metadata`` and the like).
REFUSED_EXTRAS = ("prompt_logprobs", "guided_json", "guided_regex", "guided_choice", "guided_grammar",
                  "structured_outputs", "use_beam_search", "bad_words", "allowed_token_ids")


class _Sampling(_Request):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model_config = ConfigDict(extra="allow")  # kept, not validated, so that check_extras can see them

    model: str | None = Field(None, description="the served model name; omitted means the served model")
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    # extras beyond OpenAI, named as in vLLM
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    stop_token_ids: TokenIds | None = Field(None, max_length=MAX_STOP)
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    logit_bias: dict[int, float] | None = Field(
        None, description="token id -> bias added to its logit before sampling, -100 to 100")

    def check_extras(self) -> None:
        for name in REFUSED_EXTRAS:
            if (self.model_extra or {}).get(name) not in (None, False, [], {}):  # sent, and asking for something
                raise ParamError(f"{name} is not supported by this server", name)

    def sampling_params(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """Raises ValueError (with the field named) for combinations the schema alone cannot catch."""
        values: dict[str, Any] = dict(
            n=self.n, max_tokens=max_tokens, min_tokens=self.min_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=0 if self.top_k is None else self.top_k,
            min_p=self.min_p or 0.0, seed=self.seed, stop=self.stop, stop_token_ids=self.stop_token_ids or [],
            ignore_eos=self.ignore_eos, logprobs=logprobs, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty or 1.0,
            include_stop_str_in_output=self.include_stop_str_in_output, skip_special_tokens=self.skip_special_tokens,
            logit_bias=self.logit_bias)
        try:
            return SamplingParams(**values)
        except ValidationError as e:
            err = e.errors()[0]
            raise ParamError(f"{err['msg']}", param=".".join(str(x) for x in err["loc"]) or None) from e


class ParamError(ValueError):
    """A bad request parameter; ``param`` names it in the OpenAI error object."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class CompletionRequest(_Sampling):
    prompt: str | TokenIds | list[str | TokenIds] = Field(
        description="a string, a list of token ids, or a batch: a list of strings and/or token-id lists")
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, description="only n itself: candidates are not ranked server-side")

    def check_supported(self) -> None:
        """Fields OpenAI defines whose meaning this server does not implement: refused, never silently dropped."""
        self.check_extras()
        if self.echo:
            raise ParamError("echo is not supported", "echo")
        if self.suffix:
            raise ParamError("suffix is not supported", "suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise ParamError(f"best_of {self.best_of} is not supported: candidates are not ranked server-side, so "
                             "best_of may only equal n", "best_of")


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_only(cls, v: object) -> object:
        # Said plainly here: the union's own error would be about the content not being a string.
        for part in v if isinstance(v, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text":
                raise ValueError(f"content part type {kind!r} is not supported: this server takes text parts only")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="deprecated by OpenAI for max_completion_tokens")
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    add_generation_prompt: bool = True
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    functions: list[dict[str, Any]] | None = None  # deprecated by OpenAI for tools
    function_call: str | dict[str, Any] | None = None

    def check_supported(self) -> None:
        """Fields OpenAI defines whose meaning this server does not implement: refused, never silently dropped."""
        self.check_extras()
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            raise ParamError(f"response_format type {kind!r} is not supported: this server has no guided decoding",
                             "response_format")
        if self.tools and self.tool_choice != "none":
            raise ParamError("tool calling is not supported: send no tools, or tool_choice 'none'", "tools")
        if self.functions and self.function_call != "none":
            raise ParamError("function calling is not supported: send no functions, or function_call 'none'",
                             "functions")


class TokenizeRequest(_Request):
    """vLLM's ``/tokenize``: a prompt, or a conversation rendered as ``/v1/chat/completions`` renders it."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = Field(None, description="default: true for a prompt, false for messages (the "
                                                              "chat template writes them)")


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: TokenIds = Field(max_length=1_000_000)


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


# responses ------------------------------------------------------------------------------------------------------
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "unifer"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
