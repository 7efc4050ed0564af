"""``lean-worker serve`` answers Kimina's clients, which run unchanged against it: the real
``kimina-client`` 0.2.1 (``KiminaClient`` and ``AsyncKiminaClient``) and a client shaped like
Kimina's old ``Lean4Client``, each in its own process, against the real server and real Lean.

kimina-client 0.2.1 does not import on Python 3.11 (pydantic rejects its ``typing.TypedDict``
models), so the clients run in a Python 3.12 venv built once per machine and cached
(``kimina_python``). Every status asserted here is the client's own ``analyze().status``.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lean_worker_child.lean.provision import cache_dir

from tests.service_server import Server

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = Path(__file__).resolve().parent / "clients"
SNIPPETS = ROOT / "lean" / "snippets"
pytestmark = pytest.mark.timeout(180)

# -- the client venv ------------------------------------------------------------------------------

KIMINA_CLIENT = "kimina-client==0.2.1"
# Pinned to what installed on 2026-12 (with kimina-client 0.2.1), so that a new release cannot
# change these tests under us. pygments: kimina-client imports it (models.py) but does not
# declare it. aiohttp: what the old Lean4Client was written on.
PYGMENTS = "pygments==2.21.0"
AIOHTTP = "aiohttp==3.14.5"
PINS = (KIMINA_CLIENT, PYGMENTS, AIOHTTP)
VENV = cache_dir() / "test-venvs" / "kimina-client-0.2.1-py3.12"
READY = ".lean-worker-ready"
"""Written after a successful install; holds the pins, so changing a pin rebuilds the venv."""
INSTALL_TIMEOUT_S = 300.0
"""The whole build (venv + pip install); measured about 40 s on a 2-core VM."""


def _python312() -> str | None:
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python")), reverse=True)
    on_path = shutil.which("python3.12")
    if on_path:
        candidates.append(on_path)
    for candidate in candidates:
        try:
            probe = subprocess.run([candidate, "-c", "import sys, venv; print(sys.version_info[:2] == (3, 12))"],
                                   capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    return None


def _usable(venv: Path) -> bool:
    python = venv / "bin" / "python"
    marker = venv / READY
    if not (python.exists() and marker.exists() and marker.read_text() == "\n".join(PINS)):
        return False
    try:
        probe = subprocess.run([str(python), "-c", "import kimina_client, aiohttp, pygments"],
                               capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _build(interpreter: str, venv: Path) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    steps = [
        [interpreter, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", *PINS],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"building the kimina-client venv timed out; limit_s={INSTALL_TIMEOUT_S:g} step={step[:3]}")
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"building the kimina-client venv failed; step={step[:3]} exit={done.returncode} "
                        f"stderr={done.stderr[-2000:]}")
    (venv / READY).write_text("\n".join(PINS))


@pytest.fixture(scope="session")
def kimina_python() -> Path:
    """The python of a Python 3.12 venv with kimina-client 0.2.1, built once per machine into
    the lean-worker cache and reused; rebuilt when it does not import (or its pins changed).
    Skips without a Python 3.12, except on CI (``$CI`` set), where that fails."""
    if not _usable(VENV):
        interpreter = _python312()
        if interpreter is None:
            reason = "no Python 3.12 found (~/.pyenv/versions/3.12*, python3.12 on PATH): kimina-client 0.2.1 needs it"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        VENV.parent.mkdir(parents=True, exist_ok=True)
        with open(VENV.parent / f"{VENV.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it right now
            if not _usable(VENV):
                _build(interpreter, VENV)
    return VENV / "bin" / "python"


def run_client(python: Path, script: str, request: dict[str, Any], tmp_path: Path,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``tests/clients/<script>`` with ``request`` as its REQUEST.json; its JSON output."""
    path = tmp_path / f"{script}.{time.monotonic_ns()}.json"
    path.write_text(json.dumps(request))
    # The client's environment, not ours: no key it would pick up by itself (kimina-client
    # reads LEAN_SERVER_API_KEY / LEANSERVER_API_KEY when given none), no proxy for 127.0.0.1.
    base = {k: v for k, v in os.environ.items()
            if k not in {"LEAN_SERVER_API_KEY", "LEANSERVER_API_KEY", "LEAN_SERVER_API_URL", "PYTHONPATH"}}
    base["NO_PROXY"] = base["no_proxy"] = "127.0.0.1,localhost"
    done = subprocess.run([str(python), str(CLIENTS / script), str(path)], capture_output=True, text=True,
                          timeout=120, env={**base, **(env or {})})
    assert done.returncode == 0, f"{script} failed; exit={done.returncode} stderr={done.stderr[-3000:]}"
    return json.loads(done.stdout)


# -- snippets ---------------------------------------------------------------------------------------

def snippet(name: str) -> str:
    return (SNIPPETS / f"{name}.lean").read_text()


OK, SORRY, TYPE_ERROR = snippet("ok"), snippet("sorry"), snippet("type_error")
HANG, CRASH, MEMORY = snippet("hang"), snippet("crash"), snippet("memory")
HEARTBEATS, TACTICS_OK = snippet("heartbeats"), snippet("tactics_ok")
CHECK_INFO = "prelude\nimport LwFix.Nat\n#check N.zero\n"
"""``#check``: one info message, as in kimina-client's own ``test()`` (``#check Nat``)."""
TYPE_ERROR_AT = tuple(int(n) for n in TYPE_ERROR.splitlines()[0].removeprefix("-- expect: error ").split(":"))

CHECK_TIMEOUT = 20
"""The client's timeout for checks without a hang: crash.lean takes 0.7-3.2 s here when it
shares the 2 cores with other Lean processes, so a hang's short timeout would cut it."""
HANG_TIMEOUT = 2


def statuses(check: dict[str, Any]) -> dict[str, str]:
    return {id_: item["status"] for id_, item in check["results"].items()}


def assert_one_result_per_id(check: dict[str, Any], snippets: list[dict[str, str]]) -> None:
    assert sorted(check["order"]) == sorted(s["id"] for s in snippets)


def assert_sorry_has_goal(raw: dict[str, Any]) -> None:
    assert raw["error"] is None
    sorries = raw["response"]["sorries"]
    assert len(sorries) == 1
    hole = sorries[0]
    assert set(hole["pos"]) == set(hole["endPos"]) == {"line", "column"}
    assert hole["pos"]["line"] == 7 and hole["endPos"]["column"] > hole["pos"]["column"]
    assert "⊢" in hole["goal"] and "Eq (m.add n) (n.add m)" in hole["goal"]


def assert_timed_out(raw: dict[str, Any]) -> None:
    assert raw["response"] is None
    assert raw["error"].startswith("lean.timeout:") and "timed out" in raw["error"]


def assert_crashed(raw: dict[str, Any]) -> None:
    assert raw["response"] is None
    assert raw["error"].startswith("lean.crashed:") and "timed out" not in raw["error"]


def access(server: Server, path: str) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, server.access_log()) if line["path"] == path]


# -- servers ----------------------------------------------------------------------------------------

NO_KEY_ENV = {"LEAN_WORKER_API_KEY": ""}
"""Auth off whatever the environment says (an empty key is no key)."""


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """Auth off, 2 workers: shared by the client tests (each sends its own snippets)."""
    with Server("--fixtures", "-j", "2", "--timeout", "5", env=NO_KEY_ENV) as running:
        yield running


FLAG_KEY = "flag-key-0123456789"


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[Server]:
    """Auth on by ``--api-key``."""
    with Server("--fixtures", "-j", "2", "--timeout", "5", "--api-key", FLAG_KEY, env=NO_KEY_ENV) as running:
        yield running


# -- kimina-client ----------------------------------------------------------------------------------

def test_kimina_client_check_classifies_every_outcome_as_kimina_does_over_concurrent_batches(
    kimina_python: Path, server: Server, tmp_path: Path
) -> None:
    # 13 snippets in batches of 8: the first and the last batch each hold one slow snippet
    # (crash 0.7-3 s, memory 1.3 s), so the two requests the client sends at once overlap.
    mixed = [
        {"id": "ok", "code": OK}, {"id": "sorry", "code": SORRY}, {"id": "type_error", "code": TYPE_ERROR},
        {"id": "crash", "code": CRASH}, {"id": "heartbeats", "code": HEARTBEATS},
        {"id": "check_info", "code": CHECK_INFO}, {"id": "tactics_ok", "code": TACTICS_OK}, {"id": "ok-2", "code": OK},
        {"id": "memory", "code": MEMORY}, {"id": "sorry-2", "code": SORRY}, {"id": "type_error-2", "code": TYPE_ERROR},
        {"id": "ok-3", "code": OK}, {"id": "ok-4", "code": OK},
    ]
    hang = [{"id": "hang", "code": HANG}, {"id": "ok-after-hang", "code": OK}]
    before = len(access(server, "/api/check"))
    reply = run_client(kimina_python, "kimina_sync.py", {
        "url": server.url, "api_key": None,
        "checks": [{"timeout": CHECK_TIMEOUT, "snippets": mixed, "batch_size": 8, "max_workers": 5},
                   {"timeout": HANG_TIMEOUT, "snippets": hang}],
    }, tmp_path)

    assert reply["health"] == {"status": "ok"}
    first, second = reply["checks"]
    assert_one_result_per_id(first, mixed)
    assert_one_result_per_id(second, hang)
    assert statuses(first) == {
        "ok": "valid", "ok-2": "valid", "ok-3": "valid", "ok-4": "valid", "tactics_ok": "valid",
        "check_info": "valid", "memory": "valid",
        "sorry": "sorry", "sorry-2": "sorry",
        "type_error": "lean_error", "type_error-2": "lean_error",
        "heartbeats": "lean_error",  # Lean's deterministic timeout is a Lean error, not a timeout
        "crash": "server_error",
    }
    assert statuses(second) == {"hang": "timeout_error", "ok-after-hang": "valid"}

    raw = {id_: item["raw"] for id_, item in {**first["results"], **second["results"]}.items()}
    assert raw["ok"]["response"] == {"env": 0, "messages": []} and raw["ok"]["error"] is None
    assert raw["check_info"]["response"]["messages"] == [
        {"severity": "info", "pos": {"line": 3, "column": 0}, "endPos": {"line": 3, "column": 6}, "data": "N.zero : N"}
    ]
    assert [m["data"] for m in raw["memory"]["response"]["messages"]] == ["built"]
    assert_sorry_has_goal(raw["sorry"])
    assert raw["sorry"]["response"]["messages"][0]["severity"] == "warning"
    [error] = raw["type_error"]["response"]["messages"]
    assert error["severity"] == "error" and (error["pos"]["line"], error["pos"]["column"]) == TYPE_ERROR_AT
    assert_crashed(raw["crash"])
    assert_timed_out(raw["hang"])
    assert raw["hang"]["time"] >= HANG_TIMEOUT
    assert all(item["time"] >= 0 and item["diagnostics"] is None for item in raw.values())

    # The client split the 13 snippets into two requests of 8 and 5 and sent them at once.
    batches = access(server, "/api/check")[before:before + 2]
    assert sorted(b["snippets"] for b in batches) == [5, 8]
    assert all(b["status"] == 200 for b in batches)
    (start_a, end_a), (start_b, end_b) = [(b["ts"] - b["ms"] / 1e3, b["ts"]) for b in batches]
    assert start_a < end_b and start_b < end_a, f"the two batches did not overlap: {batches}"


def test_async_kimina_client_check_classifies_as_kimina_does(
    kimina_python: Path, server: Server, tmp_path: Path
) -> None:
    mixed = [
        {"id": "ok", "code": OK}, {"id": "sorry", "code": SORRY}, {"id": "type_error", "code": TYPE_ERROR},
        {"id": "crash", "code": CRASH}, {"id": "check_info", "code": CHECK_INFO},
    ]
    hang = [{"id": "hang", "code": HANG}]
    reply = run_client(kimina_python, "kimina_async.py", {
        "url": server.url, "api_key": None,
        "checks": [{"timeout": CHECK_TIMEOUT, "snippets": mixed, "batch_size": 2, "max_workers": 2},
                   {"timeout": HANG_TIMEOUT, "snippets": hang}],
    }, tmp_path)

    assert reply["health"] == {"status": "ok"}
    first, second = reply["checks"]
    assert_one_result_per_id(first, mixed)
    assert statuses(first) == {"ok": "valid", "sorry": "sorry", "type_error": "lean_error",
                               "crash": "server_error", "check_info": "valid"}
    assert statuses(second) == {"hang": "timeout_error"}
    assert_sorry_has_goal(first["results"]["sorry"]["raw"])
    assert_crashed(first["results"]["crash"]["raw"])
    assert_timed_out(second["results"]["hang"]["raw"])


# -- the old Lean4Client ----------------------------------------------------------------------------

def test_old_lean4client_probes_root_and_verifies_with_bearer_none_when_auth_is_off(
    kimina_python: Path, server: Server, tmp_path: Path
) -> None:
    codes = [
        {"custom_id": 0, "proof": OK}, {"custom_id": "sorry-1", "proof": SORRY},
        {"custom_id": 7, "proof": TYPE_ERROR}, {"custom_id": "hang", "proof": HANG},
    ]
    reply = run_client(kimina_python, "lean4client_old.py",
                       {"url": server.url, "api_key": None, "timeout": HANG_TIMEOUT, "codes": codes}, tmp_path)

    assert reply["probe"] == {"status": 200, "json": {"status": "ok"}}
    assert reply["verify"]["status"] == 200
    results = reply["verify"]["json"]["results"]
    assert [r["custom_id"] for r in results] == [0, "sorry-1", 7, "hang"]  # ints stay ints, in input order
    assert all(set(r) == {"custom_id", "error", "response"} for r in results)  # callers index both
    ok, sorry, type_error, hang = results
    assert ok["error"] is None and ok["response"]["messages"] == [] and ok["response"]["time"] >= 0
    assert sorry["error"] is None and "sorries" in sorry["response"]
    assert_sorry_has_goal(sorry)
    assert type_error["error"] is None
    assert [m["severity"] for m in type_error["response"]["messages"]] == ["error"]
    assert_timed_out(hang)


# -- auth -------------------------------------------------------------------------------------------

def test_kimina_client_with_the_key_works_and_without_it_gets_401_as_server_errors(
    kimina_python: Path, keyed_server: Server, tmp_path: Path
) -> None:
    checks = [{"timeout": CHECK_TIMEOUT, "snippets": [{"id": "ok", "code": OK}, {"id": "sorry", "code": SORRY}]}]
    request = {"url": keyed_server.url, "checks": checks, "n_retries": 1}  # one attempt: no backoff between 401s

    right = run_client(kimina_python, "kimina_sync.py", {**request, "api_key": FLAG_KEY}, tmp_path)
    assert statuses(right["checks"][0]) == {"ok": "valid", "sorry": "sorry"}
    # No key given: the client takes LEAN_SERVER_API_KEY from its environment.
    from_env = run_client(kimina_python, "kimina_sync.py", {**request, "api_key": None}, tmp_path,
                          env={"LEAN_SERVER_API_KEY": FLAG_KEY})
    assert statuses(from_env["checks"][0]) == {"ok": "valid", "sorry": "sorry"}

    before = len(access(keyed_server, "/api/check"))
    for key in ("wrong-key", None):
        refused = run_client(kimina_python, "kimina_sync.py", {**request, "api_key": key}, tmp_path)
        # /health needs no key; check() (safe mode) turns the HTTP error into an error per
        # snippet, which analyze() counts as a server error.
        assert refused["health"] == {"status": "ok"}
        assert statuses(refused["checks"][0]) == {"ok": "server_error", "sorry": "server_error"}
        assert {r["raw"]["error"] for r in refused["checks"][0]["results"].values()} == {
            "Request failed after 1 retries"}
    assert [line["status"] for line in access(keyed_server, "/api/check")[before:]] == [401, 401]


def test_old_lean4client_bearer_none_is_refused_when_auth_is_on(
    kimina_python: Path, keyed_server: Server, tmp_path: Path
) -> None:
    request = {"url": keyed_server.url, "timeout": 10, "codes": [{"custom_id": 1, "proof": OK}]}
    refused = run_client(kimina_python, "lean4client_old.py", {**request, "api_key": None}, tmp_path)
    assert refused["probe"] == {"status": 200, "json": {"status": "ok"}}  # its connection test still passes
    assert refused["verify"]["status"] == 401
    assert refused["verify"]["json"]["error"]["code"] == "service.unauthorized"
    assert "results" not in refused["verify"]["json"]

    accepted = run_client(kimina_python, "lean4client_old.py", {**request, "api_key": FLAG_KEY}, tmp_path)
    assert accepted["verify"]["status"] == 200
    [result] = accepted["verify"]["json"]["results"]
    assert result["custom_id"] == 1 and result["error"] is None and result["response"]["messages"] == []


def _raw_auth(url: str, key: str) -> None:
    """The HTTP statuses of every Kimina route with the right key, a wrong one, ``Bearer None``
    and no header; the health routes need none."""
    check = {"snippets": [{"id": "a", "code": OK}], "timeout": 10}
    verify = {"codes": [{"custom_id": 1, "proof": OK}], "timeout": 10}
    with httpx.Client(base_url=url, timeout=60, trust_env=False) as http:
        for path in ("/", "/health"):
            assert http.get(path).json() == {"status": "ok"}
        for path, body in (("/api/check", check), ("/verify", verify)):
            for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Bearer None"},
                           {"Authorization": key}):
                refused = http.post(path, json=body, headers=header)
                assert refused.status_code == 401, (path, header)
                assert refused.headers["www-authenticate"] == "Bearer"
                assert refused.json()["error"]["code"] == "service.unauthorized"
            accepted = http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})
            assert accepted.status_code == 200
            [result] = accepted.json()["results"]
            assert result.get("error") is None and result["response"]["messages"] == []


def test_raw_http_with_key_from_flag_refuses_wrong_missing_and_bearer_none(keyed_server: Server) -> None:
    _raw_auth(keyed_server.url, FLAG_KEY)


def test_key_from_env_lean_worker_api_key_guards_the_routes_for_raw_http_and_the_client(
    kimina_python: Path, tmp_path: Path
) -> None:
    key = "env-key-9876543210"
    with Server("--fixtures", "-j", "1", "--timeout", "5", env={"LEAN_WORKER_API_KEY": key}) as keyed:
        _raw_auth(keyed.url, key)
        reply = run_client(kimina_python, "kimina_sync.py", {
            "url": keyed.url, "api_key": key,
            "checks": [{"timeout": CHECK_TIMEOUT, "snippets": [{"id": "ok", "code": OK}]}],
        }, tmp_path)
        assert statuses(reply["checks"][0]) == {"ok": "valid"}
