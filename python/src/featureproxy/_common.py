"""Request building, client-side checks and reply interpretation shared by Client and AsyncClient."""

from __future__ import annotations

import datetime as _dt
import math
import numbers
from typing import Any, Iterable, Mapping

from . import protocol as p
from .errors import ErrorCode, InvalidRequest, ProtocolError, server_error
from .schema import Schema

DEFAULT_CLIENT_NAME = "featureproxy-python/0.1.0"
_U32_MAX = 0xFFFFFFFF


def key_bytes(key: Any) -> bytes:
    if isinstance(key, str):
        b = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
    else:
        raise InvalidRequest(f"a key must be str or bytes, not {type(key).__name__}: {key!r}")
    if not 1 <= len(b) <= p.MAX_KEY_LEN:
        shown = b[:40] + (b"..." if len(b) > 40 else b"")
        raise InvalidRequest(f"key {shown!r} is {len(b)} bytes; keys must be 1..{p.MAX_KEY_LEN} bytes")
    return b


def keys_bytes(keys: Any) -> tuple[list, list[bytes]]:
    """(the keys as a list, each key's bytes); keys may be any iterable of str or bytes."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise InvalidRequest(f"keys must be a list of keys, not a single {type(keys).__name__}: pass [{keys!r}]")
    keys = list(keys)
    return keys, [key_bytes(k) for k in keys]


def deadline_us(deadline: float | None) -> int:
    """Seconds (float) to the wire's deadline_us; None means the server's default (0)."""
    if deadline is None:
        return 0
    if not isinstance(deadline, numbers.Real) or isinstance(deadline, bool) or not deadline > 0:
        raise InvalidRequest(f"deadline must be a positive number of seconds, not {deadline!r}")
    us = math.ceil(float(deadline) * 1e6)
    if us > _U32_MAX:
        raise InvalidRequest(f"deadline {deadline}s exceeds the protocol's maximum of {_U32_MAX / 1e6:.0f}s")
    return us


def computed_at_ms(value: Any) -> int:
    """computed_at as unix milliseconds.

    - ``int`` (including numpy integers): already unix milliseconds.
    - ``float``: unix seconds, as ``time.time()`` returns; rounded to the nearest millisecond.
    - ``datetime.datetime``: must be timezone-aware (a naive datetime is rejected, as its zone
      would be a guess).
    """
    if isinstance(value, bool):
        raise InvalidRequest("computed_at must be unix ms (int), unix seconds (float) or a datetime, not a bool")
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidRequest(
                f"computed_at {value!r} is a naive datetime: give it a timezone (e.g. tzinfo=datetime.timezone.utc)"
            )
        delta = value - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
        ms = delta // _dt.timedelta(milliseconds=1)
    elif isinstance(value, numbers.Integral):
        ms = int(value)
    elif isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f):
            raise InvalidRequest(f"computed_at {value!r} is not a finite number of seconds")
        ms = round(f * 1000)
    else:
        raise InvalidRequest(
            f"computed_at must be unix ms (int), unix seconds (float) or an aware datetime, not {type(value).__name__}"
        )
    if not 0 <= ms <= 0xFFFFFFFFFFFFFFFF:
        raise InvalidRequest(f"computed_at {value!r} is outside the protocol's range (unix ms as u64)")
    return ms


def put_items(rows: Any) -> list[tuple[Any, Any, Any]]:
    """rows (mapping key -> (computed_at, values), or an iterable of such pairs) as a list of
    (key, computed_at, values)."""
    items: Iterable = rows.items() if isinstance(rows, Mapping) else rows
    out = []
    for item in items:
        try:
            key, (computed_at, values) = item
        except (TypeError, ValueError):
            raise InvalidRequest(f"put rows must map key -> (computed_at, values); got the item {item!r}") from None
        out.append((key, computed_at, values))
    return out


def encode_put(schema: Schema, items: list[tuple[Any, Any, Any]]) -> p.PutRequest:
    entries = [p.PutEntry(key_bytes(k), computed_at_ms(c), schema.encode_row(v)) for k, c, v in items]
    return p.PutRequest.new(schema.view_id, schema.schema_id, entries)


def key_list(keys: Any) -> list:
    """``keys`` as a list, unchecked (the native codec checks each key); a lone key is refused
    as ``keys_bytes`` refuses it."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise InvalidRequest(f"keys must be a list of keys, not a single {type(keys).__name__}: pass [{keys!r}]")
    return keys if type(keys) is list else list(keys)


def check_get_limits(schema: Schema, keys: list[bytes], max_frame: int, max_batch: int) -> None:
    n = len(keys)
    check_get_sizes(schema, n, 8 + 16 + sum(len(k) for k in keys) + 2 * n, max_frame, max_batch)


def check_get_sizes(schema: Schema, n: int, req_len: int, max_frame: int, max_batch: int) -> None:
    """``check_get_limits`` for a GET of ``n`` keys whose frame's len field is ``req_len``."""
    if n > max_batch:
        raise InvalidRequest(f"GET {schema.view!r} of {n} keys exceeds the server's max_batch of {max_batch}")
    if req_len > max_frame:
        raise InvalidRequest(
            f"GET {schema.view!r} of {n} keys is a {req_len}-byte frame, over the server's max_frame of {max_frame}"
        )
    _, _, total = p.get_reply_layout(n, schema.row_bytes)
    if total - 4 > max_frame:
        raise InvalidRequest(
            f"GET {schema.view!r} of {n} keys would need a {total}-byte reply, over the server's max_frame of "
            f"{max_frame}: split the keys"
        )


def check_put_limits(req: p.PutRequest, view: str, max_frame: int, max_batch: int) -> None:
    if req.n > max_batch:
        raise InvalidRequest(f"PUT {view!r} of {req.n} rows exceeds the server's max_batch of {max_batch}")
    frame_len = 8 + 12 + len(req.encoded_entries)
    if frame_len > max_frame:
        raise InvalidRequest(
            f"PUT {view!r} of {req.n} rows is a {frame_len}-byte frame, over the server's max_frame of {max_frame}"
        )


class Broken(Exception):
    """The reply shows that the connection can no longer be trusted (carries the error to raise)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def interpret(frame: p.Frame, op: int, max_batch: int, address: str, what: str):
    """Decodes the reply to a request of ``op``; raises the ServerError for an ERROR frame, and
    Broken(ProtocolError) for a reply that does not follow the protocol."""
    try:
        resp = p.decode_response(frame, max_batch)
    except ProtocolError as e:
        raise Broken(
            ProtocolError(e.code, f"featureproxy {address}: reply to {what} is not protocol v1: {e.message}")
        ) from None
    if isinstance(resp, p.ErrorReply):
        raise server_error(resp.code, resp.message, address)
    if resp.op != op | 0x80:
        raise Broken(
            ProtocolError(
                ErrorCode.MALFORMED,
                f"featureproxy {address}: {what} was answered with op 0x{resp.op:02x}, expected 0x{op | 0x80:02x}",
            )
        )
    return resp


def check_get_reply(reply: p.GetReply, schema: Schema, n: int) -> bool:
    """True when the reply fits the cached schema; False when the schema must be refreshed."""
    if reply.n != n:
        raise ProtocolError(
            ErrorCode.MALFORMED, f"GET {schema.view!r} of {n} keys was answered with {reply.n} entities"
        )
    return (
        reply.schema_id == schema.schema_id and reply.row_bytes == schema.row_bytes and reply.view_id == schema.view_id
    )
