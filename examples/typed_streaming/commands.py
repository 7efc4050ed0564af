"""Command declarations shared by the child (``worker.py``) and the parents (``run_*.py``).

Both sides import this module: the child registers a handler for each declaration and the
parent calls them. The schema fingerprint of each declaration is announced in the child's
handshake, so a parent and a child built from different versions of this file are caught
before a request is sent.
"""

from __future__ import annotations

import msgspec

from lean_worker_protocol import Call, Stream


class Text(msgspec.Struct, frozen=True):
    lines: list[str]
    delay_per_line_s: float = 0.0
    """Sleep after each line: simulates slow work (the timeout example uses it)."""


class Token(msgspec.Struct, frozen=True, array_like=True):
    line: int
    column: int
    word: str


class TokenizeSummary(msgspec.Struct, frozen=True):
    lines: int
    tokens: int
    empty_lines: int


TOKENIZE = Stream("tokenize", request=Text, row=Token, summary=TokenizeSummary)
"""Stream every word of the text as a row, a diagnostic for each empty line, then a summary."""


class TopWordsRequest(msgspec.Struct, frozen=True):
    lines: list[str]
    top: int = 3


class WordCount(msgspec.Struct, frozen=True, array_like=True):
    word: str
    count: int


TOP_WORDS = Call("top_words", request=TopWordsRequest, response=list[WordCount])
"""The ``top`` most frequent words, most frequent first (ties in alphabetical order)."""

SAMPLE = [
    "The cat sat on the mat.",
    "",
    "The dog sat on the log, and the cat watched the dog.",
]
"""Text the example parents send."""
