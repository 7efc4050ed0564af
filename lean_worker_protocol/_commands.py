"""Typed command declarations shared by a parent and its child.

A downstream tool declares its commands once, in a module both sides import::

    class Add(msgspec.Struct):
        a: int
        b: int

    ADD = Call("add", request=Add, response=int)
    PRIMES = Stream("primes", request=Upto, row=Prime, summary=PrimeSummary)

The child registers a handler for each declaration; the parent calls them through a
supervised worker. Each declaration has a schema fingerprint (a hash of the JSON schema of
its types), announced by the child in its handshake, so a parent and child built from
different versions of the declarations are caught before a request is sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from functools import cached_property
from typing import Any, Generic, TypeVar

import msgspec
import orjson

ReqT = TypeVar("ReqT")
RespT = TypeVar("RespT")
RowT = TypeVar("RowT")
SummaryT = TypeVar("SummaryT")

DEFAULT_STREAM = "rows"


def _fingerprint(kind: str, name: str, import_like: bool, types: Mapping[str, Any]) -> str:
    labels = list(types)
    schemas, components = msgspec.json.schema_components([types[k] for k in labels])
    document = {
        "kind": kind,
        "name": name,
        "import_like": import_like,
        "types": dict(zip(labels, schemas, strict=True)),
        "components": components,
    }
    digest = hashlib.sha256(orjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:16]


SessionKeys = Callable[[Any], Iterable[Hashable]]
"""Maps a request to the session keys it needs (see ``Call``)."""


class _Command:
    kind: str
    name: str
    import_like: bool
    session_keys: SessionKeys | None

    def _init_import(self, import_like: bool, session_keys: SessionKeys | None) -> None:
        if session_keys is not None and not callable(session_keys):
            raise TypeError(f"session_keys must be callable; got {session_keys!r}")
        self.import_like = import_like or session_keys is not None
        self.session_keys = session_keys

    def _check_name(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"command name must be a non-empty string; got {self.name!r}")

    def __getstate__(self) -> dict[str, Any]:
        # A declaration travels to other processes (a cluster node) by pickle; the decoders
        # it caches do not pickle, and are rebuilt there on first use. The fingerprint (a
        # string, about 1 ms to compute) travels with it.
        return {k: v for k, v in self.__dict__.items() if k not in _DECODERS}


_DECODERS = frozenset({"request_decoder", "response_decoder", "summary_decoder", "row_decoders"})


class Call(_Command, Generic[ReqT, RespT]):
    """A request/response command: one request in, one response out.

    ``import_like`` marks a command that may load an environment (a Lean ``import``): the
    parent's ``max_imports`` policy applies to it. ``session_keys`` refines that: it maps a
    request to the keys of the sessions it needs (for Lean, the ordered imports of the
    snippet's header). A request whose keys this child has already served is a warm hit and
    never triggers a ``max_imports`` cycle; the child itself reports how many imports a
    request really performed (``RequestContext.charge_imports``). ``session_keys`` runs in
    the parent and is not part of the schema fingerprint; it implies ``import_like``.
    """

    kind = "call"

    def __init__(
        self,
        name: str,
        *,
        request: type[ReqT],
        response: type[RespT],
        import_like: bool = False,
        session_keys: SessionKeys | None = None,
    ) -> None:
        self.name = name
        self.request = request
        self.response = response
        self._init_import(import_like, session_keys)
        self._check_name()

    @cached_property
    def fingerprint(self) -> str:
        return _fingerprint("call", self.name, self.import_like, {"request": self.request, "response": self.response})

    @cached_property
    def request_decoder(self) -> msgspec.msgpack.Decoder:
        return msgspec.msgpack.Decoder(self.request)

    @cached_property
    def response_decoder(self) -> msgspec.msgpack.Decoder:
        return msgspec.msgpack.Decoder(self.response)

    @property
    def streams(self) -> tuple[str, ...]:
        return ()

    def __repr__(self) -> str:
        return f"Call({self.name!r}, request={_tname(self.request)}, response={_tname(self.response)})"


class Stream(_Command, Generic[ReqT, RowT, SummaryT]):
    """A streaming command: a request in; rows, diagnostics and progress out; then a summary.

    ``row`` is the row type of the single default stream (named ``"rows"``). A command with
    several named streams passes ``streams={"decls": Decl, "errors": Failure}`` instead; rows
    are then delivered in order within each stream. ``import_like`` and ``session_keys`` are
    as for ``Call``.
    """

    kind = "stream"

    def __init__(
        self,
        name: str,
        *,
        request: type[ReqT],
        summary: type[SummaryT],
        row: type[RowT] | None = None,
        streams: Mapping[str, type] | None = None,
        import_like: bool = False,
        session_keys: SessionKeys | None = None,
    ) -> None:
        if (row is None) == (streams is None):
            raise ValueError("Stream needs exactly one of row= (single stream) or streams= (named streams)")
        self.name = name
        self.request = request
        self.summary = summary
        self.row_types: dict[str, type] = {DEFAULT_STREAM: row} if row is not None else dict(streams or {})
        if not self.row_types:
            raise ValueError("Stream needs at least one row stream")
        self._init_import(import_like, session_keys)
        self._check_name()

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self.row_types)

    @cached_property
    def fingerprint(self) -> str:
        types: dict[str, Any] = {"request": self.request, "summary": self.summary}
        types.update({f"row:{k}": v for k, v in self.row_types.items()})
        return _fingerprint("stream", self.name, self.import_like, types)

    @cached_property
    def request_decoder(self) -> msgspec.msgpack.Decoder:
        return msgspec.msgpack.Decoder(self.request)

    @cached_property
    def summary_decoder(self) -> msgspec.msgpack.Decoder:
        return msgspec.msgpack.Decoder(self.summary)

    @cached_property
    def row_decoders(self) -> dict[str, msgspec.msgpack.Decoder]:
        return {name: msgspec.msgpack.Decoder(list[tp]) for name, tp in self.row_types.items()}  # type: ignore[valid-type]

    def __repr__(self) -> str:
        rows = ", ".join(f"{k}={_tname(v)}" for k, v in self.row_types.items())
        return f"Stream({self.name!r}, request={_tname(self.request)}, {rows}, summary={_tname(self.summary)})"


Command = Call[Any, Any] | Stream[Any, Any, Any]


def _tname(tp: Any) -> str:
    return getattr(tp, "__name__", repr(tp))
