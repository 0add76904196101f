//! Just enough RESP2 to read the replies to GET and MGET: bulk strings, nils, errors, and arrays
//! of those, parsed in place from the receive buffer.

/// One element of a reply, as byte ranges into the buffer it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    Nil,
    Bulk(usize, usize),
    Error(usize, usize),
    Simple,
    Int,
}

/// Parses the complete reply at the start of `buf` into `elems` (its elements for an array, else
/// the one reply). `Ok(None)` when more bytes are needed; `Err` when the stream is not RESP.
pub fn parse_reply(buf: &[u8], elems: &mut Vec<Elem>) -> Result<Option<usize>, String> {
    elems.clear();
    let Some((line, next)) = line(buf, 0) else {
        return Ok(None);
    };
    if line.is_empty() {
        return Err("empty RESP line".into());
    }
    if line[0] == b'*' {
        let n = int(&line[1..])?;
        if n < 0 {
            elems.push(Elem::Nil);
            return Ok(Some(next));
        }
        let mut pos = next;
        for _ in 0..n {
            match one(buf, pos)? {
                Some((e, p)) => {
                    elems.push(e);
                    pos = p;
                }
                None => return Ok(None),
            }
        }
        return Ok(Some(pos));
    }
    match one(buf, 0)? {
        Some((e, p)) => {
            elems.push(e);
            Ok(Some(p))
        }
        None => Ok(None),
    }
}

/// One non-array reply at `pos`.
fn one(buf: &[u8], pos: usize) -> Result<Option<(Elem, usize)>, String> {
    let Some((line, next)) = line(buf, pos) else {
        return Ok(None);
    };
    if line.is_empty() {
        return Err("empty RESP line".into());
    }
    let body = &line[1..];
    match line[0] {
        b'$' => {
            let len = int(body)?;
            if len < 0 {
                return Ok(Some((Elem::Nil, next)));
            }
            let end = next + len as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string not followed by CRLF".into());
            }
            Ok(Some((Elem::Bulk(next, end), end + 2)))
        }
        b'-' => Ok(Some((Elem::Error(pos + 1, next - 2), next))),
        b'+' => Ok(Some((Elem::Simple, next))),
        b':' => Ok(Some((Elem::Int, next))),
        b'*' => Err("nested arrays are not expected in GET/MGET replies".into()),
        other => Err(format!("unexpected RESP type byte {other:#04x}")),
    }
}

/// The line starting at `pos` (without CRLF) and the position after its CRLF.
fn line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(pos..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..i], pos + i + 2))
}

fn int(s: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(s)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("bad RESP integer {:?}", String::from_utf8_lossy(s)))
}

/// Appends a RESP command (array of bulk strings) whose arguments are `cmd` then `n` keys taken
/// from `keys` split at `ends`, each prefixed with `prefix`.
pub fn encode_command(out: &mut Vec<u8>, cmd: &[u8], prefix: &[u8], keys: &[u8], ends: &[u32]) {
    out.push(b'*');
    push_num(out, ends.len() as u64 + 1);
    out.extend_from_slice(b"\r\n$");
    push_num(out, cmd.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(cmd);
    out.extend_from_slice(b"\r\n");
    let mut start = 0usize;
    for &end in ends {
        let key = &keys[start..end as usize];
        start = end as usize;
        out.push(b'$');
        push_num(out, (prefix.len() + key.len()) as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(prefix);
        out.extend_from_slice(key);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_num(out: &mut Vec<u8>, v: u64) {
    crate::keys::write_key(out, b"", v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_get_and_mget_replies() {
        let mut e = Vec::new();
        assert_eq!(parse_reply(b"$3\r\nabc\r\n", &mut e).unwrap(), Some(9));
        assert_eq!(e, vec![Elem::Bulk(4, 7)]);
        assert_eq!(parse_reply(b"$-1\r\n", &mut e).unwrap(), Some(5));
        assert_eq!(e, vec![Elem::Nil]);
        let mget = b"*3\r\n$2\r\nhi\r\n$-1\r\n$0\r\n\r\n+extra";
        assert_eq!(parse_reply(mget, &mut e).unwrap(), Some(mget.len() - 6));
        assert_eq!(e, vec![Elem::Bulk(8, 10), Elem::Nil, Elem::Bulk(21, 21)]);
        assert_eq!(parse_reply(b"-ERR no\r\n", &mut e).unwrap(), Some(9));
        assert_eq!(e, vec![Elem::Error(1, 7)]);
        for partial in [&b"$3\r\nab"[..], b"*2\r\n$1\r\na\r\n", b"$3", b""] {
            assert_eq!(parse_reply(partial, &mut e).unwrap(), None, "{partial:?}");
        }
        assert!(parse_reply(b"?x\r\n", &mut e).is_err());
        assert!(parse_reply(b"$3\r\nabcd\r\n", &mut e).is_err());
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_command(&mut out, b"MGET", b"fp:v:v1:", b"u:1u:22", &[3, 7]);
        assert_eq!(
            out,
            b"*3\r\n$4\r\nMGET\r\n$11\r\nfp:v:v1:u:1\r\n$12\r\nfp:v:v1:u:22\r\n".to_vec()
        );
    }
}
