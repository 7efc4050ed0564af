"""Check a batch of Lean snippets on a pool of Lean workers: what ``lean-worker verify`` runs.

    from lean_worker.verify import VerifyOptions, verify_snippets, verify_snippets_sync

    async with verify_snippets("snippets/", VerifyOptions(workers=4, timeout_s=10)) as run:
        async for result in run:                 # one VerifyResult per snippet, as it finishes
            print(result.id, result.index, result.verdict)
    print(run.summary.render())

    with verify_snippets_sync([Snippet("a", code)], VerifyOptions(search_path=[oleans])) as run:
        results = list(run)

The input is a directory of ``.lean`` files, a JSONL file of ``{"id", "code"}`` lines, or
``Snippet``s (or ``(id, code)`` pairs). ``VerifyResult.to_json()`` is the line the command
line writes; ``VerifyResult.from_json`` reads it back. ``build_fixtures()`` asks a Lean
worker where the bundled library is (``lean-worker fixtures --print-library-root``).

Errors before the batch (all ``WorkerError``s)::

    VerifyError              verify.error
    ├── VerifyOptionError    verify.bad_option       an option out of range (also a ValueError)
    ├── VerifyInputError     verify.bad_input        the snippets cannot be read
    ├── FixturesUnavailable  verify.fixtures_failed  a Lean worker could not build the fixtures
    └── ClusterUnavailableError  verify.cluster      ``ray``: Ray missing, no cluster, no node started
    ToolchainNotFound        lean.toolchain_not_found  (from lean_worker.lean), asked once

A snippet that fails during the batch is a ``VerifyResult`` with ``verdict="failed"`` and
``error`` set, never an exception.

With ``VerifyOptions(ray="auto")`` (``lean-worker verify --ray auto``) the batch runs on a Ray
cluster (``lean_worker_ray``): the same results, each with the ``node`` that ran it, and a
summary with one line per node (``VerifySummary.nodes``).
"""

from ._verify import (
    ClusterUnavailableError,
    FixturesUnavailable,
    NodeSummary,
    ResultError,
    Snippet,
    SyncVerifyRun,
    VerifyError,
    VerifyInputError,
    VerifyOptionError,
    VerifyOptions,
    VerifyResult,
    VerifyRun,
    VerifySummary,
    build_fixtures,
    verify_snippets,
    verify_snippets_sync,
)

__all__ = [
    "ClusterUnavailableError",
    "FixturesUnavailable",
    "NodeSummary",
    "ResultError",
    "Snippet",
    "SyncVerifyRun",
    "VerifyError",
    "VerifyInputError",
    "VerifyOptionError",
    "VerifyOptions",
    "VerifyResult",
    "VerifyRun",
    "VerifySummary",
    "build_fixtures",
    "verify_snippets",
    "verify_snippets_sync",
]
