use std::fmt;

/// An operation code: the byte at offset 4 of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    Hello = 0x01,
    Ping = 0x02,
    Schema = 0x03,
    Get = 0x10,
    Put = 0x11,
}

impl Op {
    /// The op of a request, or `None` for a byte no v1 request uses.
    pub fn from_u8(b: u8) -> Option<Op> {
        Some(match b {
            0x01 => Op::Hello,
            0x02 => Op::Ping,
            0x03 => Op::Schema,
            0x10 => Op::Get,
            0x11 => Op::Put,
            _ => return None,
        })
    }

    /// The op byte of this request's successful response.
    pub fn response(self) -> u8 {
        self as u8 | RESPONSE_BIT
    }

    pub fn name(self) -> &'static str {
        match self {
            Op::Hello => "HELLO",
            Op::Ping => "PING",
            Op::Schema => "SCHEMA",
            Op::Get => "GET",
            Op::Put => "PUT",
        }
    }
}

/// Set in the op byte of every successful response.
pub const RESPONSE_BIT: u8 = 0x80;
/// The op byte of an ERROR response.
pub const OP_ERROR: u8 = 0xFF;

/// Why an entity in a GET reply carries the values it does (low 7 bits of its status byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// The stored value, no older than the view's `stale_after`.
    Fresh = 0,
    /// The stored value, older than `stale_after` but within `max_staleness`.
    Stale = 1,
    /// The view's defaults: nothing is stored for this entity.
    Missing = 2,
    /// The view's defaults: the stored value is older than `max_staleness`.
    Expired = 3,
    /// The view's defaults: Redis is failing, the breaker is open or the deadline passed.
    Degraded = 4,
    /// The view's defaults: the stored value is unreadable or of the wrong length.
    Invalid = 5,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Fresh,
        Status::Stale,
        Status::Missing,
        Status::Expired,
        Status::Degraded,
        Status::Invalid,
    ];

    pub fn from_u8(b: u8) -> Option<Status> {
        Status::ALL.get(b as usize).copied()
    }

    /// True when the entity was served the view's defaults rather than a stored value.
    pub fn is_default(self) -> bool {
        !matches!(self, Status::Fresh | Status::Stale)
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Fresh => "fresh",
            Status::Stale => "stale",
            Status::Missing => "missing",
            Status::Expired => "expired",
            Status::Degraded => "degraded",
            Status::Invalid => "invalid",
        }
    }
}

/// A status byte as it travels: a [`Status`] plus the bit saying the row came from the hot cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntityStatus {
    pub status: Status,
    pub cached: bool,
}

impl EntityStatus {
    /// Bit 0x80 of a status byte: the row was served from the proxy's hot cache.
    pub const CACHED_BIT: u8 = 0x80;

    pub fn new(status: Status, cached: bool) -> Self {
        EntityStatus { status, cached }
    }

    pub fn to_byte(self) -> u8 {
        self.status as u8 | if self.cached { Self::CACHED_BIT } else { 0 }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        Some(EntityStatus {
            status: Status::from_u8(b & !Self::CACHED_BIT)?,
            cached: b & Self::CACHED_BIT != 0,
        })
    }
}

impl From<Status> for EntityStatus {
    fn from(status: Status) -> Self {
        EntityStatus::new(status, false)
    }
}

/// The type of one feature, and so its width in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Dtype {
    F32 = 1,
    F64 = 2,
    I32 = 3,
    I64 = 4,
    /// One byte, 0 or 1.
    Bool = 5,
}

impl Dtype {
    pub fn from_u8(b: u8) -> Option<Dtype> {
        Some(match b {
            1 => Dtype::F32,
            2 => Dtype::F64,
            3 => Dtype::I32,
            4 => Dtype::I64,
            5 => Dtype::Bool,
            _ => return None,
        })
    }

    /// Bytes this dtype takes in a row.
    pub fn width(self) -> usize {
        match self {
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::Bool => 1,
        }
    }

    /// The name used in registry files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F64 => "f64",
            Dtype::I32 => "i32",
            Dtype::I64 => "i64",
            Dtype::Bool => "bool",
        }
    }

    pub fn from_name(s: &str) -> Option<Dtype> {
        Some(match s {
            "f32" => Dtype::F32,
            "f64" => Dtype::F64,
            "i32" => Dtype::I32,
            "i64" => Dtype::I64,
            "bool" => Dtype::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The code of an ERROR frame (SPEC.md section 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame or its body does not parse. The server closes the connection.
    Malformed = 1,
    /// `len` is over the server's `max_frame`. The server closes the connection.
    FrameTooLarge = 2,
    /// Not a v1 request op; the body is skipped.
    UnknownOp = 3,
    /// No view with that name or id.
    UnknownView = 4,
    /// The request's `schema_id` is not the view's current one: fetch SCHEMA again.
    SchemaMismatch = 5,
    /// More entities than `max_batch`, or a GET reply that would exceed `max_frame`.
    BatchTooLarge = 6,
    /// A PUT's entries do not split into rows of the view's `row_bytes`; nothing was written.
    BadRow = 7,
    /// The server sheds load; retry later.
    Overloaded = 8,
    /// Missing or unknown credentials: the peer is not authenticated. The server closes the
    /// connection.
    Unauthorized = 9,
    /// HELLO with a protocol version other than 1. The server closes the connection.
    UnsupportedVersion = 10,
    /// Redis is failing or the breaker is open (PUT).
    BackendUnavailable = 11,
    /// Redis did not acknowledge a PUT in time.
    Timeout = 12,
    /// A server bug.
    Internal = 13,
    /// The credentials are valid, but their principal may not do this operation on this view: a
    /// GET or SCHEMA of a view it may not read, or a PUT to a view it may not write. Unlike
    /// [`ErrorCode::Unauthorized`], the connection stays open and its other requests are served.
    /// The message names the op and the view, never the principal's grants.
    Forbidden = 14,
}

impl ErrorCode {
    /// Every code, in numeric order (code `i + 1` at index `i`).
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Malformed,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownOp,
        ErrorCode::UnknownView,
        ErrorCode::SchemaMismatch,
        ErrorCode::BatchTooLarge,
        ErrorCode::BadRow,
        ErrorCode::Overloaded,
        ErrorCode::Unauthorized,
        ErrorCode::UnsupportedVersion,
        ErrorCode::BackendUnavailable,
        ErrorCode::Timeout,
        ErrorCode::Internal,
        ErrorCode::Forbidden,
    ];

    /// The code whose value is `v`, or `None` for a value protocol v1 does not define
    /// ([`crate::Response::decode`] answers an ERROR frame carrying one with MALFORMED).
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| *c as u16 == v)
    }

    /// True for the errors after which the server closes the connection: the byte stream can no
    /// longer be trusted (MALFORMED, FRAME_TOO_LARGE) or the peer may not talk to it at all.
    /// FORBIDDEN is not one of them: the peer is authenticated and may go on with what it may do.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::Malformed
                | ErrorCode::FrameTooLarge
                | ErrorCode::Unauthorized
                | ErrorCode::UnsupportedVersion
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "MALFORMED",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::UnknownOp => "UNKNOWN_OP",
            ErrorCode::UnknownView => "UNKNOWN_VIEW",
            ErrorCode::SchemaMismatch => "SCHEMA_MISMATCH",
            ErrorCode::BatchTooLarge => "BATCH_TOO_LARGE",
            ErrorCode::BadRow => "BAD_ROW",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::BackendUnavailable => "BACKEND_UNAVAILABLE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Forbidden => "FORBIDDEN",
        }
    }

    pub fn from_name(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.name() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_numbered_in_order_and_round_trip() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as u16 as usize, i + 1, "{code}");
            assert_eq!(ErrorCode::from_u16(*code as u16), Some(*code));
            assert_eq!(ErrorCode::from_name(code.name()), Some(*code));
        }
        for unknown in [0, 15, 255, u16::MAX] {
            assert_eq!(ErrorCode::from_u16(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn forbidden_is_code_14_and_keeps_the_connection() {
        assert_eq!(ErrorCode::from_u16(14), Some(ErrorCode::Forbidden));
        assert_eq!(ErrorCode::Forbidden.to_string(), "FORBIDDEN");
        assert!(!ErrorCode::Forbidden.closes_connection());
        assert!(ErrorCode::Unauthorized.closes_connection());
        let closing: Vec<_> = ErrorCode::ALL
            .iter()
            .filter(|c| c.closes_connection())
            .map(|c| c.name())
            .collect();
        assert_eq!(
            closing,
            [
                "MALFORMED",
                "FRAME_TOO_LARGE",
                "UNAUTHORIZED",
                "UNSUPPORTED_VERSION"
            ]
        );
    }
}
