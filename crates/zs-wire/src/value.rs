//! The typed values a [`DataFrame`] holds.

use std::fmt;

use bytes::{BufMut, Bytes};
use bytestring::ByteString;

use crate::{DataFrame, WireError};

/// Texts up to this many bytes are stored inline in the [`Text`] itself.
const INLINE: usize = 20;

/// An immutable UTF-8 string. Short texts (up to 20 bytes: command names, small
/// values) are stored inline, so making, cloning and dropping them touches neither
/// the allocator nor a reference count; longer ones are backed by [`Bytes`]
/// (decoding slices them out of the received buffer, cloning is a reference-count
/// increment). Either way the UTF-8 is validated once, when the text is made.
#[derive(Clone)]
pub struct Text(TextRepr);

#[derive(Clone)]
enum TextRepr {
    Inline(arrayvec::ArrayString<INLINE>),
    Shared(ByteString),
}

impl Default for Text {
    fn default() -> Self {
        Text::new()
    }
}

impl Text {
    /// The empty text.
    pub const fn new() -> Text {
        Text(TextRepr::Shared(ByteString::new()))
    }

    /// A text pointing at a static string (no allocation).
    pub const fn from_static(s: &'static str) -> Text {
        Text(TextRepr::Shared(ByteString::from_static(s)))
    }

    /// Validates `bytes` as UTF-8 and wraps it without copying (a short text is
    /// copied inline instead).
    pub fn from_utf8(bytes: Bytes) -> Result<Text, WireError> {
        if bytes.len() <= INLINE {
            return Text::from_utf8_slice(&bytes, || bytes.clone());
        }
        ByteString::try_from(bytes)
            .map(|b| Text(TextRepr::Shared(b)))
            .map_err(|_| WireError::InvalidUtf8)
    }

    /// Validates `b` as UTF-8; a short text is copied inline, a longer one is the
    /// `Bytes` that `shared` returns (which must hold the same bytes as `b`).
    #[inline]
    pub(crate) fn from_utf8_slice(
        b: &[u8],
        shared: impl FnOnce() -> Bytes,
    ) -> Result<Text, WireError> {
        let s = utf8(b)?;
        Ok(Text::from_str_or(s, shared))
    }

    /// `s` inline when it is short, else the `Bytes` that `shared` returns (holding `s`).
    #[inline]
    fn from_str_or(s: &str, shared: impl FnOnce() -> Bytes) -> Text {
        match arrayvec::ArrayString::from(s) {
            Ok(a) => Text(TextRepr::Inline(a)),
            // `shared()` holds the bytes of `s`, which are UTF-8.
            Err(_) => Text(TextRepr::Shared(
                ByteString::try_from(shared()).unwrap_or_default(),
            )),
        }
    }

    /// The text as `&str`.
    #[inline]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            TextRepr::Inline(a) => a.as_str(),
            TextRepr::Shared(b) => b,
        }
    }

    /// The UTF-8 bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        self.as_str().as_bytes()
    }

    /// The UTF-8 bytes as [`Bytes`] (a reference-count increment for a long text, a
    /// copy of at most 20 bytes for a short one).
    pub fn to_bytes(&self) -> Bytes {
        match &self.0 {
            TextRepr::Inline(a) => Bytes::copy_from_slice(a.as_bytes()),
            TextRepr::Shared(b) => b.as_bytes().clone(),
        }
    }

    /// Unwraps the UTF-8 bytes (copied if the text is short).
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            TextRepr::Inline(a) => Bytes::copy_from_slice(a.as_bytes()),
            TextRepr::Shared(b) => b.into_bytes(),
        }
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// True when the text is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Text {}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Text) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Text) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl std::borrow::Borrow<str> for Text {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text::from_str_or(s, || Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        match arrayvec::ArrayString::from(s.as_str()) {
            Ok(a) => Text(TextRepr::Inline(a)),
            Err(_) => Text(TextRepr::Shared(ByteString::from(s))),
        }
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Wire tags of DataFrame values (also the element types of number arrays).
pub(crate) mod tag {
    pub const STR: u8 = 0x01;
    pub const BOOL: u8 = 0x02;
    pub const I8: u8 = 0x03;
    pub const I16: u8 = 0x04;
    pub const I32: u8 = 0x05;
    pub const I64: u8 = 0x06;
    pub const U8: u8 = 0x07;
    pub const U16: u8 = 0x08;
    pub const U32: u8 = 0x09;
    pub const U64: u8 = 0x0A;
    pub const F32: u8 = 0x0B;
    pub const F64: u8 = 0x0C;
    pub const BYTES: u8 = 0x0D;
    pub const ARRAY: u8 = 0x0E;
    pub const FRAME: u8 = 0x0F;
    pub const JSON: u8 = 0x10;
    pub const VARIANT: u8 = 0x11;
}

/// The element type of a [`NumArray`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NumKind {
    /// `i8`
    I8 = tag::I8,
    /// `i16`
    I16 = tag::I16,
    /// `i32`
    I32 = tag::I32,
    /// `i64`
    I64 = tag::I64,
    /// `u8`
    U8 = tag::U8,
    /// `u16`
    U16 = tag::U16,
    /// `u32`
    U32 = tag::U32,
    /// `u64`
    U64 = tag::U64,
    /// `f32`
    F32 = tag::F32,
    /// `f64`
    F64 = tag::F64,
}

impl NumKind {
    /// All kinds, in tag order.
    pub const ALL: [NumKind; 10] = [
        NumKind::I8,
        NumKind::I16,
        NumKind::I32,
        NumKind::I64,
        NumKind::U8,
        NumKind::U16,
        NumKind::U32,
        NumKind::U64,
        NumKind::F32,
        NumKind::F64,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            NumKind::I8 | NumKind::U8 => 1,
            NumKind::I16 | NumKind::U16 => 2,
            NumKind::I32 | NumKind::U32 | NumKind::F32 => 4,
            NumKind::I64 | NumKind::U64 | NumKind::F64 => 8,
        }
    }

    /// The wire tag.
    pub const fn tag(self) -> u8 {
        self as u8
    }

    /// The kind for a wire tag.
    pub fn from_tag(t: u8) -> Option<NumKind> {
        NumKind::ALL.get(t.wrapping_sub(tag::I8) as usize).copied()
    }

    /// Lower-case type name (`"i32"`, `"f64"`, ...), used by the JSON form.
    pub const fn name(self) -> &'static str {
        match self {
            NumKind::I8 => "i8",
            NumKind::I16 => "i16",
            NumKind::I32 => "i32",
            NumKind::I64 => "i64",
            NumKind::U8 => "u8",
            NumKind::U16 => "u16",
            NumKind::U32 => "u32",
            NumKind::U64 => "u64",
            NumKind::F32 => "f32",
            NumKind::F64 => "f64",
        }
    }

    /// The kind for a type name.
    pub fn from_name(n: &str) -> Option<NumKind> {
        NumKind::ALL.into_iter().find(|k| k.name() == n)
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A primitive number type that can live in a [`NumArray`] (sealed).
pub trait Number: Copy + sealed::Sealed + 'static {
    /// The element kind for this type.
    const KIND: NumKind;
    /// Appends the little-endian bytes.
    fn put_le(self, dst: &mut impl BufMut);
    /// Reads from exactly `size_of::<Self>()` little-endian bytes.
    fn read_le(b: &[u8]) -> Self;
    /// The value as `f64` (may round for 64-bit integers).
    fn to_f64(self) -> f64;
}

macro_rules! number {
    ($t:ty, $k:ident) => {
        impl sealed::Sealed for $t {}
        impl Number for $t {
            const KIND: NumKind = NumKind::$k;
            #[inline]
            fn put_le(self, dst: &mut impl BufMut) {
                dst.put_slice(&self.to_le_bytes());
            }
            #[inline]
            fn read_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
number!(i8, I8);
number!(i16, I16);
number!(i32, I32);
number!(i64, I64);
number!(u8, U8);
number!(u16, U16);
number!(u32, U32);
number!(u64, U64);
number!(f32, F32);
number!(f64, F64);

/// An array of numbers of one kind, stored as little-endian bytes (exactly the wire
/// form), so decoding is a zero-copy slice and elements are read on access.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NumArray {
    kind: NumKind,
    data: Bytes,
}

impl NumArray {
    /// An array holding a copy of `items`.
    pub fn from_slice<T: Number>(items: &[T]) -> NumArray {
        let mut v = Vec::with_capacity(items.len() * T::KIND.size());
        for &x in items {
            x.put_le(&mut v);
        }
        NumArray {
            kind: T::KIND,
            data: Bytes::from(v),
        }
    }

    /// Wraps raw little-endian element bytes; their length must be a multiple of the
    /// element size.
    pub fn from_raw(kind: NumKind, data: Bytes) -> Option<NumArray> {
        (data.len() % kind.size() == 0).then_some(NumArray { kind, data })
    }

    /// The element type.
    pub fn kind(&self) -> NumKind {
        self.kind
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.kind.size()
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The raw little-endian bytes.
    pub fn raw(&self) -> &Bytes {
        &self.data
    }

    /// Element `i` as `T`, if `T` is the array's element type and `i` is in range.
    pub fn get<T: Number>(&self, i: usize) -> Option<T> {
        let s = self.kind.size();
        if T::KIND != self.kind || i >= self.len() {
            return None;
        }
        Some(T::read_le(&self.data[i * s..(i + 1) * s]))
    }

    /// An iterator over the elements as `T`; `None` if `T` is not the element type.
    pub fn iter<T: Number>(&self) -> Option<impl Iterator<Item = T> + '_> {
        (T::KIND == self.kind).then(|| self.data.chunks_exact(self.kind.size()).map(T::read_le))
    }

    /// The elements copied into a `Vec<T>`; `None` if `T` is not the element type.
    pub fn to_vec<T: Number>(&self) -> Option<Vec<T>> {
        self.iter::<T>().map(|it| it.collect())
    }

    /// Element `i` converted to `f64` whatever the element type (lenient reader).
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        let s = self.kind.size();
        if i >= self.len() {
            return None;
        }
        let b = &self.data[i * s..(i + 1) * s];
        Some(match self.kind {
            NumKind::I8 => i8::read_le(b).to_f64(),
            NumKind::I16 => i16::read_le(b).to_f64(),
            NumKind::I32 => i32::read_le(b).to_f64(),
            NumKind::I64 => i64::read_le(b).to_f64(),
            NumKind::U8 => u8::read_le(b).to_f64(),
            NumKind::U16 => u16::read_le(b).to_f64(),
            NumKind::U32 => u32::read_le(b).to_f64(),
            NumKind::U64 => u64::read_le(b).to_f64(),
            NumKind::F32 => f32::read_le(b).to_f64(),
            NumKind::F64 => f64::read_le(b),
        })
    }
}

impl fmt::Debug for NumArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.name())?;
        let mut l = f.debug_list();
        for i in 0..self.len() {
            l.entry(&self.get_f64(i).unwrap_or(f64::NAN));
        }
        l.finish()
    }
}

/// A dynamically typed scalar (the seed's `Variant`): what a field holds when its
/// type is decided at run time.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Variant {
    /// No value (Delphi's `Null`/`Unassigned`).
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Text(Text),
}

/// Wire sub-tags of [`Variant`].
pub(crate) mod vtag {
    pub const NULL: u8 = 0;
    pub const BOOL: u8 = 1;
    pub const INT: u8 = 2;
    pub const UINT: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const TEXT: u8 = 5;
}

/// One typed value of a [`DataFrame`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// UTF-8 string.
    Str(Text),
    /// Boolean.
    Bool(bool),
    /// `i8`
    I8(i8),
    /// `i16`
    I16(i16),
    /// `i32`
    I32(i32),
    /// `i64`
    I64(i64),
    /// `u8`
    U8(u8),
    /// `u16`
    U16(u16),
    /// `u32`
    U32(u32),
    /// `u64`
    U64(u64),
    /// `f32`
    F32(f32),
    /// `f64`
    F64(f64),
    /// Raw bytes (a zero-copy slice of the received frame after decoding).
    Bytes(Bytes),
    /// An array of numbers of one kind.
    Array(NumArray),
    /// A nested DataFrame (boxed to keep `Value` small).
    Frame(Box<DataFrame>),
    /// A JSON document (boxed: it is rare and large).
    Json(Box<serde_json::Value>),
    /// A dynamically typed scalar.
    Variant(Variant),
}

impl Value {
    /// The type name used in errors and in the JSON form (`"str"`, `"i32"`, `"df"`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "str",
            Value::Bool(_) => "bool",
            Value::I8(_) => "i8",
            Value::I16(_) => "i16",
            Value::I32(_) => "i32",
            Value::I64(_) => "i64",
            Value::U8(_) => "u8",
            Value::U16(_) => "u16",
            Value::U32(_) => "u32",
            Value::U64(_) => "u64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "array",
            Value::Frame(_) => "df",
            Value::Json(_) => "json",
            Value::Variant(_) => "variant",
        }
    }

    /// Lenient conversion to `i128` (wide enough for every integer type): integers as
    /// they are, floats truncated toward zero when finite, bools as 0/1, numeric
    /// strings parsed (integer syntax first, then float syntax, surrounding spaces
    /// ignored), variants by their content, JSON numbers/strings/bools likewise.
    pub fn to_i128(&self) -> Option<i128> {
        match self {
            Value::I8(v) => Some(*v as i128),
            Value::I16(v) => Some(*v as i128),
            Value::I32(v) => Some(*v as i128),
            Value::I64(v) => Some(*v as i128),
            Value::U8(v) => Some(*v as i128),
            Value::U16(v) => Some(*v as i128),
            Value::U32(v) => Some(*v as i128),
            Value::U64(v) => Some(*v as i128),
            Value::F32(v) => float_to_i128(*v as f64),
            Value::F64(v) => float_to_i128(*v),
            Value::Bool(b) => Some(*b as i128),
            Value::Str(s) => str_to_i128(s),
            Value::Variant(v) => match v {
                Variant::Null => None,
                Variant::Bool(b) => Some(*b as i128),
                Variant::Int(i) => Some(*i as i128),
                Variant::UInt(u) => Some(*u as i128),
                Variant::Float(f) => float_to_i128(*f),
                Variant::Text(s) => str_to_i128(s),
            },
            Value::Json(j) => match &**j {
                serde_json::Value::Bool(b) => Some(*b as i128),
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(i128::from)
                    .or_else(|| n.as_u64().map(i128::from))
                    .or_else(|| n.as_f64().and_then(float_to_i128)),
                serde_json::Value::String(s) => str_to_i128(s),
                _ => None,
            },
            Value::Bytes(_) | Value::Array(_) | Value::Frame(_) => None,
        }
    }

    /// Lenient conversion to `f64`: any number, bools as 0/1, numeric strings,
    /// variants and JSON scalars by their content.
    pub fn to_f64(&self) -> Option<f64> {
        match self {
            Value::F32(v) => Some(*v as f64),
            Value::F64(v) => Some(*v),
            Value::Str(s) => s.trim().parse().ok(),
            Value::Variant(Variant::Float(f)) => Some(*f),
            Value::Variant(Variant::Text(s)) => s.trim().parse().ok(),
            Value::Json(j) => match &**j {
                serde_json::Value::Number(n) => n.as_f64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                serde_json::Value::Bool(b) => Some(*b as u8 as f64),
                _ => None,
            },
            other => other.to_i128().map(|i| i as f64),
        }
    }

    /// Lenient conversion to `bool`: bools, numbers (non-zero is true), strings
    /// `true`/`false`/`yes`/`no`/`1`/`0` (any case), variants and JSON scalars.
    pub fn to_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) | Value::Variant(Variant::Bool(b)) => Some(*b),
            Value::Str(s) | Value::Variant(Variant::Text(s)) => str_to_bool(s),
            Value::Json(j) => match &**j {
                serde_json::Value::Bool(b) => Some(*b),
                serde_json::Value::String(s) => str_to_bool(s),
                serde_json::Value::Number(n) => n.as_f64().map(|f| f != 0.0),
                _ => None,
            },
            other => other.to_f64().map(|f| f != 0.0),
        }
    }

    /// The string inside a `Str` value or a text variant, without conversion.
    pub fn as_text(&self) -> Option<&Text> {
        match self {
            Value::Str(s) | Value::Variant(Variant::Text(s)) => Some(s),
            _ => None,
        }
    }

    /// Lenient conversion to text: strings as they are; numbers, bools and variants
    /// formatted (Rust's `Display`, so floats round-trip); JSON as its text.
    pub fn to_text(&self) -> Option<Text> {
        Some(match self {
            Value::Str(s) => s.clone(),
            Value::Bool(b) => Text::from_static(if *b { "true" } else { "false" }),
            Value::I8(v) => v.to_string().into(),
            Value::I16(v) => v.to_string().into(),
            Value::I32(v) => v.to_string().into(),
            Value::I64(v) => v.to_string().into(),
            Value::U8(v) => v.to_string().into(),
            Value::U16(v) => v.to_string().into(),
            Value::U32(v) => v.to_string().into(),
            Value::U64(v) => v.to_string().into(),
            Value::F32(v) => v.to_string().into(),
            Value::F64(v) => v.to_string().into(),
            Value::Variant(v) => match v {
                Variant::Null => return None,
                Variant::Bool(b) => Text::from_static(if *b { "true" } else { "false" }),
                Variant::Int(i) => i.to_string().into(),
                Variant::UInt(u) => u.to_string().into(),
                Variant::Float(f) => f.to_string().into(),
                Variant::Text(s) => s.clone(),
            },
            Value::Json(j) => match &**j {
                serde_json::Value::String(s) => s.as_str().into(),
                other => other.to_string().into(),
            },
            Value::Bytes(_) | Value::Array(_) | Value::Frame(_) => return None,
        })
    }

    /// Lenient conversion to [`Variant`]: scalars map to the matching variant case
    /// (integers widen to `Int`/`UInt`, floats to `Float`).
    pub fn to_variant(&self) -> Option<Variant> {
        Some(match self {
            Value::Variant(v) => v.clone(),
            Value::Str(s) => Variant::Text(s.clone()),
            Value::Bool(b) => Variant::Bool(*b),
            Value::I8(v) => Variant::Int(*v as i64),
            Value::I16(v) => Variant::Int(*v as i64),
            Value::I32(v) => Variant::Int(*v as i64),
            Value::I64(v) => Variant::Int(*v),
            Value::U8(v) => Variant::UInt(*v as u64),
            Value::U16(v) => Variant::UInt(*v as u64),
            Value::U32(v) => Variant::UInt(*v as u64),
            Value::U64(v) => Variant::UInt(*v),
            Value::F32(v) => Variant::Float(*v as f64),
            Value::F64(v) => Variant::Float(*v),
            Value::Json(j) => match &**j {
                serde_json::Value::Null => Variant::Null,
                serde_json::Value::Bool(b) => Variant::Bool(*b),
                serde_json::Value::String(s) => Variant::Text(s.as_str().into()),
                serde_json::Value::Number(n) => {
                    if let Some(i) = n.as_i64() {
                        Variant::Int(i)
                    } else if let Some(u) = n.as_u64() {
                        Variant::UInt(u)
                    } else {
                        Variant::Float(n.as_f64()?)
                    }
                }
                _ => return None,
            },
            Value::Bytes(_) | Value::Array(_) | Value::Frame(_) => return None,
        })
    }
}

pub(crate) fn float_to_i128(f: f64) -> Option<i128> {
    // Truncation toward zero; out-of-range and non-finite values are refused
    // (2^127 is exactly representable, so the bounds are exact).
    let t = f.trunc();
    (-1.7014118346046923e38..1.7014118346046923e38)
        .contains(&t)
        .then_some(t as i128)
}

fn str_to_i128(s: &str) -> Option<i128> {
    let s = s.trim();
    s.parse::<i128>()
        .ok()
        .or_else(|| s.parse::<f64>().ok().and_then(float_to_i128))
}

fn str_to_bool(s: &str) -> Option<bool> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("yes") || s == "1" {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") || s.eq_ignore_ascii_case("no") || s == "0" {
        Some(false)
    } else {
        s.parse::<f64>().ok().map(|f| f != 0.0)
    }
}

macro_rules! from_prim {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Value {
                Value::$v(x)
            }
        }
    )*};
}
from_prim!(bool => Bool, i8 => I8, i16 => I16, i32 => I32, i64 => I64, u8 => U8, u16 => U16,
    u32 => U32, u64 => U64, f32 => F32, f64 => F64, Text => Str, Bytes => Bytes,
    NumArray => Array, Variant => Variant);

impl From<DataFrame> for Value {
    fn from(df: DataFrame) -> Value {
        Value::Frame(Box::new(df))
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.into())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s.into())
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Bytes(b.into())
    }
}

impl From<serde_json::Value> for Value {
    fn from(j: serde_json::Value) -> Value {
        Value::Json(Box::new(j))
    }
}

/// `b` as `&str`, or [`WireError::InvalidUtf8`]: the one UTF-8 check of wire
/// text. simdutf8 gives std's answer, but its fast path does not depend on
/// where the text lies: std's `str::from_utf8` checks a word at a time only
/// from `usize`-aligned addresses, so a 64-byte text at offset 3 or 7 of a
/// record cost 95-119 instructions against 16 aligned (session 14, pipe13's
/// profile), and texts lie wherever the frame put them.
#[inline]
pub(crate) fn utf8(b: &[u8]) -> Result<&str, WireError> {
    simdutf8::basic::from_utf8(b).map_err(|_| WireError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    proptest::proptest! {
        /// Random bytes and random text, with a byte flipped, at any offset:
        /// the one UTF-8 check says what std says.
        #[test]
        fn the_utf8_check_agrees_with_std_on_random_input(
            text in ".{0,150}",
            flip in proptest::option::of((0usize..600, proptest::prelude::any::<u8>())),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..150),
            off in 0usize..16,
        ) {
            let mut body = text.into_bytes();
            if let Some((at, x)) = flip {
                if !body.is_empty() {
                    let n = body.len();
                    body[at % n] = x;
                }
            }
            for b in [&body[..], &noise[..]] {
                let mut buf = vec![b'x'; off];
                buf.extend_from_slice(b);
                let b = &buf[off..];
                proptest::prop_assert_eq!(utf8(b).is_ok(), std::str::from_utf8(b).is_ok());
            }
        }
    }

    /// The one UTF-8 check agrees with std on valid text, on every kind of
    /// invalid sequence, and wherever the bytes lie (offsets 0-15 of a buffer,
    /// lengths across simdutf8's 64-byte blocks).
    #[test]
    fn the_utf8_check_agrees_with_std_at_every_offset() {
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"echo".to_vec(),
            "h\u{e9}llo \u{4e16}\u{754c} \u{1f600}".as_bytes().to_vec(),
            vec![0xff],
            vec![0xc0, 0x80],             // overlong NUL
            vec![0xe0, 0x80, 0x80],       // overlong
            vec![0xed, 0xa0, 0x80],       // surrogate
            vec![0xf4, 0x90, 0x80, 0x80], // above U+10FFFF
            vec![0xe4, 0xb8],             // cut short
            vec![0x80],                   // lone continuation
        ];
        let mut buf = Vec::new();
        for case in &cases {
            for pad in [0usize, 1, 30, 63, 64, 65, 200] {
                for at in [0usize, pad] {
                    // `case` at the front or the back of `pad` ASCII bytes.
                    let mut body = vec![b'a'; pad];
                    body.splice(at..at, case.iter().copied());
                    for off in 0..16 {
                        buf.clear();
                        buf.resize(off, b'x');
                        buf.extend_from_slice(&body);
                        let b = &buf[off..];
                        assert_eq!(utf8(b).is_ok(), std::str::from_utf8(b).is_ok(), "{b:?}");
                        if let Ok(s) = utf8(b) {
                            assert_eq!(s.as_bytes(), b);
                        }
                    }
                }
            }
        }
    }

    use super::*;

    #[test]
    fn lenient_conversions() {
        assert_eq!(Value::F64(3.9).to_i128(), Some(3));
        assert_eq!(Value::F64(-3.9).to_i128(), Some(-3));
        assert_eq!(Value::F64(f64::NAN).to_i128(), None);
        assert_eq!(Value::from(" 42 ").to_i128(), Some(42));
        assert_eq!(Value::from("4.5e1").to_i128(), Some(45));
        assert_eq!(Value::from("x").to_i128(), None);
        assert_eq!(Value::Bool(true).to_i128(), Some(1));
        assert_eq!(Value::U64(u64::MAX).to_i128(), Some(u64::MAX as i128));
        assert_eq!(Value::from("2.5").to_f64(), Some(2.5));
        assert_eq!(Value::I32(0).to_bool(), Some(false));
        assert_eq!(Value::from("Yes").to_bool(), Some(true));
        assert_eq!(Value::F32(1.5).to_text().unwrap(), "1.5");
        assert_eq!(Value::Variant(Variant::Float(2.0)).to_i128(), Some(2));
        assert_eq!(Value::from(serde_json::json!("7")).to_i128(), Some(7));
        assert_eq!(Value::Bytes(Bytes::new()).to_i128(), None);
    }

    #[test]
    fn num_array_access() {
        let a = NumArray::from_slice(&[1i32, -2, 3]);
        assert_eq!(a.len(), 3);
        assert_eq!(a.kind(), NumKind::I32);
        assert_eq!(a.get::<i32>(1), Some(-2));
        assert_eq!(a.get::<u32>(1), None);
        assert_eq!(a.get::<i32>(3), None);
        assert_eq!(a.to_vec::<i32>().unwrap(), vec![1, -2, 3]);
        assert_eq!(a.get_f64(2), Some(3.0));
        assert!(NumArray::from_raw(NumKind::U16, Bytes::from_static(&[1, 2, 3])).is_none());
        for k in NumKind::ALL {
            assert_eq!(NumKind::from_tag(k.tag()), Some(k));
            assert_eq!(NumKind::from_name(k.name()), Some(k));
        }
        assert_eq!(NumKind::from_tag(0x02), None);
        assert_eq!(NumKind::from_tag(0x0D), None);
    }

    #[test]
    fn text_inline_and_shared_agree() {
        use std::collections::hash_map::DefaultHasher;
        use std::hash::{Hash, Hasher};
        fn hash(t: &Text) -> u64 {
            let mut h = DefaultHasher::new();
            t.hash(&mut h);
            h.finish()
        }
        let long = "a string longer than the inline capacity";
        for s in ["", "echo", "exactly-twenty-bytes", long, "héllo wörld"] {
            let inline_or_copy = Text::from(s);
            let shared = Text::from_utf8(Bytes::copy_from_slice(s.as_bytes())).unwrap();
            let owned = Text::from(s.to_string());
            assert_eq!(inline_or_copy, shared);
            assert_eq!(owned, shared);
            assert_eq!(hash(&inline_or_copy), hash(&shared), "{s}");
            assert_eq!(inline_or_copy.as_str(), s);
            assert_eq!(shared.len(), s.len());
            assert_eq!(&shared.to_bytes()[..], s.as_bytes());
            assert_eq!(&inline_or_copy.clone().into_bytes()[..], s.as_bytes());
            assert_eq!(inline_or_copy.cmp(&shared), std::cmp::Ordering::Equal);
        }
        assert_eq!(Text::from_static("echo"), Text::from("echo"));
        assert_eq!(
            Text::from("a").cmp(&Text::from(long)),
            std::cmp::Ordering::Less
        );
        let map: std::collections::HashMap<Text, u8> = [(Text::from("k"), 1)].into();
        assert_eq!(map.get("k"), Some(&1), "Borrow<str> hashes like str");
        // The inline form keeps `Text` as small as a `Bytes`.
        assert_eq!(std::mem::size_of::<Text>(), std::mem::size_of::<Bytes>());
    }

    #[test]
    fn text_validates() {
        assert_eq!(
            Text::from_utf8(Bytes::from(
                vec![b'a'; 40].into_iter().chain([0xc3]).collect::<Vec<_>>()
            )),
            Err(WireError::InvalidUtf8),
            "long invalid text"
        );
        assert_eq!(Text::from_utf8(Bytes::from_static(b"hi")).unwrap(), "hi");
        assert_eq!(
            Text::from_utf8(Bytes::from_static(&[0xff])),
            Err(WireError::InvalidUtf8)
        );
    }
}
