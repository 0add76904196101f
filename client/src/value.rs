//! One feature value, typed.

use std::fmt;

use featureproxy_protocol::Dtype;

/// One feature value in its dtype.
///
/// Rows travel as packed little-endian bytes; `Value` is what they decode to and what
/// [`crate::Schema::encode_row`] accepts. Each variant matches one [`Dtype`], and encoding checks
/// that match exactly (no silent widening or narrowing), so a caller that sends an `f64` to an
/// `f32` feature hears about it instead of losing precision. Build values with `From`:
/// `Value::from(0.5f32)`, `1i64.into()`, `true.into()`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A 32-bit float (`f32` features).
    F32(f32),
    /// A 64-bit float (`f64` features).
    F64(f64),
    /// A 32-bit signed integer (`i32` features).
    I32(i32),
    /// A 64-bit signed integer (`i64` features).
    I64(i64),
    /// A boolean (`bool` features, one byte on the wire).
    Bool(bool),
}

impl Value {
    /// The dtype this value encodes as.
    pub fn dtype(&self) -> Dtype {
        match self {
            Value::F32(_) => Dtype::F32,
            Value::F64(_) => Dtype::F64,
            Value::I32(_) => Dtype::I32,
            Value::I64(_) => Dtype::I64,
            Value::Bool(_) => Dtype::Bool,
        }
    }

    /// The value if it is an `F32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an `f64` if it is a float (`F32` widens exactly).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value if it is an `I32`.
    pub fn as_i32(&self) -> Option<i32> {
        match *self {
            Value::I32(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an `i64` if it is an integer (`I32` widens exactly).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I32(v) => Some(v as i64),
            Value::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value if it is a `Bool`.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// Decodes a value of `dtype` from the front of `bytes` (little-endian). `None` when `bytes` is
    /// shorter than the dtype's width. A `bool` byte other than 0 reads as `true`.
    pub fn from_le_bytes(dtype: Dtype, bytes: &[u8]) -> Option<Value> {
        let b = bytes.get(..dtype.width())?;
        Some(match dtype {
            Dtype::F32 => Value::F32(f32::from_le_bytes(b.try_into().ok()?)),
            Dtype::F64 => Value::F64(f64::from_le_bytes(b.try_into().ok()?)),
            Dtype::I32 => Value::I32(i32::from_le_bytes(b.try_into().ok()?)),
            Dtype::I64 => Value::I64(i64::from_le_bytes(b.try_into().ok()?)),
            Dtype::Bool => Value::Bool(b.first().is_some_and(|v| *v != 0)),
        })
    }

    /// Appends the value's little-endian encoding (its dtype's width) to `out`.
    pub fn write_le(&self, out: &mut Vec<u8>) {
        match *self {
            Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => out.push(v as u8),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::F32(v) => write!(f, "{v}f32"),
            Value::F64(v) => write!(f, "{v}f64"),
            Value::I32(v) => write!(f, "{v}i32"),
            Value::I64(v) => write!(f, "{v}i64"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::F32(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::I32(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

/// Extracts a typed value, failing (and giving the value back) on a dtype mismatch.
macro_rules! try_from_value {
    ($t:ty, $variant:ident) => {
        impl TryFrom<Value> for $t {
            type Error = Value;
            fn try_from(v: Value) -> Result<Self, Value> {
                match v {
                    Value::$variant(x) => Ok(x),
                    other => Err(other),
                }
            }
        }
    };
}

try_from_value!(f32, F32);
try_from_value!(f64, F64);
try_from_value!(i32, I32);
try_from_value!(i64, I64);
try_from_value!(bool, Bool);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_and_try_from() {
        assert_eq!(Value::from(1.5f32), Value::F32(1.5));
        assert_eq!(Value::from(2.5f64), Value::F64(2.5));
        assert_eq!(Value::from(-3i32), Value::I32(-3));
        assert_eq!(Value::from(1i64 << 40), Value::I64(1 << 40));
        assert_eq!(Value::from(true), Value::Bool(true));
        let v: Value = 7i32.into();
        assert_eq!(i32::try_from(v), Ok(7));
        assert_eq!(f32::try_from(v), Err(Value::I32(7)));
        assert_eq!(bool::try_from(Value::Bool(false)), Ok(false));
    }

    #[test]
    fn accessors_widen_only_exactly() {
        assert_eq!(Value::F32(0.25).as_f64(), Some(0.25));
        assert_eq!(Value::F64(0.25).as_f32(), None);
        assert_eq!(Value::I32(-9).as_i64(), Some(-9));
        assert_eq!(Value::I64(5).as_i32(), None);
        assert_eq!(Value::I32(1).as_bool(), None);
        assert_eq!(Value::Bool(true).as_bool(), Some(true));
        assert_eq!(Value::I64(3).dtype(), Dtype::I64);
    }

    #[test]
    fn le_round_trip_every_dtype() {
        for v in [
            Value::F32(-1.25),
            Value::F64(1e300),
            Value::I32(i32::MIN),
            Value::I64(i64::MAX),
            Value::Bool(true),
            Value::Bool(false),
        ] {
            let mut out = Vec::new();
            v.write_le(&mut out);
            assert_eq!(out.len(), v.dtype().width());
            assert_eq!(Value::from_le_bytes(v.dtype(), &out), Some(v));
            // Too short: no panic, no value.
            assert_eq!(Value::from_le_bytes(v.dtype(), &out[..out.len() - 1]), None);
        }
        assert_eq!(
            Value::from_le_bytes(Dtype::Bool, &[7]),
            Some(Value::Bool(true))
        );
    }
}
