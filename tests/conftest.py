"""Shared test helpers: configs for test children with short, test-friendly timeouts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from lean_worker import ChildCommand, ChildEnv, RestartPolicy, WorkerConfig

ROOT = Path(__file__).resolve().parent.parent


def child_config(module: str, *args: str, restart: RestartPolicy | None = None, **options: object) -> WorkerConfig:
    """A WorkerConfig for ``python -m <module>`` run from the repo root, with short timeouts."""
    env = ChildEnv(set={"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    defaults: dict[str, object] = {
        "startup_timeout_s": 20.0,
        "request_timeout_s": 30.0,
        "cancel_grace_s": 1.0,
        "shutdown_grace_s": 1.0,
        "kill_grace_s": 0.5,
    }
    defaults.update(options)
    return WorkerConfig(
        child=ChildCommand.module(module, *args, python=sys.executable),
        env=env,
        cwd=str(ROOT),
        restart=restart or RestartPolicy(),
        **defaults,  # type: ignore[arg-type]
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def lean_toolchain():  # type: ignore[no-untyped-def]
    """The provisioned test Lean toolchain (built once per machine into the cache)."""
    from lean_worker_child.lean.provision import provision_test_toolchain

    return provision_test_toolchain()


@pytest.fixture(scope="session")
def library(lean_toolchain):  # type: ignore[no-untyped-def]
    """The bundled prelude library (``LwFix.*``), built once for the test toolchain."""
    from lean_worker_child.lean.fixtures import build_library

    return build_library(lean_toolchain.lean)


@pytest.fixture
def config(lean_toolchain, library):  # type: ignore[no-untyped-def]
    """``config(**options)``: a Lean worker config on the test toolchain with the library on
    its search path (``lean_config`` keywords; a 60 s request timeout unless given)."""
    from lean_worker.lean import lean_config

    def make(**options: object):  # type: ignore[no-untyped-def]
        options.setdefault("request_timeout_s", 60)
        return lean_config(lean=lean_toolchain.lean, search_path=[library.root], **options)

    return make
