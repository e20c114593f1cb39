"""Splitting long text into chunks the autoregressive model can speak one at a time.

``split_and_recombine_text`` gives the same chunks as the original Tortoise: it scans left to right, closes a chunk
at a sentence boundary (``.`` followed by a space, ``!``, ``?``, newline, or the end of a quotation) once the chunk is
at least ``desired_length`` characters, and when a chunk reaches ``max_length`` it backs up to the last sentence
boundary, or else to the last space. Boundaries inside double quotes do not count, so quotations stay whole.
Every character of the (whitespace-normalised) input lands in exactly one chunk; only chunks made purely of
whitespace and punctuation are dropped. A single word longer than ``max_length`` is cut at ``desired_length``.
"""
import re

_SENTENCE_END = "!?\n"
_BREAKABLE = "!?.\n "
_PUNCTUATION_ONLY_RE = re.compile(r"^[\s\.,;:!?]*$")


def _normalize(text: str) -> str:
    text = re.sub(r"\n\n+", "\n", text)
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"[“”]", '"', text)


class _Cursor:
    """Position in ``text``; the current chunk is ``text[start:pos + 1]``."""

    def __init__(self, text: str):
        self.text = text
        self.last = len(text) - 1
        self.pos = -1
        self.start = 0
        self.in_quote = False

    @property
    def length(self) -> int:
        return self.pos + 1 - self.start

    def _toggle_quote(self) -> None:
        if self.text[self.pos] == '"':
            self.in_quote = not self.in_quote

    def advance(self, n: int = 1) -> str:
        for _ in range(n):
            self.pos += 1
            self._toggle_quote()
        return self.text[self.pos]

    def retreat(self, n: int = 1) -> str:
        # As in the original, the quote state is toggled by the character moved *onto*, not the one given back.
        # Kept so that chunk boundaries stay identical to the original's.
        for _ in range(n):
            self.pos -= 1
            self._toggle_quote()
        return self.text[self.pos]

    def peek(self, delta: int) -> str:
        # The original's look-ahead never sees the final character: "" there and past the end.
        p = self.pos + delta
        return self.text[p] if 0 <= p < self.last else ""

    def take(self) -> str:
        chunk = self.text[self.start:self.pos + 1]
        self.start = self.pos + 1
        return chunk


def _cut_long_chunk(cur: _Cursor, boundaries: list, c: str, desired_length: int) -> None:
    """Back the cursor up to where an over-long chunk should end."""
    if boundaries and cur.length > desired_length / 2:
        cur.retreat(cur.pos - boundaries[-1])  # to the last sentence boundary
        return
    while c not in _BREAKABLE and cur.pos > 0 and cur.length > desired_length:
        c = cur.retreat()  # to the last space (or mid-word at desired_length for a very long word)


def split_and_recombine_text(text: str, desired_length: int = 200, max_length: int = 300) -> list:
    """Split ``text`` into chunks of about ``desired_length`` (at most ``max_length``) characters, keeping
    sentences and quotations intact where possible. Returns a list of stripped, non-empty strings."""
    if not 0 < desired_length <= max_length:
        raise ValueError(f"need 0 < desired_length <= max_length, got desired_length={desired_length}, "
                         f"max_length={max_length}")
    cur = _Cursor(_normalize(text))
    chunks, boundaries = [], []  # boundaries: positions in the current chunk where a sentence ends

    def close_chunk():
        chunks.append(cur.take())
        boundaries.clear()

    while cur.pos < cur.last:
        c = cur.advance()
        if cur.length >= max_length:
            _cut_long_chunk(cur, boundaries, c, desired_length)
            close_chunk()
        elif not cur.in_quote and (c in _SENTENCE_END or (c == "." and cur.peek(1) in "\n ")):
            # swallow runs like "?!?" or "..." while there is room
            while cur.pos < cur.last and cur.length < max_length and cur.peek(1) in "!?.":
                cur.advance()
            boundaries.append(cur.pos)
            if cur.length >= desired_length:
                close_chunk()
        elif cur.in_quote and cur.peek(1) == '"' and cur.peek(2) in "\n ":
            cur.advance(2)  # a closing quote followed by a space ends a sentence too
            boundaries.append(cur.pos)
    chunks.append(cur.take())

    chunks = (chunk.strip() for chunk in chunks)
    return [chunk for chunk in chunks if chunk and not _PUNCTUATION_ONLY_RE.match(chunk)]
