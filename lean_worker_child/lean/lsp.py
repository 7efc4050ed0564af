"""One ``lean --worker`` process holding one document: the warm engine's session.

Lean's server is two programs: a watchdog (``lean --server``) that routes LSP traffic, and
one file worker per open document, which the watchdog starts by re-executing itself with
``--worker``. We start the file worker directly: it reads ``initialize`` and ``didOpen``
from stdin, imports the header once, then re-elaborates only the body on every
``didChange`` whose header is unchanged. Going direct gives the exact exit status of the
process that held the snippet and saves the watchdog hop. ``-Dserver.reportDelayMs=N``
replaces the 200 ms the worker otherwise waits before reporting diagnostics
(``architecture/60-lean-engine.md`` has the numbers): a few milliseconds, so that a short
check or step is reported once instead of at every intermediate state, which costs Lean
and us less CPU (``LeanSettings.report_delay_ms`` for warm checks,
``session_report_delay_ms`` for the session engine's documents).

A file worker exits with status 2 when a change alters the header; the engine never sends
one (a session's document always starts with the same canonical header).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from lean_worker_exit import classify, oom_kill_count

from .._boot import die_with_parent
from .errors import LeanCrashed, LeanError, LeanTimeout

REPORT_DELAY_OPTION = "server.reportDelayMs"
_LENGTH = b"Content-Length: "
_UNREAD = b'{"jsonrpc":"2.0","method":"$/lean/ileanInfo'
"""The reference index Lean publishes for the whole file after every check
(``$/lean/ileanInfoUpdate``/``Final``): nobody reads it, and it grows with the file, so it
is skipped unparsed (Lean writes object keys sorted: ``jsonrpc`` then ``method``). Parsing
it was a fifth of the child's CPU per light check (architecture/90-pool-and-verify.md)."""
_PROGRESS = b'{"jsonrpc":"2.0","method":"$/lean/fileProgress"'
_DONE = b'"processing":[]'
"""Only the progress that says nothing is left matters (``_dispatch``); the others, one per
command as it finishes and each listing every command still running, are skipped unparsed."""
_STDERR_TAIL = 64 * 1024


def _death_detail(stderr: str) -> str | None:
    """The line in which Lean explains its own death, if it left one."""
    for line in reversed(stderr.strip().splitlines()):
        line = line.strip()
        if line:
            return line[:500]
    return None


class WorkDir:
    """The directory an engine's document files live in, made on first use.

    Not at start-up: a sandboxed child enters its sandbox after the engines are built, and
    its only writable place (``TMPDIR``) exists from then on. The Lean processes get the
    same ``TMPDIR`` (``env``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._path: str | None = None

    @property
    def path(self) -> str:
        if self._path is None:
            self._path = tempfile.mkdtemp(prefix=self.prefix)
        return self._path

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, "TMPDIR": tempfile.gettempdir()}

    def remove(self) -> None:
        if self._path is not None:
            try:
                os.rmdir(self._path)
            except OSError:
                pass


class FileWorker:
    """A ``lean --worker`` process with one open document.

    ``check(text)`` opens the document on first use and replaces its whole text afterwards;
    it returns the LSP diagnostics Lean published for that version.
    """

    def __init__(
        self,
        lean: str,
        *,
        uri: str,
        cwd: str,
        env: Mapping[str, str],
        extra_args: Sequence[str] = (),
        report_delay_ms: int = 0,
    ) -> None:
        self.uri = uri
        self.version = 0
        self._lock = threading.Lock()  # guards the stderr tail
        self._responses: dict[int, dict[str, Any]] = {}
        self._diagnostics: dict[int, list[dict[str, Any]]] = {}
        self._processed = 0
        """The latest version Lean reported fully processed (``$/lean/fileProgress``, empty)."""
        self._abandoned: set[int] = set()
        """Requests whose answer is no longer wanted (dropped when it comes)."""
        self._barrier: int | None = None
        """The ``waitForDiagnostics`` of an ``early`` check, not answered yet."""
        self._next_id = 0
        self._stderr: deque[bytes] = deque()
        self._stderr_bytes = 0
        self._eof = False
        self._oom_at_start = oom_kill_count()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [lean, "--worker", f"-D{REPORT_DELAY_OPTION}={report_delay_ms}", *extra_args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd,
            env=dict(env),
            preexec_fn=die_with_parent,
        )
        self._write_lock = threading.Lock()
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN | select.POLLHUP)
        self._buf = bytearray()
        self._err_thread = threading.Thread(target=self._read_stderr, name=f"lean-worker-err-{self.proc.pid}", daemon=True)
        self._err_thread.start()
        self._send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                    "params": {"processId": os.getpid(), "rootUri": None, "capabilities": {}}})

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    # -- wire -------------------------------------------------------------------------------
    def _send(self, *messages: dict[str, Any]) -> None:
        """Write ``messages`` in one write: a check's edit and its request wake Lean once."""
        parts = []
        for message in messages:
            body = orjson.dumps(message)
            parts.append(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b"".join(parts)
        stdin = self.proc.stdin
        assert stdin is not None
        with self._write_lock:
            stdin.write(data)
            stdin.flush()

    def _pump(self, deadline: float | None) -> bool:
        """Read what Lean has written and dispatch every complete message.

        Reads inline, in the checking thread: a reader thread would hand each reply over
        through the GIL, which costs milliseconds per check when the cores are busy.
        Returns False at end of file or when ``deadline`` passed with nothing to read.
        """
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._poll.poll(None if remaining is None else remaining * 1000):
            return False
        try:
            data = os.read(self._fd, 1 << 16)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._eof = True
            return False
        buf = self._buf
        buf += data
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return True
            if buf.startswith(_LENGTH) and buf.find(b"\r\n", 0, head_end) < 0:  # Lean's only header
                length = int(buf[len(_LENGTH):head_end])
            else:
                length = -1
                for line in bytes(buf[:head_end]).split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
            body_start = head_end + 4
            if length < 0:  # not a header we understand: drop it
                del buf[:body_start]
                continue
            if len(buf) < body_start + length:
                return True
            end = body_start + length
            unread = buf.startswith(_UNREAD, body_start) or (
                buf.startswith(_PROGRESS, body_start) and buf.find(_DONE, body_start, end) < 0
            )
            if not unread:
                self._dispatch(orjson.loads(buf[body_start:end]))
            del buf[:end]

    def _dispatch(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:
            rid = message.get("id", -1)
            if rid in self._abandoned:
                self._abandoned.discard(rid)
            else:
                self._responses[rid] = message
        elif method == "$/lean/fileProgress":
            params = message["params"]
            version = params.get("textDocument", {}).get("version")
            if params.get("processing") == [] and isinstance(version, int):
                self._processed = max(self._processed, version)
        elif method == "textDocument/publishDiagnostics":
            params = message["params"]
            version = params.get("version")
            if isinstance(version, int):
                self._diagnostics[version] = params.get("diagnostics", [])
        elif "id" in message:  # a request from the server (capability registration etc.)
            try:
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            except OSError:
                pass

    def _read_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        while True:
            try:
                chunk = stream.read1(65536)  # type: ignore[attr-defined]
            except (OSError, ValueError):
                return
            if not chunk:
                return
            with self._lock:
                self._stderr.append(chunk)
                self._stderr_bytes += len(chunk)
                while self._stderr_bytes > _STDERR_TAIL and len(self._stderr) > 1:
                    self._stderr_bytes -= len(self._stderr.popleft())

    def stderr_tail(self) -> str:
        with self._lock:
            return b"".join(self._stderr).decode("utf-8", "replace")

    # -- checks -----------------------------------------------------------------------------
    def check(
        self, text: str, *, timeout_s: float | None, deadline: float | None = None, early: bool = False
    ) -> list[dict[str, Any]]:
        """Elaborate ``text`` as the whole document; return its diagnostics (LSP dicts).

        ``deadline`` (a ``time.monotonic()`` instant), when given, replaces the one
        ``timeout_s`` sets; ``timeout_s`` is still the limit a ``LeanTimeout`` reports.

        Done when Lean answers ``textDocument/waitForDiagnostics``, which it does only after
        it has also computed the reference index of the whole file
        (``$/lean/ileanInfoFinal``): on a 40-command file, two thirds of an edit
        (architecture/95-sessions.md). With ``early`` (an edit, not the first check), done
        as soon as Lean has reported this version processed (``$/lean/fileProgress`` with
        nothing left) and has published its diagnostics at least once: its reporter
        publishes them while it waits on unfinished snapshots, or once right after the
        progress if it never waited, so the last one is final. ``settle()`` then waits for
        the barrier all the same, for a caller that must be sure."""
        if deadline is None:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._drop_barrier()
        self.version += 1
        version = self.version
        doc = {"uri": self.uri, "version": version}
        if version == 1:
            edit = {"jsonrpc": "2.0", "method": "textDocument/didOpen",
                    "params": {"textDocument": {**doc, "languageId": "lean4", "text": text}}}
        else:
            edit = {"jsonrpc": "2.0", "method": "textDocument/didChange",
                    "params": {"textDocument": doc, "contentChanges": [{"text": text}]}}
        self._next_id += 1
        rid = self._next_id
        wait = {"jsonrpc": "2.0", "id": rid, "method": "textDocument/waitForDiagnostics",
                "params": {"uri": self.uri, "version": version}}
        try:
            self._send(edit, wait)
        except OSError:
            raise self._crashed() from None
        early = early and version > 1  # the first check also reports the header, otherwise
        while rid not in self._responses:
            if early and self._processed >= version and version in self._diagnostics:
                self._barrier = rid  # answered later; settle() waits for it
                self._responses[rid] = {"result": None}
                break
            if self._eof or not self._pump(deadline):
                break
        response = self._responses.pop(rid, None)
        diagnostics = self._diagnostics.pop(version, [])
        for old in [v for v in self._diagnostics if v < version]:
            del self._diagnostics[old]
        if response is None:
            if self._eof or not self.alive:
                raise self._crashed()
            self.kill()
            raise LeanTimeout("the snippet did not finish in time; its Lean process was killed", limit_s=timeout_s or 0.0)
        if "error" in response:
            raise LeanError(f"Lean file worker refused the check: {response['error']}")
        return diagnostics

    def _drop_barrier(self) -> None:
        if self._barrier is not None:
            if self._responses.pop(self._barrier, None) is None:
                self._abandoned.add(self._barrier)
            self._barrier = None

    def settle(self, *, deadline: float | None, limit_s: float = 0.0) -> list[dict[str, Any]] | None:
        """After an ``early`` check: wait for Lean's own barrier of the same version and
        return the diagnostics it published since, if any (``None``: none changed)."""
        rid = self._barrier
        if rid is None:
            return None
        while rid not in self._responses:
            if self._eof or not self._pump(deadline):
                break
        self._barrier = None
        if self._responses.pop(rid, None) is None:
            if self._eof or not self.alive:
                raise self._crashed()
            self.kill()
            raise LeanTimeout("the Lean file worker did not finish in time; its Lean process was killed", limit_s=limit_s)
        return self._diagnostics.pop(self.version, None)

    def request(self, method: str, params: dict[str, Any], *, deadline: float | None, limit_s: float = 0.0) -> Any:
        """Send one request to the file worker and return its ``result``.

        Past ``deadline`` (a ``time.monotonic()`` instant) the process is killed and
        ``LeanTimeout`` raised with ``limit_s``, as for a check.
        """
        self._next_id += 1
        rid = self._next_id
        try:
            self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        except OSError:
            raise self._crashed() from None
        while rid not in self._responses:
            if self._eof or not self._pump(deadline):
                break
        response = self._responses.pop(rid, None)
        if response is None:
            if self._eof or not self.alive:
                raise self._crashed()
            self.kill()
            raise LeanTimeout(f"{method} did not answer in time; its Lean process was killed", limit_s=limit_s)
        if "error" in response:
            raise LeanError(f"Lean file worker refused {method}: {response['error']}")
        return response.get("result")

    def _crashed(self) -> LeanCrashed:
        try:
            returncode = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self.proc.returncode
        self._err_thread.join(0.5)  # Lean's last words, e.g. "Stack overflow detected. Aborting."
        stderr = self.stderr_tail()
        oom_now = oom_kill_count()
        oom_seen = oom_now is not None and self._oom_at_start is not None and oom_now > self._oom_at_start
        cause, _hint = classify(returncode, in_flight=True, supervisor_reason=None, graceful=False, oom_kills_seen=oom_seen)
        return LeanCrashed(
            "the Lean process died while checking the snippet",
            cause=cause.value,
            returncode=returncode,
            detail=_death_detail(stderr),
            stderr_tail=stderr[-4000:],
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin,):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    close = kill
