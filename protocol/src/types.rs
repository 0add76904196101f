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

/// The code of an ERROR frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    Malformed = 1,
    FrameTooLarge = 2,
    UnknownOp = 3,
    UnknownView = 4,
    SchemaMismatch = 5,
    BatchTooLarge = 6,
    BadRow = 7,
    Overloaded = 8,
    Unauthorized = 9,
    UnsupportedVersion = 10,
    BackendUnavailable = 11,
    Timeout = 12,
    Internal = 13,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 13] = [
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
    ];

    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| *c as u16 == v)
    }

    /// True for the errors after which the server closes the connection: the byte stream can no
    /// longer be trusted (MALFORMED, FRAME_TOO_LARGE) or the peer may not talk to it at all.
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
