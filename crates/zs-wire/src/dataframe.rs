//! [`DataFrame`]: an ordered list of typed values, its binary form and its readers.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use bytes::{BufMut, Bytes, BytesMut};

use crate::value::{tag, vtag, NumArray, NumKind, Text, Value, Variant};
use crate::varint::{get_varint, put_varint, varint_fast, varint_len, Cursor, Varint};
use crate::{Limits, WireError};

/// An ordered list of typed [`Value`]s: the payload of stream requests and responses.
///
/// Build it with [`push`](DataFrame::push) (anything `Into<Value>`), read it back by
/// index ([`get`](DataFrame::get)) or in order with a lenient [`Reader`].
///
/// A decoded DataFrame is **validated eagerly and built lazily**: decoding checks
/// every byte against the [`Limits`] (so every error is reported by `decode`) and
/// keeps the validated bytes; the [`Value`]s are built on first access by index,
/// while a [`Reader`] reads straight from the bytes. Re-encoding an unmodified
/// decoded DataFrame copies its bytes (cheap forwarding).
///
/// JSON values in particular are only *checked* by `decode` (syntax, UTF-8, number
/// range, nesting; no allocation per element); their `serde_json::Value` tree is
/// parsed when the value is accessed: through [`get`](DataFrame::get) /
/// [`values`](DataFrame::values) (parsed once, cached with all values), or a
/// [`Reader`] that reads that value (parsed on each read). `Debug` and `==` build
/// the values too.
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
/// assert_eq!(back, df);
/// ```
#[derive(Clone)]
pub struct DataFrame {
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    /// Built in memory (or modified after decoding).
    Owned(Vec<Value>),
    /// Decoded: validated wire bytes (count + values), values built on demand.
    Wire {
        bytes: Bytes,
        count: usize,
        cache: OnceLock<Vec<Value>>,
    },
}

impl Default for DataFrame {
    fn default() -> Self {
        DataFrame::new()
    }
}

impl PartialEq for DataFrame {
    fn eq(&self, other: &DataFrame) -> bool {
        self.values() == other.values()
    }
}

impl fmt::Debug for DataFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataFrame")
            .field("values", &self.values())
            .finish()
    }
}

impl DataFrame {
    /// An empty DataFrame.
    pub const fn new() -> DataFrame {
        DataFrame {
            repr: Repr::Owned(Vec::new()),
        }
    }

    /// An empty DataFrame with room for `n` values.
    pub fn with_capacity(n: usize) -> DataFrame {
        DataFrame {
            repr: Repr::Owned(Vec::with_capacity(n)),
        }
    }

    /// The values as a mutable vector (builds them first if this DataFrame was
    /// decoded; afterwards it is encoded from its values).
    pub fn values_mut(&mut self) -> &mut Vec<Value> {
        if let Repr::Wire { bytes, cache, .. } = &mut self.repr {
            let v = cache.take().unwrap_or_else(|| build_values(bytes));
            self.repr = Repr::Owned(v);
        }
        match &mut self.repr {
            Repr::Owned(v) => v,
            Repr::Wire { .. } => unreachable!("converted to Owned just above"),
        }
    }

    /// Appends a value; returns `self` for chaining.
    pub fn push(&mut self, v: impl Into<Value>) -> &mut DataFrame {
        self.values_mut().push(v.into());
        self
    }

    /// Builder form of [`push`](DataFrame::push).
    pub fn with(mut self, v: impl Into<Value>) -> DataFrame {
        self.values_mut().push(v.into());
        self
    }

    /// Number of values (not counting the values inside nested DataFrames).
    pub fn len(&self) -> usize {
        match &self.repr {
            Repr::Owned(v) => v.len(),
            Repr::Wire { count, .. } => *count,
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> Option<&Value> {
        self.values().get(i)
    }

    /// All values in order (built on first call for a decoded DataFrame).
    pub fn values(&self) -> &[Value] {
        match &self.repr {
            Repr::Owned(v) => v,
            Repr::Wire { bytes, cache, .. } => cache.get_or_init(|| build_values(bytes)),
        }
    }

    /// Unwraps the values.
    pub fn into_values(self) -> Vec<Value> {
        match self.repr {
            Repr::Owned(v) => v,
            Repr::Wire { bytes, cache, .. } => {
                cache.into_inner().unwrap_or_else(|| build_values(&bytes))
            }
        }
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.repr = Repr::Owned(Vec::new());
    }

    /// A cursor that reads the values in order with lenient conversions.
    #[inline]
    pub fn reader(&self) -> Reader<'_> {
        let off = match &self.repr {
            Repr::Wire { cache, count, .. } if cache.get().is_none() => {
                Some(varint_len(*count as u64))
            }
            _ => None,
        };
        Reader {
            df: self,
            pos: 0,
            off,
        }
    }

    /// Exact size of the binary form in bytes.
    pub fn encoded_len(&self) -> usize {
        match &self.repr {
            Repr::Wire { bytes, .. } => bytes.len(),
            Repr::Owned(v) => varint_len(v.len() as u64) + v.iter().map(value_len).sum::<usize>(),
        }
    }

    /// Appends the binary form (see `docs/PROTOCOL.md`, "DataFrame") to `dst`,
    /// reserving the exact size first.
    pub fn encode(&self, dst: &mut BytesMut) {
        if let Repr::Owned(values) = &self.repr {
            // A small DataFrame of plain values (the common case) is assembled
            // on the stack in one pass (no separate sizing pass) and appended
            // with one copy.
            let mut buf = [0u8; SMALL];
            if let Some(n) = encode_small(values, &mut buf) {
                dst.extend_from_slice(&buf[..n]);
                return;
            }
        }
        dst.reserve(self.encoded_len());
        self.encode_into(dst);
    }

    /// The binary form as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        if let Repr::Wire { bytes, .. } = &self.repr {
            return bytes.clone();
        }
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// The content of the `bytes` value that ends a DataFrame built in memory
    /// (what [`DataFrame::encode_head_into`] leaves out); `None` otherwise.
    pub(crate) fn trailing_bytes(&self) -> Option<&Bytes> {
        match &self.repr {
            Repr::Owned(values) => match values.last() {
                Some(Value::Bytes(b)) => Some(b),
                _ => None,
            },
            Repr::Wire { .. } => None,
        }
    }

    /// The binary form up to the content of its trailing `bytes` value (its
    /// tag and length included): followed by [`DataFrame::trailing_bytes`] it
    /// is what [`DataFrame::encode_into`] writes. The whole form when there is
    /// no trailing `bytes` value.
    pub(crate) fn encode_head_into(&self, dst: &mut impl BufMut) {
        let (Repr::Owned(values), Some(last)) = (&self.repr, self.trailing_bytes()) else {
            return self.encode_into(dst);
        };
        put_varint(dst, values.len() as u64);
        for v in &values[..values.len() - 1] {
            encode_value(v, dst);
        }
        dst.put_u8(tag::BYTES);
        put_varint(dst, last.len() as u64);
    }

    pub(crate) fn encode_into(&self, dst: &mut impl BufMut) {
        match &self.repr {
            Repr::Wire { bytes, .. } => dst.put_slice(bytes),
            Repr::Owned(values) => {
                put_varint(dst, values.len() as u64);
                for v in values {
                    encode_value(v, dst);
                }
            }
        }
    }

    /// Decodes one DataFrame that fills `src` exactly, checking every byte against
    /// `limits`. Byte, string and array values are zero-copy slices of `src`.
    pub fn decode(src: &Bytes, limits: &Limits) -> Result<DataFrame, WireError> {
        let mut cur = Cursor::new(src.clone());
        DataFrame::decode_rest(&mut cur, limits)
    }

    /// Decodes one DataFrame that fills `src` exactly, for index access: one pass
    /// checks every byte against `limits` (the same checks and errors as
    /// [`decode`](DataFrame::decode)) **and** builds the values, so each value is
    /// read once and each string UTF-8-checked once. [`get`](DataFrame::get) and
    /// [`values`](DataFrame::values) are then look-ups; re-encoding still copies
    /// the received bytes. Choose it when the values will be accessed by index
    /// (or as [`Value`]s); [`decode`](DataFrame::decode) (validate now, build on
    /// first access) is faster for reading in order with a [`Reader`] or for
    /// forwarding. Nested DataFrames stay lazy (validated, built when accessed).
    ///
    /// ```
    /// use zs_wire::{DataFrame, Limits, Value};
    /// let bytes = DataFrame::new().with(7u32).with("seven").to_bytes();
    /// let df = DataFrame::decode_indexed(&bytes, &Limits::default()).unwrap();
    /// assert_eq!(df.get(1).and_then(Value::as_text).map(|t| t.as_str()), Some("seven"));
    /// assert_eq!(df.to_bytes(), bytes);
    /// ```
    pub fn decode_indexed(src: &Bytes, limits: &Limits) -> Result<DataFrame, WireError> {
        let mut cur = Cursor::new(src.clone());
        let (count, mut budget) = top_count(&mut cur, limits)?;
        let values = build_all(&mut cur, limits, &mut budget, true, count)?;
        cur.finish()?;
        Ok(DataFrame {
            repr: Repr::Wire {
                bytes: cur.rest_from(0),
                count,
                cache: OnceLock::from(values),
            },
        })
    }

    /// Decodes a DataFrame that must fill the rest of the cursor's body.
    pub(crate) fn decode_rest(cur: &mut Cursor, limits: &Limits) -> Result<DataFrame, WireError> {
        let start = cur.pos();
        let mut budget = limits.max_values;
        let count = validate_frame(cur, limits, 1, &mut budget, true)?;
        cur.finish()?;
        Ok(DataFrame {
            repr: Repr::Wire {
                bytes: cur.rest_from(start),
                count,
                cache: OnceLock::new(),
            },
        })
    }

    /// A decoded DataFrame over already validated bytes (nested DataFrames).
    fn from_validated(bytes: Bytes, count: usize) -> DataFrame {
        DataFrame {
            repr: Repr::Wire {
                bytes,
                count,
                cache: OnceLock::new(),
            },
        }
    }
}

impl FromIterator<Value> for DataFrame {
    fn from_iter<I: IntoIterator<Item = Value>>(iter: I) -> Self {
        DataFrame {
            repr: Repr::Owned(iter.into_iter().collect()),
        }
    }
}

impl<'a> IntoIterator for &'a DataFrame {
    type Item = &'a Value;
    type IntoIter = std::slice::Iter<'a, Value>;
    fn into_iter(self) -> Self::IntoIter {
        self.values().iter()
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

/// Size of the stack buffer of [`encode_small`].
const SMALL: usize = 128;

/// One fixed-size or length-prefixed value at `*p` of `buf`: tag `t`, then (when
/// `lp`) a one-byte length, then `b`. `None` (nothing written that counts) if it
/// does not fit or the length needs more than one varint byte.
#[inline(always)]
fn put_small(buf: &mut [u8; SMALL], p: &mut usize, t: u8, lp: bool, b: &[u8]) -> Option<()> {
    let head = 1 + lp as usize;
    let end = *p + head + b.len();
    if end > SMALL || b.len() >= 0x80 {
        return None;
    }
    buf[*p] = t;
    buf[*p + 1] = b.len() as u8; // overwritten by `b` when not length-prefixed
    buf[*p + head..end].copy_from_slice(b);
    *p = end;
    Some(())
}

/// The binary form of `values` in one pass over them, when it fits in `SMALL`
/// bytes and holds only numbers, bools, strings and bytes below 128 bytes (so
/// every varint is one byte): the same bytes as `encode_into`. `None` otherwise.
#[inline]
fn encode_small(values: &[Value], buf: &mut [u8; SMALL]) -> Option<usize> {
    if values.len() >= 0x80 {
        return None;
    }
    buf[0] = values.len() as u8;
    let mut p = 1;
    for v in values {
        let b = &mut *buf;
        match v {
            Value::Str(s) => put_small(b, &mut p, tag::STR, true, s.as_bytes())?,
            Value::Bytes(x) => put_small(b, &mut p, tag::BYTES, true, x)?,
            Value::Bool(x) => put_small(b, &mut p, tag::BOOL, false, &[*x as u8])?,
            Value::I8(x) => put_small(b, &mut p, tag::I8, false, &x.to_le_bytes())?,
            Value::I16(x) => put_small(b, &mut p, tag::I16, false, &x.to_le_bytes())?,
            Value::I32(x) => put_small(b, &mut p, tag::I32, false, &x.to_le_bytes())?,
            Value::I64(x) => put_small(b, &mut p, tag::I64, false, &x.to_le_bytes())?,
            Value::U8(x) => put_small(b, &mut p, tag::U8, false, &[*x])?,
            Value::U16(x) => put_small(b, &mut p, tag::U16, false, &x.to_le_bytes())?,
            Value::U32(x) => put_small(b, &mut p, tag::U32, false, &x.to_le_bytes())?,
            Value::U64(x) => put_small(b, &mut p, tag::U64, false, &x.to_le_bytes())?,
            Value::F32(x) => put_small(b, &mut p, tag::F32, false, &x.to_le_bytes())?,
            Value::F64(x) => put_small(b, &mut p, tag::F64, false, &x.to_le_bytes())?,
            _ => return None,
        }
    }
    Some(p)
}

/// Limits used when building values from bytes that were already validated.
const UNLIMITED: Limits = Limits {
    max_frame: usize::MAX,
    max_depth: usize::MAX,
    max_values: usize::MAX,
    max_string: usize::MAX,
    max_name: usize::MAX,
    max_json: usize::MAX,
};

/// Reads a length prefix for a string-like value and checks it against the limit
/// (the bytes themselves are checked by the caller) before anything is allocated.
#[inline]
fn value_len_prefix(
    cur: &mut Cursor,
    limits: &Limits,
    field: &'static str,
) -> Result<usize, WireError> {
    let n = cur.varint(field)?;
    if n > limits.max_string as u64 {
        return Err(WireError::ValueTooLarge {
            len: n,
            max: limits.max_string,
        });
    }
    Ok(n as usize)
}

#[inline]
fn read_bool(cur: &mut Cursor) -> Result<bool, WireError> {
    match cur.u8("bool")? {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(WireError::InvalidByte {
            field: "bool",
            value,
        }),
    }
}

#[inline]
fn read_text(cur: &mut Cursor, limits: &Limits) -> Result<Text, WireError> {
    let n = value_len_prefix(cur, limits, "string")?;
    cur.text(n, "string")
}

#[inline]
fn check_text(cur: &mut Cursor, limits: &Limits, content: bool) -> Result<(), WireError> {
    let n = value_len_prefix(cur, limits, "string")?;
    let b = cur.slice(n, "string")?;
    // ASCII (the common case) is checked a word at a time, inline.
    if content && !b.is_ascii() {
        crate::value::utf8(b)?;
    }
    Ok(())
}

/// Byte length of an array payload, checked (kind, limit, whole elements).
#[inline]
fn array_header(cur: &mut Cursor, limits: &Limits) -> Result<(NumKind, usize), WireError> {
    let k = cur.u8("array kind")?;
    let kind = NumKind::from_tag(k).ok_or(WireError::UnknownArrayKind(k))?;
    let n = value_len_prefix(cur, limits, "array")?;
    if n % kind.size() != 0 {
        return Err(WireError::ArrayLength {
            len: n as u64,
            elem: kind.size(),
        });
    }
    Ok((kind, n))
}

/// Reads the length prefix of a JSON value and checks it against `max_json` and
/// `max_string` before anything is sliced or allocated.
#[inline]
fn json_len_prefix(cur: &mut Cursor, limits: &Limits) -> Result<usize, WireError> {
    let n = cur.varint("json")?;
    if n > limits.max_json as u64 {
        return Err(WireError::JsonTooLarge {
            len: n,
            max: limits.max_json,
        });
    }
    if n > limits.max_string as u64 {
        return Err(WireError::ValueTooLarge {
            len: n,
            max: limits.max_string,
        });
    }
    Ok(n as usize)
}

/// Builds the JSON tree of a validated JSON text: only when a value is accessed.
fn parse_json(text: &[u8]) -> Result<serde_json::Value, WireError> {
    serde_json::from_slice(text).map_err(|e| WireError::Json(e.to_string()))
}

/// The value count of a top-level DataFrame at the cursor, checked as
/// [`validate_frame`] checks it at depth 1, and the value budget left for the
/// nested DataFrames.
#[inline]
pub(crate) fn top_count(cur: &mut Cursor, limits: &Limits) -> Result<(usize, usize), WireError> {
    if limits.max_depth < 1 {
        return Err(WireError::DepthExceeded {
            max: limits.max_depth,
        });
    }
    let count = cur.varint("value count")?;
    if count > limits.max_values as u64 {
        return Err(WireError::TooManyValues {
            count,
            max: limits.max_values,
        });
    }
    let count = count as usize;
    Ok((count, limits.max_values - count))
}

/// Checks one DataFrame (count and values) against `limits` without building
/// anything; returns its value count. Every decoding error is found here.
/// `content`: also check the content of texts (UTF-8) and JSON values (syntax);
/// off only to find the end of bytes validated before.
fn validate_frame(
    cur: &mut Cursor,
    limits: &Limits,
    depth: usize,
    budget: &mut usize,
    content: bool,
) -> Result<usize, WireError> {
    if depth > limits.max_depth {
        return Err(WireError::DepthExceeded {
            max: limits.max_depth,
        });
    }
    let count = cur.varint("value count")?;
    if count > *budget as u64 {
        return Err(WireError::TooManyValues {
            count,
            max: limits.max_values,
        });
    }
    let count = count as usize;
    *budget -= count;
    for _ in 0..count {
        validate_value(cur, limits, depth, budget, content)?;
    }
    Ok(count)
}

/// Payload size and type name of the fixed-size number tags, `I8..=F64` in tag order.
const FIXED: [(usize, &str); 10] = [
    (1, "i8"),
    (2, "i16"),
    (4, "i32"),
    (8, "i64"),
    (1, "u8"),
    (2, "u16"),
    (4, "u32"),
    (8, "u64"),
    (4, "f32"),
    (8, "f64"),
];

#[inline]
pub(crate) fn validate_value(
    cur: &mut Cursor,
    limits: &Limits,
    depth: usize,
    budget: &mut usize,
    content: bool,
) -> Result<(), WireError> {
    let t = cur.u8("value tag")?;
    // Fixed-size numbers: one table look-up and one bounds check.
    if let Some(&(size, name)) = FIXED.get(t.wrapping_sub(tag::I8) as usize) {
        cur.skip(size, name)?;
        return Ok(());
    }
    match t {
        tag::STR => check_text(cur, limits, content)?,
        tag::BOOL => {
            read_bool(cur)?;
        }
        tag::BYTES => {
            let n = value_len_prefix(cur, limits, "bytes")?;
            cur.slice(n, "bytes")?;
        }
        tag::ARRAY => {
            let (_, n) = array_header(cur, limits)?;
            cur.slice(n, "array")?;
        }
        tag::FRAME => {
            validate_frame(cur, limits, depth + 1, budget, content)?;
        }
        tag::JSON => {
            let n = json_len_prefix(cur, limits)?;
            let text = cur.slice(n, "json")?;
            if content {
                // Syntax only: no `serde_json::Value` is built here (see
                // `json::validate`); the tree is parsed when a value is accessed.
                crate::json::validate(text)?;
            }
        }
        tag::VARIANT => match cur.u8("variant tag")? {
            vtag::NULL => {}
            vtag::BOOL => {
                read_bool(cur)?;
            }
            vtag::INT | vtag::UINT | vtag::FLOAT => drop(cur.slice(8, "variant")?),
            vtag::TEXT => check_text(cur, limits, content)?,
            other => return Err(WireError::UnknownVariantTag(other)),
        },
        other => return Err(WireError::UnknownValueTag(other)),
    }
    Ok(())
}

/// Builds the values of validated DataFrame bytes (count + values).
fn build_values(bytes: &Bytes) -> Vec<Value> {
    let mut cur = Cursor::new(bytes.clone());
    let Ok(count) = cur.varint("value count") else {
        return Vec::new();
    };
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    let mut unbounded = usize::MAX;
    // The bytes were validated when decoded, so this cannot fail (if it did,
    // no values rather than a panic).
    build_all(&mut cur, &UNLIMITED, &mut unbounded, false, count).unwrap_or_default()
}

/// Builds `count` values at the cursor (see [`build_value_or`] for `fresh`,
/// `budget` and the checks made). The vector is filled by `collect` over an
/// exact-size iterator, so each value is written straight into its slot; a
/// value pushed instead is built in a temporary first and copied in, and its
/// narrow stores read back by wide loads stall store forwarding: the pushes
/// of ten plain values took 60 ns, the collect 30 ns (session 11, wire bench).
/// Every value takes at least two bytes, so a count above half the bytes left
/// lies (the frame is truncated) and must not size an allocation: it takes a
/// loop of pushes that ends in the same error.
#[inline(always)]
fn build_all(
    cur: &mut Cursor,
    l: &Limits,
    budget: &mut usize,
    fresh: bool,
    count: usize,
) -> Result<Vec<Value>, WireError> {
    let mut err = None;
    if count > cur.remaining() / 2 {
        let mut values = Vec::with_capacity(cur.remaining() / 2);
        for _ in 0..count {
            let v = build_value_or(cur, l, 1, budget, fresh, &mut err);
            if let Some(e) = err {
                return Err(e);
            }
            values.push(v);
        }
        return Ok(values);
    }
    let values: Vec<Value> = (0..count)
        .map(|_| {
            if err.is_some() {
                // An earlier value failed: the vector is thrown away.
                return Value::Bool(false);
            }
            build_value_or(cur, l, 1, budget, fresh, &mut err)
        })
        .collect();
    match err {
        Some(e) => Err(e),
        None => Ok(values),
    }
}

/// Builds the value at the cursor (validated bytes), for one value read on its
/// own (the loops that fill a vector use [`build_all`]).
#[inline(always)]
pub(crate) fn build_value(cur: &mut Cursor) -> Result<Value, WireError> {
    let mut unbounded = usize::MAX;
    let mut err = None;
    let v = build_value_or(cur, &UNLIMITED, 1, &mut unbounded, false, &mut err);
    match err {
        Some(e) => Err(e),
        None => Ok(v),
    }
}

/// Builds the value at the cursor and returns it; on an error, stores it in
/// `err` and returns a placeholder (`Value::Bool(false)`) the caller discards.
/// `fresh`: the bytes were not validated before, so this is the validating
/// pass too (`limits`, `depth` and the value `budget` apply; nested DataFrames
/// are validated with their content, JSON is parsed, which checks it);
/// otherwise nested DataFrames are only measured. Every check of the
/// validating pass is made here exactly once per value (strings: limit and
/// UTF-8 in `read_text`), so a one-pass decode reports the same errors as
/// [`validate_frame`].
///
/// Each arm evaluates to the value it makes, which is the function's result:
/// inlined into [`build_all`]'s `collect`, it is written straight into the
/// vector's slot (no temporary, no `Result` around it to copy out of).
#[inline(always)]
fn build_value_or(
    cur: &mut Cursor,
    l: &Limits,
    depth: usize,
    budget: &mut usize,
    fresh: bool,
    err: &mut Option<WireError>,
) -> Value {
    macro_rules! ok {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => {
                    *err = Some(e);
                    return Value::Bool(false);
                }
            }
        };
    }
    let t = ok!(cur.u8("value tag"));
    match t {
        tag::STR => Value::Str(ok!(read_text(cur, l))),
        tag::BOOL => Value::Bool(ok!(read_bool(cur))),
        tag::I8 => Value::I8(ok!(cur.u8("i8")) as i8),
        tag::I16 => Value::I16(i16::from_le_bytes(ok!(cur.array("i16")))),
        tag::I32 => Value::I32(i32::from_le_bytes(ok!(cur.array("i32")))),
        tag::I64 => Value::I64(i64::from_le_bytes(ok!(cur.array("i64")))),
        tag::U8 => Value::U8(ok!(cur.u8("u8"))),
        tag::U16 => Value::U16(u16::from_le_bytes(ok!(cur.array("u16")))),
        tag::U32 => Value::U32(u32::from_le_bytes(ok!(cur.array("u32")))),
        tag::U64 => Value::U64(u64::from_le_bytes(ok!(cur.array("u64")))),
        tag::F32 => Value::F32(f32::from_le_bytes(ok!(cur.array("f32")))),
        tag::F64 => Value::F64(f64::from_le_bytes(ok!(cur.array("f64")))),
        tag::BYTES => {
            let n = ok!(value_len_prefix(cur, l, "bytes"));
            Value::Bytes(ok!(cur.bytes(n, "bytes")))
        }
        tag::ARRAY => {
            let (kind, n) = ok!(array_header(cur, l));
            let data = ok!(cur.bytes(n, "array"));
            Value::Array(ok!(NumArray::from_raw(kind, data).ok_or(
                WireError::ArrayLength {
                    len: n as u64,
                    elem: kind.size(),
                }
            )))
        }
        tag::FRAME => {
            let start = cur.pos();
            // A nested DataFrame stays lazy. Validated bytes: only find its end
            // and count (texts and JSON are not checked again, nested JSON is not
            // parsed); fresh bytes: validated here, content included.
            let count = if fresh {
                ok!(validate_frame(cur, l, depth + 1, budget, true))
            } else {
                let mut unbounded = usize::MAX;
                ok!(validate_frame(cur, l, 1, &mut unbounded, false))
            };
            Value::Frame(Box::new(DataFrame::from_validated(cur.since(start), count)))
        }
        tag::JSON => {
            let n = ok!(json_len_prefix(cur, l));
            Value::Json(Box::new(ok!(parse_json(ok!(cur.slice(n, "json"))))))
        }
        tag::VARIANT => Value::Variant(match ok!(cur.u8("variant tag")) {
            vtag::NULL => Variant::Null,
            vtag::BOOL => Variant::Bool(ok!(read_bool(cur))),
            vtag::INT => Variant::Int(i64::from_le_bytes(ok!(cur.array("variant")))),
            vtag::UINT => Variant::UInt(u64::from_le_bytes(ok!(cur.array("variant")))),
            vtag::FLOAT => Variant::Float(f64::from_le_bytes(ok!(cur.array("variant")))),
            vtag::TEXT => Variant::Text(ok!(read_text(cur, l))),
            other => ok!(Err(WireError::UnknownVariantTag(other))),
        }),
        other => ok!(Err(WireError::UnknownValueTag(other))),
    }
}

/// A plain number (or bool) read straight from validated bytes by the reader's
/// fast path; small enough to travel in registers.
#[derive(Clone, Copy)]
enum Num {
    I(i64),
    U(u64),
    F(f64),
}

impl Num {
    #[inline]
    fn to_i128(self) -> Option<i128> {
        match self {
            Num::I(i) => Some(i as i128),
            Num::U(u) => Some(u as i128),
            Num::F(f) => crate::value::float_to_i128(f),
        }
    }

    #[inline]
    fn to_f64(self) -> f64 {
        match self {
            Num::I(i) => i as f64,
            Num::U(u) => u as f64,
            Num::F(f) => f,
        }
    }
}

/// The plain number at the start of `b` (a value's tag and payload) and its size,
/// or `None` for any other kind of value.
#[inline]
fn peek_num(b: &[u8]) -> Option<(Num, usize)> {
    fn le<const N: usize>(b: &[u8]) -> Option<[u8; N]> {
        b.get(1..1 + N)?.try_into().ok()
    }
    let t = *b.first()?;
    Some(match t {
        tag::BOOL | tag::U8 => (Num::U(*b.get(1)? as u64), 2),
        tag::I8 => (Num::I(*b.get(1)? as i8 as i64), 2),
        tag::I16 => (Num::I(i16::from_le_bytes(le(b)?) as i64), 3),
        tag::U16 => (Num::U(u16::from_le_bytes(le(b)?) as u64), 3),
        tag::I32 => (Num::I(i32::from_le_bytes(le(b)?) as i64), 5),
        tag::U32 => (Num::U(u32::from_le_bytes(le(b)?) as u64), 5),
        tag::F32 => (Num::F(f32::from_le_bytes(le(b)?) as f64), 5),
        tag::I64 => (Num::I(i64::from_le_bytes(le(b)?)), 9),
        tag::U64 => (Num::U(u64::from_le_bytes(le(b)?)), 9),
        tag::F64 => (Num::F(f64::from_le_bytes(le(b)?)), 9),
        _ => return None,
    })
}

/// Reads the values of a [`DataFrame`] in order, converting leniently like the
/// seed's `Reader.ReadInteger` & co: an integer may be read from a float (truncated
/// toward zero), a numeric string, a bool or a variant, as long as it fits the
/// target type. On error the position does not move.
///
/// On a decoded DataFrame the typed readers work straight from the validated bytes
/// (no vector of values is built); [`read_value`](Reader::read_value),
/// [`read_array`](Reader::read_array), [`read_dataframe`](Reader::read_dataframe)
/// and [`peek`](Reader::peek) return references and so build the values once.
#[derive(Clone)]
pub struct Reader<'a> {
    df: &'a DataFrame,
    pos: usize,
    /// Byte offset of value `pos` in the wire bytes, while reading straight from them.
    off: Option<usize>,
}

impl fmt::Debug for Reader<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("position", &self.pos)
            .field("len", &self.df.len())
            .finish()
    }
}

macro_rules! read_int {
    ($($name:ident -> $t:ty = $tag:ident),*) => {$(
        #[doc = concat!("Reads the next value as `", stringify!($t), "` (lenient; must fit).")]
        #[inline]
        pub fn $name(&mut self) -> Result<$t, WireError> {
            // Fast path: the value on the wire has exactly this type.
            if let Some(a) = self.exact::<{ std::mem::size_of::<$t>() }>(tag::$tag) {
                return Ok(<$t>::from_le_bytes(a));
            }
            self.lenient_int(stringify!($t), |i| <$t>::try_from(i).ok())
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
        self.df.len().saturating_sub(self.pos)
    }

    /// The next value without moving.
    pub fn peek(&self) -> Option<&'a Value> {
        self.df.values().get(self.pos)
    }

    /// Moves to value `i` (the end at most).
    pub fn seek(&mut self, i: usize) {
        self.off = None;
        self.pos = i.min(self.df.len());
    }

    /// Fast path over wire bytes: when the next value is a plain number and `f`
    /// accepts it, consume it. Anything else goes through the general path.
    #[inline]
    fn fast_num<T>(&mut self, f: impl FnOnce(Num) -> Option<T>) -> Option<T> {
        let (bytes, off) = self.wire()?;
        let (n, size) = peek_num(bytes.get(off..)?)?;
        let out = f(n)?;
        self.off = Some(off + size);
        self.pos += 1;
        Some(out)
    }

    /// The wire bytes and the offset of the next value, in wire mode.
    #[inline]
    fn wire(&self) -> Option<(&'a Bytes, usize)> {
        let off = self.off?;
        match &self.df.repr {
            Repr::Wire { bytes, .. } => Some((bytes, off)),
            Repr::Owned(_) => None,
        }
    }

    /// Fast path over wire bytes for a value with tag `t` and a length-prefixed
    /// payload: the wire bytes and the payload's range. Does not move; call
    /// [`advance_to`](Reader::advance_to) once the value is taken.
    #[inline]
    fn fast_lp(&self, t: u8) -> Option<(&'a Bytes, usize, usize)> {
        let (bytes, off) = self.wire()?;
        if bytes.get(off) != Some(&t) {
            return None;
        }
        let rest = bytes.get(off + 1..)?;
        let (n, used) = match varint_fast(rest) {
            Some(v) => v,
            None => match get_varint(rest) {
                Ok(Varint::Done(n, used)) => (n, used),
                _ => return None,
            },
        };
        let start = off + 1 + used;
        let end = start.checked_add(usize::try_from(n).ok()?)?;
        if end > bytes.len() {
            return None;
        }
        Some((bytes, start, end))
    }

    /// Moves past the current value, which ends at byte `end` of the wire bytes.
    #[inline]
    fn advance_to(&mut self, end: usize) {
        self.off = Some(end);
        self.pos += 1;
    }

    /// Reads the next value, handing it to `f` owned (straight from the bytes) or
    /// borrowed (from the built values).
    fn take<T>(
        &mut self,
        expected: &'static str,
        f: impl FnOnce(Cow<'a, Value>) -> Option<T>,
    ) -> Result<T, WireError> {
        let index = self.pos;
        if index >= self.df.len() {
            return Err(WireError::ReadPastEnd { index });
        }
        if let Some((bytes, off)) = self.wire() {
            let mut cur = Cursor::new(bytes.clone());
            cur.set_pos(off);
            let v = build_value(&mut cur)?;
            let found = v.type_name();
            let out = f(Cow::Owned(v)).ok_or(WireError::TypeMismatch {
                index,
                expected,
                found,
            })?;
            self.off = Some(cur.pos());
            self.pos += 1;
            return Ok(out);
        }
        self.take_ref(expected, |v| f(Cow::Borrowed(v)))
    }

    /// Reads the next value by reference (builds the values of a decoded DataFrame).
    fn take_ref<T>(
        &mut self,
        expected: &'static str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<T, WireError> {
        self.off = None;
        let index = self.pos;
        let v = self
            .df
            .values()
            .get(index)
            .ok_or(WireError::ReadPastEnd { index })?;
        let out = f(v).ok_or(WireError::TypeMismatch {
            index,
            expected,
            found: v.type_name(),
        })?;
        self.pos += 1;
        Ok(out)
    }

    /// The next value as it is.
    pub fn read_value(&mut self) -> Result<&'a Value, WireError> {
        self.take_ref("value", Some)
    }

    read_int!(read_i8 -> i8 = I8, read_i16 -> i16 = I16, read_i32 -> i32 = I32,
        read_i64 -> i64 = I64, read_u8 -> u8 = U8, read_u16 -> u16 = U16,
        read_u32 -> u32 = U32, read_u64 -> u64 = U64);

    /// Wire mode, and the next value has tag `t` and an `N`-byte payload: the
    /// payload, and the reader moves past it.
    #[inline(always)]
    fn exact<const N: usize>(&mut self, t: u8) -> Option<[u8; N]> {
        let off = self.off?;
        let Repr::Wire { bytes, .. } = &self.df.repr else {
            return None;
        };
        let b = bytes.get(off..off.checked_add(1 + N)?)?;
        if b[0] != t {
            return None;
        }
        let a: [u8; N] = b[1..].try_into().ok()?;
        self.off = Some(off + 1 + N);
        self.pos += 1;
        Some(a)
    }

    /// The lenient integer read (any number, numeric string, bool, variant).
    #[inline(never)]
    fn lenient_int<T>(
        &mut self,
        expected: &'static str,
        conv: fn(i128) -> Option<T>,
    ) -> Result<T, WireError> {
        if let Some(v) = self.fast_num(|n| n.to_i128().and_then(conv)) {
            return Ok(v);
        }
        self.take(expected, |v| v.to_i128().and_then(conv))
    }

    /// The lenient float read.
    #[inline(never)]
    fn lenient_f64(&mut self, expected: &'static str) -> Result<f64, WireError> {
        if let Some(v) = self.fast_num(|n| Some(n.to_f64())) {
            return Ok(v);
        }
        self.take(expected, |v| v.to_f64())
    }

    /// Reads the next value as `f64` (any number, numeric string, bool, variant).
    #[inline]
    pub fn read_f64(&mut self) -> Result<f64, WireError> {
        if let Some(a) = self.exact::<8>(tag::F64) {
            return Ok(f64::from_le_bytes(a));
        }
        self.lenient_f64("f64")
    }

    /// Reads the next value as `f32` (via [`read_f64`](Reader::read_f64), rounded).
    #[inline]
    pub fn read_f32(&mut self) -> Result<f32, WireError> {
        if let Some(a) = self.exact::<4>(tag::F32) {
            return Ok(f32::from_le_bytes(a));
        }
        self.lenient_f64("f32").map(|f| f as f32)
    }

    /// Reads the next value as `bool` (numbers: non-zero; strings: true/false/yes/no/1/0).
    #[inline]
    pub fn read_bool(&mut self) -> Result<bool, WireError> {
        if let Some([b]) = self.exact::<1>(tag::BOOL) {
            return Ok(b != 0);
        }
        self.lenient_bool()
    }

    #[inline(never)]
    fn lenient_bool(&mut self) -> Result<bool, WireError> {
        if let Some(v) = self.fast_num(|n| Some(n.to_f64() != 0.0)) {
            return Ok(v);
        }
        self.take("bool", |v| v.to_bool())
    }

    /// Reads the next value as text (numbers and bools are formatted).
    pub fn read_text(&mut self) -> Result<Text, WireError> {
        if let Some((b, start, end)) = self.fast_lp(tag::STR) {
            let t = Text::from_utf8_slice(&b[start..end], || b.slice(start..end))?;
            self.advance_to(end);
            return Ok(t);
        }
        self.take("str", |v| match v {
            Cow::Owned(Value::Str(s)) => Some(s),
            v => v.to_text(),
        })
    }

    /// Reads the next value as a borrowed `&str`, without conversion and without a
    /// copy or a reference-count update: a string (or a text variant) only, else a
    /// [`WireError::TypeMismatch`]. Use [`read_text`](Reader::read_text) for the
    /// lenient form that formats numbers.
    #[inline]
    pub fn read_str(&mut self) -> Result<&'a str, WireError> {
        if let Some((b, start, end)) = self.fast_lp(tag::STR) {
            let s = crate::value::utf8(&b[start..end])?;
            self.advance_to(end);
            return Ok(s);
        }
        self.slow_str()
    }

    #[inline(never)]
    fn slow_str(&mut self) -> Result<&'a str, WireError> {
        self.take_ref("str", |v| v.as_text().map(Text::as_str))
    }

    /// Reads the next value as a borrowed byte slice (no copy, no reference-count
    /// update): a bytes value, or the UTF-8 of a string or text variant.
    #[inline]
    pub fn read_slice(&mut self) -> Result<&'a [u8], WireError> {
        if let Some((b, start, end)) = self.fast_lp(tag::BYTES).or_else(|| self.fast_lp(tag::STR)) {
            self.advance_to(end);
            return Ok(&b[start..end]);
        }
        self.slow_slice()
    }

    #[inline(never)]
    fn slow_slice(&mut self) -> Result<&'a [u8], WireError> {
        self.take_ref("bytes", |v| match v {
            Value::Bytes(b) => Some(&b[..]),
            other => other.as_text().map(Text::as_bytes),
        })
    }

    /// Reads the next value as bytes: a bytes value, or the UTF-8 of a string.
    pub fn read_bytes(&mut self) -> Result<Bytes, WireError> {
        if let Some((b, start, end)) = self.fast_lp(tag::BYTES) {
            self.advance_to(end);
            return Ok(b.slice(start..end));
        }
        self.take("bytes", |v| match v {
            Cow::Owned(Value::Bytes(b)) => Some(b),
            Cow::Owned(Value::Str(s)) => Some(s.into_bytes()),
            v => match &*v {
                Value::Bytes(b) => Some(b.clone()),
                Value::Str(s) | Value::Variant(Variant::Text(s)) => Some(s.to_bytes()),
                _ => None,
            },
        })
    }

    /// Reads the next value as a number array.
    pub fn read_array(&mut self) -> Result<&'a NumArray, WireError> {
        self.take_ref("array", |v| match v {
            Value::Array(a) => Some(a),
            _ => None,
        })
    }

    /// Reads the next value as a nested DataFrame.
    pub fn read_dataframe(&mut self) -> Result<&'a DataFrame, WireError> {
        self.take_ref("df", |v| match v {
            Value::Frame(d) => Some(&**d),
            _ => None,
        })
    }

    /// Reads the next value as JSON: a JSON value as it is, or a scalar / nested
    /// DataFrame converted with the plain JSON mapping ([`DataFrame::to_plain_json`]).
    pub fn read_json(&mut self) -> Result<serde_json::Value, WireError> {
        self.take("json", |v| match v {
            Cow::Owned(Value::Json(j)) => Some(*j),
            v => match &*v {
                Value::Json(j) => Some((**j).clone()),
                other => Some(crate::json::plain_value(other)),
            },
        })
    }

    /// Reads the next scalar value as a [`Variant`].
    pub fn read_variant(&mut self) -> Result<Variant, WireError> {
        self.take("variant", |v| v.to_variant())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_small_encode_writes_the_general_bytes() {
        // Every plain kind, lengths on both sides of the one-byte varint and
        // totals on both sides of the stack buffer.
        let mut sets: Vec<Vec<Value>> = vec![
            vec![],
            vec![
                Value::I8(-1),
                Value::I16(-2),
                Value::I32(-3),
                Value::I64(-4),
                Value::U8(5),
                Value::U16(6),
                Value::U32(7),
                Value::U64(8),
                Value::F32(9.5),
                Value::F64(-10.25),
                Value::Bool(true),
                Value::Bool(false),
                Value::Str(Text::from("héllo")),
                Value::Bytes(Bytes::from_static(b"\x00\x01")),
            ],
        ];
        for n in [0usize, 1, 100, 120, 124, 125, 126, 127, 128, 200] {
            sets.push(vec![Value::Str(Text::from("s".repeat(n).as_str()))]);
            sets.push(vec![Value::U8(1), Value::Bytes(Bytes::from(vec![7u8; n]))]);
            sets.push(vec![Value::F64(1.0); n.min(130)]);
        }
        sets.push(vec![Value::Variant(Variant::Null)]);
        for values in sets {
            let mut general = BytesMut::new();
            DataFrame::from_iter(values.clone()).encode_into(&mut general);
            let mut small = [0u8; SMALL];
            let fast = encode_small(&values, &mut small);
            if let Some(n) = fast {
                assert_eq!(&small[..n], &general[..], "{values:?}");
            } else {
                assert!(
                    general.len() > SMALL
                        || values.len() >= 0x80
                        || values.iter().any(|v| matches!(v, Value::Variant(_)))
                        || values
                            .iter()
                            .any(|v| v.as_text().is_some_and(|t| t.len() >= 0x80))
                        || values
                            .iter()
                            .any(|v| matches!(v, Value::Bytes(b) if b.len() >= 0x80)),
                    "the fast path refused {values:?}"
                );
            }
            let mut via_encode = BytesMut::new();
            DataFrame::from_iter(values.clone()).encode(&mut via_encode);
            assert_eq!(via_encode, general);
        }
    }

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
            Err(WireError::TypeMismatch {
                index: 2,
                expected: "i8",
                found: "u32"
            })
        );
        assert_eq!(r.position(), 2, "a failed read does not move");
        assert_eq!(r.read_f32().unwrap(), 300.0);
        assert_eq!(r.read_text().unwrap(), "true");
        assert_eq!(&r.read_bytes().unwrap()[..], b"ab");
        assert_eq!(r.read_bool(), Err(WireError::ReadPastEnd { index: 5 }));
    }

    #[test]
    fn reader_on_decoded_bytes_matches_reader_on_values() {
        let owned = DataFrame::new()
            .with(3.7f64)
            .with("12")
            .with(300u32)
            .with(true)
            .with(Bytes::from_static(b"ab"))
            .with(-5i8)
            .with(NumArray::from_slice(&[1u8, 2]))
            .with(DataFrame::new().with("x"))
            .with(Variant::Int(4))
            .with("tail");
        let decoded = DataFrame::decode(&owned.to_bytes(), &Limits::default()).unwrap();
        for df in [&owned, &decoded] {
            let mut r = df.reader();
            assert_eq!(r.read_i64().unwrap(), 3);
            assert_eq!(r.read_u8().unwrap(), 12, "numeric string");
            assert_eq!(
                r.read_i8(),
                Err(WireError::TypeMismatch {
                    index: 2,
                    expected: "i8",
                    found: "u32"
                })
            );
            assert_eq!(r.position(), 2, "a failed read does not move");
            assert_eq!(r.read_u16().unwrap(), 300);
            assert!(r.read_bool().unwrap());
            assert_eq!(
                r.read_text(),
                Err(WireError::TypeMismatch {
                    index: 4,
                    expected: "str",
                    found: "bytes"
                })
            );
            assert_eq!(&r.read_bytes().unwrap()[..], b"ab");
            assert_eq!(r.read_text().unwrap(), "-5", "numbers format as text");
            assert_eq!(r.read_array().unwrap().to_vec::<u8>().unwrap(), vec![1, 2]);
            assert_eq!(
                r.read_dataframe().unwrap().reader().read_text().unwrap(),
                "x"
            );
            assert_eq!(r.read_f64().unwrap(), 4.0, "variant as float");
            assert_eq!(r.peek(), Some(&Value::from("tail")));
            assert_eq!(r.read_bytes().unwrap(), Bytes::from_static(b"tail"));
            assert_eq!(r.remaining(), 0);
            assert_eq!(r.read_value(), Err(WireError::ReadPastEnd { index: 10 }));
        }
        // Reading straight from the bytes, then switching to indexed access midway.
        let mut r = decoded.reader();
        r.read_f32().unwrap();
        r.seek(9);
        assert_eq!(r.read_text().unwrap(), "tail");
        let mut d2 = decoded.clone();
        d2.push(1u8);
        assert_eq!(d2.len(), 11);
        assert_eq!(d2.to_bytes().len(), d2.encoded_len());
        assert_eq!(decoded, owned);
        assert_eq!(
            decoded.to_bytes(),
            owned.to_bytes(),
            "unmodified: its own bytes"
        );
    }

    #[test]
    fn borrowed_reads() {
        let long = "a string longer than twenty bytes";
        let owned = DataFrame::new()
            .with("short")
            .with(long)
            .with(Bytes::from_static(b"\x00\xff"))
            .with("as bytes")
            .with(Variant::Text("var".into()))
            .with(7u8)
            .with(-1i64);
        let decoded = DataFrame::decode(&owned.to_bytes(), &Limits::default()).unwrap();
        for df in [&owned, &decoded] {
            let mut r = df.reader();
            assert_eq!(r.read_str().unwrap(), "short");
            assert_eq!(r.read_str().unwrap(), long);
            assert_eq!(
                r.read_str(),
                Err(WireError::TypeMismatch {
                    index: 2,
                    expected: "str",
                    found: "bytes"
                })
            );
            assert_eq!(r.read_slice().unwrap(), b"\x00\xff");
            assert_eq!(r.read_slice().unwrap(), b"as bytes");
            assert_eq!(r.read_str().unwrap(), "var", "text variant");
            assert_eq!(
                r.read_slice(),
                Err(WireError::TypeMismatch {
                    index: 5,
                    expected: "bytes",
                    found: "u8"
                })
            );
            assert_eq!(
                r.read_i8().unwrap(),
                7,
                "exact-type fast path falls back to lenient"
            );
            assert_eq!(
                r.read_u8(),
                Err(WireError::TypeMismatch {
                    index: 6,
                    expected: "u8",
                    found: "i64"
                })
            );
            assert_eq!(r.read_i64().unwrap(), -1);
            assert_eq!(r.read_str(), Err(WireError::ReadPastEnd { index: 7 }));
        }
    }

    #[test]
    fn encoded_len_is_exact() {
        let mut inner = DataFrame::new();
        inner
            .push(serde_json::json!({"a": [1, 2.5, "x"]}))
            .push(Variant::Text("v".into()));
        let df = DataFrame::new()
            .with(inner)
            .with(NumArray::from_slice(&[1.5f32, 2.5]))
            .with(Variant::Null)
            .with(Variant::UInt(9))
            .with(-5i16);
        assert_eq!(df.to_bytes().len(), df.encoded_len());
    }
}
