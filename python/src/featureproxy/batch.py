"""The answer to a GET: per-entity statuses and ages, and the packed row matrix."""

from __future__ import annotations

import enum
from typing import Any, Iterator, NamedTuple, Sequence

from .protocol import AGE_UNKNOWN, GetReply
from .schema import Schema

__all__ = ["Status", "EntityStatus", "Batch"]


class Status(enum.IntEnum):
    """Entity status of protocol v1 (the low 7 bits of the status byte)."""

    FRESH = 0  # stored value, age <= stale_after
    STALE = 1  # stored value, stale_after < age <= max_staleness
    MISSING = 2  # defaults: nothing stored
    EXPIRED = 3  # defaults: age > max_staleness
    DEGRADED = 4  # defaults: Redis failing, breaker open or deadline passed
    INVALID = 5  # defaults: stored value unreadable

    @property
    def defaulted(self) -> bool:
        """True when the row holds the view's defaults rather than a stored value."""
        return self >= Status.MISSING


_STATUS_OF_BYTE: tuple = tuple(Status(b & 0x7F) if (b & 0x7F) <= 5 else None for b in range(256))
_DEFAULTED_OF_BYTE: tuple = tuple((b & 0x7F) >= 2 for b in range(256))
_CACHED_OF_BYTE: tuple = tuple(bool(b & 0x80) for b in range(256))


class EntityStatus(NamedTuple):
    """What the proxy said about one entity."""

    key: Any  # the key as it was passed to get()
    status: Status
    cached: bool  # served from the proxy's hot cache
    age_ms: int | None  # None where no value was found (u32::MAX on the wire)

    @property
    def defaulted(self) -> bool:
        return self.status.defaulted


_np = None  # numpy, once the first matrix() imported it (numpy stays optional)


def _import_numpy():
    """numpy, imported once: an ``import`` statement in ``matrix()`` costs about 0.1 µs a call."""
    global _np
    import numpy

    _np = numpy
    return numpy


class Batch:
    """The reply to ``get(view, keys)``: entity ``i`` answers ``keys[i]``.

    Per entity, as parallel lists of length ``len(batch)``:

    - ``statuses``: :class:`Status` members
    - ``cached``: bools, True where the row came from the proxy's hot cache
    - ``ages_ms``: ints, ``None`` where no value was found
    - ``defaulted``: bools, True where the row holds the view's defaults (status not FRESH/STALE)

    or per entity as an :class:`EntityStatus` (``batch.entity(i)``, ``batch.entities``,
    iteration). Rows: ``matrix()`` (numpy, zero-copy), ``row(i)``, ``rows()`` and ``to_dicts()``
    (plain Python, no numpy needed). ``buffer`` is the received reply, holding the rows at
    ``rows_offset``: the whole frame on the pure-Python core, the rows themselves (offset 0) on
    the native one.
    """

    __slots__ = ("schema", "keys", "_reply", "_statuses", "_ages", "_status_bytes")

    def __init__(self, schema: Schema, keys: Sequence[Any], reply: GetReply):
        self.schema = schema
        self.keys = keys if isinstance(keys, list) else list(keys)
        self._reply = reply
        self._statuses: list[Status] | None = None
        self._ages: list[int | None] | None = None
        self._status_bytes: bytes | None = None

    # ---- per entity

    def __len__(self) -> int:
        return self._reply.n

    @property
    def view(self) -> str:
        return self.schema.view

    @property
    def schema_id(self) -> int:
        return self._reply.schema_id

    @property
    def status_bytes(self) -> bytes:
        """The raw status bytes (status in the low 7 bits, 0x80 = from the hot cache)."""
        sb = self._status_bytes
        if sb is None:
            sb = self._status_bytes = self._reply.statuses
        return sb

    @property
    def statuses(self) -> list[Status]:
        if self._statuses is None:
            table = _STATUS_OF_BYTE
            self._statuses = [table[b] for b in self.status_bytes]
        return self._statuses

    @property
    def cached(self) -> list[bool]:
        table = _CACHED_OF_BYTE
        return [table[b] for b in self.status_bytes]

    @property
    def defaulted(self) -> list[bool]:
        """Boolean mask: True where the entity was served the view's defaults (MISSING, EXPIRED,
        DEGRADED, INVALID). Usable directly as a numpy mask: ``matrix[batch.defaulted]``."""
        table = _DEFAULTED_OF_BYTE
        return [table[b] for b in self.status_bytes]

    @property
    def ages_ms(self) -> list[int | None]:
        if self._ages is None:
            self._ages = [None if a == AGE_UNKNOWN else a for a in self._reply.ages]
        return self._ages

    def entity(self, i: int) -> EntityStatus:
        b = self.status_bytes[range(self._reply.n)[i]]
        return EntityStatus(self.keys[i], _STATUS_OF_BYTE[b], _CACHED_OF_BYTE[b], self.ages_ms[i])

    @property
    def entities(self) -> list[EntityStatus]:
        return [self.entity(i) for i in range(len(self))]

    def __iter__(self) -> Iterator[EntityStatus]:
        return iter(self.entities)

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for s in self.statuses:
            counts[s.name] = counts.get(s.name, 0) + 1
        summary = ", ".join(f"{k}={v}" for k, v in counts.items())
        return f"<Batch view={self.view!r} n={len(self)} {summary}>"

    # ---- rows

    @property
    def buffer(self) -> memoryview:
        """The reply as received, holding the rows at ``rows_offset``: the whole frame (pure-Python
        core) or the rows alone (native core)."""
        return memoryview(self._reply.data)

    @property
    def rows_offset(self) -> int:
        """Offset of row 0 in ``buffer`` (8-byte aligned, in the buffer and in memory)."""
        return self._reply.rows_offset

    def row(self, i: int) -> list:
        """Row ``i`` as a list of Python values in feature order."""
        i = range(self._reply.n)[i]
        return self.schema.decode_row(self._reply.data, self._reply.rows_offset + i * self.schema.row_bytes)

    def rows(self) -> list[list]:
        """All rows as lists of Python values."""
        if self.schema.row_bytes == 0:
            return [[] for _ in range(len(self))]
        return [list(t) for t in self.schema.row_struct.iter_unpack(self._reply.rows)]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One ``{feature name: value}`` dict per entity, in key order. Plain Python."""
        names = self.schema.names
        return [dict(zip(names, r)) for r in self.rows()]

    def matrix(self, copy: bool = False):
        """The rows as a numpy array that views the reply buffer (no copy).

        A view whose features all share one dtype gives an ``n x k`` array of that dtype
        (``float32`` for ``user_features``). A mixed view gives a 1-D structured array of ``n``
        records with one field per feature (packed, little-endian), e.g. ``m["tx_count_1h"]``.
        The view is read-only; ``copy=True`` returns a writable copy instead.
        """
        np = _np or _import_numpy()
        schema, reply = self.schema, self._reply
        dt = schema.numpy_dtype
        n = reply.n
        shape = (n, len(schema.features)) if schema.homogeneous else (n,)
        if n == 0 or schema.row_bytes == 0:
            return np.zeros(shape, dtype=dt)
        # One call straight to the right shape (frombuffer + reshape costs about 0.6 µs more), its
        # arguments positional: numpy parses keywords by looking each name up in a dict (0.68
        # against 0.30 µs by timeit; half of a native GET 1's instructions in numpy, callgrind).
        arr = np.ndarray(shape, dt, reply.data, reply.rows_offset)
        if copy:
            return arr.copy()
        if arr.flags.writeable:  # a bytearray frame (large replies); bytes and native replies are read-only
            arr.flags.writeable = False
        return arr
