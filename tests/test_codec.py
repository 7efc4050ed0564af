"""The wire codec: every frame survives a round trip however the bytes are split; bad bytes
only ever raise the typed ``ProtocolError`` subclasses; oversize frames are refused on both
sides; and command fingerprints change exactly when a declaration's schema does."""

from __future__ import annotations

import threading
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lean_worker_child import WorkerApp
from lean_worker_protocol import (
    HEADER_SIZE,
    AnyFrame,
    Call,
    Cancel,
    ChildFrame,
    CommandInfo,
    CorruptFrame,
    Diagnostic,
    ErrorInfo,
    FrameEncoder,
    FrameReader,
    FrameSchemaError,
    FrameTooLarge,
    Hello,
    ParentFrame,
    Position,
    Progress,
    ProtocolError,
    Request,
    Response,
    Rows,
    Shutdown,
    Stream,
    Welcome,
)
from lean_worker_protocol._codec import HEADER

relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""Per-example timing on a loaded 2-core CI machine is noise, not the property under test;
a decoder that hangs is caught by ``_feed_garbage``'s own time limit instead."""

# -- strategies ----------------------------------------------------------------------------------

ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
"""Every integer msgpack can carry."""
texts = st.text(max_size=24)
floats = st.floats(allow_nan=False)
"""NaN is excluded only because NaN != NaN would fail the equality check, not the codec."""

msgpack_values = st.recursive(
    st.none() | st.booleans() | ints | floats | st.text(max_size=16) | st.binary(max_size=16),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
raw_payloads = msgpack_values.map(lambda value: msgspec.Raw(msgspec.msgpack.encode(value)))
"""Command payloads travel as ``msgspec.Raw``: any single msgpack value."""

error_infos = st.builds(ErrorInfo, type=texts, code=texts, message=texts, traceback=texts)
positions = st.builds(
    Position,
    line=ints,
    column=ints,
    end_line=st.none() | ints,
    end_column=st.none() | ints,
    file=st.none() | texts,
)
command_infos = st.builds(
    CommandInfo,
    name=texts,
    kind=st.sampled_from(["call", "stream"]),
    import_like=st.booleans(),
    fingerprint=texts,
    streams=st.lists(texts, max_size=3).map(tuple),
)

FRAME_STRATEGIES: dict[type, st.SearchStrategy[Any]] = {
    Hello: st.builds(
        Hello,
        protocol_version=ints,
        worker_name=texts,
        worker_version=texts,
        pid=ints,
        commands=st.lists(command_infos, max_size=3).map(tuple),
        max_frame_bytes=ints,
    ),
    Response: st.builds(
        Response,
        id=ints,
        generation=ints,
        payload=raw_payloads,
        error=st.none() | error_infos,
        rows=st.dictionaries(texts, ints, max_size=3),
        elapsed_s=floats,
        write_stalls=ints,
    ),
    Rows: st.builds(Rows, id=ints, generation=ints, stream=texts, seq=ints, count=ints, rows=raw_payloads),
    Diagnostic: st.builds(
        Diagnostic,
        id=ints,
        generation=ints,
        severity=st.sampled_from(["error", "warning", "info", "hint"]),
        code=texts,
        message=texts,
        position=st.none() | positions,
    ),
    Progress: st.builds(Progress, id=ints, generation=ints, phase=texts, current=ints, total=st.none() | ints),
    Welcome: st.builds(
        Welcome,
        protocol_version=ints,
        generation=ints,
        row_batch_rows=ints,
        row_batch_bytes=ints,
        row_flush_interval_s=floats,
    ),
    Request: st.builds(Request, id=ints, generation=ints, command=texts, payload=raw_payloads),
    Cancel: st.builds(Cancel, id=ints, generation=ints),
    Shutdown: st.builds(Shutdown, reason=texts),
}
CHILD_KINDS = (Hello, Response, Rows, Diagnostic, Progress)
PARENT_KINDS = (Welcome, Request, Cancel, Shutdown)
child_frames = st.one_of(*(FRAME_STRATEGIES[k] for k in CHILD_KINDS))
parent_frames = st.one_of(*(FRAME_STRATEGIES[k] for k in PARENT_KINDS))
any_frames = child_frames | parent_frames


def _encode_all(frames: list[Any], encoder: FrameEncoder | None = None) -> bytes:
    encoder = encoder or FrameEncoder()
    return b"".join(bytes(encoder.encode(frame)) for frame in frames)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


_HANG_LIMIT_S = 10.0


def _drain(reader: FrameReader, max_frames: int) -> list[Any]:
    """Every frame the reader can produce now; fails instead of looping forever."""
    frames = []
    while (frame := reader.next()) is not None:
        frames.append(frame)
        assert len(frames) <= max_frames, "the reader produced more frames than the bytes can hold"
    return frames


def _feed_garbage(reader: FrameReader, chunks: list[bytes]) -> None:
    """Feed chunks and decode them, in a thread that must finish within seconds: a decoder
    that loops fails the test instead of hanging it. Each frame needs at least
    HEADER_SIZE + 1 bytes, which bounds how many frames the bytes can hold."""
    total = sum(len(c) for c in chunks)
    outcome: list[BaseException | None] = []

    def decode() -> None:
        try:
            for chunk in chunks:
                reader.feed(chunk)
                _drain(reader, max_frames=total // (HEADER_SIZE + 1) + 1)
        except ProtocolError as exc:
            outcome.append(None if type(exc) in (FrameTooLarge, CorruptFrame, FrameSchemaError) else exc)
        except BaseException as exc:  # anything untyped escaping the reader is the failure
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=decode, daemon=True)
    thread.start()
    thread.join(_HANG_LIMIT_S)
    assert not thread.is_alive(), f"the reader did not finish decoding {total} bytes within {_HANG_LIMIT_S}s"
    if outcome[0] is not None:
        raise outcome[0]


# -- round trips ---------------------------------------------------------------------------------


@given(
    frames=st.lists(any_frames, min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=12),
)
@relaxed
def test_every_frame_kind_round_trips_whatever_the_chunk_boundaries(frames: list[Any], cuts: list[int]) -> None:
    data = _encode_all(frames)
    reader = FrameReader(AnyFrame)
    decoded: list[Any] = []
    for chunk in _split(data, cuts):
        reader.feed(chunk)
        decoded += _drain(reader, max_frames=len(frames))
    assert decoded == frames
    assert reader.buffered == 0


@given(data=st.data())
@relaxed
def test_each_direction_decodes_its_own_frames_and_byte_by_byte_feeding_works(data: st.DataObject) -> None:
    for strategy, frame_type in ((child_frames, ChildFrame), (parent_frames, ParentFrame)):
        frames = data.draw(st.lists(strategy, min_size=1, max_size=3))
        encoded = _encode_all(frames)
        reader = FrameReader(frame_type)
        decoded: list[Any] = []
        for i in range(len(encoded)):
            reader.feed(encoded[i : i + 1])
            decoded += _drain(reader, max_frames=len(frames))
        assert decoded == frames


def test_the_strategies_cover_every_frame_kind_of_the_protocol() -> None:
    assert set(CHILD_KINDS) == set(ChildFrame.__args__)  # type: ignore[attr-defined]
    assert set(PARENT_KINDS) == set(ParentFrame.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", list(FRAME_STRATEGIES), ids=lambda k: k.__name__)
@given(data=st.data())
@relaxed
def test_each_frame_kind_round_trips_alone_and_split_at_every_byte(kind: type, data: st.DataObject) -> None:
    frame = data.draw(FRAME_STRATEGIES[kind])
    encoded = bytes(FrameEncoder().encode(frame))
    frame_type = ChildFrame if kind in CHILD_KINDS else ParentFrame
    whole = FrameReader(frame_type)
    whole.feed(encoded)
    assert whole.next() == frame
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    split = FrameReader(AnyFrame)
    split.feed(encoded[:cut])
    if cut < len(encoded):
        assert split.next() is None
    split.feed(encoded[cut:])
    assert _drain(split, max_frames=1) == [frame]
    assert split.buffered == 0


def test_a_frame_meant_for_the_other_direction_is_a_schema_error() -> None:
    reader = FrameReader(ChildFrame)
    reader.feed(bytes(FrameEncoder().encode(Welcome(1, 1, 1024, 65536, 0.01))))
    with pytest.raises(FrameSchemaError):
        reader.next()


# -- bad input -----------------------------------------------------------------------------------


@given(frames=st.lists(any_frames, min_size=1, max_size=5), data=st.data())
@relaxed
def test_a_truncated_stream_yields_the_whole_frames_then_waits_without_error(
    frames: list[Any], data: st.DataObject
) -> None:
    encoded = [bytes(FrameEncoder().encode(f)) for f in frames]
    stream = b"".join(encoded)
    cut = data.draw(st.integers(min_value=0, max_value=len(stream)))
    reader = FrameReader(AnyFrame)
    reader.feed(stream[:cut])
    decoded = _drain(reader, max_frames=len(frames))
    complete = 0
    end = 0
    for frame_bytes in encoded:
        end += len(frame_bytes)
        if end > cut:
            break
        complete += 1
    assert decoded == frames[:complete]
    assert reader.next() is None
    assert reader.buffered == cut - sum(len(b) for b in encoded[:complete])


@given(
    frames=st.lists(any_frames, min_size=1, max_size=4),
    flips=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=0, max_value=255)), min_size=1, max_size=6
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2048), max_size=6),
)
@relaxed
def test_corrupted_bytes_raise_only_typed_protocol_errors(
    frames: list[Any], flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    stream = bytearray(_encode_all(frames))
    for position, value in flips:
        stream[position % len(stream)] = value
    _feed_garbage(FrameReader(AnyFrame), _split(bytes(stream), cuts))


@given(garbage=st.binary(max_size=2048), cuts=st.lists(st.integers(min_value=0, max_value=2048), max_size=6))
@relaxed
@example(garbage=HEADER.pack(5) + b"\x95\xa3req\x01\x01\xa1x", cuts=[])  # a frame cut short inside its body
@example(garbage=HEADER.pack(0) + b"\x00", cuts=[])  # zero-length body
@example(garbage=HEADER.pack(2) + b"\xc1\xc1", cuts=[])  # bytes msgpack never uses
@example(garbage=HEADER.pack(3) + b"\x92\xa1x", cuts=[])  # valid msgpack, no frame tag
@example(garbage=HEADER.pack(12) + b"\x92\xa8shutdown\xa1\x80", cuts=[])  # invalid UTF-8 in a string
def test_random_bytes_raise_only_typed_protocol_errors_and_never_hang(garbage: bytes, cuts: list[int]) -> None:
    for frame_type in (AnyFrame, ChildFrame, ParentFrame):
        _feed_garbage(FrameReader(frame_type), _split(garbage, cuts))


@pytest.mark.parametrize("depth", [1_000, 200_000])
def test_a_deeply_nested_payload_is_a_typed_error_not_a_recursion_error(depth: int) -> None:
    # msgspec raises RecursionError (not a DecodeError) past its nesting limit. Untyped, it
    # escaped the reader: the parent's request loop and the child's server catch only
    # ProtocolError, so one hostile or buggy payload bypassed the supervisor's handling.
    body = msgspec.msgpack.encode(Request(1, 1, "cmd", msgspec.Raw(b"\x91" * depth + b"\xc0")))
    reader = FrameReader(AnyFrame)
    reader.feed(HEADER.pack(len(body)) + body)
    try:
        frame = reader.next()
    except ProtocolError as exc:
        assert isinstance(exc, (CorruptFrame, FrameSchemaError))
    else:
        assert isinstance(frame, Request)


# -- frame size limits -----------------------------------------------------------------------------


def test_an_oversize_header_is_rejected_before_any_body_byte_arrives() -> None:
    reader = FrameReader(AnyFrame, max_frame_bytes=1024)
    reader.feed(HEADER.pack(1025))
    with pytest.raises(FrameTooLarge) as info:
        reader.next()
    assert (info.value.size, info.value.limit, info.value.direction) == (1025, 1024, "incoming")
    assert info.value.code == "protocol.frame_too_large"
    assert reader.buffered == HEADER_SIZE


def test_a_header_of_the_maximum_size_waits_for_its_body() -> None:
    reader = FrameReader(AnyFrame, max_frame_bytes=1024)
    reader.feed(HEADER.pack(1024) + b"\x00" * 100)
    assert reader.next() is None
    reader_default = FrameReader(AnyFrame)
    reader_default.feed(HEADER.pack(2**32 - 1))
    with pytest.raises(FrameTooLarge):
        reader_default.next()


def _shutdown_of_body_size(size: int) -> Shutdown:
    reason = "x" * size
    while len(msgspec.msgpack.encode(Shutdown(reason))) > size:
        reason = reason[:-1]
    frame = Shutdown(reason)
    assert len(msgspec.msgpack.encode(frame)) == size
    return frame


def test_the_encoder_refuses_a_frame_one_byte_over_the_limit_and_accepts_one_at_it() -> None:
    encoder = FrameEncoder(max_frame_bytes=1024)
    at_limit = _shutdown_of_body_size(1024)
    data = encoder.encode(at_limit)
    assert len(data) == HEADER_SIZE + 1024
    with pytest.raises(FrameTooLarge) as info:
        encoder.encode(Shutdown(at_limit.reason + "x"))
    assert (info.value.size, info.value.limit, info.value.direction) == (1025, 1024, "outgoing")


@given(frame=any_frames, limit=st.integers(min_value=1024, max_value=1400))
@relaxed
def test_encoder_and_reader_agree_on_the_limit(frame: Any, limit: int) -> None:
    body_size = len(msgspec.msgpack.encode(frame))
    encoder = FrameEncoder(max_frame_bytes=limit)
    if body_size > limit:
        with pytest.raises(FrameTooLarge):
            encoder.encode(frame)
        return
    reader = FrameReader(AnyFrame, max_frame_bytes=limit)
    reader.feed(bytes(encoder.encode(frame)))
    assert reader.next() == frame


@pytest.mark.parametrize("limit", [0, 1023, 2**32])
def test_a_maximum_frame_size_outside_the_supported_range_is_refused(limit: int) -> None:
    with pytest.raises(ValueError):
        FrameEncoder(max_frame_bytes=limit)
    with pytest.raises(ValueError):
        FrameReader(AnyFrame, max_frame_bytes=limit)


# -- command fingerprints --------------------------------------------------------------------------


def _point_types() -> dict[str, type]:
    """Fresh classes on every call, as two separately built programs would define them."""

    class Point(msgspec.Struct):
        x: int
        y: int

    class PointMoved(msgspec.Struct):  # one field's type changed
        x: int
        y: float

    class PointGrown(msgspec.Struct):  # one field added
        x: int
        y: int
        z: int = 0

    class PointRenamed(msgspec.Struct):  # one field renamed
        x: int
        why: int

    for cls in (PointMoved, PointGrown, PointRenamed):
        cls.__name__ = "Point"
        cls.__qualname__ = "Point"
    return {"same": Point, "moved": PointMoved, "grown": PointGrown, "renamed": PointRenamed}


def test_the_same_declaration_types_give_the_same_fingerprint() -> None:
    a, b = _point_types(), _point_types()
    assert a["same"] is not b["same"]
    first = Call("plot", request=a["same"], response=int)
    second = Call("plot", request=b["same"], response=int)
    assert first.fingerprint == second.fingerprint
    assert len(first.fingerprint) == 16 and int(first.fingerprint, 16) >= 0
    rows_a = Stream("scan", request=int, row=a["same"], summary=int)
    rows_b = Stream("scan", request=int, row=b["same"], summary=int)
    assert rows_a.fingerprint == rows_b.fingerprint


@pytest.mark.parametrize("variant", ["moved", "grown", "renamed"])
def test_a_changed_field_changes_the_fingerprint(variant: str) -> None:
    types = _point_types()
    base = Call("plot", request=types["same"], response=int)
    assert Call("plot", request=types[variant], response=int).fingerprint != base.fingerprint
    assert Call("plot", request=int, response=types[variant]).fingerprint != Call(
        "plot", request=int, response=types["same"]
    ).fingerprint
    stream = Stream("scan", request=int, row=types["same"], summary=int)
    assert Stream("scan", request=int, row=types[variant], summary=int).fingerprint != stream.fingerprint


def test_name_kind_import_flag_and_stream_names_are_part_of_the_fingerprint() -> None:
    Point = _point_types()["same"]
    base = Call("plot", request=Point, response=int)
    others = [
        Call("plot2", request=Point, response=int),
        Call("plot", request=Point, response=int, import_like=True),
        Call("plot", request=int, response=Point),  # request and response swapped
        Stream("plot", request=Point, row=int, summary=int),
    ]
    assert len({base.fingerprint, *(c.fingerprint for c in others)}) == len(others) + 1
    named = Stream("scan", request=int, streams={"decls": Point, "errors": str}, summary=int)
    renamed = Stream("scan", request=int, streams={"decls": Point, "failures": str}, summary=int)
    assert named.fingerprint != renamed.fingerprint


def test_a_child_announces_the_fingerprints_of_its_declarations() -> None:
    Point = _point_types()["same"]
    plot = Call("plot", request=Point, response=int, import_like=True)
    scan = Stream("scan", request=int, streams={"decls": Point, "errors": str}, summary=int)
    app = WorkerApp("fingerprints")
    app.handler(plot)(lambda request, ctx: 0)
    app.handler(scan)(lambda request, ctx: 0)
    assert app.command_infos() == (
        CommandInfo("plot", "call", True, plot.fingerprint, ()),
        CommandInfo("scan", "stream", False, scan.fingerprint, ("decls", "errors")),
    )


def test_a_used_declaration_pickles_without_its_cached_decoders() -> None:
    # A cluster driver sends the declaration with each item (lean_worker_ray); by then the
    # declaration has built its msgspec decoders, which do not pickle.
    import pickle

    from lean_worker_protocol.demo import ECHO, PRIMES, Echo

    assert ECHO.request_decoder.decode(msgspec.msgpack.encode(Echo("x"))) == Echo("x")
    assert PRIMES.row_decoders and PRIMES.summary_decoder and PRIMES.fingerprint
    for declaration in (ECHO, PRIMES):
        back = pickle.loads(pickle.dumps(declaration))
        assert repr(back) == repr(declaration) and back.fingerprint == declaration.fingerprint
    back = pickle.loads(pickle.dumps(ECHO))
    assert back.request_decoder.decode(msgspec.msgpack.encode(Echo("y"))) == Echo("y")
