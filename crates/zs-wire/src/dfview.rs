//! [`DataFrameView`]: typed index access straight from the bytes of a DataFrame.

use bytes::Bytes;

use crate::dataframe::{build_value, top_count, validate_value};
use crate::value::tag;
use crate::varint::{get_varint, varint_fast, Cursor, Varint};
use crate::{Limits, Value, WireError};

/// Values whose offsets are kept inline (no allocation); more go to the heap.
const INLINE: usize = 16;

/// Where each top-level value starts (the byte of its tag).
#[derive(Debug, Clone)]
enum Offsets {
    Inline { n: usize, at: [usize; INLINE] },
    Heap(Vec<usize>),
}

impl Offsets {
    #[inline]
    fn as_slice(&self) -> &[usize] {
        match self {
            Offsets::Inline { n, at } => &at[..*n],
            Offsets::Heap(v) => v,
        }
    }
}

/// Typed index access to a DataFrame's values, read in place from its bytes.
///
/// [`decode`](DataFrameView::decode) makes one pass over the bytes that checks
/// them exactly as [`DataFrame::decode`](crate::DataFrame::decode) does (the same
/// [`Limits`], the same errors, UTF-8 and JSON syntax included) and records where
/// each top-level value starts (inline for up to 16 values, no allocation). No
/// [`Value`] is built: the getters read one value from the bytes when asked, and
/// strings and byte strings are borrowed from them (`&str`, `&[u8]`, no copy, no
/// reference count). Use it when a request's values are read by position and then
/// dropped; keep a [`DataFrame`](crate::DataFrame) to hold on to the values or
/// to forward them.
///
/// The getters are strict: `get_u32(i)` reads a `u32` value and nothing else
/// (no lenient conversion as in [`Reader`](crate::Reader)); another kind is
/// [`WireError::TypeMismatch`] (with the type name of the value found, as
/// [`Value::type_name`]) and an index past the end [`WireError::ReadPastEnd`].
/// [`get_value`](DataFrameView::get_value) builds any one value as `decode` would.
///
/// `get_str` returns a `&str` over bytes the decoding pass has checked; because
/// this crate has no `unsafe`, it re-derives the `&str` with a UTF-8 check that
/// cannot fail (cost linear in the string, no allocation).
///
/// ```
/// use zs_wire::{DataFrame, DataFrameView, Limits, WireError};
/// let blob = zs_wire::bytes::Bytes::from_static(b"\x07");
/// let bytes = DataFrame::new().with(7u32).with("seven").with(blob).to_bytes();
/// let view = DataFrameView::decode(&bytes, &Limits::default()).unwrap();
/// assert_eq!(view.len(), 3);
/// assert_eq!(view.get_str(1), Ok("seven"));
/// assert_eq!(view.get_u32(0), Ok(7));
/// assert_eq!(view.get_bytes(2), Ok(&[7u8][..]));
/// assert_eq!(
///     view.get_u64(0),
///     Err(WireError::TypeMismatch { index: 0, expected: "u64", found: "u32" })
/// );
/// assert_eq!(view.get_u32(3), Err(WireError::ReadPastEnd { index: 3 }));
/// // Damaged bytes are refused up front, with the error `DataFrame::decode` gives.
/// let cut = bytes.slice(..bytes.len() - 1);
/// assert_eq!(
///     DataFrameView::decode(&cut, &Limits::default()).unwrap_err(),
///     DataFrame::decode(&cut, &Limits::default()).unwrap_err()
/// );
/// ```
#[derive(Debug, Clone)]
pub struct DataFrameView<'a> {
    src: &'a Bytes,
    offsets: Offsets,
}

/// Generates strict getters of fixed-size numbers.
macro_rules! fixed_getters {
    ($($(#[$doc:meta])* $name:ident -> $t:ty = $tag:ident, $tn:literal;)*) => {$(
        $(#[$doc])*
        #[inline]
        pub fn $name(&self, i: usize) -> Result<$t, WireError> {
            Ok(<$t>::from_le_bytes(self.fixed(i, tag::$tag, $tn)?))
        }
    )*};
}

impl<'a> DataFrameView<'a> {
    /// Checks `src` as one whole DataFrame against `limits` (the checks and
    /// errors of [`DataFrame::decode`](crate::DataFrame::decode)) and records
    /// where each of its values starts.
    pub fn decode(src: &'a Bytes, limits: &Limits) -> Result<DataFrameView<'a>, WireError> {
        let mut cur = Cursor::new(src.clone());
        let (count, mut budget) = top_count(&mut cur, limits)?;
        let offsets = if count <= INLINE {
            let mut at = [0usize; INLINE];
            for slot in &mut at[..count] {
                *slot = cur.pos();
                validate_value(&mut cur, limits, 1, &mut budget, true)?;
            }
            Offsets::Inline { n: count, at }
        } else {
            // Each value takes at least two bytes: a count beyond that never
            // sizes the allocation (the loop then ends in a truncation error).
            let mut v = Vec::with_capacity(count.min(cur.remaining() / 2));
            for _ in 0..count {
                v.push(cur.pos());
                validate_value(&mut cur, limits, 1, &mut budget, true)?;
            }
            Offsets::Heap(v)
        };
        cur.finish()?;
        Ok(DataFrameView { src, offsets })
    }

    /// Number of values (not counting those inside nested DataFrames).
    #[inline]
    pub fn len(&self) -> usize {
        self.offsets.as_slice().len()
    }

    /// True when there are no values.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The DataFrame's bytes (all of them, as given to `decode`).
    #[inline]
    pub fn as_bytes(&self) -> &'a [u8] {
        self.src
    }

    /// The tag of value `i` and the position of its payload.
    #[inline]
    fn at(&self, i: usize) -> Result<(u8, usize), WireError> {
        let p = *self
            .offsets
            .as_slice()
            .get(i)
            .ok_or(WireError::ReadPastEnd { index: i })?;
        // Validated: a tag byte is there.
        let t = *self
            .src
            .get(p)
            .ok_or(WireError::Truncated { field: "value tag" })?;
        Ok((t, p + 1))
    }

    /// The payload of value `i` when its tag is `t`.
    #[inline]
    fn payload(&self, i: usize, t: u8, expected: &'static str) -> Result<usize, WireError> {
        let (found, p) = self.at(i)?;
        if found != t {
            return Err(WireError::TypeMismatch {
                index: i,
                expected,
                found: type_name(found),
            });
        }
        Ok(p)
    }

    #[inline]
    fn fixed<const N: usize>(
        &self,
        i: usize,
        t: u8,
        expected: &'static str,
    ) -> Result<[u8; N], WireError> {
        let p = self.payload(i, t, expected)?;
        self.src
            .get(p..p + N)
            .and_then(|b| b.try_into().ok())
            .ok_or(WireError::Truncated { field: expected })
    }

    /// The length-prefixed bytes at `p`.
    #[inline]
    fn lp(&self, p: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let src: &'a [u8] = self.src;
        let rest = src.get(p..).ok_or(WireError::Truncated { field })?;
        let (n, h) = match varint_fast(rest) {
            Some(x) => x,
            None => match get_varint(rest)? {
                Varint::Done(n, h) => (n, h),
                Varint::Incomplete => return Err(WireError::Truncated { field }),
            },
        };
        usize::try_from(n)
            .ok()
            .and_then(|n| rest.get(h..h.checked_add(n)?))
            .ok_or(WireError::Truncated { field })
    }

    fixed_getters! {
        /// Value `i` when it is an `i8`.
        get_i8 -> i8 = I8, "i8";
        /// Value `i` when it is an `i16`.
        get_i16 -> i16 = I16, "i16";
        /// Value `i` when it is an `i32`.
        get_i32 -> i32 = I32, "i32";
        /// Value `i` when it is an `i64`.
        get_i64 -> i64 = I64, "i64";
        /// Value `i` when it is a `u8`.
        get_u8 -> u8 = U8, "u8";
        /// Value `i` when it is a `u16`.
        get_u16 -> u16 = U16, "u16";
        /// Value `i` when it is a `u32`.
        get_u32 -> u32 = U32, "u32";
        /// Value `i` when it is a `u64`.
        get_u64 -> u64 = U64, "u64";
        /// Value `i` when it is an `f32`.
        get_f32 -> f32 = F32, "f32";
        /// Value `i` when it is an `f64`.
        get_f64 -> f64 = F64, "f64";
    }

    /// Value `i` when it is a `bool`.
    #[inline]
    pub fn get_bool(&self, i: usize) -> Result<bool, WireError> {
        let [b] = self.fixed::<1>(i, tag::BOOL, "bool")?;
        Ok(b != 0)
    }

    /// Value `i` when it is a string, borrowed from the bytes.
    #[inline]
    pub fn get_str(&self, i: usize) -> Result<&'a str, WireError> {
        let p = self.payload(i, tag::STR, "str")?;
        let b = self.lp(p, "string")?;
        // Checked by `decode`; this check cannot fail (no `unsafe` in this crate).
        crate::value::utf8(b)
    }

    /// Value `i` when it is a byte string, borrowed from the bytes.
    #[inline]
    pub fn get_bytes(&self, i: usize) -> Result<&'a [u8], WireError> {
        let p = self.payload(i, tag::BYTES, "bytes")?;
        self.lp(p, "bytes")
    }

    /// The type name of value `i` (as [`Value::type_name`]).
    #[inline]
    pub fn type_name(&self, i: usize) -> Result<&'static str, WireError> {
        Ok(type_name(self.at(i)?.0))
    }

    /// Value `i` built as a [`Value`], exactly as [`DataFrame::decode`](crate::DataFrame::decode)
    /// builds it (byte strings and arrays are zero-copy slices of the source
    /// buffer, nested DataFrames validated and built lazily, JSON parsed).
    pub fn get_value(&self, i: usize) -> Result<Value, WireError> {
        let p = *self
            .offsets
            .as_slice()
            .get(i)
            .ok_or(WireError::ReadPastEnd { index: i })?;
        let mut cur = Cursor::new(self.src.clone());
        cur.set_pos(p);
        build_value(&mut cur)
    }
}

/// The type name of a value tag (as [`Value::type_name`]); only tags the
/// decoding pass accepted reach here.
fn type_name(t: u8) -> &'static str {
    match t {
        tag::STR => "str",
        tag::BOOL => "bool",
        tag::I8 => "i8",
        tag::I16 => "i16",
        tag::I32 => "i32",
        tag::I64 => "i64",
        tag::U8 => "u8",
        tag::U16 => "u16",
        tag::U32 => "u32",
        tag::U64 => "u64",
        tag::F32 => "f32",
        tag::F64 => "f64",
        tag::BYTES => "bytes",
        tag::ARRAY => "array",
        tag::FRAME => "df",
        tag::JSON => "json",
        tag::VARIANT => "variant",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataFrame;

    #[test]
    fn tag_names_match_value_type_names() {
        let values: Vec<Value> = vec![
            Value::from("s"),
            Value::Bool(true),
            Value::I8(1),
            Value::I16(1),
            Value::I32(1),
            Value::I64(1),
            Value::U8(1),
            Value::U16(1),
            Value::U32(1),
            Value::U64(1),
            Value::F32(1.0),
            Value::F64(1.0),
            Value::Bytes(Bytes::from_static(b"b")),
            Value::from(DataFrame::new().with(1u8)),
        ];
        let df: DataFrame = values.iter().cloned().collect();
        let b = df.to_bytes();
        let view = DataFrameView::decode(&b, &Limits::default()).unwrap();
        assert_eq!(view.len(), values.len());
        for (i, v) in values.iter().enumerate() {
            assert_eq!(view.type_name(i), Ok(v.type_name()), "value {i}");
        }
    }

    #[test]
    fn many_values_use_the_heap_offsets() {
        let df: DataFrame = (0..40u32).map(Value::U32).collect();
        let b = df.to_bytes();
        let view = DataFrameView::decode(&b, &Limits::default()).unwrap();
        assert!(matches!(view.offsets, Offsets::Heap(_)));
        for i in 0..40 {
            assert_eq!(view.get_u32(i), Ok(i as u32));
        }
        assert_eq!(view.get_u32(40), Err(WireError::ReadPastEnd { index: 40 }));
    }

    #[test]
    fn a_huge_count_is_refused_without_sizing_an_allocation() {
        // Count 1,000,000 (within a raised limit), two bytes of values.
        let b = Bytes::from_static(&[0xC0, 0x84, 0x3D, tag::U8, 1]);
        let limits = Limits {
            max_values: 2_000_000,
            ..Limits::default()
        };
        assert_eq!(
            DataFrameView::decode(&b, &limits).unwrap_err(),
            DataFrame::decode(&b, &limits).unwrap_err()
        );
    }
}
