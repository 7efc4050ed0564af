"""The sandbox holds: probes that get out of an unsandboxed worker and not out of a sandboxed one.

Every escape probe runs twice, ``off`` and ``required``: the unsandboxed run shows the probe
really does what it claims (writes land, the secret shows, the connection opens, the
grandchild survives, the fork loop runs to its own cap), so the sandboxed run's refusal is
the sandbox's doing. Probes are Python handlers (``tests/children/sandbox_probe.py``) and,
for writes and the network, Lean code calling Lean's runtime primitives
(``tests/lean_io_probes.py``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest

from lean_worker import (
    ChildCommand,
    Sandbox,
    SandboxUnavailable,
    Worker,
    WorkerConfig,
)
from lean_worker._probe import check, doctor
from lean_worker.lean import CHECK, CheckRequest
from lean_worker._verify import sandbox_line
from lean_worker.verify import VerifyOptions, verify_snippets
from lean_worker_child.lean.provision import cache_dir
from tests.children.sandbox_probe import (
    CONNECT,
    DETACH,
    FACTS,
    FORK_BOMB,
    READ,
    UNMOUNT,
    WRITE,
    Forks,
    Marker,
    Paths,
    Port,
)
from tests.conftest import ROOT, child_config
from tests.lean_io_probes import run_process_snippet, shown_by_eval, write_file_snippet
from tests.test_process_hygiene import gone, kill_leftovers, wait_gone

PROBE = "tests.children.sandbox_probe"
MODES = ["off", "required"]


def probe_config(mode: str | Sandbox, **options: object) -> WorkerConfig:
    return child_config(PROBE, sandbox=mode, **options)


NO_USER_NAMESPACES = ("unshare", "--user", "--map-root-user", "sh", "-c",
                      'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh")
"""A command prefix: run the rest inside a user namespace that may create no more of them,
as on a machine where the sandbox cannot be built (``unshare`` fails with ENOSPC)."""


def without_user_namespaces(config: WorkerConfig) -> WorkerConfig:
    """The same child, started where the sandbox cannot be built."""
    return dataclasses.replace(config, child=ChildCommand((*NO_USER_NAMESPACES, *config.child.argv)))


def places(tag: str) -> dict[str, Path]:
    """Where a hostile snippet would write: home, /tmp, the repository, the cache, /etc."""
    return {
        "home": Path.home() / tag,
        "tmp": Path("/tmp") / tag,
        "repository": ROOT / tag,
        "cache": cache_dir() / tag,
        "etc": Path("/etc") / tag,
    }


@pytest.fixture
def tag() -> str:
    return f"lw-sandbox-probe-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cleanup(tag: str):  # type: ignore[no-untyped-def]
    yield
    for path in places(tag).values():
        path.unlink(missing_ok=True)


# -- the filesystem ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_writes_to_home_tmp_repository_cache_and_etc_fail_only_in_the_sandbox(
    anyio_backend: str, mode: str, tag: str, cleanup: None
) -> None:
    targets = places(tag)
    cache_dir().mkdir(parents=True, exist_ok=True)
    async with Worker(probe_config(mode)) as worker:
        outcome = await worker.call(WRITE, Paths([str(p) for p in targets.values()]))
    for name, path in targets.items():
        result = outcome[str(path)]
        if mode == "required":
            assert result != "written" and not path.exists(), (name, result)
        elif name != "etc" or os.access("/etc", os.W_OK):
            assert result == "written" and path.exists(), (name, result)


async def test_the_scratch_directory_is_writable_private_and_gone_with_the_worker(anyio_backend: str, tag: str) -> None:
    async with Worker(probe_config("required")) as worker:
        facts = await worker.call(FACTS, Marker(""))
        assert facts.sandboxed and facts.tmpdir == "/scratch"
        assert await worker.call(WRITE, Paths([f"/scratch/{tag}"])) == {f"/scratch/{tag}": "written"}
        assert "read 27 bytes" == (await worker.call(READ, Paths([f"/scratch/{tag}"])))[f"/scratch/{tag}"]
        await worker.cycle()
        # A new generation gets a new, empty scratch: nothing carries over between children.
        assert (await worker.call(READ, Paths([f"/scratch/{tag}"])))[f"/scratch/{tag}"].startswith("FileNotFoundError")
    assert not Path("/scratch", tag).exists()


async def test_the_worker_cannot_unmount_or_remount_its_read_only_view(anyio_backend: str) -> None:
    # Only sandboxed: unsandboxed as root this would unmount the host's /usr.
    async with Worker(probe_config("required")) as worker:
        facts = await worker.call(FACTS, Marker(""))
        outcome = await worker.call(UNMOUNT, Paths(["/usr", "/", str(ROOT), "/scratch", "/proc"]))
    assert int(facts.cap_eff, 16) == 0, "the worker kept capabilities"
    assert all(result == os.strerror(1) for result in outcome.values()), outcome  # EPERM


async def test_the_interpreter_packages_and_host_home_are_as_expected(anyio_backend: str) -> None:
    # What must be readable is; what nobody declared does not exist inside.
    home = Path.home()
    async with Worker(probe_config("required")) as worker:
        outcome = await worker.call(READ, Paths([sys.executable, str(ROOT / "lean_worker_child"), "/etc/passwd",
                                                 str(home / ".bashrc"), "/run"]))
    assert outcome[sys.executable].startswith("read ")
    assert outcome[str(ROOT / "lean_worker_child")].startswith("dir with ")
    assert outcome["/etc/passwd"].startswith("read ")
    if not str(ROOT).startswith(str(home)):
        assert outcome[str(home / ".bashrc")].startswith("FileNotFoundError")
    assert outcome["/run"].startswith("FileNotFoundError")


# -- secrets and the network ---------------------------------------------------------------------

_SECRET_SCRIPT = """
import anyio, json, sys
from lean_worker import Worker
from tests.children.sandbox_probe import FIND_SECRET, Needle
from tests.conftest import child_config

async def main():
    async with Worker(child_config("tests.children.sandbox_probe", sandbox=sys.argv[1])) as worker:
        print(json.dumps(await worker.call(FIND_SECRET, Needle(sys.argv[2]))))

anyio.run(main)
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_decoy_secret_in_the_parents_environment_is_visible_only_without_the_sandbox(mode: str) -> None:
    # The parent's environment is fixed when it starts: the decoy is in a real parent's
    # initial environment, which /proc/<pid>/environ shows to any process of the same user.
    secret = f"decoy-{uuid.uuid4().hex}"
    env = dict(os.environ, LW_DECOY_SECRET=secret,
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", _SECRET_SCRIPT, mode, secret], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    if mode == "off":
        assert any(f.startswith("/proc/") for f in found), found  # the env allowlist alone is not enough
        assert not any(f.startswith("own environment") for f in found)
    else:
        assert found == []


@pytest.mark.parametrize("mode", MODES)
async def test_a_tcp_connect_to_a_listener_on_loopback_fails_only_in_the_sandbox(anyio_backend: str, mode: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        async with Worker(probe_config(mode)) as worker:
            outcome = await worker.call(CONNECT, Port(port))
    if mode == "off":
        assert outcome == "connected"
    else:
        assert outcome.startswith("OSError") and "unreachable" in outcome, outcome


# -- processes -----------------------------------------------------------------------------------


def _marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in (proc.info["cmdline"] or []) and not gone(proc):
            found.append(proc)
    return found


@pytest.mark.parametrize("mode", MODES)
async def test_a_setsid_double_forked_grandchild_is_gone_when_the_worker_is_replaced_only_in_the_sandbox(
    anyio_backend: str, mode: str
) -> None:
    marker = f"lw-detached-{uuid.uuid4().hex}"
    survivors: list[psutil.Process] = []
    try:
        async with Worker(probe_config(mode)) as worker:
            assert await worker.call(DETACH, Marker(marker)) == "detached"
            survivors = _marked(marker)
            assert len(survivors) == 1
            assert survivors[0].pid not in {p.pid for p in psutil.Process(worker.pid).children(recursive=True)} \
                or mode == "required"  # unsandboxed it left the worker's tree; inside, init adopted it
            await worker.cycle()
            if mode == "required":
                wait_gone(survivors, within_s=5.0)
            else:
                assert not gone(survivors[0]), "unsandboxed, a detached grandchild outlives the worker"
    finally:
        kill_leftovers(survivors)


async def test_a_fork_bomb_is_stopped_by_the_process_limit_and_the_worker_recovers(anyio_backend: str) -> None:
    sandbox = Sandbox(mode="required", processes=16)
    async with Worker(probe_config(sandbox)) as worker:
        outcome = await worker.call(FORK_BOMB, Forks(cap=2000))
        bomb = psutil.Process(worker.pid).children(recursive=True)
        await worker.cycle()
        wait_gone(bomb, within_s=20.0)
        facts = await worker.call(FACTS, Marker(""))  # a fresh child serves
    # pid_max = 300 + processes: at most 315 tasks before the first wrap-around (RLIMIT_NPROC
    # would stop it sooner, but the kernel exempts root).
    assert outcome.stopped_by.startswith("BlockingIOError"), outcome
    assert outcome.forked < 316
    assert facts.sandboxed and facts.limits["nproc"] == [16, 16]


async def test_without_the_sandbox_the_same_fork_loop_runs_to_its_own_cap(anyio_backend: str) -> None:
    async with Worker(probe_config("off")) as worker:
        outcome = await worker.call(FORK_BOMB, Forks(cap=40))
    assert outcome == outcome.__class__(40, "cap")


async def test_the_sandbox_limits_are_hard_limits_the_worker_cannot_raise(anyio_backend: str) -> None:
    sandbox = Sandbox(mode="required", scratch_bytes=8 * 1024 * 1024, processes=64)
    async with Worker(probe_config(sandbox)) as worker:
        facts = await worker.call(FACTS, Marker(""))
    assert facts.limits["nproc"] == [64, 64]
    assert facts.limits["fsize"] == [8 * 1024 * 1024] * 2
    assert facts.limits["core"][1] <= 1


# -- when the machine cannot build it ------------------------------------------------------------


async def test_required_refuses_to_start_with_a_typed_error_that_says_why_and_how_to_fix_it(anyio_backend: str) -> None:
    config = without_user_namespaces(probe_config("required"))
    with pytest.raises(SandboxUnavailable) as caught:
        async with Worker(config):
            pass
    error = caught.value
    assert error.code == "worker.sandbox.unavailable"
    assert (error.step, error.errno) == ("unshare", "ENOSPC")
    assert "user.max_user_namespaces" in error.fix and "sandbox='auto'" in error.fix


async def test_auto_falls_back_loudly_in_the_status_check_doctor_and_summary_line(anyio_backend: str) -> None:
    config = without_user_namespaces(probe_config("auto"))
    async with Worker(config) as worker:
        status = worker.sandbox
        facts = await worker.call(FACTS, Marker(""))
    assert not status.active and not facts.sandboxed
    assert status.fallback_reason is not None and "step=unshare" in status.fallback_reason
    assert status.fallback_fix is not None and "user.max_user_namespaces" in status.fallback_fix
    assert "NOT ACTIVE" in sandbox_line([status])
    report = await check(config)
    item = next(i for i in report.items if i.code.startswith("check.sandbox"))
    assert (item.code, item.severity) == ("check.sandbox_fallback", "warning") and "NOT SANDBOXED" in item.message
    doc = await doctor(config)
    own = next(i for i in doc.items if i.name == "worker.sandbox")
    assert own.severity == "warning" and "NOT SANDBOXED" in own.message


async def test_check_reports_what_the_sandbox_enforces_here(anyio_backend: str) -> None:
    report = await check(probe_config("required"))
    item = next(i for i in report.items if i.code.startswith("check.sandbox"))
    assert item.code == "check.sandbox_active"
    for fact in ("user, pid, net, mount", "network: none", "scratch /scratch", "capabilities: none"):
        assert fact in item.message
    assert report.ok


# -- what must still work ------------------------------------------------------------------------


async def test_the_fixture_snippets_check_with_the_same_verdicts_and_messages_as_unsandboxed(
    anyio_backend: str, lean_toolchain, library  # type: ignore[no-untyped-def]
) -> None:
    # Reading the toolchain and the search path still works: the bundled library imports.
    snippets = [(p.stem, p.read_text()) for p in sorted((ROOT / "lean" / "snippets").glob("*.lean"))
                if p.stem != "hang"]  # hang only times out, in both: its cost is the timeout
    seen = {}
    summaries = {}
    for mode in MODES:
        options = VerifyOptions(workers=2, timeout_s=20, lean=str(lean_toolchain.lean),
                                search_path=[str(library.root)], sandbox=mode)  # type: ignore[arg-type]
        async with verify_snippets(snippets, options) as run:
            results = [r async for r in run]
        seen[mode] = {r.id: (r.verdict, [(m.severity, m.pos, m.text) for m in r.messages],
                             r.error.code if r.error else None) for r in results}
        summaries[mode] = run.summary
    assert seen["required"] == seen["off"]
    assert {v for v, _, _ in seen["off"].values()} >= {"ok", "errors", "sorry", "failed"}
    assert summaries["required"].sandbox == "required: active" and summaries["off"].sandbox == "off"
    assert re.search(r"^sandbox +required: active$", summaries["required"].render(), re.MULTILINE)


# -- from Lean code itself -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_lean_code_writing_to_home_tmp_repository_cache_and_etc_fails_only_in_the_sandbox(
    anyio_backend: str, mode: str, tag: str, cleanup: None, config  # type: ignore[no-untyped-def]
) -> None:
    targets = places(tag)
    async with Worker(config(sandbox=mode)) as worker:
        shown = {name: shown_by_eval(await worker.call(CHECK, CheckRequest(write_file_snippet(str(path)))))
                 for name, path in targets.items()}
        scratch = shown_by_eval(await worker.call(CHECK, CheckRequest(write_file_snippet(f"/scratch/{tag}"))))
    for name, path in targets.items():
        if mode == "required":
            assert shown[name] != "wrote" and not path.exists(), (name, shown[name])
        elif name != "etc" or os.access("/etc", os.W_OK):
            assert shown[name] == "wrote" and path.exists(), (name, shown[name])
    if mode == "required":
        assert scratch == "wrote"


@pytest.mark.parametrize("mode", MODES)
async def test_lean_code_connecting_to_a_loopback_listener_through_a_process_fails_only_in_the_sandbox(
    anyio_backend: str, mode: str, config  # type: ignore[no-untyped-def]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')"
        async with Worker(config(sandbox=mode)) as worker:
            shown = shown_by_eval(await worker.call(CHECK, CheckRequest(run_process_snippet(sys.executable, ["-c", connect]))))
    if mode == "off":
        assert shown.startswith("stdout: connected"), shown
    else:
        assert "Network is unreachable" in shown, shown


# -- the defaults of verify and serve, on a machine without user namespaces ----------------------

def test_verify_falls_back_by_default_and_its_summary_says_the_checks_ran_unsandboxed(
    lean_toolchain, library, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "ok.lean").write_text((ROOT / "lean" / "snippets" / "ok.lean").read_text())
    done = subprocess.run(
        [*NO_USER_NAMESPACES, sys.executable, "-m", "lean_worker.cli", "verify", str(tmp_path), "--lean",
         str(lean_toolchain.lean), "--search-path", str(library.root), "-j", "1", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["verdict"] == "ok"
    row = next(line for line in done.stderr.splitlines() if line.startswith("sandbox "))
    assert "auto: NOT ACTIVE, checks ran unsandboxed; " in row and "step=unshare" in row
    assert "NOT ACTIVE" in done.stderr.split(row)[0]  # also said when it happened, before the results


def test_serve_refuses_to_start_without_a_sandbox_and_says_how_to_fix_it(lean_toolchain, library) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [*NO_USER_NAMESPACES, sys.executable, "-m", "lean_worker.cli", "serve", "--port", "0", "-j", "1", "--lean",
         str(lean_toolchain.lean), "--search-path", str(library.root)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "listening" not in done.stdout
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("lean-worker serve: worker.sandbox.unavailable: ") and "step=unshare" in line
    assert "user.max_user_namespaces" in line and "--sandbox auto" in line
