"""The commands both sides import: the parent (``client``) and the child (``worker``)."""

from __future__ import annotations

import msgspec

from lean_worker_protocol import Call, Stream


class Text(msgspec.Struct, frozen=True):
    text: str


class Stats(msgspec.Struct, frozen=True):
    words: int
    distinct: int
    longest: str


class TopRequest(msgspec.Struct, frozen=True):
    text: str
    n: int = 3


class WordCount(msgspec.Struct, frozen=True, array_like=True):
    word: str
    count: int


class TopSummary(msgspec.Struct, frozen=True):
    distinct: int
    """Distinct words that are not stop words."""


STATS = Call("wordstat.stats", request=Text, response=Stats)
TOP = Stream("wordstat.top", request=TopRequest, row=WordCount, summary=TopSummary)
