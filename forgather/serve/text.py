"""Turning a stream of generated tokens into text: incremental decoding and stop strings.

:class:`IncrementalDecoder` yields the text each new token adds, decoding a short window that starts a
few tokens back (so tokenizers that drop a word's leading space at the start of a string, and tokens
that end inside a multi-byte character, come out right). :class:`StopStrings` finds stop strings
across token boundaries and holds back text that might be the start of one, so a stream never shows
text that a later token turns into a stop.
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 4
MAX_HELD_TOKENS = (
    4  # a UTF-8 character has at most 4 bytes: longer runs are invalid, not unfinished
)


class IncrementalDecoder:
    """The text of generated tokens, one token at a time, continuing ``context`` (prompt) tokens."""

    def __init__(self, tokenizer: Any, context: list[int] | tuple[int, ...] = ()):
        self.tokenizer = tokenizer
        self.ids = list(context[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> str:
        """Append ``token``; return the text it completes ("" while a character is unfinished).

        Bytes that stay invalid for ``MAX_HELD_TOKENS`` tokens come out as U+FFFD."""
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        unfinished = (
            after.endswith(REPLACEMENT) and len(self.ids) - self.read_offset < MAX_HELD_TOKENS
        )
        if len(after) > len(before) and not unfinished:
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Text still held back at the end (an unfinished character, shown as U+FFFD)."""
        if self.read_offset == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        self.read_offset = len(self.ids)
        return after[len(before) :]


class StopStrings:
    """The text of one sequence, cut at the first stop string and released only when it is safe."""

    def __init__(self, stops: tuple[str, ...] | list[str]):
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.released = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add ``delta``; return the text that can be shown now. Sets ``stopped`` on a stop string."""
        if self.stopped or not delta:
            return ""
        start = max(0, len(self.text) - self.longest + 1)
        self.text += delta
        if self.stops:
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self._release(len(self.text))
            return self._release(len(self.text) - self._partial_suffix())
        return self._release(len(self.text))

    def finish(self) -> str:
        """The held-back rest, at the end of the sequence."""
        return self._release(len(self.text))

    def _partial_suffix(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        tail = self.text[-(self.longest - 1) :] if self.longest > 1 else ""
        for size in range(len(tail), 0, -1):
            piece = tail[-size:]
            if any(s.startswith(piece) for s in self.stops):
                return size
        return 0

    def _release(self, upto: int) -> str:
        upto = max(upto, self.released)
        out = self.text[self.released : upto]
        self.released = upto
        return out
