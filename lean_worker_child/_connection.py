"""The child's end of the protocol channel, and the per-request context handlers see.

Threads in a child:
- the main thread reads frames and runs handlers (so handlers own the main thread, as
  signal handling and many native libraries expect);
- a flusher thread sends rows and coalesced progress that have waited longer than the
  flush interval, so a handler that emits a row and then computes for a minute still
  delivers the row live;
- a watchdog thread (see ``_boot``) that only wakes when the parent hangs up.

Rows are appended to a per-stream list without a lock (``list.append`` is atomic under the
GIL) and encoded a whole batch per C call when the batch is flushed. A flush takes a batch
with ``rows[:]`` and then ``del rows[:n]``, each atomic, so a row the handler appends in
between stays for the next batch. Flushes and every other write happen under one lock, so
batches of a stream go out in order; a write that blocks because the parent reads slowly
blocks the handler's next flush too. That is the backpressure: the parent's memory stays
bounded and no row is ever dropped. ``bench/micro.py`` measures both designs
(``row_append_us`` against ``row_encode_under_lock_us``; architecture/40-core-benchmarks.md).
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterable
from itertools import islice
from typing import Any, Literal

import msgspec

from lean_worker_protocol import (
    DEFAULT_STREAM,
    Cancel,
    Command,
    Diagnostic,
    FrameEncoder,
    FrameReader,
    FrameTooLarge,
    ParentFrame,
    ProtocolError,
    Position,
    Progress,
    Request,
    Rows,
    Shutdown,
    Stream,
)

_READ_CHUNK = 64 * 1024
_ROWS_FRAME_OVERHEAD = 96
"""Upper bound of a Rows frame's bytes besides its row payload and stream name."""


class Cancelled(Exception):
    """Raised by ``RequestContext.check_cancelled`` once the parent cancelled the request."""

    code = "worker.cancelled"


class ProtocolBroken(Exception):
    """The parent sent something the child cannot follow; the child exits."""


class Connection:
    def __init__(self, read_fd: int, write_fd: int, max_frame_bytes: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        os.set_blocking(write_fd, False)
        self.max_frame_bytes = max_frame_bytes
        self.encoder = FrameEncoder(max_frame_bytes)
        self.row_encoder = msgspec.msgpack.Encoder()
        self.reader = FrameReader(ParentFrame, max_frame_bytes)
        self._poll_in = select.poll()
        self._poll_in.register(read_fd, select.POLLIN)
        self._poll_out = select.poll()
        self._poll_out.register(write_fd, select.POLLOUT)
        self.lock = threading.Lock()
        self.active: RequestContext | None = None
        self.shutdown_requested = False
        self.stalls = 0
        self.row_batch_rows = 1024
        self.row_batch_bytes = 256 * 1024
        self.flush_interval_s = 0.02
        self._flush_wanted = threading.Event()
        self._flusher: threading.Thread | None = None

    # -- reading ---------------------------------------------------------------------------
    def read_frame(self) -> Any | None:
        """Block for the next frame; ``None`` when the parent closed the channel."""
        while True:
            frame = self.reader.next()
            if frame is not None:
                return frame
            chunk = os.read(self.read_fd, _READ_CHUNK)
            if not chunk:
                return None
            self.reader.feed(chunk)

    def poll_frames(self) -> list[Any]:
        """Frames already sent by the parent, without blocking."""
        if self._poll_in.poll(0):
            chunk = os.read(self.read_fd, _READ_CHUNK)
            if not chunk:
                raise ProtocolBroken("parent closed the protocol channel")
            self.reader.feed(chunk)
        frames = []
        try:
            while (frame := self.reader.next()) is not None:
                frames.append(frame)
        except ProtocolError as exc:  # from the parent's side of the stream: fatal, not the handler's
            raise ProtocolBroken(f"cannot read the parent's frames: {exc}") from exc
        return frames

    # -- writing (caller holds ``lock``) ---------------------------------------------------
    def write_locked(self, data: bytes | bytearray) -> None:
        try:
            written = os.write(self.write_fd, data)
        except BlockingIOError:
            written = 0
        if written == len(data):
            return
        view = memoryview(data)[written:]
        if not written:
            self.stalls += 1
            self._poll_out.poll()
        while view:
            try:
                written = os.write(self.write_fd, view)
            except BlockingIOError:
                self.stalls += 1
                self._poll_out.poll()
                continue
            view = view[written:]

    def send(self, frame: Any) -> None:
        data = self.encoder.encode(frame)
        with self.lock:
            self.write_locked(data)

    # -- flusher ---------------------------------------------------------------------------
    def want_flush(self) -> None:
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="lean-worker-flusher", daemon=True)
            self._flusher.start()
        self._flush_wanted.set()

    def _flush_loop(self) -> None:
        while True:
            self._flush_wanted.wait()
            time.sleep(self.flush_interval_s)
            with self.lock:
                self._flush_wanted.clear()
                if self.active is not None:
                    self.active._flush_stale()


class _StreamBuffer:
    __slots__ = ("name", "rows", "seq", "flush_rows", "max_rows", "target_bytes", "frame_limit")

    def __init__(self, name: str, conn: Connection) -> None:
        self.name = name
        self.rows: list[Any] = []
        self.seq = 0
        self.max_rows = conn.row_batch_rows
        self.target_bytes = min(conn.row_batch_bytes, conn.max_frame_bytes - len(name) - _ROWS_FRAME_OVERHEAD)
        # Rows are held as objects until their batch is encoded, so the batch length adapts
        # to the encoded row size seen so far (about ``row_batch_bytes`` a batch). The first
        # batch is a single row: nothing is known about row sizes yet, and a first row too
        # large for a frame then fails in the handler's own ``emit`` call.
        self.flush_rows = 1
        self.frame_limit = conn.max_frame_bytes - len(name) - _ROWS_FRAME_OVERHEAD


_NO_STREAMS: dict[str, type] = {}


class RequestContext:
    """What a handler gets besides its request: rows, diagnostics, progress, cancellation."""

    __slots__ = ("_conn", "request_id", "generation", "command", "_row_types", "_streams",
                 "_cancelled", "_pending_progress", "_last_progress_at", "_last_phase", "deferred_error",
                 "imports")

    def __init__(self, conn: Connection, request: Request, command: Command) -> None:
        self._conn = conn
        self.request_id = request.id
        self.generation = request.generation
        self.command = command.name
        self._row_types = command.row_types if isinstance(command, Stream) else _NO_STREAMS
        self._streams: dict[str, _StreamBuffer] = {}
        self.deferred_error: FrameTooLarge | None = None
        """A row the flusher thread could not send; raised to the handler at its next flush."""
        self._cancelled = False
        self._pending_progress: Progress | None = None
        self._last_progress_at = 0.0
        self._last_phase: str | None = None
        self.imports = -1
        """Fresh imports charged so far; -1 until ``charge_imports`` is called."""

    # -- imports -----------------------------------------------------------------------------
    def charge_imports(self, count: int = 1) -> None:
        """Report ``count`` fresh imports (environments loaded) performed by this request.

        Call it with 0 for a request that reused a warm session. The parent counts the
        total against ``max_imports``; a handler that never calls it is charged one import
        if its command is ``import_like`` and none otherwise.
        """
        if count < 0:
            raise ValueError(f"charge_imports takes a count >= 0; got {count}")
        self.imports = max(self.imports, 0) + count

    # -- rows ------------------------------------------------------------------------------
    def emit(self, row: Any, stream: str = DEFAULT_STREAM) -> None:
        """Send one row on ``stream``. Rows are batched; blocks while the parent is behind."""
        try:
            buf = self._streams[stream]
        except KeyError:
            buf = self._open_stream(stream)
        rows = buf.rows
        rows.append(row)
        count = len(rows)
        if count >= buf.flush_rows:
            self._flush(buf)
        elif count == 1:
            self._conn.want_flush()

    def emit_many(self, rows: Iterable[Any], stream: str = DEFAULT_STREAM) -> None:
        """Send every row of ``rows`` on ``stream``, in order (``emit`` in a loop, faster)."""
        try:
            buf = self._streams[stream]
        except KeyError:
            buf = self._open_stream(stream)
        pending = buf.rows
        iterator = iter(rows)
        while True:
            before = len(pending)
            pending.extend(islice(iterator, max(1, buf.flush_rows - before)))
            if len(pending) == before:
                break
            if len(pending) >= buf.flush_rows:
                self._flush(buf)
        if pending:
            self._conn.want_flush()

    def _open_stream(self, stream: str) -> _StreamBuffer:
        if stream not in self._row_types:
            if not self._row_types:
                raise TypeError(f"command {self.command!r} is a call command; it has no row streams")
            raise ValueError(f"command {self.command!r} has no stream {stream!r}; streams: {sorted(self._row_types)}")
        buf = self._streams[stream] = _StreamBuffer(stream, self._conn)
        return buf

    def _flush(self, buf: _StreamBuffer) -> None:
        """Flush from the handler's thread: errors go to the handler."""
        with self._conn.lock:
            self._flush_locked(buf)
        self.raise_deferred()

    def raise_deferred(self) -> None:
        error, self.deferred_error = self.deferred_error, None
        if error is not None:
            raise error

    def _flush_locked(self, buf: _StreamBuffer) -> None:
        rows = buf.rows
        taken = rows[:]
        if not taken:
            return
        del rows[: len(taken)]
        self._send_locked(buf, taken)

    def _send_locked(self, buf: _StreamBuffer, taken: list[Any]) -> None:
        """Encode and write one batch; a batch over the frame limit is split in halves, and a
        single row over it is dropped with ``FrameTooLarge`` after the others are sent."""
        conn = self._conn
        payload = conn.row_encoder.encode(taken)
        if len(payload) > buf.frame_limit:
            if len(taken) == 1:
                raise FrameTooLarge(len(payload) + len(buf.name) + _ROWS_FRAME_OVERHEAD, conn.max_frame_bytes, "row")
            middle = len(taken) // 2
            error: FrameTooLarge | None = None
            for half in (taken[:middle], taken[middle:]):
                try:
                    self._send_locked(buf, half)
                except FrameTooLarge as exc:
                    error = error or exc
            buf.flush_rows = 1
            if error is not None:
                raise error
            return
        frame = Rows(self.request_id, self.generation, buf.name, buf.seq, len(taken), msgspec.Raw(payload))
        buf.seq += len(taken)
        conn.write_locked(conn.encoder.encode(frame))
        per_row = max(1, len(payload) // len(taken))
        buf.flush_rows = max(1, min(buf.max_rows, buf.target_bytes // per_row))

    def _flush_all_locked(self) -> None:
        error: FrameTooLarge | None = None
        for buf in self._streams.values():
            try:
                self._flush_locked(buf)
            except FrameTooLarge as exc:
                error = error or exc
        if self._pending_progress is not None:
            frame, self._pending_progress = self._pending_progress, None
            self._last_progress_at = time.monotonic()
            self._conn.write_locked(self._conn.encoder.encode(frame))
        if error is not None:
            raise error

    def _flush_stale(self) -> None:
        """The flusher thread's flush (lock held): errors wait for the handler."""
        try:
            self._flush_all_locked()
        except FrameTooLarge as exc:
            self.deferred_error = self.deferred_error or exc

    def row_counts(self) -> dict[str, int]:
        return {name: buf.seq + len(buf.rows) for name, buf in self._streams.items()}

    # -- diagnostics and progress ----------------------------------------------------------
    def diagnostic(
        self,
        message: str,
        *,
        severity: Literal["error", "warning", "info", "hint"] = "info",
        code: str = "",
        position: Position | None = None,
    ) -> None:
        """Send a diagnostic now (after every row emitted before it)."""
        frame = Diagnostic(self.request_id, self.generation, severity, code, message, position)
        data = self._conn.encoder.encode(frame)
        with self._conn.lock:
            try:
                self._flush_all_locked()
            finally:  # an oversize row must not cost the diagnostic its frame
                self._conn.write_locked(data)
        self.raise_deferred()

    def progress(self, phase: str, current: int, total: int | None = None) -> None:
        """Report progress. Updates closer together than the flush interval are coalesced
        (the latest wins); a phase change and the final step are always sent."""
        frame = Progress(self.request_id, self.generation, phase, current, total)
        conn = self._conn
        with conn.lock:
            now = time.monotonic()
            if phase != self._last_phase or current == total or now - self._last_progress_at >= conn.flush_interval_s:
                self._pending_progress = frame
                self._last_phase = phase
                self._flush_all_locked()
            else:
                self._pending_progress = frame
                conn.want_flush()

    # -- cancellation ----------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        """True once the parent asked to cancel this request (or to shut the child down)."""
        if not self._cancelled:
            for frame in self._conn.poll_frames():
                if isinstance(frame, Cancel):
                    if frame.id == self.request_id:
                        self._cancelled = True
                elif isinstance(frame, Shutdown):
                    self._conn.shutdown_requested = True
                    self._cancelled = True
                else:
                    raise ProtocolBroken(f"parent sent {type(frame).__name__} while request {self.request_id} was in flight")
        return self._cancelled

    def check_cancelled(self) -> None:
        """Raise ``Cancelled`` if the parent cancelled this request."""
        if self.cancelled:
            raise Cancelled(f"request {self.request_id} ({self.command}) was cancelled by the parent")
