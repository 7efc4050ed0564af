"""``lean.fixtures``: build the bundled fixtures for the worker's toolchain, in the child.

The parent (``lean-worker verify --fixtures``) asks for them instead of building them
itself: only the child runs Lean. Registered on the Lean worker's ``app`` when imported.
"""

from __future__ import annotations

from lean_worker_protocol.lean import FIXTURES, FixturesReport, FixturesRequest

from .. import RequestContext
from .fixtures import build_heavy_header, build_library, default_library_source
from .worker import _engines, app, runtime


@app.handler(FIXTURES)
def fixtures(request: FixturesRequest, ctx: RequestContext) -> FixturesReport:
    _engines()  # a missing toolchain fails here with lean.toolchain_not_found
    toolchain = runtime().toolchain
    assert toolchain is not None
    lean = toolchain.lean
    library = build_library(lean)
    heavy = build_heavy_header(lean) if request.heavy else None
    return FixturesReport(
        library_root=str(library.root),
        library_modules=list(library.modules),
        snippets_dir=str(default_library_source().parent / "snippets"),
        build_s=library.build_s + (heavy.build_s if heavy else 0.0),
        heavy_root=str(heavy.root) if heavy else None,
        heavy_modules=list(heavy.modules) if heavy else [],
    )
