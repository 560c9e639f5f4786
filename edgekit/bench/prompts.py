"""Prompts of exactly N tokens, each starting somewhere else in the calibration text.

A benchmark of a 256-token prompt must process 256 tokens: the text is cut so the
engine's own tokenizer counts exactly N, and every prompt starts at a different word,
so the engine's KV prefix cache cannot reuse an earlier prompt and make later repeats
trivially fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edgekit.errors import UsageError

Tokenize = Callable[[str], Sequence[int]]

_STRIDE = 41  # words between the starts of successive prompts: a prime, so starts rarely repeat
_ATTEMPTS = 8  # start offsets tried before giving up on an exact count


class PromptMaker:
    """Builds exact-length prompts from a source text with the engine's tokenizer."""

    def __init__(self, text: str, tokenize: Tokenize) -> None:
        self.words = text.split()
        if len(self.words) < 16:
            raise UsageError("the calibration text is too short to build prompts from (need 16+ words)")
        self.tokenize = tokenize
        self.made = 0

    def next(self, n_tokens: int) -> str:
        """A fresh prompt of exactly ``n_tokens`` tokens, starting at a new place in the text."""
        for _ in range(_ATTEMPTS):
            start = (self.made * _STRIDE) % len(self.words)
            self.made += 1
            text = self._exact(start, n_tokens)
            if text is not None:
                return text
        raise UsageError(f"could not cut the calibration text to exactly {n_tokens} tokens; try another size")

    def count(self, text: str) -> int:
        return len(self.tokenize(text))

    def _words(self, start: int, n: int) -> str:
        """n words from ``start``, wrapping around the end of the text."""
        return " ".join(self.words[(start + i) % len(self.words)] for i in range(n))

    def _exact(self, start: int, n_tokens: int) -> str | None:
        """Fewest words reaching n_tokens, then trim the last word by characters to hit it exactly."""
        low, high = 1, max(2, n_tokens)  # a word is at least one token, so n_tokens words suffice
        while self.count(self._words(start, high)) < n_tokens:
            high *= 2
        while low < high:  # smallest word count whose token count reaches n_tokens
            mid = (low + high) // 2
            if self.count(self._words(start, mid)) >= n_tokens:
                high = mid
            else:
                low = mid + 1
        text = self._words(start, low)
        if self.count(text) == n_tokens:
            return text
        head = self._words(start, low - 1)
        last = self.words[(start + low - 1) % len(self.words)]
        for cut in range(len(last) - 1, 0, -1):
            candidate = f"{head} {last[:cut]}" if head else last[:cut]
            if self.count(candidate) == n_tokens:
                return candidate
        return None
