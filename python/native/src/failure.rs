//! The one mapping from what the Rust client fails with ([`featureproxy_client::Error`], and the
//! ends of a blocking call the core adds) to the Python client's exceptions: which class
//! ([`Kind`], one per class of `featureproxy.errors`) and the message, worded as the pure-Python
//! client words it (`featureproxy HOST:PORT: ...`). The bindings only turn a [`Failure`] into the
//! Python object.

use std::io;
use std::time::Duration;

use featureproxy_client::Error;

/// Appended to a plaintext client's HELLO failures (as `featureproxy._tls.PLAINTEXT_HINT`): a TLS
/// port answers plaintext that way.
pub const PLAINTEXT_HINT: &str = " (if this is the proxy's TLS port, pass tls=True or ca_file=)";

/// The exception class, by its name in `featureproxy.errors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `server_error(code, message, address)`: the `ServerError` subclass of the code, whose own
    /// message adds the address, the code's name and any advice.
    Server {
        code: u16,
        message: String,
    },
    /// `ProtocolError(code, message)`.
    Protocol {
        code: u16,
    },
    ConnectFailed,
    ConnectionLost,
    RequestTimeout,
    InvalidRequest,
    ClientClosed,
    /// `TLSError(message, "other")` (the native core speaks plaintext only; kept for
    /// completeness of the mapping).
    Tls,
}

impl Kind {
    /// The class's name in `featureproxy.errors` (for tests and messages).
    pub fn class_name(&self) -> &'static str {
        match self {
            Kind::Server { .. } => "ServerError",
            Kind::Protocol { .. } => "ProtocolError",
            Kind::ConnectFailed => "ConnectFailed",
            Kind::ConnectionLost => "ConnectionLost",
            Kind::RequestTimeout => "RequestTimeout",
            Kind::InvalidRequest => "InvalidRequest",
            Kind::ClientClosed => "ClientClosed",
            Kind::Tls => "TLSError",
        }
    }
}

/// An exception to raise: its class and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: Kind,
    /// The exception's message (for `Server`, the server's message: the class adds the rest).
    pub message: String,
}

/// What a call was, for messages.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// `host:port`, as the Python client names the proxy.
    pub addr: &'a str,
    /// The call as the Python client names it: `GET 'view' (3 keys)`, `PUT 'view' (1 row)`,
    /// `PING`, `SCHEMA 'view'`.
    pub what: &'a str,
    /// The op and view for limit messages (`GET 'view'`), and the count and unit (`keys`, `rows`).
    pub op_view: &'a str,
    pub n: usize,
    pub unit: &'a str,
    /// How long the call would wait for its reply.
    pub wait: Duration,
    /// True while connecting (the constructor, or the first call after a fork): failures of the
    /// HELLO exchange are then `ConnectFailed`.
    pub connecting: bool,
}

fn fail(kind: Kind, message: String) -> Failure {
    Failure { kind, message }
}

/// Seconds as Python's `f"{x:g}"` writes them: six significant digits, no trailing zeros.
pub fn fmt_g(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-4..6).contains(&magnitude) {
        let s = format!("{x:.5e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mant = mant.trim_end_matches('0').trim_end_matches('.');
        let exp: i32 = exp.parse().unwrap_or(0);
        return format!("{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let decimals = (5 - magnitude).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// An OS error as Python's `OSError.strerror` gives it: without Rust's ` (os error N)`.
pub fn strerror(e: &io::Error) -> String {
    let s = e.to_string();
    match s.rfind(" (os error ") {
        Some(i) if s.ends_with(')') => s[..i].to_string(),
        _ => s,
    }
}

/// No reply within the wait.
pub fn timed_out(cx: &Context) -> Failure {
    if cx.connecting {
        return fail(
            Kind::ConnectFailed,
            format!(
                "featureproxy {}: no answer to HELLO within {}s",
                cx.addr,
                fmt_g(cx.wait.as_secs_f64())
            ),
        );
    }
    fail(
        Kind::RequestTimeout,
        format!(
            "featureproxy {}: no reply to {} within {}s (abandoned, a late reply will be dropped)",
            cx.addr,
            cx.what,
            fmt_g(cx.wait.as_secs_f64())
        ),
    )
}

/// The client was closed while the call waited (`waiting`), or before it began.
pub fn closed(cx: &Context, waiting: bool) -> Failure {
    let message = if waiting {
        format!(
            "featureproxy {}: client closed while waiting for {}",
            cx.addr, cx.what
        )
    } else {
        format!("featureproxy {}: client closed", cx.addr)
    };
    fail(Kind::ClientClosed, message)
}

/// What the Rust client failed with, as the Python client would have said it.
pub fn failure(e: &Error, cx: &Context) -> Failure {
    let addr = cx.addr;
    match e {
        Error::Server { code, message } => fail(
            Kind::Server {
                code: *code as u16,
                message: message.clone(),
            },
            message.clone(),
        ),
        Error::Timeout { .. } => timed_out(cx),
        Error::Connect { source, .. } => fail(
            Kind::ConnectFailed,
            format!("featureproxy {addr}: cannot connect: {}", strerror(source)),
        ),
        Error::Tls(m) => fail(Kind::Tls, format!("featureproxy {addr}: {m}")),
        Error::ConnectionClosed { reason, .. } => {
            if reason.contains("before answering HELLO") {
                fail(
                    Kind::ConnectFailed,
                    format!(
                        "featureproxy {addr}: connection closed by the server during HELLO{PLAINTEXT_HINT}"
                    ),
                )
            } else if cx.connecting {
                fail(
                    Kind::ConnectFailed,
                    format!("featureproxy {addr}: HELLO failed: {reason}{PLAINTEXT_HINT}"),
                )
            } else {
                fail(
                    Kind::ConnectionLost,
                    format!("featureproxy {addr}: {reason} while waiting for {}", cx.what),
                )
            }
        }
        Error::Protocol(p) => {
            if cx.connecting {
                fail(
                    Kind::ConnectFailed,
                    format!(
                        "featureproxy {addr}: HELLO reply is not protocol v1: {}{PLAINTEXT_HINT}",
                        p.message
                    ),
                )
            } else {
                fail(
                    Kind::Protocol { code: p.code as u16 },
                    format!(
                        "featureproxy {addr}: reply to {} is not protocol v1: {}",
                        cx.what, p.message
                    ),
                )
            }
        }
        Error::BadRow(m) => fail(Kind::InvalidRequest, m.clone()),
        Error::BadKey { index, len } => fail(
            Kind::InvalidRequest,
            format!(
                "key {index} is {len} bytes; keys must be 1..{} bytes",
                featureproxy_protocol::MAX_KEY_LEN
            ),
        ),
        Error::BatchTooLarge { n, max_batch } => fail(
            Kind::InvalidRequest,
            format!(
                "{} of {n} {} exceeds the server's max_batch of {max_batch}",
                cx.op_view, cx.unit
            ),
        ),
        Error::FrameTooLarge {
            what: "reply",
            len,
            max_frame,
        } => fail(
            Kind::InvalidRequest,
            format!(
                "{} of {} {} would need a {}-byte reply, over the server's max_frame of {max_frame}: split the keys",
                cx.op_view,
                cx.n,
                cx.unit,
                len + 4
            ),
        ),
        Error::FrameTooLarge { len, max_frame, .. } => fail(
            Kind::InvalidRequest,
            format!(
                "{} of {} {} is a {len}-byte frame, over the server's max_frame of {max_frame}",
                cx.op_view, cx.n, cx.unit
            ),
        ),
        // `Error` is non-exhaustive: a variant added later still says what it is.
        other => fail(
            Kind::ConnectionLost,
            format!("featureproxy {addr}: {other} while waiting for {}", cx.what),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use featureproxy_client::{ErrorCode, ProtocolError};

    fn cx(connecting: bool) -> Context<'static> {
        Context {
            addr: "127.0.0.1:7070",
            what: "GET 'user_features' (2 keys)",
            op_view: "GET 'user_features'",
            n: 2,
            unit: "keys",
            wait: Duration::from_millis(300),
            connecting,
        }
    }

    #[test]
    fn seconds_as_python_writes_them() {
        for (x, s) in [
            (2.0, "2"),
            (0.3, "0.3"),
            (0.1 + 0.2, "0.3"),
            (0.5, "0.5"),
            (10.0, "10"),
            (1.25, "1.25"),
            (123456.0, "123456"),
            (1234567.0, "1.23457e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.0, "0"),
        ] {
            assert_eq!(fmt_g(x), s, "{x}");
        }
    }

    #[test]
    fn os_errors_lose_rusts_suffix() {
        let e = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(strerror(&e), "Connection refused");
        let e = io::Error::other("plain");
        assert_eq!(strerror(&e), "plain");
    }

    #[test]
    fn every_error_maps_to_a_python_class_and_message() {
        let c = cx(false);
        let cases: Vec<(Error, &str, &str)> = vec![
            (
                Error::Server {
                    code: ErrorCode::Forbidden,
                    message: "GET of view v: not allowed".into(),
                },
                "ServerError",
                "GET of view v: not allowed",
            ),
            (
                Error::Timeout {
                    addr: "x".into(),
                    after: Duration::from_secs(1),
                },
                "RequestTimeout",
                "featureproxy 127.0.0.1:7070: no reply to GET 'user_features' (2 keys) within 0.3s (abandoned, a late reply will be dropped)",
            ),
            (
                Error::Connect {
                    addr: "x".into(),
                    source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
                },
                "ConnectFailed",
                "featureproxy 127.0.0.1:7070: cannot connect: Connection refused",
            ),
            (
                Error::ConnectionClosed {
                    addr: "x".into(),
                    reason: "the server closed the connection".into(),
                },
                "ConnectionLost",
                "featureproxy 127.0.0.1:7070: the server closed the connection while waiting for GET 'user_features' (2 keys)",
            ),
            (
                Error::ConnectionClosed {
                    addr: "x".into(),
                    reason: "the server closed the connection before answering HELLO".into(),
                },
                "ConnectFailed",
                "featureproxy 127.0.0.1:7070: connection closed by the server during HELLO (if this is the proxy's TLS port, pass tls=True or ca_file=)",
            ),
            (
                Error::Protocol(ProtocolError::malformed("GET reply is short")),
                "ProtocolError",
                "featureproxy 127.0.0.1:7070: reply to GET 'user_features' (2 keys) is not protocol v1: GET reply is short",
            ),
            (
                Error::BatchTooLarge { n: 2, max_batch: 1 },
                "InvalidRequest",
                "GET 'user_features' of 2 keys exceeds the server's max_batch of 1",
            ),
            (
                Error::FrameTooLarge {
                    what: "request",
                    len: 100,
                    max_frame: 64,
                },
                "InvalidRequest",
                "GET 'user_features' of 2 keys is a 100-byte frame, over the server's max_frame of 64",
            ),
            (
                Error::FrameTooLarge {
                    what: "reply",
                    len: 100,
                    max_frame: 64,
                },
                "InvalidRequest",
                "GET 'user_features' of 2 keys would need a 104-byte reply, over the server's max_frame of 64: split the keys",
            ),
            (
                Error::BadRow("row 0: wrong".into()),
                "InvalidRequest",
                "row 0: wrong",
            ),
            (
                Error::BadKey { index: 3, len: 0 },
                "InvalidRequest",
                "key 3 is 0 bytes; keys must be 1..1024 bytes",
            ),
            (
                Error::Tls("TLS failed".into()),
                "TLSError",
                "featureproxy 127.0.0.1:7070: TLS failed",
            ),
        ];
        for (e, class, message) in cases {
            let f = failure(&e, &c);
            assert_eq!((f.kind.class_name(), f.message.as_str()), (class, message));
        }
        let f = failure(
            &Error::Server {
                code: ErrorCode::Unauthorized,
                message: "bad token".into(),
            },
            &c,
        );
        assert_eq!(
            f.kind,
            Kind::Server {
                code: 9,
                message: "bad token".into()
            }
        );
        let f = failure(
            &Error::Protocol(ProtocolError::new(ErrorCode::SchemaMismatch, "m")),
            &c,
        );
        assert_eq!(f.kind, Kind::Protocol { code: 5 });
    }

    #[test]
    fn while_connecting_hello_failures_are_connect_failed() {
        let c = cx(true);
        let f = failure(&Error::Protocol(ProtocolError::malformed("short")), &c);
        assert_eq!(f.kind, Kind::ConnectFailed);
        assert!(
            f.message
                .starts_with("featureproxy 127.0.0.1:7070: HELLO reply is not protocol v1: short"),
            "{}",
            f.message
        );
        assert_eq!(
            timed_out(&c).message,
            "featureproxy 127.0.0.1:7070: no answer to HELLO within 0.3s"
        );
        assert_eq!(timed_out(&c).kind, Kind::ConnectFailed);
        let f = failure(
            &Error::ConnectionClosed {
                addr: "x".into(),
                reason: "read failed: Connection reset by peer".into(),
            },
            &c,
        );
        assert_eq!(f.kind, Kind::ConnectFailed);
    }

    #[test]
    fn closed_clients() {
        let c = cx(false);
        assert_eq!(
            closed(&c, true).message,
            "featureproxy 127.0.0.1:7070: client closed while waiting for GET 'user_features' (2 keys)"
        );
        assert_eq!(
            closed(&c, false).message,
            "featureproxy 127.0.0.1:7070: client closed"
        );
        assert_eq!(closed(&c, false).kind, Kind::ClientClosed);
    }
}
