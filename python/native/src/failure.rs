//! The one mapping from what the Rust client fails with ([`featureproxy_client::Error`], and the
//! ends of a blocking call the core adds) to the Python client's exceptions: which class
//! ([`Kind`], one per class of `featureproxy.errors`) and the message, worded as the pure-Python
//! client words it (`featureproxy HOST:PORT: ...`). The bindings only turn a [`Failure`] into the
//! Python object.

use std::io;
use std::time::Duration;

use featureproxy_client::{Error, TlsError, TlsFailure, ALPN_PROTOCOL};

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
    /// `TLSError(message, reason)`, `reason` one of the tags `featureproxy._tls` gives
    /// (`untrusted_server`, `client_cert_required`, ...).
    Tls {
        reason: &'static str,
    },
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
            Kind::Tls { .. } => "TLSError",
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
    /// The TLS arguments, as messages quote them; `None` for a plaintext client.
    pub tls: Option<&'a TlsShown>,
}

/// A TLS client's arguments as `featureproxy._tls` quotes them in messages: Python's `repr()` of
/// each (made by the bindings, so a path with quotes or escapes reads exactly as in Python).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsShown {
    /// `ca_file`, or `None` when the system's trusted roots are used.
    pub ca_file: Option<String>,
    /// `client_cert`, when one is presented.
    pub client_cert: Option<String>,
    /// `client_key` (`None` when the key is in the certificate's file).
    pub client_key: String,
    /// The name the proxy's certificate is verified against (`server_hostname`, else the host).
    pub server_hostname: String,
}

impl TlsShown {
    /// Appended to a HELLO that failed by a close or a reset right after the handshake (as
    /// `TLSConfig.closed_hint`): what a refused client certificate looks like when its alert was
    /// lost to a reset.
    pub fn closed_hint(&self) -> String {
        match &self.client_cert {
            None => " (right after the TLS handshake: a proxy with client_ca_file does this to a \
                      client without a certificate; then pass client_cert= and client_key=)"
                .to_string(),
            Some(cert) => format!(
                " (right after the TLS handshake: a proxy with client_ca_file does this when it \
                 refuses client_cert={cert})"
            ),
        }
    }
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

/// The hint a HELLO failure ends with: how a TLS port answers plaintext, or, over TLS, how a
/// refused client certificate looks.
fn hello_hint(cx: &Context) -> String {
    match cx.tls {
        None => PLAINTEXT_HINT.to_string(),
        Some(t) => t.closed_hint(),
    }
}

/// A TLS failure the Rust client reported, as `featureproxy._tls.tls_error` says it: the same
/// reason tag and message for the same case, with what rustls reported where the Python core
/// quotes OpenSSL.
pub fn tls_failure(e: &TlsError, cx: &Context) -> Failure {
    let addr = cx.addr;
    let shown = cx.tls.cloned().unwrap_or_default();
    let detail = e.detail();
    let at = format!("featureproxy {addr}: TLS");
    let tls = |reason, message| fail(Kind::Tls { reason }, message);
    match e.kind() {
        TlsFailure::CaFile => tls(
            "ca_file",
            format!(
                "featureproxy {addr}: cannot load ca_file={} ({detail}): it must be a PEM file of \
                 the CA certificates that may sign the proxy's certificate",
                shown.ca_file.as_deref().unwrap_or("None")
            ),
        ),
        TlsFailure::ClientCert => tls(
            "client_cert",
            format!(
                "featureproxy {addr}: cannot load client_cert={}, client_key={} ({detail}): they \
                 must be PEM files of a certificate and its private key",
                shown.client_cert.as_deref().unwrap_or("None"),
                shown.client_key
            ),
        ),
        TlsFailure::Expired => tls(
            "expired",
            format!(
                "{at}: the server's certificate expired ({detail}): the proxy's cert_file must be \
                 renewed (or this machine's clock is wrong)"
            ),
        ),
        TlsFailure::NotYetValid => tls(
            "not_yet_valid",
            format!(
                "{at}: the server's certificate is not valid yet ({detail}): check the clocks of \
                 this machine and the proxy's"
            ),
        ),
        TlsFailure::HostnameMismatch => tls(
            "hostname_mismatch",
            format!(
                "{at}: hostname mismatch: verified against {}, which the server's certificate \
                 does not name ({detail}): connect by a name the certificate names, or pass \
                 server_hostname= one it names",
                shown.server_hostname
            ),
        ),
        TlsFailure::UntrustedServer => {
            let trusted = match &shown.ca_file {
                None => "a CA in the system's trusted roots (ca_file=None)".to_string(),
                Some(ca) => format!("a CA in ca_file={ca}"),
            };
            tls(
                "untrusted_server",
                format!(
                    "{at}: the server's certificate is not signed by {trusted} ({detail}): pass \
                     the CA that signed the proxy's certificate as ca_file="
                ),
            )
        }
        TlsFailure::Verification => tls(
            "verification",
            format!("{at}: the server's certificate failed verification: {detail}"),
        ),
        TlsFailure::ClientCertRequired => tls(
            "client_cert_required",
            format!(
                "{at}: the server requires a client certificate signed by its CA: pass \
                 client_cert= and client_key= ({detail})"
            ),
        ),
        TlsFailure::ClientCertRefused => {
            let what = match &shown.client_cert {
                Some(cert) => format!("client_cert={cert}"),
                None => "the client certificate".to_string(),
            };
            tls(
                "client_cert_refused",
                format!(
                    "{at}: the server refused {what} ({detail}): it must be signed by a CA in the \
                     proxy's client_ca_file, valid now, and usable for client authentication"
                ),
            )
        }
        TlsFailure::NotTls => tls(
            "not_tls",
            format!(
                "{at}: the server does not speak TLS ({detail}): is {addr} the proxy's TLS port \
                 ([server.tls] listen) rather than its plaintext listen?"
            ),
        ),
        TlsFailure::Version => tls(
            "version",
            format!(
                "{at}: no TLS version in common with the server ({detail}); this client requires \
                 TLS 1.2 or newer"
            ),
        ),
        TlsFailure::Alpn => tls(
            "alpn",
            format!(
                "{at}: the server refused the application protocol '{}' offered by ALPN \
                 ({detail})",
                String::from_utf8_lossy(ALPN_PROTOCOL)
            ),
        ),
        TlsFailure::Closed => tls(
            "closed",
            format!(
                "{at}: the server closed the connection during the TLS handshake ({detail}): if \
                 it requires a client certificate, pass client_cert= and client_key="
            ),
        ),
        // Settings and Other, and any case added later.
        _ => tls("other", format!("{at}: handshake failed ({detail})")),
    }
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
        Error::Connect { source, .. } => {
            // A server closing during the TLS handshake: a retryable Connect error for the Rust
            // client, the TLSError "closed" for Python's.
            match source.get_ref().and_then(|i| i.downcast_ref::<TlsError>()) {
                Some(tls) => tls_failure(tls, cx),
                None => fail(
                    Kind::ConnectFailed,
                    format!("featureproxy {addr}: cannot connect: {}", strerror(source)),
                ),
            }
        }
        Error::Tls(tls) => tls_failure(tls, cx),
        Error::ConnectionClosed { reason, .. } => {
            if reason.contains("before answering HELLO") {
                fail(
                    Kind::ConnectFailed,
                    format!(
                        "featureproxy {addr}: connection closed by the server during HELLO{}",
                        hello_hint(cx)
                    ),
                )
            } else if cx.connecting {
                fail(
                    Kind::ConnectFailed,
                    format!("featureproxy {addr}: HELLO failed: {reason}{}", hello_hint(cx)),
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
                        "featureproxy {addr}: HELLO reply is not protocol v1: {}{}",
                        p.message,
                        if cx.tls.is_none() { PLAINTEXT_HINT } else { "" }
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
            tls: None,
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
                Error::Tls(TlsError::new(
                    TlsFailure::Other,
                    "TLS failed",
                    "received fatal alert: InternalError",
                )),
                "TLSError",
                "featureproxy 127.0.0.1:7070: TLS: handshake failed (received fatal alert: InternalError)",
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

    /// Every TLS case carries the Python core's reason tag and message (`featureproxy._tls`), with
    /// rustls' words where OpenSSL's would be.
    #[test]
    fn tls_failures_say_what_the_python_core_says() {
        let shown = TlsShown {
            ca_file: Some("'/etc/fp/ca.crt'".into()),
            client_cert: Some("'/etc/fp/client.crt'".into()),
            client_key: "None".into(),
            server_hostname: "'proxy.example'".into(),
        };
        let mut c = cx(true);
        c.tls = Some(&shown);
        let at = "featureproxy 127.0.0.1:7070: TLS";
        let cases = [
            (
                TlsFailure::UntrustedServer,
                "untrusted_server",
                format!("{at}: the server's certificate is not signed by a CA in ca_file='/etc/fp/ca.crt' (D): pass the CA that signed the proxy's certificate as ca_file="),
            ),
            (
                TlsFailure::HostnameMismatch,
                "hostname_mismatch",
                format!("{at}: hostname mismatch: verified against 'proxy.example', which the server's certificate does not name (D): connect by a name the certificate names, or pass server_hostname= one it names"),
            ),
            (
                TlsFailure::Expired,
                "expired",
                format!("{at}: the server's certificate expired (D): the proxy's cert_file must be renewed (or this machine's clock is wrong)"),
            ),
            (
                TlsFailure::NotYetValid,
                "not_yet_valid",
                format!("{at}: the server's certificate is not valid yet (D): check the clocks of this machine and the proxy's"),
            ),
            (
                TlsFailure::Verification,
                "verification",
                format!("{at}: the server's certificate failed verification: D"),
            ),
            (
                TlsFailure::ClientCertRequired,
                "client_cert_required",
                format!("{at}: the server requires a client certificate signed by its CA: pass client_cert= and client_key= (D)"),
            ),
            (
                TlsFailure::ClientCertRefused,
                "client_cert_refused",
                format!("{at}: the server refused client_cert='/etc/fp/client.crt' (D): it must be signed by a CA in the proxy's client_ca_file, valid now, and usable for client authentication"),
            ),
            (
                TlsFailure::NotTls,
                "not_tls",
                format!("{at}: the server does not speak TLS (D): is 127.0.0.1:7070 the proxy's TLS port ([server.tls] listen) rather than its plaintext listen?"),
            ),
            (
                TlsFailure::Version,
                "version",
                format!("{at}: no TLS version in common with the server (D); this client requires TLS 1.2 or newer"),
            ),
            (
                TlsFailure::Alpn,
                "alpn",
                format!("{at}: the server refused the application protocol 'featureproxy/1' offered by ALPN (D)"),
            ),
            (
                TlsFailure::Closed,
                "closed",
                format!("{at}: the server closed the connection during the TLS handshake (D): if it requires a client certificate, pass client_cert= and client_key="),
            ),
            (
                TlsFailure::Other,
                "other",
                format!("{at}: handshake failed (D)"),
            ),
            (
                TlsFailure::CaFile,
                "ca_file",
                "featureproxy 127.0.0.1:7070: cannot load ca_file='/etc/fp/ca.crt' (D): it must be a PEM file of the CA certificates that may sign the proxy's certificate".to_string(),
            ),
            (
                TlsFailure::ClientCert,
                "client_cert",
                "featureproxy 127.0.0.1:7070: cannot load client_cert='/etc/fp/client.crt', client_key=None (D): they must be PEM files of a certificate and its private key".to_string(),
            ),
        ];
        for (kind, reason, message) in cases {
            let f = failure(&Error::Tls(TlsError::new(kind, "m", "D")), &c);
            assert_eq!(f, fail(Kind::Tls { reason }, message), "{kind:?}");
        }

        // The system's roots, and no client certificate.
        let plain = TlsShown {
            server_hostname: "'127.0.0.1'".into(),
            client_key: "None".into(),
            ..Default::default()
        };
        c.tls = Some(&plain);
        let f = tls_failure(&TlsError::new(TlsFailure::UntrustedServer, "m", "D"), &c);
        assert!(
            f.message
                .contains("not signed by a CA in the system's trusted roots (ca_file=None) (D)"),
            "{}",
            f.message
        );
        let f = tls_failure(&TlsError::new(TlsFailure::ClientCertRefused, "m", "D"), &c);
        assert!(
            f.message.contains("refused the client certificate (D)"),
            "{}",
            f.message
        );

        // A close during the handshake: a Connect error holding the case.
        let closed = Error::Connect {
            addr: "x".into(),
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                TlsError::new(TlsFailure::Closed, "m", "tls handshake eof"),
            ),
        };
        assert_eq!(failure(&closed, &c).kind, Kind::Tls { reason: "closed" });

        // HELLO failing right after the handshake: the hint is about client certificates.
        let f = failure(
            &Error::ConnectionClosed {
                addr: "x".into(),
                reason: "the server closed the connection before answering HELLO".into(),
            },
            &c,
        );
        assert_eq!(f.kind, Kind::ConnectFailed);
        assert_eq!(
            f.message,
            "featureproxy 127.0.0.1:7070: connection closed by the server during HELLO (right \
             after the TLS handshake: a proxy with client_ca_file does this to a client without \
             a certificate; then pass client_cert= and client_key=)"
        );
        c.tls = Some(&shown);
        let f = failure(
            &Error::ConnectionClosed {
                addr: "x".into(),
                reason: "read failed: Connection reset by peer".into(),
            },
            &c,
        );
        assert!(
            f.message
                .ends_with("when it refuses client_cert='/etc/fp/client.crt')"),
            "{}",
            f.message
        );
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
