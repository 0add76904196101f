//! featureproxy wire protocol v1: the frames, their codec and nothing else.
//!
//! This crate does no I/O. It turns bytes into typed requests and responses and back, and it is
//! the single source of truth for the byte layout that `protocol/SPEC.md` describes. Decoding works
//! over [`bytes::Bytes`]: keys and rows in a decoded frame are slices of the received buffer, never
//! copies. Every length read from the wire is checked against what was received and against the
//! [`Limits`] before anything is allocated, so no input can make a decoder panic, loop or allocate
//! more than the frame it was given.

mod error;
mod frame;
mod keys;
mod reader;
mod request;
mod response;
mod types;

pub use error::ProtocolError;
pub use frame::{decode_frame, encode_frame, peek_op, Frame, FrameWriter};
pub use keys::Keys;
pub use request::{GetRequest, Hello, PutEntries, PutEntry, PutRequest, Request};
pub use response::{
    encode_get_response, get_response_len, FeatureSpec, GetResponse, HelloReply, Response,
    SchemaReply,
};
pub use types::{Dtype, EntityStatus, ErrorCode, Op, Status};

/// The protocol version this crate speaks, sent in HELLO.
pub const VERSION: u16 = 1;
/// Bytes before a frame's body: `len` (4), `op` (1), `flags` (1), reserved (2), `request_id` (4).
pub const HEADER_LEN: usize = 12;
/// The smallest legal value of a frame's `len` field: op, flags, reserved and request_id.
pub const MIN_LEN: u32 = 8;
/// The server's default `max_frame`: the largest legal `len` field.
pub const DEFAULT_MAX_FRAME: u32 = 4 * 1024 * 1024;
/// The server's default `max_batch`: the most entities in one GET or PUT.
pub const DEFAULT_MAX_BATCH: u32 = 4096;
/// The longest entity key, in bytes. Keys are 1..=MAX_KEY_LEN arbitrary bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// `get_flags` bit 0: read from Redis even when the proxy's hot cache holds the entity.
pub const GET_FLAG_BYPASS_CACHE: u16 = 0x0001;
/// `age_ms` of an entity for which no value was found.
pub const AGE_UNKNOWN: u32 = u32::MAX;

/// Limits a decoder enforces. Both sides of a connection use the server's values (a client learns
/// them from the HELLO reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest `len` a frame may carry.
    pub max_frame: u32,
    /// The most entities one GET or PUT may carry.
    pub max_batch: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

/// Rounds a frame offset up to the next multiple of 8 (GET replies align their ages and rows).
pub const fn align8(offset: usize) -> usize {
    (offset + 7) & !7
}
