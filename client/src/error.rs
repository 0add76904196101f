//! The client's error type.

use std::fmt;
use std::io;
use std::time::Duration;

use featureproxy_protocol::{ErrorCode, ProtocolError};

/// Everything a client call can fail with.
///
/// The variants separate who is at fault, because callers react differently: a [`Error::Server`]
/// is the proxy refusing a request (usually a caller bug or overload), [`Error::Timeout`],
/// [`Error::Connect`] and [`Error::ConnectionClosed`] are transport trouble worth a retry,
/// [`Error::Tls`] is a certificate or TLS setting to fix (not worth a retry), and
/// [`Error::BadRow`], [`Error::BadKey`], [`Error::BatchTooLarge`] and [`Error::FrameTooLarge`] are
/// caught on the client before anything is sent, so they never cost a round trip or a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an ERROR frame. Every protocol v1 code arrives here unchanged;
    /// `message` is the server's explanation (which view, which field, which limit).
    ///
    /// `FORBIDDEN` ([`ErrorCode::Forbidden`]) means the token is valid but its principal may not
    /// do this operation on this view (GET or SCHEMA of a view it may not read, PUT to a view it
    /// may not write). The connection stays open and the client's other calls go on; the same
    /// call fails the same way until the proxy's access file grants it, so it is not retryable.
    /// Its message says so. A code this client does not know is not reported here but as
    /// [`Error::Protocol`] with `MALFORMED` (protocol spec 6.4).
    #[error("featureproxy refused the request: {code}: {message}{}", advice(*code))]
    Server {
        /// The server's error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
    },

    /// No reply arrived within the call's timeout ([`crate::ClientOptions::timeout`]). The request
    /// may still have been carried out by the server (a PUT may have been written).
    #[error("featureproxy at {addr} did not answer within {after:?}")]
    Timeout {
        /// The server's address.
        addr: String,
        /// The timeout that expired.
        after: Duration,
    },

    /// Opening a TCP connection, or the HELLO exchange on it, failed at the I/O level (failures
    /// of TLS itself are [`Error::Tls`]).
    #[error("cannot connect to featureproxy at {addr}: {source}")]
    Connect {
        /// The address that was dialled.
        addr: String,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// TLS to the proxy failed, or its settings could not be used
    /// ([`crate::ClientOptions::tls`]). The message says what happened and what to change: a
    /// certificate file that cannot be read or holds no certificate (naming the file), the
    /// proxy's certificate not signed by the trusted CA, not valid for the name connected to, or
    /// expired, or the proxy refusing this client's certificate or asking for one. A refused
    /// client certificate, which TLS 1.3 only reports after the handshake, is caught by the HELLO
    /// exchange, so it fails [`crate::Client::connect`] rather than a later call. Not retryable:
    /// the same settings fail the same way until a certificate or setting changes.
    /// [`TlsError::kind`] tells the cases apart for programs that react to them (or word them
    /// for their own users, as the Python client's native core does).
    #[error("{0}")]
    Tls(TlsError),

    /// The connection broke while the request was in flight (the server closed it, a read or
    /// write failed, or the byte stream became undecodable). The next call on the same pooled
    /// connection reconnects by itself.
    #[error("connection to featureproxy at {addr} closed: {reason}")]
    ConnectionClosed {
        /// The server's address.
        addr: String,
        /// What happened, for the log.
        reason: String,
    },

    /// A reply frame arrived intact but its body could not be decoded, or it does not answer the
    /// request it was matched to (e.g. a GET reply with the wrong number of rows).
    #[error("undecodable reply from featureproxy: {0}")]
    Protocol(ProtocolError),

    /// A row could not be encoded: wrong number of values, a value of the wrong type, or a raw
    /// row of the wrong length. Caught before sending.
    #[error("bad row: {0}")]
    BadRow(String),

    /// An entity key is empty or longer than [`featureproxy_protocol::MAX_KEY_LEN`] bytes. Caught
    /// before sending, since such a key would make the server drop the connection.
    #[error(
        "key {index} is {len} bytes long; keys must be 1 to {} bytes",
        featureproxy_protocol::MAX_KEY_LEN
    )]
    BadKey {
        /// Position of the key in the batch.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },

    /// The batch holds more entities than the server's `max_batch` (learned from HELLO). Caught
    /// before sending; split the batch.
    #[error("batch of {n} entities exceeds the server's max_batch of {max_batch}; split it into smaller requests")]
    BatchTooLarge {
        /// Entities in the batch.
        n: usize,
        /// The server's limit.
        max_batch: u32,
    },

    /// The request, or the reply it would produce, is larger than the server's `max_frame`
    /// (learned from HELLO). Caught before sending; split the batch.
    #[error("{what} would be a frame of {len} bytes, above the server's max_frame of {max_frame}; split the batch")]
    FrameTooLarge {
        /// "request" or "reply".
        what: &'static str,
        /// The frame's `len` field.
        len: usize,
        /// The server's limit.
        max_frame: u32,
    },
}

impl Error {
    /// The protocol error code behind this error: the server's code for [`Error::Server`], and for
    /// the checks the client makes before sending, the code the server would have answered
    /// ([`Error::BadRow`] is `BAD_ROW`, [`Error::BatchTooLarge`] is `BATCH_TOO_LARGE`,
    /// [`Error::FrameTooLarge`] is `FRAME_TOO_LARGE` for a request and `BATCH_TOO_LARGE` for a
    /// GET whose reply would be too large, [`Error::BadKey`] is `MALFORMED`). `None` for transport errors and
    /// undecodable replies, which the server never reported.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::BadRow(_) => Some(ErrorCode::BadRow),
            Error::BatchTooLarge { .. } => Some(ErrorCode::BatchTooLarge),
            // The server refuses a GET whose *reply* would be too large with BATCH_TOO_LARGE.
            Error::FrameTooLarge { what: "reply", .. } => Some(ErrorCode::BatchTooLarge),
            Error::FrameTooLarge { .. } => Some(ErrorCode::FrameTooLarge),
            Error::BadKey { .. } => Some(ErrorCode::Malformed),
            Error::Timeout { .. }
            | Error::Connect { .. }
            | Error::ConnectionClosed { .. }
            | Error::Tls(_)
            | Error::Protocol(_) => None,
        }
    }

    /// True when the same request may succeed if simply tried again later: transport failures and
    /// the server's OVERLOADED, BACKEND_UNAVAILABLE and TIMEOUT. Client-side mistakes and other
    /// server refusals (FORBIDDEN among them) will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::Connect { .. } | Error::ConnectionClosed { .. } => true,
            Error::Server { code, .. } => matches!(
                code,
                ErrorCode::Overloaded | ErrorCode::BackendUnavailable | ErrorCode::Timeout
            ),
            _ => false,
        }
    }

    pub(crate) fn from_server(e: ProtocolError) -> Error {
        Error::Server {
            code: e.code,
            message: e.message,
        }
    }
}

/// What failed about TLS ([`Error::Tls`]): the case, and a message saying what happened and what
/// to change.
#[derive(Debug, Clone)]
pub struct TlsError {
    kind: TlsFailure,
    message: String,
    detail: String,
}

/// The cases of [`TlsError`]. Which one a failure is, is decided once, where rustls (or the file
/// reader) reports it, so programs need not parse messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The CA file cannot be read, or holds no usable CA certificate.
    CaFile,
    /// The client certificate or key file cannot be read, holds no certificate or key, or the
    /// key does not go with the certificate.
    ClientCert,
    /// Another setting cannot be used (such as a name to verify that is neither a DNS name nor
    /// an IP address).
    Settings,
    /// The proxy's certificate is not signed by a trusted CA.
    UntrustedServer,
    /// The proxy's certificate does not name the host connected to (or the name to verify).
    HostnameMismatch,
    /// The proxy's certificate has expired.
    Expired,
    /// The proxy's certificate is not valid yet.
    NotYetValid,
    /// The proxy's certificate failed verification for another reason.
    Verification,
    /// The proxy requires a client certificate, and none was given.
    ClientCertRequired,
    /// The proxy refused the client certificate given.
    ClientCertRefused,
    /// The server does not speak TLS on that port (the proxy's plaintext port, say).
    NotTls,
    /// No TLS version in common with the server.
    Version,
    /// The server refused the ALPN protocol offered ([`crate::ALPN_PROTOCOL`]).
    Alpn,
    /// The server closed the connection during the handshake. Reported inside
    /// [`Error::Connect`] (whose source holds this [`TlsError`]), since a server restarting
    /// mid-handshake looks the same and a retry may succeed.
    Closed,
    /// Anything else TLS reported (an unexpected alert, a broken record).
    Other,
}

impl TlsError {
    /// A failure of `kind` explained by `message`; `detail` is what the TLS library (or the file
    /// reader) reported, in its own words, for messages of one's own.
    pub fn new(kind: TlsFailure, message: impl Into<String>, detail: impl Into<String>) -> Self {
        TlsError {
            kind,
            message: message.into(),
            detail: detail.into(),
        }
    }

    /// Which case this is.
    pub fn kind(&self) -> TlsFailure {
        self.kind
    }

    /// What happened and what to change (the error's `Display`).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What the TLS library or the file reader said, e.g. `received fatal alert:
    /// CertificateRequired` or `No such file or directory (os error 2)`.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TlsError {}

/// What the caller should do about a server error, where the code alone does not make it plain.
fn advice(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Forbidden => {
            " (the token is valid, but its principal may not do this on this view; ask for a \
             grant in the proxy's access file: `read` for GET and SCHEMA, `write` for PUT)"
        }
        _ => "",
    }
}

impl From<ProtocolError> for Error {
    /// A [`ProtocolError`] that the *client* hit while decoding a reply.
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}
