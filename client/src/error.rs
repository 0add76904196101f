//! The client's error type.

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
    #[error("{0}")]
    Tls(String),

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
