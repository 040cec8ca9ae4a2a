"""Generated tokens to streamed text: incremental detokenization and stop strings.

Token boundaries do not fall on character boundaries (a byte-level BPE token can hold half of a UTF-8
character), and a stop string can span tokens. `TextStream` emits only text that is final: decoded
characters, never a trailing replacement character, and never the last few characters that could still
turn out to start a stop string.
"""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class TextStream:
    def __init__(self, detokenize: Callable[[list[int]], str], stop: tuple[str, ...] = ()):
        self._detokenize = detokenize
        self._ids: list[int] = []
        self._prefix = 0  # ids[prefix:read] is the context already turned into text
        self._read = 0
        self.text = ""  # all final text so far
        self._emitted = 0  # characters of `text` handed out
        self.stop = stop
        self._hold = max((len(s) for s in stop), default=1) - 1
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Feed one generated token; returns the text that became final (maybe empty). After a stop string
        is found `stopped` is True and the text ends before it."""
        self._ids.append(token_id)
        if not self.stopped:
            self._decode(final=False)
        if self.stop:
            self._find_stop()
        ready = len(self.text) if self.stopped else max(self._emitted, len(self.text) - self._hold)
        return self._take(ready)

    def _decode(self, final: bool) -> None:
        # Decode the new tokens together with the ones before them and keep the difference: tokenizers
        # that drop a word-initial space at the start of a decode do so to both strings alike.
        before = self._detokenize(self._ids[self._prefix : self._read])
        after = self._detokenize(self._ids[self._prefix :])
        if len(after) > len(before) and (final or not after.endswith(REPLACEMENT)):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)

    def _find_stop(self) -> None:
        # only the new tail can hold a stop string that was not there before
        start = max(0, self._emitted - self._hold - 1)
        hits = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True

    def finish(self) -> str:
        """The generation ended: the text held back (a partial stop-string match, an incomplete character)
        is final now."""
        if not self.stopped and self._read < len(self._ids):
            self._decode(final=True)
            if self.stop:
                self._find_stop()
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        upto = max(upto, self._emitted)
        piece = self.text[self._emitted : upto]
        self._emitted = upto
        return piece
