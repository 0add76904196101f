"""Codec for featureproxy wire protocol v1 (protocol/SPEC.md), standard library only.

Both directions are implemented so that the test vectors can be decoded and re-encoded:
requests (``encode_request`` / ``decode_request``) and responses (``encode_response`` /
``decode_response``). Frame boundaries are found by :func:`decode_frame` (one buffer) or
:class:`FrameAssembler` (a byte stream fed in arbitrary pieces). Every rejection raises
:class:`~featureproxy.errors.ProtocolError` carrying the error code a v1 decoder assigns
(SPEC.md section 6).

A decoded GET reply keeps a reference to the frame's bytes and never copies its rows: the
``rows_offset`` (8-byte aligned from the start of the frame) locates the ``n x row_bytes`` matrix.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Sequence, Union

from .errors import ErrorCode, InvalidRequest, ProtocolError

__all__ = [
    "VERSION",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_BATCH",
    "MAX_KEY_LEN",
    "OP_HELLO",
    "OP_PING",
    "OP_SCHEMA",
    "OP_GET",
    "OP_PUT",
    "OP_ERROR",
    "GET_BYPASS_CACHE",
    "AGE_UNKNOWN",
    "Frame",
    "Hello",
    "Ping",
    "SchemaRequest",
    "GetRequest",
    "PutEntry",
    "PutRequest",
    "HelloReply",
    "Pong",
    "FeatureSpec",
    "SchemaReply",
    "GetReply",
    "PutReply",
    "ErrorReply",
    "align8",
    "get_reply_layout",
    "check_header",
    "decode_frame",
    "FrameAssembler",
    "encode_frame",
    "encode_request",
    "decode_request",
    "encode_response",
    "decode_response",
]

VERSION = 1
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
DEFAULT_MAX_BATCH = 4096
MAX_KEY_LEN = 1024
HEADER_LEN = 12

OP_HELLO = 0x01
OP_PING = 0x02
OP_SCHEMA = 0x03
OP_GET = 0x10
OP_PUT = 0x11
OP_ERROR = 0xFF
REQUEST_OPS = frozenset({OP_HELLO, OP_PING, OP_SCHEMA, OP_GET, OP_PUT})
OP_NAMES = {OP_HELLO: "HELLO", OP_PING: "PING", OP_SCHEMA: "SCHEMA", OP_GET: "GET", OP_PUT: "PUT"}

GET_BYPASS_CACHE = 0x0001
AGE_UNKNOWN = 0xFFFFFFFF

# Status bytes whose low 7 bits are a v1 status (0..5), with or without the cache bit 0x80.
_VALID_STATUS_BYTES = bytes(list(range(6)) + list(range(0x80, 0x86)))
_ERROR_CODES = frozenset(int(c) for c in ErrorCode)

_HEADER = struct.Struct("<IBBHI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_GET_REQ_FIXED = struct.Struct("<HHIII")
_GET_REPLY_FIXED = struct.Struct("<HHIII")
_PUT_REQ_FIXED = struct.Struct("<HHII")
_HELLO_REPLY_FIXED = struct.Struct("<HHII")
_SCHEMA_REPLY_FIXED = struct.Struct("<HIIIIH")

Buffer = Union[bytes, bytearray, memoryview]


def align8(x: int) -> int:
    return (x + 7) & ~7


def get_reply_layout(n: int, row_bytes: int) -> tuple[int, int, int]:
    """(ages offset A, rows offset R, total frame size) of a GET reply (SPEC.md 3.4)."""
    a = align8(28 + n)
    r = align8(a + 4 * n)
    return a, r, r + n * row_bytes


# --------------------------------------------------------------------------------------------
# Frames


@dataclass(frozen=True)
class Frame:
    """One whole frame: ``data`` holds all ``4 + len`` bytes, header included."""

    op: int
    request_id: int
    data: Buffer

    @property
    def body(self) -> memoryview:
        return memoryview(self.data)[HEADER_LEN:]


def check_header(buf: Buffer, offset: int, end: int, max_frame: int) -> int | None:
    """Validates the frame header at ``buf[offset:end]`` (SPEC.md 6.1 steps 1-5).

    Returns the whole frame's size ``4 + len`` once the 12-byte header is in, ``None`` while
    fewer bytes are buffered. Raises ProtocolError exactly when a v1 decoder would.
    """
    avail = end - offset
    if avail < 4:
        return None
    (length,) = _U32.unpack_from(buf, offset)
    if length < 8:
        raise ProtocolError(ErrorCode.MALFORMED, f"frame len {length} is below the minimum of 8", 0)
    if avail < HEADER_LEN:
        return None
    _, _op, flags, reserved, request_id = _HEADER.unpack_from(buf, offset)
    if length > max_frame:
        raise ProtocolError(ErrorCode.FRAME_TOO_LARGE, f"frame len {length} exceeds max_frame {max_frame}", request_id)
    if flags != 0 or reserved != 0:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            f"header flags 0x{flags:02x} / reserved 0x{reserved:04x} must be 0 in v1",
            request_id,
        )
    return 4 + length


def decode_frame(buf: Buffer, max_frame: int = DEFAULT_MAX_FRAME) -> tuple[Frame, int] | None:
    """Splits one frame off the start of ``buf``: ``(frame, bytes consumed)``, or None if more
    bytes are needed. Raises ProtocolError for a bad header."""
    total = check_header(buf, 0, len(buf), max_frame)
    if total is None or len(buf) < total:
        return None
    data = buf if len(buf) == total and isinstance(buf, bytes) else bytes(buf[:total])
    op, request_id = data[4], _U32.unpack_from(data, 8)[0]
    return Frame(op, request_id, data), total


class FrameAssembler:
    """Splits a byte stream, fed in pieces of any size, into frames.

    ``feed(data)`` returns the frames completed by ``data``. Each frame owns its bytes (a
    ``bytes`` object, or a ``bytearray`` filled in place for frames larger than ``direct_min``),
    so a decoded reply can be viewed without further copies. After a ProtocolError the stream
    cannot be trusted and the assembler must not be fed again.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, direct_min: int = 65536):
        self.max_frame = max_frame
        self._direct_min = direct_min
        self._buf = bytearray()  # bytes of an incomplete header or small frame
        self._big: bytearray | None = None  # a large frame being filled in place
        self._big_filled = 0

    def pending(self) -> int:
        """Bytes buffered of a frame not yet complete."""
        return self._big_filled if self._big is not None else len(self._buf)

    def feed(self, data: Buffer) -> list[Frame]:
        frames: list[Frame] = []
        mv = memoryview(data)
        pos, end = 0, len(mv)
        while pos < end:
            if self._big is not None:
                big = self._big
                take = min(len(big) - self._big_filled, end - pos)
                big[self._big_filled : self._big_filled + take] = mv[pos : pos + take]
                self._big_filled += take
                pos += take
                if self._big_filled == len(big):
                    self._big = None
                    frames.append(Frame(big[4], _U32.unpack_from(big, 8)[0], big))
                continue
            if self._buf:
                # Complete the header of a partly received frame first.
                buf = self._buf
                need_hdr = HEADER_LEN - len(buf)
                if need_hdr > 0:
                    buf += mv[pos : pos + need_hdr]
                    pos += min(need_hdr, end - pos)
                total = check_header(buf, 0, len(buf), self.max_frame)
                if total is None:
                    continue  # still short of a header; input exhausted
                if total >= self._direct_min:
                    big = bytearray(total)
                    big[: len(buf)] = buf
                    self._big, self._big_filled = big, len(buf)
                    self._buf = bytearray()
                    continue
                take = min(total - len(buf), end - pos)
                buf += mv[pos : pos + take]
                pos += take
                if len(buf) == total:
                    frame = bytes(buf)
                    self._buf = bytearray()
                    frames.append(Frame(frame[4], _U32.unpack_from(frame, 8)[0], frame))
                continue
            total = check_header(mv, pos, end, self.max_frame)
            if total is not None and end - pos >= total:
                if pos == 0 and total == end and isinstance(data, bytes):
                    frame = data
                else:
                    frame = mv[pos : pos + total].tobytes()
                pos += total
                frames.append(Frame(frame[4], _U32.unpack_from(frame, 8)[0], frame))
                continue
            if total is not None and total >= self._direct_min:
                big = bytearray(total)
                big[: end - pos] = mv[pos:end]
                self._big, self._big_filled = big, end - pos
            else:
                self._buf = bytearray(mv[pos:end])
            pos = end
        return frames


def encode_frame(op: int, request_id: int, body: Buffer = b"") -> bytes:
    return _HEADER.pack(8 + len(body), op, 0, 0, request_id) + body


# --------------------------------------------------------------------------------------------
# Body reading with bounds checks


class _Reader:
    __slots__ = ("buf", "pos", "end", "what", "code")

    def __init__(self, buf: Buffer, pos: int, end: int, what: str, code: ErrorCode = ErrorCode.MALFORMED):
        self.buf, self.pos, self.end, self.what, self.code = buf, pos, end, what, code

    def _need(self, n: int, field: str) -> int:
        if self.end - self.pos < n:
            raise ProtocolError(
                self.code,
                f"{self.what}: {field} needs {n} bytes at offset {self.pos}, only {self.end - self.pos} left",
            )
        p = self.pos
        self.pos += n
        return p

    def remaining(self) -> int:
        return self.end - self.pos

    def u8(self, field: str) -> int:
        return self.buf[self._need(1, field)]

    def u16(self, field: str) -> int:
        return _U16.unpack_from(self.buf, self._need(2, field))[0]

    def u32(self, field: str) -> int:
        return _U32.unpack_from(self.buf, self._need(4, field))[0]

    def u64(self, field: str) -> int:
        return _U64.unpack_from(self.buf, self._need(8, field))[0]

    def raw(self, n: int, field: str) -> bytes:
        p = self._need(n, field)
        return bytes(self.buf[p : p + n])

    def str(self, field: str) -> str:
        n = self.u16(field + " length")
        raw = self.raw(n, field)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError(self.code, f"{self.what}: {field} is not valid UTF-8 ({e.reason})") from None

    def key(self, field: str) -> bytes:
        n = self.u16(field + " length")
        if n == 0 or n > MAX_KEY_LEN:
            raise ProtocolError(self.code, f"{self.what}: {field} length {n} is outside 1..={MAX_KEY_LEN}")
        return self.raw(n, field)

    def done(self) -> None:
        if self.pos != self.end:
            raise ProtocolError(self.code, f"{self.what}: {self.end - self.pos} trailing bytes after the last field")


def _str(s: str | bytes, field: str) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if len(b) > 0xFFFF:
        raise InvalidRequest(f"{field} is {len(b)} bytes; a protocol string holds at most 65535")
    return _U16.pack(len(b)) + b


# --------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Hello:
    version: int = VERSION
    token: str = ""
    client_name: str = ""
    op = OP_HELLO

    def encode_body(self) -> bytes:
        return _U16.pack(self.version) + _str(self.token, "token") + _str(self.client_name, "client_name")


@dataclass(frozen=True)
class Ping:
    op = OP_PING

    def encode_body(self) -> bytes:
        return b""


@dataclass(frozen=True)
class SchemaRequest:
    view: str
    op = OP_SCHEMA

    def encode_body(self) -> bytes:
        return _str(self.view, "view name")


@dataclass(frozen=True)
class GetRequest:
    view_id: int
    get_flags: int
    schema_id: int
    deadline_us: int
    keys: Sequence[bytes]
    op = OP_GET

    def encode_body(self) -> bytes:
        pack = _U16.pack
        parts = [_GET_REQ_FIXED.pack(self.view_id, self.get_flags, self.schema_id, self.deadline_us, len(self.keys))]
        for k in self.keys:
            parts.append(pack(len(k)))
            parts.append(k)
        return b"".join(parts)


@dataclass(frozen=True)
class PutEntry:
    key: bytes
    computed_at_ms: int
    row: bytes


@dataclass(frozen=True)
class PutRequest:
    """A PUT keeps its entries encoded: splitting them needs the view's row_bytes."""

    view_id: int
    schema_id: int
    n: int
    encoded_entries: bytes
    reserved: int = 0
    op = OP_PUT

    @classmethod
    def new(cls, view_id: int, schema_id: int, entries: Sequence[PutEntry]) -> "PutRequest":
        parts = []
        for e in entries:
            parts.append(_U16.pack(len(e.key)))
            parts.append(e.key)
            parts.append(_U64.pack(e.computed_at_ms))
            parts.append(e.row)
        return cls(view_id, schema_id, len(entries), b"".join(parts))

    def encode_body(self) -> bytes:
        return _PUT_REQ_FIXED.pack(self.view_id, self.reserved, self.schema_id, self.n) + self.encoded_entries

    def entries(self, row_bytes: int) -> list[PutEntry]:
        """Splits the entries with the view's ``row_bytes`` (SPEC.md 6.3); failures are BAD_ROW."""
        buf = self.encoded_entries
        r = _Reader(buf, 0, len(buf), "PUT entries", ErrorCode.BAD_ROW)
        min_entry = 2 + 1 + 8 + row_bytes
        if self.n * min_entry > len(buf):
            raise ProtocolError(
                ErrorCode.BAD_ROW,
                f"PUT declares {self.n} entries but {len(buf)} bytes cannot hold that many rows of {row_bytes} bytes",
            )
        out = []
        for i in range(self.n):
            key = r.key(f"entry {i} key")
            computed_at = r.u64(f"entry {i} computed_at_ms")
            last = i + 1 == self.n
            if r.remaining() < row_bytes or (last and r.remaining() != row_bytes):
                raise ProtocolError(
                    ErrorCode.BAD_ROW,
                    f"PUT entry {i}: row of {r.remaining() if last else min(r.remaining(), row_bytes)} bytes, "
                    f"rows of this view are {row_bytes} bytes",
                )
            out.append(PutEntry(key, computed_at, r.raw(row_bytes, f"entry {i} row")))
        if self.n == 0 and r.remaining():
            raise ProtocolError(ErrorCode.BAD_ROW, f"PUT with n = 0 has {r.remaining()} bytes of entries")
        return out


Request = Union[Hello, Ping, SchemaRequest, GetRequest, PutRequest]


def encode_request(request_id: int, req: Request) -> bytes:
    return encode_frame(req.op, request_id, req.encode_body())


def decode_request(frame: Frame, max_batch: int = DEFAULT_MAX_BATCH) -> Request:
    """Decodes a request frame (SPEC.md 6.2). PUT entries stay encoded: see PutRequest.entries."""
    op, data = frame.op, frame.data
    if op not in REQUEST_OPS:
        raise ProtocolError(ErrorCode.UNKNOWN_OP, f"op 0x{op:02x} is not a v1 request op", frame.request_id)
    name = OP_NAMES[op]
    r = _Reader(data, HEADER_LEN, len(data), name)
    if op == OP_HELLO:
        req: Request = Hello(r.u16("version"), r.str("token"), r.str("client_name"))
    elif op == OP_PING:
        req = Ping()
    elif op == OP_SCHEMA:
        req = SchemaRequest(r.str("view"))
    elif op == OP_GET:
        view_id, flags, schema_id, deadline_us = (
            r.u16("view_id"),
            r.u16("get_flags"),
            r.u32("schema_id"),
            r.u32("deadline_us"),
        )
        n = r.u32("n")
        if n > max_batch:
            raise ProtocolError(ErrorCode.BATCH_TOO_LARGE, f"GET of {n} keys exceeds max_batch {max_batch}")
        if n > r.remaining() // 3:
            raise ProtocolError(ErrorCode.MALFORMED, f"GET declares {n} keys but only {r.remaining()} bytes follow")
        keys = [r.key(f"key {i}") for i in range(n)]
        req = GetRequest(view_id, flags, schema_id, deadline_us, keys)
    else:
        view_id, reserved, schema_id = r.u16("view_id"), r.u16("reserved"), r.u32("schema_id")
        n = r.u32("n")
        if n > max_batch:
            raise ProtocolError(ErrorCode.BATCH_TOO_LARGE, f"PUT of {n} rows exceeds max_batch {max_batch}")
        return PutRequest(view_id, schema_id, n, bytes(data[r.pos :]), reserved)
    r.done()
    return req


# --------------------------------------------------------------------------------------------
# Responses


@dataclass(frozen=True)
class HelloReply:
    version: int
    shard: int
    max_frame: int
    max_batch: int
    server: str
    op = OP_HELLO | 0x80

    def encode_body(self) -> bytes:
        return _HELLO_REPLY_FIXED.pack(self.version, self.shard, self.max_frame, self.max_batch) + _str(
            self.server, "server"
        )


@dataclass(frozen=True)
class Pong:
    op = OP_PING | 0x80

    def encode_body(self) -> bytes:
        return b""


@dataclass(frozen=True)
class FeatureSpec:
    dtype: int
    name: str
    default: bytes  # 8 bytes: the value in its dtype, zero-padded


@dataclass(frozen=True)
class SchemaReply:
    view_id: int
    schema_id: int
    row_bytes: int
    stale_after_ms: int
    max_staleness_ms: int
    features: tuple[FeatureSpec, ...]
    op = OP_SCHEMA | 0x80

    def encode_body(self) -> bytes:
        parts = [
            _SCHEMA_REPLY_FIXED.pack(
                self.view_id,
                self.schema_id,
                self.row_bytes,
                self.stale_after_ms,
                self.max_staleness_ms,
                len(self.features),
            )
        ]
        for f in self.features:
            parts.append(bytes([f.dtype]) + _str(f.name, "feature name") + bytes(f.default).ljust(8, b"\0")[:8])
        return b"".join(parts)


@dataclass(frozen=True)
class GetReply:
    """A GET reply that references its frame: statuses, ages and rows are read in place."""

    view_id: int
    schema_id: int
    n: int
    row_bytes: int
    data: Buffer  # the whole frame
    reserved: int = 0
    ages_offset: int = field(default=0)
    rows_offset: int = field(default=0)
    op = OP_GET | 0x80

    @classmethod
    def build(
        cls,
        view_id: int,
        schema_id: int,
        row_bytes: int,
        statuses: Buffer,
        ages: Sequence[int],
        rows: Buffer,
        request_id: int = 0,
        reserved: int = 0,
    ) -> "GetReply":
        """Encodes a reply frame (for tests and fake servers) and returns it decoded."""
        n = len(statuses)
        if len(ages) != n or len(rows) != n * row_bytes:
            raise ValueError("statuses, ages and rows disagree on n")
        a, r, total = get_reply_layout(n, row_bytes)
        buf = bytearray(total)
        _HEADER.pack_into(buf, 0, total - 4, OP_GET | 0x80, 0, 0, request_id)
        _GET_REPLY_FIXED.pack_into(buf, 12, view_id, reserved, schema_id, n, row_bytes)
        buf[28 : 28 + n] = statuses
        struct.pack_into(f"<{n}I", buf, a, *ages)
        buf[r:total] = rows
        return cls(view_id, schema_id, n, row_bytes, bytes(buf), reserved, a, r)

    @property
    def statuses(self) -> bytes:
        return bytes(self.data[28 : 28 + self.n])

    @property
    def ages(self) -> tuple[int, ...]:
        return struct.unpack_from(f"<{self.n}I", self.data, self.ages_offset)

    @property
    def rows(self) -> memoryview:
        return memoryview(self.data)[self.rows_offset : self.rows_offset + self.n * self.row_bytes]

    def encode_body(self) -> bytes:
        n = self.n
        a, r, total = get_reply_layout(n, self.row_bytes)
        buf = bytearray(total - HEADER_LEN)
        _GET_REPLY_FIXED.pack_into(buf, 0, self.view_id, self.reserved, self.schema_id, n, self.row_bytes)
        buf[16 : 16 + n] = self.statuses
        struct.pack_into(f"<{n}I", buf, a - HEADER_LEN, *self.ages)
        buf[r - HEADER_LEN :] = self.rows
        return bytes(buf)


@dataclass(frozen=True)
class PutReply:
    written: int
    op = OP_PUT | 0x80

    def encode_body(self) -> bytes:
        return _U32.pack(self.written)


@dataclass(frozen=True)
class ErrorReply:
    code: int
    message: str
    op = OP_ERROR

    def encode_body(self) -> bytes:
        msg = self.message.encode("utf-8")
        if len(msg) > 0xFFFF:
            msg = msg[:0xFFFF].decode("utf-8", errors="ignore").encode("utf-8")
        return _U16.pack(self.code) + _U16.pack(len(msg)) + msg


Response = Union[HelloReply, Pong, SchemaReply, GetReply, PutReply, ErrorReply]


def encode_response(request_id: int, resp: Response) -> bytes:
    return encode_frame(resp.op, request_id, resp.encode_body())


def _decode_get_reply(data: Buffer, max_batch: int) -> GetReply:
    size = len(data)
    if size < 28:
        raise ProtocolError(ErrorCode.MALFORMED, f"GET reply of {size} bytes is shorter than its 28-byte fixed part")
    view_id, reserved, schema_id, n, row_bytes = _GET_REPLY_FIXED.unpack_from(data, 12)
    if n > max_batch:
        raise ProtocolError(ErrorCode.MALFORMED, f"GET reply has n = {n} > max_batch {max_batch}")
    a, r, total = get_reply_layout(n, row_bytes)
    if size != total:
        raise ProtocolError(
            ErrorCode.MALFORMED,
            f"GET reply is {size} bytes, but n = {n} and row_bytes = {row_bytes} make {total}",
        )
    if bytes(data[28 : 28 + n]).translate(None, _VALID_STATUS_BYTES):
        bad = next(b for b in data[28 : 28 + n] if (b & 0x7F) > 5)
        raise ProtocolError(ErrorCode.MALFORMED, f"GET reply has an unknown status byte 0x{bad:02x}")
    return GetReply(view_id, schema_id, n, row_bytes, data, reserved, a, r)


def decode_response(frame: Frame, max_batch: int = DEFAULT_MAX_BATCH) -> Response:
    """Decodes a response frame (SPEC.md 6.4). Every failure is MALFORMED."""
    op, data = frame.op, frame.data
    if op == OP_GET | 0x80:
        return _decode_get_reply(data, max_batch)
    if op != OP_ERROR and not (op & 0x80 and (op & 0x7F) in REQUEST_OPS):
        raise ProtocolError(ErrorCode.MALFORMED, f"op 0x{op:02x} is not a v1 response op", frame.request_id)
    r = _Reader(data, HEADER_LEN, len(data), "ERROR" if op == OP_ERROR else OP_NAMES[op & 0x7F] + " reply")
    if op == OP_ERROR:
        code = r.u16("code")
        message = r.str("message")
        if code not in _ERROR_CODES:
            # A newer server's code: MALFORMED (SPEC.md 6.4), naming the code and what it said.
            raise ProtocolError(
                ErrorCode.MALFORMED,
                f"ERROR code {code} is not a v1 error code (1..={len(ErrorCode)}); the server said: {message!r}",
            )
        resp: Response = ErrorReply(code, message)
    elif op == OP_HELLO | 0x80:
        resp = HelloReply(r.u16("version"), r.u16("shard"), r.u32("max_frame"), r.u32("max_batch"), r.str("server"))
    elif op == OP_PING | 0x80:
        resp = Pong()
    elif op == OP_SCHEMA | 0x80:
        view_id, schema_id, row_bytes = r.u16("view_id"), r.u32("schema_id"), r.u32("row_bytes")
        stale, max_stale, nf = r.u32("stale_after_ms"), r.u32("max_staleness_ms"), r.u16("n_features")
        if nf > r.remaining() // 11:
            raise ProtocolError(
                ErrorCode.MALFORMED, f"SCHEMA reply declares {nf} features but only {r.remaining()} bytes follow"
            )
        feats = []
        for i in range(nf):
            dtype = r.u8(f"feature {i} dtype")
            if not 1 <= dtype <= 5:
                raise ProtocolError(ErrorCode.MALFORMED, f"SCHEMA reply: feature {i} has unknown dtype {dtype}")
            feats.append(FeatureSpec(dtype, r.str(f"feature {i} name"), r.raw(8, f"feature {i} default")))
        resp = SchemaReply(view_id, schema_id, row_bytes, stale, max_stale, tuple(feats))
    else:  # PUT reply
        resp = PutReply(r.u32("written"))
    r.done()
    return resp
