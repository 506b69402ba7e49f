"""Incremental detokenization with stop strings, for streaming.

Two hazards make "decode the new token alone" wrong:
- byte-level BPE splits one multi-byte UTF-8 character over several tokens, and decoders such as SentencePiece's
  drop a leading space at the start of a decode. So we decode a short window of recent tokens (prefix offset ->
  end) and emit the text beyond the window's previous text (prefix offset -> read offset), holding back while the
  window's text ends with U+FFFD (an incomplete character).
- a stop string may arrive split over tokens. We search the new text plus the tail of the prior text, and we hold
  back any trailing text that could still become a stop string, so a streaming client never sees part of one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Prompt tokens kept as decoding context: enough for a SentencePiece leading space or a split character.
_CONTEXT_TOKENS = 5
_TRIM_AT = 256  # drop consumed ids beyond this many, so the window list does not grow with the output


@dataclass(frozen=True)
class StopCheck:
    """What one appended token did: ``delta`` is newly released text; ``stopped`` says a stop string matched."""

    delta: str
    stopped: bool = False
    stop_string: str | None = None


class IncrementalDetokenizer:
    """Turns sampled token ids into text, one at a time.

    ``text`` is the output text released so far: it excludes a held-back tail (an incomplete character, or text
    that may begin a stop string) until the tail resolves or ``flush()`` is called at the end of generation.
    """

    def __init__(self, tokenizer, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True,
                 stop: Sequence[str] = (), include_stop_str_in_output: bool = False, min_tokens: int = 0) -> None:
        if isinstance(stop, str):
            stop = [stop]
        if any(not s for s in stop):
            raise ValueError("stop strings must be non-empty")
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.stop = tuple(stop)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.min_tokens = min_tokens  # stop strings are looked for once this many tokens are in
        self._num_tokens = 0
        self._max_stop = max((len(s) for s in self.stop), default=0)
        self._ids: list[int] = list(prompt_token_ids)[-_CONTEXT_TOKENS:]
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._full = ""  # all decoded output text, including the held-back tail
        self._released = 0  # length of the prefix of _full that has been released
        self.stopped = False
        self.stop_string: str | None = None

    @property
    def text(self) -> str:
        return self._full[: self._released]

    def append(self, token_id: int) -> StopCheck:
        if self.stopped:
            return StopCheck("", True, self.stop_string)
        self._ids.append(int(token_id))
        self._num_tokens += 1
        return self._advance(final=False)

    def flush(self) -> str:
        """End of generation: release everything held back (an incomplete character decodes as U+FFFD then).
        Returns the released text."""
        if self.stopped:
            return ""
        return self._advance(final=True).delta

    # internals ---------------------------------------------------------------------------------------------------
    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _advance(self, final: bool) -> StopCheck:
        new = self._read_window(final)
        if new:
            prior_len = len(self._full)
            self._full += new
            if self.stop and self._num_tokens >= self.min_tokens:
                check = self._check_stop(max(0, prior_len - self._max_stop + 1))
                if check is not None:
                    return check
        end = len(self._full) if final else len(self._full) - self._partial_stop_len()
        return self._release(max(end, self._released))

    def _read_window(self, final: bool) -> str:
        ids = self._ids
        prefix_text = self._decode(ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(ids[self._prefix_offset :])
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and not final):
            return ""  # nothing yet (a skipped special token) or an incomplete character: wait for more bytes
        self._prefix_offset, self._read_offset = self._read_offset, len(ids)
        if self._prefix_offset > _TRIM_AT:
            del ids[: self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0
        return new_text[len(prefix_text) :]

    def _check_stop(self, start: int) -> StopCheck | None:
        best: tuple[int, str] | None = None
        for s in self.stop:
            i = self._full.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is None:
            return None
        i, s = best
        # Releasing never passes the start of a possible stop string, so the cut is at or beyond what was released.
        self._full = self._full[: i + len(s) if self.include_stop_str_in_output else i]
        self.stopped, self.stop_string = True, s
        delta = self._full[self._released :]
        self._released = len(self._full)
        return StopCheck(delta, True, s)

    def _partial_stop_len(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        longest = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self._full)), longest, -1):
                if self._full.endswith(s[:k]):
                    longest = k
                    break
        return longest

    def _release(self, end: int) -> StopCheck:
        delta = self._full[self._released : end]
        self._released = end
        return StopCheck(delta)
