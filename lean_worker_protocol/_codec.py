"""Length-prefixed msgpack framing.

A frame is a 4-byte big-endian unsigned body length followed by a msgpack body. Both
directions enforce a maximum body size: the writer refuses to send a larger frame, and the
reader rejects a header that announces one before it buffers any of the body.

The reader keeps received chunks as ``bytes`` and joins them only once a whole frame is
available, so a 16 MiB frame arriving in 64 KiB reads costs one copy, not hundreds, and a
decoded ``msgspec.Raw`` payload may safely keep referencing the chunk it came from.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from ._frames import AnyFrame

HEADER = struct.Struct(">I")
HEADER_SIZE = HEADER.size
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
MIN_MAX_FRAME_BYTES = 1024
MAX_MAX_FRAME_BYTES = 2**32 - 1


class ProtocolError(Exception):
    """The byte stream between parent and child broke the framing or frame schema."""

    code = "protocol.error"


class FrameTooLarge(ProtocolError):
    """A frame larger than the agreed maximum, refused before it was buffered or sent."""

    code = "protocol.frame_too_large"

    def __init__(self, size: int, limit: int, direction: str) -> None:
        self.size = size
        self.limit = limit
        self.direction = direction
        super().__init__(
            f"{direction} frame exceeds the maximum frame size; size_bytes={size} limit_bytes={limit}"
        )


class CorruptFrame(ProtocolError):
    """Bytes that are not a msgpack frame at all (garbage on the channel, a cut frame)."""

    code = "protocol.corrupt_stream"


class FrameSchemaError(ProtocolError):
    """A well-formed msgpack frame whose shape is not any frame of this protocol."""

    code = "protocol.frame_schema"


def check_max_frame_bytes(value: int) -> int:
    if not MIN_MAX_FRAME_BYTES <= value <= MAX_MAX_FRAME_BYTES:
        raise ValueError(
            f"max_frame_bytes must be within {MIN_MAX_FRAME_BYTES}..{MAX_MAX_FRAME_BYTES}; got {value}"
        )
    return value


class FrameEncoder:
    """Encodes frames (header included) and enforces the maximum size before writing."""

    __slots__ = ("_encoder", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self.max_frame_bytes = check_max_frame_bytes(max_frame_bytes)

    def encode(self, frame: Any) -> bytearray:
        buf = bytearray(HEADER_SIZE)
        self._encoder.encode_into(frame, buf, HEADER_SIZE)
        size = len(buf) - HEADER_SIZE
        if size > self.max_frame_bytes:
            raise FrameTooLarge(size, self.max_frame_bytes, "outgoing")
        HEADER.pack_into(buf, 0, size)
        return buf

    def encode_payload(self, value: Any) -> bytes:
        """Encode a command payload (request, response, summary) to embed as ``msgspec.Raw``."""
        return self._encoder.encode(value)


class FrameReader:
    """Incremental decoder: ``feed`` bytes as they arrive, take complete frames with ``next``.

    ``next`` raises ``FrameTooLarge`` as soon as a header announces an oversize body,
    ``CorruptFrame`` for undecodable bytes and ``FrameSchemaError`` for valid msgpack of
    the wrong shape. After an error the reader is unusable: the stream has lost sync.
    """

    __slots__ = ("_decoder", "max_frame_bytes", "_data", "_pos", "_chunks", "_chunks_len")

    def __init__(self, frame_type: Any = AnyFrame, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._decoder = msgspec.msgpack.Decoder(frame_type)
        self.max_frame_bytes = check_max_frame_bytes(max_frame_bytes)
        self._data = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._chunks_len = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed as frames."""
        return len(self._data) - self._pos + self._chunks_len

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self._chunks.append(chunk)
            self._chunks_len += len(chunk)

    def _available(self, need: int) -> bool:
        have = len(self._data) - self._pos
        if have >= need:
            return True
        if have + self._chunks_len < need:
            return False
        self._chunks.insert(0, self._data[self._pos :])
        self._data = b"".join(self._chunks)
        self._pos = 0
        self._chunks.clear()
        self._chunks_len = 0
        return True

    def next(self) -> Any | None:
        """Return the next complete frame, or ``None`` until more bytes arrive."""
        if not self._available(HEADER_SIZE):
            return None
        (size,) = HEADER.unpack_from(self._data, self._pos)
        if size > self.max_frame_bytes:
            raise FrameTooLarge(size, self.max_frame_bytes, "incoming")
        if size == 0:
            raise CorruptFrame("zero-length frame body")
        if not self._available(HEADER_SIZE + size):
            return None
        start = self._pos + HEADER_SIZE
        end = start + size
        try:
            frame = self._decoder.decode(memoryview(self._data)[start:end])
        except msgspec.ValidationError as exc:
            raise FrameSchemaError(f"frame does not match the protocol schema: {exc}") from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            # msgspec reports invalid UTF-8 in a string and nesting past its depth limit with
            # these builtin errors, not DecodeError; untyped, they escaped both supervisors.
            raise CorruptFrame(f"undecodable frame body: {exc}; first_bytes={bytes(self._data[start:start + 16]).hex()}") from None
        self._pos = end
        if self._pos == len(self._data):
            self._data = b""
            self._pos = 0
        return frame
