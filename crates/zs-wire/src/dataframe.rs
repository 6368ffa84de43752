//! [`DataFrame`]: an ordered list of typed values, its binary form and its readers.

use bytes::{BufMut, Bytes, BytesMut};

use crate::value::{tag, vtag, NumArray, NumKind, Text, Value, Variant};
use crate::varint::{put_varint, varint_len, Cursor};
use crate::{Limits, WireError};

/// An ordered list of typed [`Value`]s: the payload of stream requests and responses.
///
/// Build it with [`push`](DataFrame::push) (anything `Into<Value>`), read it back by
/// index ([`get`](DataFrame::get)) or in order with a lenient [`Reader`].
///
/// ```
/// use zs_wire::{DataFrame, Limits};
/// let mut df = DataFrame::new();
/// df.push("name").push(42u32).push(2.5f64);
/// let bytes = df.to_bytes();
/// let back = DataFrame::decode(&bytes, &Limits::default()).unwrap();
/// let mut r = back.reader();
/// assert_eq!(r.read_text().unwrap(), "name");
/// assert_eq!(r.read_i64().unwrap(), 42);
/// assert_eq!(r.read_i32().unwrap(), 2); // lenient: a float read as an integer
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataFrame {
    values: Vec<Value>,
}

impl DataFrame {
    /// An empty DataFrame.
    pub const fn new() -> DataFrame {
        DataFrame { values: Vec::new() }
    }

    /// An empty DataFrame with room for `n` values.
    pub fn with_capacity(n: usize) -> DataFrame {
        DataFrame { values: Vec::with_capacity(n) }
    }

    /// Appends a value; returns `self` for chaining.
    pub fn push(&mut self, v: impl Into<Value>) -> &mut DataFrame {
        self.values.push(v.into());
        self
    }

    /// Builder form of [`push`](DataFrame::push).
    pub fn with(mut self, v: impl Into<Value>) -> DataFrame {
        self.values.push(v.into());
        self
    }

    /// Number of values (not counting the values inside nested DataFrames).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> Option<&Value> {
        self.values.get(i)
    }

    /// All values in order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Mutable access to the values.
    pub fn values_mut(&mut self) -> &mut Vec<Value> {
        &mut self.values
    }

    /// Unwraps the values.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.values.clear();
    }

    /// A cursor that reads the values in order with lenient conversions.
    pub fn reader(&self) -> Reader<'_> {
        Reader { df: self, pos: 0 }
    }

    /// Exact size of the binary form in bytes.
    pub fn encoded_len(&self) -> usize {
        varint_len(self.values.len() as u64) + self.values.iter().map(value_len).sum::<usize>()
    }

    /// Appends the binary form (see `docs/PROTOCOL.md`, "DataFrame") to `dst`,
    /// reserving the exact size first.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.reserve(self.encoded_len());
        self.encode_into(dst);
    }

    /// The binary form as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut b);
        b.freeze()
    }

    pub(crate) fn encode_into(&self, dst: &mut impl BufMut) {
        put_varint(dst, self.values.len() as u64);
        for v in &self.values {
            encode_value(v, dst);
        }
    }

    /// Decodes one DataFrame that fills `src` exactly. Byte, string and array values
    /// are zero-copy slices of `src`.
    pub fn decode(src: &Bytes, limits: &Limits) -> Result<DataFrame, WireError> {
        let mut cur = Cursor::new(src);
        let df = DataFrame::decode_from(&mut cur, limits)?;
        cur.finish()?;
        Ok(df)
    }

    pub(crate) fn decode_from(cur: &mut Cursor<'_>, limits: &Limits) -> Result<DataFrame, WireError> {
        let mut budget = limits.max_values;
        decode_frame(cur, limits, 1, &mut budget)
    }
}

impl FromIterator<Value> for DataFrame {
    fn from_iter<I: IntoIterator<Item = Value>>(iter: I) -> Self {
        DataFrame { values: iter.into_iter().collect() }
    }
}

impl<'a> IntoIterator for &'a DataFrame {
    type Item = &'a Value;
    type IntoIter = std::slice::Iter<'a, Value>;
    fn into_iter(self) -> Self::IntoIter {
        self.values.iter()
    }
}

fn json_len(j: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a `serde_json::Value` cannot fail (its map keys are strings) and `Count` never errors.
    let _ = serde_json::to_writer(&mut c, j);
    c.0
}

fn lp_len(n: usize) -> usize {
    varint_len(n as u64) + n
}

fn value_len(v: &Value) -> usize {
    1 + match v {
        Value::Str(s) => lp_len(s.len()),
        Value::Bool(_) | Value::I8(_) | Value::U8(_) => 1,
        Value::I16(_) | Value::U16(_) => 2,
        Value::I32(_) | Value::U32(_) | Value::F32(_) => 4,
        Value::I64(_) | Value::U64(_) | Value::F64(_) => 8,
        Value::Bytes(b) => lp_len(b.len()),
        Value::Array(a) => 1 + lp_len(a.raw().len()),
        Value::Frame(df) => df.encoded_len(),
        Value::Json(j) => lp_len(json_len(j)),
        Value::Variant(var) => {
            1 + match var {
                Variant::Null => 0,
                Variant::Bool(_) => 1,
                Variant::Int(_) | Variant::UInt(_) | Variant::Float(_) => 8,
                Variant::Text(s) => lp_len(s.len()),
            }
        }
    }
}

#[inline]
fn put_lp(dst: &mut impl BufMut, b: &[u8]) {
    put_varint(dst, b.len() as u64);
    dst.put_slice(b);
}

fn encode_value(v: &Value, dst: &mut impl BufMut) {
    match v {
        Value::Str(s) => {
            dst.put_u8(tag::STR);
            put_lp(dst, s.as_bytes());
        }
        Value::Bool(b) => {
            dst.put_u8(tag::BOOL);
            dst.put_u8(*b as u8);
        }
        Value::I8(x) => {
            dst.put_u8(tag::I8);
            dst.put_i8(*x);
        }
        Value::I16(x) => {
            dst.put_u8(tag::I16);
            dst.put_i16_le(*x);
        }
        Value::I32(x) => {
            dst.put_u8(tag::I32);
            dst.put_i32_le(*x);
        }
        Value::I64(x) => {
            dst.put_u8(tag::I64);
            dst.put_i64_le(*x);
        }
        Value::U8(x) => {
            dst.put_u8(tag::U8);
            dst.put_u8(*x);
        }
        Value::U16(x) => {
            dst.put_u8(tag::U16);
            dst.put_u16_le(*x);
        }
        Value::U32(x) => {
            dst.put_u8(tag::U32);
            dst.put_u32_le(*x);
        }
        Value::U64(x) => {
            dst.put_u8(tag::U64);
            dst.put_u64_le(*x);
        }
        Value::F32(x) => {
            dst.put_u8(tag::F32);
            dst.put_f32_le(*x);
        }
        Value::F64(x) => {
            dst.put_u8(tag::F64);
            dst.put_f64_le(*x);
        }
        Value::Bytes(b) => {
            dst.put_u8(tag::BYTES);
            put_lp(dst, b);
        }
        Value::Array(a) => {
            dst.put_u8(tag::ARRAY);
            dst.put_u8(a.kind().tag());
            put_lp(dst, a.raw());
        }
        Value::Frame(df) => {
            dst.put_u8(tag::FRAME);
            df.encode_into(dst);
        }
        Value::Json(j) => {
            dst.put_u8(tag::JSON);
            // Serialising a `serde_json::Value` into memory cannot fail.
            let text = serde_json::to_vec(j).unwrap_or_default();
            put_lp(dst, &text);
        }
        Value::Variant(var) => {
            dst.put_u8(tag::VARIANT);
            match var {
                Variant::Null => dst.put_u8(vtag::NULL),
                Variant::Bool(b) => {
                    dst.put_u8(vtag::BOOL);
                    dst.put_u8(*b as u8);
                }
                Variant::Int(i) => {
                    dst.put_u8(vtag::INT);
                    dst.put_i64_le(*i);
                }
                Variant::UInt(u) => {
                    dst.put_u8(vtag::UINT);
                    dst.put_u64_le(*u);
                }
                Variant::Float(f) => {
                    dst.put_u8(vtag::FLOAT);
                    dst.put_f64_le(*f);
                }
                Variant::Text(s) => {
                    dst.put_u8(vtag::TEXT);
                    put_lp(dst, s.as_bytes());
                }
            }
        }
    }
}

/// Reads a length prefix for a string-like value and checks it against the limit
/// and the bytes left, before anything is allocated.
#[inline]
fn value_len_prefix(cur: &mut Cursor<'_>, limits: &Limits, field: &'static str) -> Result<usize, WireError> {
    let n = cur.varint(field)?;
    if n > limits.max_string as u64 {
        return Err(WireError::ValueTooLarge { len: n, max: limits.max_string });
    }
    Ok(n as usize)
}

#[inline]
fn read_bool(cur: &mut Cursor<'_>) -> Result<bool, WireError> {
    match cur.u8("bool")? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(WireError::InvalidByte { field: "bool", value }),
    }
}

#[inline]
fn read_text(cur: &mut Cursor<'_>, limits: &Limits) -> Result<Text, WireError> {
    let n = value_len_prefix(cur, limits, "string")?;
    Text::from_utf8(cur.bytes(n, "string")?)
}

fn decode_frame(
    cur: &mut Cursor<'_>,
    limits: &Limits,
    depth: usize,
    budget: &mut usize,
) -> Result<DataFrame, WireError> {
    if depth > limits.max_depth {
        return Err(WireError::DepthExceeded { max: limits.max_depth });
    }
    let count = cur.varint("value count")?;
    if count > *budget as u64 {
        return Err(WireError::TooManyValues { count, max: limits.max_values });
    }
    let count = count as usize;
    *budget -= count;
    // Every value takes at least 2 bytes, so the capacity is bounded by the input too.
    let mut values = Vec::with_capacity(count.min(cur.remaining() / 2));
    for _ in 0..count {
        decode_value(cur, limits, depth, budget, &mut values)?;
    }
    Ok(DataFrame { values })
}

#[inline]
fn decode_value(
    cur: &mut Cursor<'_>,
    limits: &Limits,
    depth: usize,
    budget: &mut usize,
    out: &mut Vec<Value>,
) -> Result<(), WireError> {
    // Each arm pushes its value directly so it is built in place in the vector.
    let t = cur.u8("value tag")?;
    match t {
        tag::STR => out.push(Value::Str(read_text(cur, limits)?)),
        tag::BOOL => out.push(Value::Bool(read_bool(cur)?)),
        tag::I8 => out.push(Value::I8(cur.u8("i8")? as i8)),
        tag::I16 => out.push(Value::I16(i16::from_le_bytes(cur.array("i16")?))),
        tag::I32 => out.push(Value::I32(i32::from_le_bytes(cur.array("i32")?))),
        tag::I64 => out.push(Value::I64(i64::from_le_bytes(cur.array("i64")?))),
        tag::U8 => out.push(Value::U8(cur.u8("u8")?)),
        tag::U16 => out.push(Value::U16(u16::from_le_bytes(cur.array("u16")?))),
        tag::U32 => out.push(Value::U32(u32::from_le_bytes(cur.array("u32")?))),
        tag::U64 => out.push(Value::U64(u64::from_le_bytes(cur.array("u64")?))),
        tag::F32 => out.push(Value::F32(f32::from_le_bytes(cur.array("f32")?))),
        tag::F64 => out.push(Value::F64(f64::from_le_bytes(cur.array("f64")?))),
        tag::BYTES => {
            let n = value_len_prefix(cur, limits, "bytes")?;
            out.push(Value::Bytes(cur.bytes(n, "bytes")?));
        }
        tag::ARRAY => {
            let k = cur.u8("array kind")?;
            let kind = NumKind::from_tag(k).ok_or(WireError::UnknownArrayKind(k))?;
            let n = value_len_prefix(cur, limits, "array")?;
            if n % kind.size() != 0 {
                return Err(WireError::ArrayLength { len: n as u64, elem: kind.size() });
            }
            let data = cur.bytes(n, "array")?;
            out.push(Value::Array(
                NumArray::from_raw(kind, data)
                    .ok_or(WireError::ArrayLength { len: n as u64, elem: kind.size() })?,
            ));
        }
        tag::FRAME => out.push(Value::Frame(decode_frame(cur, limits, depth + 1, budget)?)),
        tag::JSON => {
            let n = value_len_prefix(cur, limits, "json")?;
            let text = cur.slice(n, "json")?;
            let j: serde_json::Value =
                serde_json::from_slice(text).map_err(|e| WireError::Json(e.to_string()))?;
            out.push(Value::Json(Box::new(j)));
        }
        tag::VARIANT => {
            let vt = cur.u8("variant tag")?;
            let v = match vt {
                vtag::NULL => Variant::Null,
                vtag::BOOL => Variant::Bool(read_bool(cur)?),
                vtag::INT => Variant::Int(i64::from_le_bytes(cur.array("variant")?)),
                vtag::UINT => Variant::UInt(u64::from_le_bytes(cur.array("variant")?)),
                vtag::FLOAT => Variant::Float(f64::from_le_bytes(cur.array("variant")?)),
                vtag::TEXT => Variant::Text(read_text(cur, limits)?),
                other => return Err(WireError::UnknownVariantTag(other)),
            };
            out.push(Value::Variant(v));
        }
        other => return Err(WireError::UnknownValueTag(other)),
    }
    Ok(())
}

/// Reads the values of a [`DataFrame`] in order, converting leniently like the
/// seed's `Reader.ReadInteger` & co: an integer may be read from a float (truncated
/// toward zero), a numeric string, a bool or a variant, as long as it fits the
/// target type. On error the position does not move.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    df: &'a DataFrame,
    pos: usize,
}

macro_rules! read_int {
    ($($name:ident -> $t:ty),*) => {$(
        #[doc = concat!("Reads the next value as `", stringify!($t), "` (lenient; must fit).")]
        pub fn $name(&mut self) -> Result<$t, WireError> {
            self.take(stringify!($t), |v| v.to_i128().and_then(|i| <$t>::try_from(i).ok()))
        }
    )*};
}

impl<'a> Reader<'a> {
    /// Index of the next value.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Number of values left.
    pub fn remaining(&self) -> usize {
        self.df.len() - self.pos
    }

    /// The next value without moving.
    pub fn peek(&self) -> Option<&'a Value> {
        self.df.values.get(self.pos)
    }

    /// Moves to value `i` (the end at most).
    pub fn seek(&mut self, i: usize) {
        self.pos = i.min(self.df.len());
    }

    fn take<T>(&mut self, expected: &'static str, f: impl FnOnce(&'a Value) -> Option<T>) -> Result<T, WireError> {
        let v = self.df.values.get(self.pos).ok_or(WireError::ReadPastEnd { index: self.pos })?;
        let out = f(v).ok_or(WireError::TypeMismatch { index: self.pos, expected, found: v.type_name() })?;
        self.pos += 1;
        Ok(out)
    }

    /// The next value as it is.
    pub fn read_value(&mut self) -> Result<&'a Value, WireError> {
        self.take("value", Some)
    }

    read_int!(read_i8 -> i8, read_i16 -> i16, read_i32 -> i32, read_i64 -> i64,
        read_u8 -> u8, read_u16 -> u16, read_u32 -> u32, read_u64 -> u64);

    /// Reads the next value as `f64` (any number, numeric string, bool, variant).
    pub fn read_f64(&mut self) -> Result<f64, WireError> {
        self.take("f64", Value::to_f64)
    }

    /// Reads the next value as `f32` (via [`read_f64`](Reader::read_f64), rounded).
    pub fn read_f32(&mut self) -> Result<f32, WireError> {
        self.take("f32", |v| v.to_f64().map(|f| f as f32))
    }

    /// Reads the next value as `bool` (numbers: non-zero; strings: true/false/yes/no/1/0).
    pub fn read_bool(&mut self) -> Result<bool, WireError> {
        self.take("bool", Value::to_bool)
    }

    /// Reads the next value as text (numbers and bools are formatted).
    pub fn read_text(&mut self) -> Result<Text, WireError> {
        self.take("str", Value::to_text)
    }

    /// Reads the next value as bytes: a bytes value, or the UTF-8 of a string.
    pub fn read_bytes(&mut self) -> Result<Bytes, WireError> {
        self.take("bytes", |v| match v {
            Value::Bytes(b) => Some(b.clone()),
            Value::Str(s) | Value::Variant(Variant::Text(s)) => Some(s.as_bytes().clone()),
            _ => None,
        })
    }

    /// Reads the next value as a number array.
    pub fn read_array(&mut self) -> Result<&'a NumArray, WireError> {
        self.take("array", |v| match v {
            Value::Array(a) => Some(a),
            _ => None,
        })
    }

    /// Reads the next value as a nested DataFrame.
    pub fn read_dataframe(&mut self) -> Result<&'a DataFrame, WireError> {
        self.take("df", |v| match v {
            Value::Frame(d) => Some(d),
            _ => None,
        })
    }

    /// Reads the next value as JSON: a JSON value as it is, or a scalar / nested
    /// DataFrame converted with the plain JSON mapping ([`DataFrame::to_plain_json`]).
    pub fn read_json(&mut self) -> Result<serde_json::Value, WireError> {
        self.take("json", |v| match v {
            Value::Json(j) => Some((**j).clone()),
            other => Some(crate::json::plain_value(other)),
        })
    }

    /// Reads the next scalar value as a [`Variant`].
    pub fn read_variant(&mut self) -> Result<Variant, WireError> {
        self.take("variant", Value::to_variant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_leniency_and_errors() {
        let df = DataFrame::new()
            .with(3.7f64)
            .with("12")
            .with(300u32)
            .with(true)
            .with(Bytes::from_static(b"ab"));
        let mut r = df.reader();
        assert_eq!(r.read_i64().unwrap(), 3);
        assert_eq!(r.read_u8().unwrap(), 12);
        assert_eq!(
            r.read_i8(),
            Err(WireError::TypeMismatch { index: 2, expected: "i8", found: "u32" })
        );
        assert_eq!(r.position(), 2, "a failed read does not move");
        assert_eq!(r.read_f32().unwrap(), 300.0);
        assert_eq!(r.read_text().unwrap(), "true");
        assert_eq!(&r.read_bytes().unwrap()[..], b"ab");
        assert_eq!(r.read_bool(), Err(WireError::ReadPastEnd { index: 5 }));
    }

    #[test]
    fn encoded_len_is_exact() {
        let mut inner = DataFrame::new();
        inner.push(serde_json::json!({"a": [1, 2.5, "x"]})).push(Variant::Text("v".into()));
        let df = DataFrame::new()
            .with(inner)
            .with(NumArray::from_slice(&[1.5f32, 2.5]))
            .with(Variant::Null)
            .with(Variant::UInt(9))
            .with(-5i16);
        assert_eq!(df.to_bytes().len(), df.encoded_len());
    }
}
