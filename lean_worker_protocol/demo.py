"""Command declarations of the bundled demo worker (``python -m lean_worker_child.demo``).

Shared by the demo child and by ``lean-worker demo``, the benchmarks and the tests.
"""

from __future__ import annotations

import msgspec

from ._commands import Call, Stream


class Echo(msgspec.Struct, frozen=True):
    text: str = ""


class PrimesRequest(msgspec.Struct, frozen=True):
    below: int
    progress_every: int = 1000


class Prime(msgspec.Struct, frozen=True, array_like=True):
    index: int
    value: int


class PrimesSummary(msgspec.Struct, frozen=True):
    count: int
    largest: int | None


class CountRequest(msgspec.Struct, frozen=True):
    n: int


class Counted(msgspec.Struct, frozen=True, array_like=True):
    i: int


class CountSummary(msgspec.Struct, frozen=True):
    n: int


ECHO = Call("echo", request=Echo, response=Echo)
"""Return the request unchanged (a no-op round trip)."""

PRIMES = Stream("primes", request=PrimesRequest, row=Prime, summary=PrimesSummary)
"""Stream the primes below ``below`` with progress, and a diagnostic for even bounds."""

COUNT = Stream("count", request=CountRequest, row=Counted, summary=CountSummary)
"""Stream ``n`` tiny rows as fast as possible (throughput benchmark)."""
