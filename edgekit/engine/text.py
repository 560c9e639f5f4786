"""Turn a model's token bytes into text that is safe to stream.

Two things must be held back while tokens arrive: the first bytes of a UTF-8 character
split across tokens (an emoji is often 2-4 byte tokens), and text that may be the start
of a stop sequence (a stop string is never emitted, not even its first half).
"""

from __future__ import annotations

import codecs


class TextAssembler:
    """Feed token bytes in, get back the text that can be emitted now."""

    def __init__(self, stop: tuple[str, ...] = ()) -> None:
        # errors="replace": random or broken models emit invalid bytes; a lone
        # continuation byte becomes U+FFFD instead of ending the stream.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._held = ""  # decoded text that may be the start of a stop string
        self.stopped = False  # a stop string was found; nothing more will be emitted

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text now safe to emit ("" if all held back)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(piece)
        return self._release()

    def finish(self) -> str:
        """End of generation: flush what was held (incomplete bytes become U+FFFD)."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        text, self._held = self._cut_at_stop(self._held), ""
        return text

    def _release(self) -> str:
        cut = self._cut_at_stop(self._held)
        if self.stopped:
            self._held = ""
            return cut
        keep = _longest_stop_prefix_suffix(self._held, self._stop)
        text = self._held[: len(self._held) - keep]
        self._held = self._held[len(text) :]
        return text

    def _cut_at_stop(self, text: str) -> str:
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if not hits:
            return text
        self.stopped = True
        return text[: min(hits)]


def _longest_stop_prefix_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the beginning of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best
