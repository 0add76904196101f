"""A view's schema: its features, their dtypes and defaults, and the packed row layout."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import InvalidRequest, ProtocolError, ErrorCode
from .protocol import SchemaReply

__all__ = ["DType", "Feature", "Schema"]


class DType(enum.IntEnum):
    """Feature dtypes of protocol v1; the value is the wire code."""

    F32 = 1
    F64 = 2
    I32 = 3
    I64 = 4
    BOOL = 5

    @property
    def width(self) -> int:
        return _WIDTH[self]

    @property
    def struct_char(self) -> str:
        return _STRUCT[self]

    @property
    def numpy_str(self) -> str:
        """The little-endian numpy dtype string ('<f4', '<f8', '<i4', '<i8', '|b1')."""
        return _NUMPY[self]

    @property
    def label(self) -> str:
        return self.name.lower()


_WIDTH = {DType.F32: 4, DType.F64: 8, DType.I32: 4, DType.I64: 8, DType.BOOL: 1}
_STRUCT = {DType.F32: "f", DType.F64: "d", DType.I32: "i", DType.I64: "q", DType.BOOL: "?"}
_NUMPY = {DType.F32: "<f4", DType.F64: "<f8", DType.I32: "<i4", DType.I64: "<i8", DType.BOOL: "|b1"}


@dataclass(frozen=True)
class Feature:
    name: str
    dtype: DType
    default: Any  # float, int or bool


class Schema:
    """One view's schema as the proxy reported it (SCHEMA reply).

    Attributes: ``view`` (name), ``view_id``, ``schema_id``, ``row_bytes``, ``stale_after_ms``,
    ``max_staleness_ms``, ``features`` (tuple of :class:`Feature` in row order), ``names``,
    ``defaults`` and ``homogeneous`` (every feature has the same dtype).
    """

    __slots__ = (
        "view",
        "view_id",
        "schema_id",
        "row_bytes",
        "stale_after_ms",
        "max_staleness_ms",
        "features",
        "names",
        "defaults",
        "homogeneous",
        "row_struct",
        "_np_dtype",
        "_index",
    )

    def __init__(
        self,
        view: str,
        view_id: int,
        schema_id: int,
        row_bytes: int,
        stale_after_ms: int,
        max_staleness_ms: int,
        features: Sequence[Feature],
    ):
        self.view = view
        self.view_id = view_id
        self.schema_id = schema_id
        self.row_bytes = row_bytes
        self.stale_after_ms = stale_after_ms
        self.max_staleness_ms = max_staleness_ms
        self.features = tuple(features)
        self.names = tuple(f.name for f in self.features)
        self.defaults = tuple(f.default for f in self.features)
        self.homogeneous = len({f.dtype for f in self.features}) == 1
        self.row_struct = struct.Struct("<" + "".join(f.dtype.struct_char for f in self.features))
        self._np_dtype = None
        self._index = {n: i for i, n in enumerate(self.names)}
        if self.row_struct.size != row_bytes:
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"view {view}: row_bytes {row_bytes} does not match its features' widths ({self.row_struct.size})",
            )

    @classmethod
    def from_reply(cls, view: str, reply: SchemaReply) -> "Schema":
        feats = []
        for spec in reply.features:
            dt = DType(spec.dtype)
            (default,) = struct.unpack_from("<" + dt.struct_char, spec.default)
            feats.append(Feature(spec.name, dt, default))
        return cls(
            view,
            reply.view_id,
            reply.schema_id,
            reply.row_bytes,
            reply.stale_after_ms,
            reply.max_staleness_ms,
            feats,
        )

    def __repr__(self) -> str:
        cols = ", ".join(f"{f.name}:{f.dtype.label}" for f in self.features)
        return f"Schema({self.view!r}, view_id={self.view_id}, schema_id=0x{self.schema_id:08x}, [{cols}])"

    @property
    def numpy_dtype(self):
        """numpy dtype of one element of ``Batch.matrix()``: the common scalar dtype when the view
        is homogeneous, else a packed little-endian structured dtype with one field per feature."""
        if self._np_dtype is None:
            import numpy as np

            if self.homogeneous:
                self._np_dtype = np.dtype(self.features[0].dtype.numpy_str)
            else:
                self._np_dtype = np.dtype([(f.name, f.dtype.numpy_str) for f in self.features])
            if self._np_dtype.itemsize * (1 if not self.homogeneous else len(self.features)) != self.row_bytes:
                raise AssertionError("numpy layout differs from the row layout")
        return self._np_dtype

    def decode_row(self, buf, offset: int = 0) -> list:
        return list(self.row_struct.unpack_from(buf, offset))

    def encode_row(self, values: Any) -> bytes:
        """Packs one row. ``values``: a sequence in feature order (list, tuple, 1-D numpy array,
        numpy structured record) or a mapping with exactly the feature names as keys."""
        if isinstance(values, Mapping):
            missing = [n for n in self.names if n not in values]
            unknown = [k for k in values if k not in self._index]
            if missing or unknown:
                parts = []
                if missing:
                    parts.append(f"missing {', '.join(map(str, missing))}")
                if unknown:
                    parts.append(f"unknown {', '.join(map(str, unknown))}")
                raise InvalidRequest(f"view {self.view}: row {'; '.join(parts)}")
            seq = [values[n] for n in self.names]
        else:
            if hasattr(values, "tolist"):  # numpy array or record
                values = values.tolist()
            if isinstance(values, (str, bytes)):
                raise InvalidRequest(
                    f"view {self.view}: a row must be a sequence or mapping of values, not {type(values).__name__}"
                )
            seq = list(values)
            if len(seq) != len(self.features):
                raise InvalidRequest(
                    f"view {self.view}: row has {len(seq)} values, the view has {len(self.features)} features"
                )
        try:
            return self.row_struct.pack(*seq)
        except (struct.error, OverflowError, TypeError):
            for f, v in zip(self.features, seq):
                try:
                    struct.pack("<" + f.dtype.struct_char, v)
                except (struct.error, OverflowError, TypeError) as e:
                    raise InvalidRequest(
                        f"view {self.view}: feature {f.name} ({f.dtype.label}) cannot hold {v!r}: {e}"
                    ) from None
            raise
