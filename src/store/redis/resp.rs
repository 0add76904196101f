//! The little RESP2 the read path speaks on its own connection ([`super::pipe`]): commands
//! encoded straight into the connection's write buffer, and the replies of MGET, HMGET and the
//! handshake turned into the seam's types. Replies are parsed by `redis-protocol` (the codec
//! fred itself uses), whose frames hold slices of the read buffer: a value is never copied.

use bytes::{BufMut, Bytes, BytesMut};
use redis_protocol::resp2::types::{BytesFrame, Resp2Frame};

use crate::store::{Fetched, Redirect, StoreError};

/// Appends one command of `count` parts (`*count`, then each part as a bulk string) to `out`.
pub fn encode<'a>(out: &mut BytesMut, count: usize, parts: impl Iterator<Item = &'a [u8]>) {
    out.reserve(16 + count * 16);
    out.put_u8(b'*');
    put_decimal(out, count);
    out.put_slice(b"\r\n");
    for p in parts {
        out.reserve(p.len() + 16);
        out.put_u8(b'$');
        put_decimal(out, p.len());
        out.put_slice(b"\r\n");
        out.put_slice(p);
        out.put_slice(b"\r\n");
    }
}

/// `MGET key...` of `count` keys.
pub fn encode_mget<'a>(out: &mut BytesMut, count: usize, keys: impl Iterator<Item = &'a [u8]>) {
    encode(out, 1 + count, std::iter::once(&b"MGET"[..]).chain(keys));
}

/// `HMGET key field...`.
pub fn encode_hmget(out: &mut BytesMut, key: &[u8], fields: &[Bytes]) {
    let parts = [&b"HMGET"[..], key]
        .into_iter()
        .chain(fields.iter().map(|f| &f[..]));
    encode(out, 2 + fields.len(), parts);
}

fn put_decimal(out: &mut BytesMut, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// An MGET's reply, handed to `put` in the order asked: one [`Fetched::Value`] (a slice of the
/// read buffer) or [`Fetched::Absent`] per key; or the error that failed the whole command (a
/// redirection on a cluster node, anything else Redis said), with nothing handed on.
pub fn mget_reply(
    frame: BytesFrame,
    keys: usize,
    mut put: impl FnMut(Fetched),
) -> Result<(), StoreError> {
    match frame {
        BytesFrame::Array(items) if items.len() == keys => {
            for item in items {
                put(match item {
                    BytesFrame::BulkString(v) => Fetched::Value(v),
                    _ => Fetched::Absent,
                });
            }
            Ok(())
        }
        other => Err(unexpected("MGET", other, keys)),
    }
}

/// An HMGET's reply: the asked fields in order, [`Fetched::WrongType`] when the key holds no hash
/// (that key's problem, not the node's), or the error that failed the command.
pub fn hmget_reply(frame: BytesFrame, fields: usize) -> Result<Fetched, StoreError> {
    match frame {
        BytesFrame::Array(items) if items.len() == fields => Ok(Fetched::Fields(
            items
                .into_iter()
                .map(|item| match item {
                    BytesFrame::BulkString(v) => Some(v),
                    _ => None,
                })
                .collect(),
        )),
        BytesFrame::Error(e) if e.starts_with("WRONGTYPE") => Ok(Fetched::WrongType),
        other => Err(unexpected("HMGET", other, fields)),
    }
}

/// What a reply that is not the expected array means: a redirection, Redis's error, or a reply
/// of the wrong shape (which fails the call rather than misplacing values).
fn unexpected(command: &str, frame: BytesFrame, expected: usize) -> StoreError {
    match frame {
        BytesFrame::Error(e) => error_reply(&e),
        BytesFrame::Array(items) => StoreError::Unavailable(format!(
            "{command} answered {} values for {expected} asked",
            items.len()
        )),
        other => StoreError::Unavailable(format!(
            "{command} answered a {:?} instead of an array",
            other.kind()
        )),
    }
}

/// The error an error reply means: a cluster redirection, or Redis's own message.
pub fn error_reply(message: &str) -> StoreError {
    match Redirect::parse(message) {
        Some(r) => StoreError::Redirected(r),
        None => StoreError::Unavailable(format!("Redis answered: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis_protocol::resp2::decode::decode_bytes_mut;

    fn decode(wire: &[u8]) -> BytesFrame {
        let mut buf = BytesMut::from(wire);
        let (frame, used, _) = decode_bytes_mut(&mut buf).unwrap().unwrap();
        assert_eq!(used, wire.len());
        frame
    }

    #[test]
    fn commands_are_encoded_as_resp_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        encode_mget(&mut out, 2, [&b"a"[..], b"long-key-0123456789"].into_iter());
        assert_eq!(
            &out[..],
            b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$19\r\nlong-key-0123456789\r\n"
        );
        out.clear();
        encode_hmget(&mut out, b"k", &[Bytes::from_static(b"f1"), Bytes::new()]);
        assert_eq!(
            &out[..],
            b"*4\r\n$5\r\nHMGET\r\n$1\r\nk\r\n$2\r\nf1\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn an_mget_reply_gives_one_answer_per_key_and_refuses_the_wrong_count() {
        let frame = decode(b"*3\r\n$2\r\nv1\r\n$-1\r\n$0\r\n\r\n");
        let mut got = Vec::new();
        mget_reply(frame.clone(), 3, |f| got.push(f)).unwrap();
        assert_eq!(
            got,
            vec![
                Fetched::Value(Bytes::from_static(b"v1")),
                Fetched::Absent,
                Fetched::Value(Bytes::new())
            ]
        );
        let e = mget_reply(frame, 2, |_| panic!("nothing is handed on")).unwrap_err();
        assert!(e.to_string().contains("3 values for 2 asked"), "{e}");
    }

    #[test]
    fn error_replies_are_redirections_wrong_types_or_redis_s_message() {
        let moved = decode(b"-MOVED 3999 127.0.0.1:7001\r\n");
        match mget_reply(moved, 1, |_| {}) {
            Err(StoreError::Redirected(Redirect::Moved { slot: 3999, to })) => {
                assert_eq!(to, "127.0.0.1:7001")
            }
            other => panic!("expected MOVED, got {other:?}"),
        }
        let wrong = decode(b"-WRONGTYPE Operation against a key holding the wrong kind\r\n");
        assert_eq!(hmget_reply(wrong, 2).unwrap(), Fetched::WrongType);
        let loading = decode(b"-LOADING Redis is loading the dataset in memory\r\n");
        let e = hmget_reply(loading, 2).unwrap_err();
        assert!(e.to_string().contains("LOADING"), "{e}");
        let fields = decode(b"*2\r\n$-1\r\n$1\r\nx\r\n");
        assert_eq!(
            hmget_reply(fields, 2).unwrap(),
            Fetched::Fields(vec![None, Some(Bytes::from_static(b"x"))])
        );
    }
}
