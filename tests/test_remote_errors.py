"""The open registry of remote errors: an app registers its own code -> ``RemoteError``
subclass, and a real child's exception with that ``code`` arrives as that class with its
facts; the Lean errors are registered by ``lean_worker.lean``, not by the generic core.

The child is ``tests/children/coded.py``, a small downstream app.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from children.coded import RESERVE, Reserve
from conftest import ROOT, child_config

from lean_worker import (
    BadRequest,
    RemoteError,
    SyncWorker,
    UnknownCommand,
    WorkerError,
    register_remote_error,
    remote_error_class,
)
from lean_worker._errors import REMOTE_ERRORS

pytestmark = pytest.mark.timeout(60)


@register_remote_error
class OutOfStock(RemoteError):
    """What the inventory app's parent side declares for its child's ``OutOfStock``."""

    code = "inventory.out_of_stock"

    @property
    def left(self) -> int:
        return self.facts["left"]  # type: ignore[return-value]


def test_a_registered_code_from_a_real_child_arrives_as_its_class_with_the_facts() -> None:
    with SyncWorker(child_config("tests.children.coded")) as worker:
        assert worker.call(RESERVE, Reserve("apple", 2)) == 1
        with pytest.raises(OutOfStock) as info:
            worker.call(RESERVE, Reserve("apple", 5))
        # The worker lives on after a handler error.
        assert worker.call(RESERVE, Reserve("apple", 1)) == 0
    error = info.value
    assert (error.code, error.remote_code, error.operation) == ("inventory.out_of_stock", "inventory.out_of_stock", RESERVE.name)
    assert error.facts == {"sku": "apple", "wanted": 5, "left": 1}
    assert error.left == 1
    assert error.remote_type == "__main__.OutOfStock"  # the child runs its module as __main__
    assert "sku=apple wanted=5 left=1" in str(error)


def test_a_code_nobody_registered_arrives_as_a_plain_remote_error_that_keeps_its_code() -> None:
    with SyncWorker(child_config("tests.children.coded")) as worker:
        with pytest.raises(RemoteError) as info:
            worker.call(RESERVE, Reserve("audit", 1))
    assert type(info.value) is RemoteError
    assert (info.value.code, info.value.remote_code) == ("worker.handler_error", "inventory.audit_failed")


def test_remote_error_class_looks_codes_up_and_falls_back_to_remote_error() -> None:
    assert remote_error_class("inventory.out_of_stock") is OutOfStock
    assert remote_error_class("worker.unknown_command") is UnknownCommand
    assert remote_error_class("worker.bad_request") is BadRequest
    assert remote_error_class("no.such.code") is RemoteError
    assert REMOTE_ERRORS["inventory.out_of_stock"] is OutOfStock  # the name _worker.py reads


def test_registering_the_same_class_again_is_a_no_op() -> None:
    assert register_remote_error(OutOfStock) is OutOfStock
    assert remote_error_class(OutOfStock.code) is OutOfStock


def test_a_second_class_for_a_taken_code_is_refused_and_names_both() -> None:
    with pytest.raises(ValueError, match="already registered") as info:

        @register_remote_error
        class Impostor(RemoteError):
            code = "inventory.out_of_stock"

    assert "test_remote_errors.OutOfStock" in str(info.value) and "Impostor" in str(info.value)
    assert remote_error_class("inventory.out_of_stock") is OutOfStock
    with pytest.raises(ValueError, match="already registered"):

        @register_remote_error
        class MyUnknown(RemoteError):
            code = "worker.unknown_command"


def test_a_class_that_is_not_a_remote_error_or_has_no_code_of_its_own_is_refused() -> None:
    class NotRemote(WorkerError):
        code = "inventory.not_remote"

    with pytest.raises(TypeError, match="RemoteError subclass"):
        register_remote_error(NotRemote)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="RemoteError subclass"):
        register_remote_error(ValueError)  # type: ignore[type-var]

    class Inherits(OutOfStock):
        pass  # its code is OutOfStock's

    with pytest.raises(ValueError, match="must set its own code"):
        register_remote_error(Inherits)
    assert "inventory.not_remote" not in REMOTE_ERRORS


def test_importing_lean_worker_lean_registers_the_lean_codes() -> None:
    from lean_worker.lean import LeanCrashed, LeanError, LeanHeaderError, LeanTimeout, ToolchainNotFound

    for cls in (LeanError, LeanCrashed, LeanTimeout, LeanHeaderError, ToolchainNotFound):
        assert issubclass(cls, RemoteError)
        assert remote_error_class(cls.code) is cls
    assert {cls.code for cls in (LeanError, LeanCrashed, LeanTimeout, LeanHeaderError, ToolchainNotFound)} == {
        "lean.error", "lean.crashed", "lean.timeout", "lean.bad_header", "lean.toolchain_not_found",
    }


def test_the_generic_core_registers_no_lean_code_until_lean_worker_lean_is_imported() -> None:
    script = (
        "import sys, lean_worker\n"
        "from lean_worker._errors import REMOTE_ERRORS\n"
        "print(sorted(c for c in REMOTE_ERRORS if c.startswith('lean.')), 'lean_worker.lean' in sys.modules)\n"
        "import lean_worker.lean\n"
        "print(sorted(c for c in REMOTE_ERRORS if c.startswith('lean.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    lean_codes = ["lean.bad_header", "lean.crashed", "lean.error", "lean.state_invalid", "lean.timeout",
                  "lean.toolchain_not_found"]
    assert result.stdout.splitlines() == ["[] False", str(lean_codes)]


def test_every_error_survives_pickling_with_its_facts() -> None:
    # A cluster node sends the errors of its outcomes to the driver by pickle (Ray); most
    # errors take keyword-only facts, which Exception's default pickling cannot rebuild.
    import pickle

    from lean_worker._errors import LeaseInvalidated, QueueTimeout, RequestTimeout, WorkerCrashed
    from lean_worker.lean import LeanCrashed, LeanTimeout

    crashed = LeanCrashed(
        "lean.crashed: boom", operation="lean.check", request_id=7, generation=2, remote_type="LeanCrashed",
        remote_code="lean.crashed", remote_message="Lean crashed", traceback="tb", facts={"returncode": -11},
    )
    errors: list[Exception] = [crashed]
    for cls in (LeanTimeout, RequestTimeout, WorkerCrashed, QueueTimeout, LeaseInvalidated):
        error = cls.__new__(cls)
        Exception.__init__(error, f"{cls.__name__} message")
        error.__dict__.update(operation="lean.check", request_id=3, generation=1, exit=None)
        errors.append(error)
    for error in errors:
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert str(back) == str(error)
        assert back.__dict__ == error.__dict__
    back = pickle.loads(pickle.dumps(crashed))
    assert (back.remote_code, back.facts, back.generation) == ("lean.crashed", {"returncode": -11}, 2)
