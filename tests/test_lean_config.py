"""``lean_config`` and what crosses into the Lean worker child: one typed ``LeanSettings``
(validated in the parent, decoded once in the child), the Lean environment variables on top
of the generic defaults, and ``session_limit`` from ``max_sessions``.

Real children: the probe child (``tests/children/probe.py``) for the generic environment,
and the Lean worker with the provisioned Lean 4.35 and our prelude library.
"""

from __future__ import annotations

import sys

import msgspec
import pytest
from children.probe import ENVIRON, Empty
from conftest import child_config

from lean_worker import ChildEnv, StartupError, SyncWorker, Worker, WorkerConfig, doctor
from lean_worker._config import DEFAULT_INHERITED_ENV
from lean_worker.lean import (
    CHILD_MODULE,
    LEAN_INHERITED_ENV,
    OPEN,
    TOOLCHAIN,
    LeanSettings,
    OpenRequest,
    ToolchainQuery,
    lean_child_args,
    lean_config,
    lean_env,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_sessions": 0}, "max_sessions"),
        ({"max_sessions": True}, "max_sessions"),
        ({"engine": "auto"}, "engine"),
        ({"lean": ""}, "lean"),
        ({"search_path": ["/oleans", ""]}, "search_path"),
        ({"lean_args": "-DmaxHeartbeats=1"}, "lean_args"),
        ({"report_delay_ms": -1}, "report_delay_ms"),
        ({"report_delay_ms": 2.5}, "report_delay_ms"),
        ({"session_report_delay_ms": -1}, "session_report_delay_ms"),
        ({"session_report_delay_ms": True}, "session_report_delay_ms"),
    ],
)
def test_an_invalid_setting_is_a_value_error_in_the_parent_before_any_child_starts(
    options: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        lean_config(**options)  # type: ignore[arg-type]


def test_the_settings_cross_as_one_json_argument_that_the_child_decodes_to_the_same_struct(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from lean_worker_child.lean.worker import parse_settings

    settings = LeanSettings(lean="/opt/lean/bin/lean", search_path=(str(tmp_path),), engine="cold",
                            max_sessions=3, lean_args=("-DmaxHeartbeats=1000",), report_delay_ms=7,
                            session_report_delay_ms=3)
    config = lean_config(settings)
    assert config.child.argv[:3] == (sys.executable, "-m", CHILD_MODULE)
    assert config.child.argv[3:] == ("--settings", msgspec.json.encode(settings).decode())
    assert list(config.child.argv[3:]) == lean_child_args(settings)
    assert parse_settings(list(config.child.argv[3:])) == settings
    assert parse_settings([]) == LeanSettings()
    # The same settings as keywords (paths may be PathLike) make the same child command.
    by_keywords = lean_config(lean="/opt/lean/bin/lean", search_path=[tmp_path], engine="cold",
                              max_sessions=3, lean_args=["-DmaxHeartbeats=1000"], report_delay_ms=7,
                              session_report_delay_ms=3)
    assert by_keywords.child == config.child
    assert (config.session_limit, config.name) == (3, "lean")


def test_settings_and_their_keywords_together_are_refused() -> None:
    with pytest.raises(TypeError, match="not both"):
        lean_config(LeanSettings(), max_sessions=2)
    with pytest.raises(ValueError, match="session_limit follows max_sessions"):
        lean_config(max_sessions=2, session_limit=5)


def test_a_lean_child_given_a_bad_settings_argument_fails_to_start_naming_the_field() -> None:
    config = WorkerConfig.for_module(CHILD_MODULE, "--settings", '{"max_sessions": 0}', env=lean_env(), startup_timeout_s=30)
    with pytest.raises(StartupError) as info:
        with SyncWorker(config):
            pass
    assert "max_sessions must be an int >= 1" in info.value.stderr_tail


# -- environment -------------------------------------------------------------------------------


def test_lean_env_adds_the_lean_variables_and_keeps_what_the_user_inherits_and_sets() -> None:
    assert lean_env().inherit == (*DEFAULT_INHERITED_ENV, *LEAN_INHERITED_ENV)
    assert not set(LEAN_INHERITED_ENV) & set(DEFAULT_INHERITED_ENV)  # the generic core knows no Lean
    mine = ChildEnv(inherit=("PATH", "LEAN_PATH", "MY_APP_*"), set={"LEAN_WORKER_CACHE": "/cache"})
    merged = lean_env(mine)
    assert merged.inherit[:3] == ("PATH", "LEAN_PATH", "MY_APP_*")
    assert merged.inherit.count("LEAN_PATH") == 1
    built = merged.build({"LEAN_WORKER_CACHE": "/parent-cache", "LEAN_WORKER_LEAN": "/l", "MY_APP_X": "1", "HOME": "/h"})
    assert built == {"LEAN_WORKER_CACHE": "/cache", "LEAN_WORKER_LEAN": "/l", "MY_APP_X": "1"}  # set wins
    assert lean_config(env=mine).env == merged


def test_a_generic_child_does_not_see_the_lean_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAN_WORKER_LEAN", "/opt/lean/bin/lean")
    monkeypatch.setenv("LEAN_PATH", "/opt/oleans")
    with SyncWorker(child_config("tests.children.probe")) as worker:
        env = worker.call(ENVIRON, Empty())
    assert "LEAN_WORKER_LEAN" not in env and "LEAN_PATH" not in env
    assert "PATH" in env


async def test_a_lean_config_child_finds_its_lean_through_lean_worker_lean(
    lean_toolchain, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("LEAN_WORKER_LEAN", str(lean_toolchain.lean))
    async with Worker(lean_config(request_timeout_s=60)) as worker:
        report = await worker.call(TOOLCHAIN, ToolchainQuery())
    assert (report.source, report.lean) == ("env", str(lean_toolchain.lean))


# -- max_sessions ------------------------------------------------------------------------------


async def test_max_sessions_2_is_reported_by_the_child_and_a_third_header_evicts_the_first(
    lean_toolchain, library  # type: ignore[no-untyped-def]
) -> None:
    config = lean_config(lean=lean_toolchain.lean, search_path=[library.root], max_sessions=2, request_timeout_s=60)
    assert config.session_limit == 2
    engine = {item.name: item for item in (await doctor(config)).items}["lean.engine"]
    assert (engine.data["engine"], engine.data["max_sessions"]) == ("warm", "2")
    logic, nat, lists = ("prelude\nimport LwFix.Logic\n", "prelude\nimport LwFix.Nat\n", "prelude\nimport LwFix.List\n")
    async with Worker(config) as worker:
        opened = [(await worker.call(OPEN, OpenRequest(header))).session for header in (logic, nat, lists, nat, logic)]
    # Logic, Nat, List: the third evicts Logic, the least recently used; Nat stays warm.
    assert opened == ["import", "import", "import", "warm", "import"]
