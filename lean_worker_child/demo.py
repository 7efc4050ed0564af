"""The bundled demo worker child: ``python -m lean_worker_child.demo``."""

from __future__ import annotations

from lean_worker_protocol import VERSION
from lean_worker_protocol.demo import (
    COUNT,
    ECHO,
    PRIMES,
    Counted,
    CountRequest,
    CountSummary,
    Echo,
    Prime,
    PrimesRequest,
    PrimesSummary,
)

from . import RequestContext, WorkerApp

app = WorkerApp("lean-worker-demo", version=VERSION)


@app.handler(ECHO)
def echo(request: Echo, ctx: RequestContext) -> Echo:
    return request


@app.handler(PRIMES)
def primes(request: PrimesRequest, ctx: RequestContext) -> PrimesSummary:
    if request.below % 2 == 0:
        ctx.diagnostic(f"bound {request.below} is even; it is never prime", severity="hint", code="demo.even_bound")
    sieve = bytearray([1]) * max(request.below, 2)
    sieve[0:2] = b"\x00\x00"
    count = 0
    largest = None
    every = max(1, request.progress_every)
    for n in range(2, request.below):
        if n % every == 0:
            ctx.progress("sieve", n, request.below)
            ctx.check_cancelled()
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, request.below, n)))
            ctx.emit(Prime(count, n))
            count += 1
            largest = n
    ctx.progress("sieve", request.below, request.below)
    return PrimesSummary(count, largest)


@app.handler(COUNT)
def count(request: CountRequest, ctx: RequestContext) -> CountSummary:
    emit = ctx.emit
    for i in range(request.n):
        emit(Counted(i))
    return CountSummary(request.n)


if __name__ == "__main__":
    app.serve()
