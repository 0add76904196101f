"""protocol/vectors/ checked against the Python codec: ok frames decode and re-encode byte for
byte, bad ones are rejected with exactly the expected code, whole or fed one byte at a time."""

from __future__ import annotations

import struct

import pytest

from featureproxy import protocol as p
from featureproxy.batch import Batch, Status
from featureproxy.errors import ErrorCode, ProtocolError
from featureproxy.schema import Schema

from conftest import VECTORS


def read_hex(path) -> bytes:
    out = bytearray()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0]
        for tok in line.split():
            assert len(tok) % 2 == 0, f"{path.name}: odd hex token {tok!r}"
            out += bytes.fromhex(tok)
    return bytes(out)


def manifest() -> list[dict]:
    entries = []
    for line in (VECTORS / "MANIFEST").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        file, kind, expect, *opts = line.split()
        e = {
            "file": file,
            "kind": kind,
            "expect": expect,
            "max_frame": p.DEFAULT_MAX_FRAME,
            "max_batch": p.DEFAULT_MAX_BATCH,
            "row_bytes": None,
            "request_id": None,
        }
        for opt in opts:
            k, v = opt.split("=")
            e[k] = int(v)
        entries.append(e)
    return entries


ENTRIES = manifest()


def test_manifest_lists_every_vector_once():
    listed = [e["file"] for e in ENTRIES]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(f.name for f in VECTORS.glob("*.hex"))
    assert len(listed) >= 50


def outcome(e: dict, data: bytes) -> tuple:
    """Runs the stages of vectors/README.md; returns ("ok", frame, decoded), ("incomplete",) or
    ("error", code name, request_id, stage)."""
    try:
        got = p.decode_frame(data, e["max_frame"])
    except ProtocolError as err:
        return ("error", err.code.name, err.request_id, "frame")
    if got is None:
        return ("incomplete",)
    frame, consumed = got
    try:
        if e["kind"] == "request":
            decoded = p.decode_request(frame, e["max_batch"])
            if isinstance(decoded, p.PutRequest):
                assert e["row_bytes"] is not None, "a PUT vector needs row_bytes"
                decoded.entries(e["row_bytes"])
        else:
            decoded = p.decode_response(frame, e["max_batch"])
    except ProtocolError as err:
        return ("error", err.code.name, frame.request_id, "body")
    return ("ok", frame, decoded, consumed)


@pytest.mark.parametrize("e", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_vector(e):
    data = read_hex(VECTORS / e["file"])
    res = outcome(e, data)
    if e["expect"] == "ok":
        assert res[0] == "ok", f"{e['file']}: expected ok, got {res}"
        _, frame, decoded, consumed = res
        assert consumed == len(data)
        if e["request_id"] is not None:
            assert frame.request_id == e["request_id"]
        encode = p.encode_request if e["kind"] == "request" else p.encode_response
        assert encode(frame.request_id, decoded) == data, f"{e['file']}: re-encoding differs"
        if isinstance(decoded, p.PutRequest):
            entries = decoded.entries(e["row_bytes"])
            rebuilt = p.PutRequest.new(decoded.view_id, decoded.schema_id, entries)
            assert p.encode_request(frame.request_id, rebuilt) == data
    elif e["expect"] == "incomplete":
        assert res == ("incomplete",), f"{e['file']}: expected incomplete, got {res}"
    else:
        assert res[0] == "error", f"{e['file']}: expected {e['expect']}, got {res[0]}"
        assert res[1] == e["expect"], f"{e['file']}: expected {e['expect']}, got {res[1]}"
        if e["request_id"] is not None:
            assert res[2] == e["request_id"]


@pytest.mark.parametrize("e", ENTRIES, ids=[e["file"] for e in ENTRIES])
def test_vector_fed_byte_by_byte(e):
    """The streaming FrameAssembler gives the same frame-level outcome as decode_frame."""
    data = read_hex(VECTORS / e["file"])
    whole = outcome(e, data)
    asm = p.FrameAssembler(e["max_frame"], direct_min=16)  # exercise the in-place fill path too
    frames, error = [], None
    for i in range(len(data)):
        try:
            frames += asm.feed(data[i : i + 1])
        except ProtocolError as err:
            error = err
            break
    if whole[0] == "error" and whole[3] == "frame":
        assert error is not None and (error.code.name, error.request_id) == (whole[1], whole[2])
    elif whole[0] == "incomplete":
        assert error is None and not frames and asm.pending() == len(data)
    else:
        assert error is None and len(frames) == 1
        assert bytes(frames[0].data) == data


def test_every_response_vector_in_one_stream():
    """Back-to-back frames in one buffer, cut at every offset, split into the same frames."""
    ok = [read_hex(VECTORS / e["file"]) for e in ENTRIES if e["kind"] == "response" and e["expect"] == "ok"]
    stream = b"".join(ok)
    for cut in range(0, len(stream), 7):
        asm = p.FrameAssembler(direct_min=40)
        frames = asm.feed(stream[:cut]) + asm.feed(stream[cut:])
        assert [bytes(f.data) for f in frames] == ok


def example_schema() -> Schema:
    reply = p.decode_response(p.decode_frame(read_hex(VECTORS / "resp_schema.hex"))[0])
    return Schema.from_reply("user_features", reply)


def test_example_schema():
    s = example_schema()
    assert (s.view_id, s.schema_id, s.row_bytes) == (3, 0x1A2B3C4D, 13)
    assert (s.stale_after_ms, s.max_staleness_ms) == (60000, 3600000)
    assert s.names == ("ctr_7d", "clicks_30d", "is_premium")
    assert s.defaults[0] == pytest.approx(0.05) and s.defaults[1:] == (-1, False)
    assert not s.homogeneous


def test_spec_example_get_reply_as_batch():
    """SPEC.md 8.2: u:1001 FRESH from the hot cache, 1500 ms old; u:42 MISSING with defaults."""
    frame, _ = p.decode_frame(read_hex(VECTORS / "resp_get.hex"))
    batch = Batch(example_schema(), ["u:1001", "u:42"], p.decode_response(frame))
    assert len(batch) == 2
    assert batch.statuses == [Status.FRESH, Status.MISSING]
    assert batch.cached == [True, False]
    assert batch.ages_ms == [1500, None]
    assert batch.defaulted == [False, True]
    assert batch.rows_offset == 40
    assert batch.row(0) == [0.25, 17, True]
    assert batch.row(1)[1:] == [-1, False] and batch.row(1)[0] == pytest.approx(0.05)
    assert batch.to_dicts()[0] == {"ctr_7d": 0.25, "clicks_30d": 17, "is_premium": True}
    e = batch.entity(0)
    assert (e.key, e.status, e.cached, e.age_ms, e.defaulted) == ("u:1001", Status.FRESH, True, 1500, False)
    assert [x.key for x in batch] == ["u:1001", "u:42"]


def test_get_reply_three_statuses():
    frame, _ = p.decode_frame(read_hex(VECTORS / "resp_get_three.hex"))
    batch = Batch(example_schema(), [b"a", b"b", b"c"], p.decode_response(frame))
    assert batch.statuses == [Status.STALE, Status.EXPIRED, Status.DEGRADED]
    assert batch.ages_ms == [120000, 7200000, None]
    assert batch.defaulted == [False, True, True]
    assert batch.rows_offset == 48


def test_spec_example_get_request_encodes():
    req = p.GetRequest(3, 0, 0x1A2B3C4D, 2000, [b"u:1001", b"u:42"])
    assert p.encode_request(42, req) == read_hex(VECTORS / "req_get.hex")


def test_get_reply_layout_formulas():
    assert p.get_reply_layout(0, 13) == (32, 32, 32)
    assert p.get_reply_layout(2, 13) == (32, 40, 66)
    assert p.get_reply_layout(3, 13) == (32, 48, 87)


def test_built_get_reply_round_trips():
    rows = struct.pack("<fqB", 1.0, 2, 1) * 5
    reply = p.GetReply.build(3, 7, 13, bytes([0, 0x81, 2, 3, 4]), [1, 2, p.AGE_UNKNOWN, 4, p.AGE_UNKNOWN], rows, 9)
    frame, n = p.decode_frame(reply.data)
    again = p.decode_response(frame)
    assert isinstance(again, p.GetReply) and again.n == 5 and bytes(again.rows) == rows
    assert p.encode_response(9, again) == reply.data


def test_error_codes_match_spec():
    assert [c.value for c in ErrorCode] == list(range(1, 15))
    assert ErrorCode.FORBIDDEN == 14 and not ErrorCode.FORBIDDEN.closes_connection
    assert {c.name for c in ErrorCode if c.closes_connection} == {
        "MALFORMED",
        "FRAME_TOO_LARGE",
        "UNAUTHORIZED",
        "UNSUPPORTED_VERSION",
    }


def test_forbidden_vector_and_an_unknown_code():
    frame, _ = p.decode_frame(read_hex(VECTORS / "resp_error_forbidden.hex"))
    resp = p.decode_response(frame)
    assert isinstance(resp, p.ErrorReply) and resp.code == ErrorCode.FORBIDDEN and frame.request_id == 43
    assert resp.message == (
        'principal "ranker-prod" may not GET view "user_features": ask for a grant in the proxy\'s access file'
    )
    frame, _ = p.decode_frame(read_hex(VECTORS / "bad_resp_error_unknown_code.hex"))
    with pytest.raises(ProtocolError, match="ERROR code 15 is not a v1 error code") as ei:
        p.decode_response(frame)
    assert ei.value.code == ErrorCode.MALFORMED
