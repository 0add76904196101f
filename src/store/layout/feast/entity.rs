//! A GET's entity key for a Feast view, and how it maps to Feast's join key values.
//!
//! One join key: the entity key is its value as text, `int64` and `int32` in canonical decimal
//! (`-12`, `0`, `1001`: no sign on positives, no leading zeros), `string` as its UTF-8 bytes,
//! `bytes` as the raw bytes. Several join keys: their values in the view's `join_keys` order,
//! joined by the byte 0x1F (ASCII unit separator). Canonical text keeps one entity under one
//! cache key, so that a write's notice drops exactly what it changed.

use super::codec::{read_key_value, KeyType};

/// Between the parts of a compound entity key.
pub const SEPARATOR: u8 = 0x1f;

/// The most join keys a view may have.
pub const MAX_JOIN_KEYS: usize = 8;

/// One of a Feast entity's join keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinKey {
    pub name: String,
    pub dtype: JoinKeyType,
}

/// The value types Feast allows in entity keys, as a view declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKeyType {
    Int64,
    Int32,
    String,
    Bytes,
}

impl JoinKeyType {
    /// The names a view's `join_keys` may use.
    pub const NAMES: &'static str = "int64, int32, string, bytes";

    pub fn from_name(name: &str) -> Option<JoinKeyType> {
        Some(match name {
            "int64" => JoinKeyType::Int64,
            "int32" => JoinKeyType::Int32,
            "string" => JoinKeyType::String,
            "bytes" => JoinKeyType::Bytes,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            JoinKeyType::Int64 => "int64",
            JoinKeyType::Int32 => "int32",
            JoinKeyType::String => "string",
            JoinKeyType::Bytes => "bytes",
        }
    }

    pub(super) fn key_type(self) -> KeyType {
        match self {
            JoinKeyType::Int64 => KeyType::Int64,
            JoinKeyType::Int32 => KeyType::Int32,
            JoinKeyType::String => KeyType::String,
            JoinKeyType::Bytes => KeyType::Bytes,
        }
    }
}

/// Why an entity key names no entity of a Feast view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadEntity {
    #[error("has {got} part(s) separated by 0x1F; the view has {expected} join keys")]
    WrongParts { expected: usize, got: usize },
    #[error(
        "join key {name:?} ({dtype}) is not an integer in canonical decimal (e.g. 1001, -7, 0)"
    )]
    NotInteger { name: String, dtype: &'static str },
}

/// One parsed part: an integer's little-endian bytes, or the text's own bytes.
#[derive(Clone, Copy)]
enum Part<'a> {
    Int { le: [u8; 8], width: usize },
    Raw(&'a [u8]),
}

/// An entity key's values, in the view's join key order. Kept on the stack: a lookup allocates
/// nothing for it.
pub struct Values<'a> {
    parts: [Part<'a>; MAX_JOIN_KEYS],
    types: [KeyType; MAX_JOIN_KEYS],
}

impl Values<'_> {
    /// The type and bytes of the join key at `i` (in the view's order).
    pub fn get(&self, i: usize) -> (KeyType, &[u8]) {
        let bytes = match &self.parts[i] {
            Part::Int { le, width } => &le[..*width],
            Part::Raw(b) => b,
        };
        (self.types[i], bytes)
    }
}

/// Parses a GET's entity key against the view's join keys.
pub fn parse<'a>(join_keys: &[JoinKey], entity: &'a [u8]) -> Result<Values<'a>, BadEntity> {
    let mut values = Values {
        parts: [Part::Raw(&[]); MAX_JOIN_KEYS],
        types: [KeyType::String; MAX_JOIN_KEYS],
    };
    let mut split = entity.split(|&b| b == SEPARATOR);
    let mut got = 0;
    for (i, jk) in join_keys.iter().enumerate() {
        // One join key: the whole entity, separators and all.
        let text = if join_keys.len() == 1 {
            entity
        } else {
            match split.next() {
                Some(t) => t,
                None => break,
            }
        };
        got += 1;
        values.types[i] = jk.dtype.key_type();
        values.parts[i] = match jk.dtype {
            JoinKeyType::String | JoinKeyType::Bytes => Part::Raw(text),
            JoinKeyType::Int64 | JoinKeyType::Int32 => {
                let not_integer = || BadEntity::NotInteger {
                    name: jk.name.clone(),
                    dtype: jk.dtype.name(),
                };
                let v = parse_canonical(text).ok_or_else(not_integer)?;
                if jk.dtype == JoinKeyType::Int32 {
                    let v = i32::try_from(v).map_err(|_| not_integer())?;
                    let mut le = [0u8; 8];
                    le[..4].copy_from_slice(&v.to_le_bytes());
                    Part::Int { le, width: 4 }
                } else {
                    Part::Int {
                        le: v.to_le_bytes(),
                        width: 8,
                    }
                }
            }
        };
    }
    if join_keys.len() > 1 {
        got += split.count();
    }
    if got != join_keys.len() {
        return Err(BadEntity::WrongParts {
            expected: join_keys.len(),
            got,
        });
    }
    Ok(values)
}

/// `-?(0|[1-9][0-9]*)` within i64; "-0" is not canonical.
fn parse_canonical(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    let canonical = match digits {
        [] => false,
        [b'0'] => digits.len() == text.len(),
        [first, ..] => (b'1'..=b'9').contains(first),
    };
    if !canonical || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The GET entity key for the serialized values of a Feast key (what follows the join key
/// names), when they are exactly the view's join keys in Feast's order, with the view's types.
pub fn text_of(join_keys: &[JoinKey], key_order: &[usize], mut values: &[u8]) -> Option<Vec<u8>> {
    let mut parts: Vec<Option<Vec<u8>>> = vec![None; join_keys.len()];
    for &i in key_order {
        let (ty, bytes, rest) = read_key_value(values)?;
        values = rest;
        let jk = &join_keys[i];
        if ty != jk.dtype.key_type() as u32 {
            return None;
        }
        let text = match jk.dtype {
            JoinKeyType::Int64 => i64::from_le_bytes(bytes.try_into().ok()?)
                .to_string()
                .into_bytes(),
            JoinKeyType::Int32 => i32::from_le_bytes(bytes.try_into().ok()?)
                .to_string()
                .into_bytes(),
            JoinKeyType::String | JoinKeyType::Bytes => {
                if join_keys.len() > 1 && bytes.contains(&SEPARATOR) {
                    return None; // no GET key can name it
                }
                bytes.to_vec()
            }
        };
        parts[i] = Some(text);
    }
    if !values.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for (n, part) in parts.into_iter().enumerate() {
        if n > 0 {
            out.push(SEPARATOR);
        }
        out.extend_from_slice(&part?);
    }
    Some(out)
}
