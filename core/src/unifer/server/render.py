"""Engine outputs -> OpenAI response bodies and stream chunks (completions and chat), with usage and logprobs.

A renderer keeps per-choice state (text and tokens already sent) because engine outputs are cumulative while
stream chunks carry deltas.
"""

from __future__ import annotations

import math
import time

from unifer.engine.outputs import CompletionOutput, RequestOutput

_FLOOR = -9999.0  # JSON has no -inf; OpenAI-compatible servers send a large negative number instead


def _lp(x: float) -> float:
    return x if math.isfinite(x) and x > _FLOOR else _FLOOR


class Renderer:
    object_name = ""
    chunk_name = ""

    def __init__(self, request_id: str, model: str, n: int, tokenizer, top_n: int | None) -> None:
        self.id, self.model, self.n, self.tokenizer, self.top_n = request_id, model, n, tokenizer, top_n
        self.created = int(time.time())
        self._sent_text: dict[int, int] = {}
        self._sent_tokens: dict[int, int] = {}
        self._finished: set[int] = set()
        self._prompt_tokens: dict[int, int] = {}
        self._completion_tokens: dict[int, int] = {}
        self._token_str: dict[int, str] = {}

    def token_str(self, token_id: int) -> str:
        s = self._token_str.get(token_id)
        if s is None:
            s = (self.tokenizer.decode([token_id], skip_special_tokens=False) if self.tokenizer is not None
                 else f"token_id:{token_id}")
            self._token_str[token_id] = s
        return s

    def _top(self, entry: dict[int, float]) -> list[tuple[int, float]]:
        ranked = sorted(entry.items(), key=lambda kv: kv[1], reverse=True)
        return ranked[: self.top_n] if self.top_n is not None else ranked

    def _account(self, i: int, out: RequestOutput) -> None:
        self._prompt_tokens[i] = len(out.prompt_token_ids)
        for o in out.outputs:
            self._completion_tokens[i * self.n + o.index] = len(o.token_ids)

    def usage(self) -> dict:
        p, c = sum(self._prompt_tokens.values()), sum(self._completion_tokens.values())
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def usage_chunk(self) -> dict:
        return {"id": self.id, "object": self.chunk_name, "created": self.created, "model": self.model,
                "choices": [], "usage": self.usage()}

    def first_chunks(self, include_usage: bool) -> list[dict]:
        return []

    def chunks(self, i: int, out: RequestOutput, include_usage: bool) -> list[dict]:
        self._account(i, out)
        chunks = []
        for o in out.outputs:
            index = i * self.n + o.index
            if index in self._finished:
                continue
            text_from, tok_from = self._sent_text.get(index, 0), self._sent_tokens.get(index, 0)
            delta = o.text[text_from:]
            if not delta and not o.finished and self.top_n is None:
                continue  # a token still held back by the detokenizer: nothing to tell yet
            self._sent_text[index], self._sent_tokens[index] = len(o.text), len(o.token_ids)
            if o.finished:
                self._finished.add(index)
            choice = self._delta_choice(index, o, delta, tok_from)
            chunk = {"id": self.id, "object": self.chunk_name, "created": self.created, "model": self.model,
                     "choices": [choice]}
            if include_usage:
                chunk["usage"] = None
            chunks.append(chunk)
        return chunks

    def full(self, finals: list[RequestOutput]) -> dict:
        for i, out in enumerate(finals):
            self._account(i, out)
        choices = [self._full_choice(i * self.n + o.index, o) for i, out in enumerate(finals) for o in out.outputs]
        return {"id": self.id, "object": self.object_name, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    def _delta_choice(self, index: int, o: CompletionOutput, delta: str, tok_from: int) -> dict:
        raise NotImplementedError

    def _full_choice(self, index: int, o: CompletionOutput) -> dict:
        raise NotImplementedError


class CompletionRenderer(Renderer):
    object_name = chunk_name = "text_completion"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._offset: dict[int, int] = {}

    def _logprobs(self, index: int, o: CompletionOutput, start: int) -> dict | None:
        if o.logprobs is None:
            return None
        tokens, token_lps, tops, offsets = [], [], [], []
        offset = self._offset.get(index, 0)
        for tid, entry in zip(o.token_ids[start:], o.logprobs[start:], strict=True):
            s = self.token_str(tid)
            tokens.append(s)
            token_lps.append(_lp(entry.get(tid, _FLOOR)))
            # all of the entry: the top-N plus the sampled token when it is not among them (as vLLM does)
            tops.append({self.token_str(t): _lp(v) for t, v in sorted(entry.items(), key=lambda kv: -kv[1])})
            offsets.append(offset)
            offset += len(s)
        self._offset[index] = offset
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}

    def _delta_choice(self, index, o, delta, tok_from):
        return {"index": index, "text": delta, "logprobs": self._logprobs(index, o, tok_from),
                "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}

    def _full_choice(self, index, o):
        return {"index": index, "text": o.text, "logprobs": self._logprobs(index, o, 0),
                "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}


class ChatRenderer(Renderer):
    object_name, chunk_name = "chat.completion", "chat.completion.chunk"

    def _entry(self, token_id: int, logprob: float) -> dict:
        s = self.token_str(token_id)
        return {"token": s, "logprob": _lp(logprob), "bytes": list(s.encode("utf-8", "replace"))}

    def _logprobs(self, o: CompletionOutput, start: int) -> dict | None:
        if o.logprobs is None:
            return None
        content = []
        for tid, entry in zip(o.token_ids[start:], o.logprobs[start:], strict=True):
            item = self._entry(tid, entry.get(tid, _FLOOR))
            item["top_logprobs"] = [self._entry(t, v) for t, v in self._top(entry)]
            content.append(item)
        return {"content": content}

    def first_chunks(self, include_usage: bool) -> list[dict]:
        # OpenAI opens each choice with the role and empty content.
        chunks = []
        for index in range(self.n):
            chunk = {"id": self.id, "object": self.chunk_name, "created": self.created, "model": self.model,
                     "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None}]}
            if include_usage:
                chunk["usage"] = None
            chunks.append(chunk)
        return chunks

    def _delta_choice(self, index, o, delta, tok_from):
        return {"index": index, "delta": {"content": delta} if delta else {}, "logprobs": self._logprobs(o, tok_from),
                "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}

    def _full_choice(self, index, o):
        return {"index": index, "message": {"role": "assistant", "content": o.text},
                "logprobs": self._logprobs(o, 0), "finish_reason": o.finish_reason, "stop_reason": o.stop_reason}
