//! Conversion between [`DataFrame`] and JSON.
//!
//! Two forms:
//! - the **typed** form ([`DataFrame::to_json`] / [`DataFrame::from_json`]) is lossless:
//!   a JSON array with one object per value, `{"t": type, "v": value}`;
//! - the **plain** form ([`DataFrame::to_plain_json`]) is for people and foreign
//!   tools: a JSON array of plain JSON values, types dropped.
//!
//! Typed form, per type name `t`:
//! - `str`: `v` is a string; `bool`: a bool; `i8`..`u64`: an integer;
//! - `f32`, `f64`: a number, or the string `"inf"`, `"-inf"`, `"NaN"` (the canonical
//!   NaN) or `"NaN:<hex bits>"` (any other NaN: 8 hex digits for f32, 16 for f64);
//! - `bytes`: lower-case hex string;
//! - `array`: `"of"` names the element type, `v` is a list of numbers (same float rule);
//! - `df`: `v` is the nested DataFrame's typed form; `json`: `v` is the JSON value;
//! - `variant`: `"k"` is one of `null`, `bool`, `int`, `uint`, `float`, `text`, and
//!   `v` the content (absent for `null`).

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value as J};

use crate::value::{NumArray, NumKind, Text, Value, Variant};
use crate::{DataFrame, Limits, WireError};

/// JSON for an `f64`: a number when finite, else `"inf"`, `"-inf"`, `"NaN"` (the
/// canonical NaN) or `"NaN:<16 hex digits of the bits>"` (any other NaN), so even
/// NaN payloads survive the typed form.
fn f64_json(f: f64) -> J {
    if f.is_finite() {
        json!(f)
    } else if f.is_nan() {
        if f.to_bits() == f64::NAN.to_bits() {
            json!("NaN")
        } else {
            json!(format!("NaN:{:016x}", f.to_bits()))
        }
    } else if f > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

/// JSON for an `f32`, like [`f64_json`] with 8 hex digits for NaN payloads.
fn f32_json(f: f32) -> J {
    if f.is_nan() {
        if f.to_bits() == f32::NAN.to_bits() {
            json!("NaN")
        } else {
            json!(format!("NaN:{:08x}", f.to_bits()))
        }
    } else {
        // Every finite f32 is exactly an f64, and infinities map to "inf"/"-inf".
        f64_json(f as f64)
    }
}

/// The bits of a `"NaN:<hex>"` string with exactly `digits` hex digits.
fn nan_bits(s: &str, digits: usize) -> Option<u64> {
    let h = s.strip_prefix("NaN:").filter(|h| h.len() == digits)?;
    u64::from_str_radix(h, 16).ok()
}

fn json_f64(j: &J) -> Option<f64> {
    match j {
        J::Number(n) => n.as_f64(),
        J::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "inf" => Some(f64::INFINITY),
            "-inf" => Some(f64::NEG_INFINITY),
            other => Some(f64::from_bits(nan_bits(other, 16)?)).filter(|f| f.is_nan()),
        },
        _ => None,
    }
}

fn json_f32(j: &J) -> Option<f32> {
    match j {
        J::String(s) if s == "NaN" => Some(f32::NAN),
        J::String(s) if s.starts_with("NaN:") => {
            let bits = u32::try_from(nan_bits(s, 8)?).ok()?;
            Some(f32::from_bits(bits)).filter(|f| f.is_nan())
        }
        other => json_f64(other).map(|f| f as f32),
    }
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    fn d(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(d(p[0])? << 4 | d(p[1])?))
        .collect()
}

fn array_elem_json(a: &NumArray, i: usize) -> J {
    match a.kind() {
        NumKind::I8 | NumKind::I16 | NumKind::I32 | NumKind::I64 => {
            json!(signed_elem(a, i))
        }
        NumKind::U8 | NumKind::U16 | NumKind::U32 | NumKind::U64 => json!(unsigned_elem(a, i)),
        NumKind::F32 => f32_json(a.get::<f32>(i).unwrap_or(f32::NAN)),
        NumKind::F64 => f64_json(a.get::<f64>(i).unwrap_or(f64::NAN)),
    }
}

fn signed_elem(a: &NumArray, i: usize) -> i64 {
    match a.kind() {
        NumKind::I8 => a.get::<i8>(i).unwrap_or(0) as i64,
        NumKind::I16 => a.get::<i16>(i).unwrap_or(0) as i64,
        NumKind::I32 => a.get::<i32>(i).unwrap_or(0) as i64,
        _ => a.get::<i64>(i).unwrap_or(0),
    }
}

fn unsigned_elem(a: &NumArray, i: usize) -> u64 {
    match a.kind() {
        NumKind::U8 => a.get::<u8>(i).unwrap_or(0) as u64,
        NumKind::U16 => a.get::<u16>(i).unwrap_or(0) as u64,
        NumKind::U32 => a.get::<u32>(i).unwrap_or(0) as u64,
        _ => a.get::<u64>(i).unwrap_or(0),
    }
}

fn typed_value(v: &Value) -> J {
    let t = v.type_name();
    match v {
        Value::Str(s) => json!({"t": t, "v": s.as_str()}),
        Value::Bool(b) => json!({"t": t, "v": b}),
        Value::I8(x) => json!({"t": t, "v": x}),
        Value::I16(x) => json!({"t": t, "v": x}),
        Value::I32(x) => json!({"t": t, "v": x}),
        Value::I64(x) => json!({"t": t, "v": x}),
        Value::U8(x) => json!({"t": t, "v": x}),
        Value::U16(x) => json!({"t": t, "v": x}),
        Value::U32(x) => json!({"t": t, "v": x}),
        Value::U64(x) => json!({"t": t, "v": x}),
        Value::F32(x) => json!({"t": t, "v": f32_json(*x)}),
        Value::F64(x) => json!({"t": t, "v": f64_json(*x)}),
        Value::Bytes(b) => json!({"t": t, "v": hex(b)}),
        Value::Array(a) => {
            let items: Vec<J> = (0..a.len()).map(|i| array_elem_json(a, i)).collect();
            json!({"t": t, "of": a.kind().name(), "v": items})
        }
        Value::Frame(df) => json!({"t": t, "v": df.to_json()}),
        Value::Json(j) => json!({"t": t, "v": j}),
        Value::Variant(var) => match var {
            Variant::Null => json!({"t": t, "k": "null"}),
            Variant::Bool(b) => json!({"t": t, "k": "bool", "v": b}),
            Variant::Int(i) => json!({"t": t, "k": "int", "v": i}),
            Variant::UInt(u) => json!({"t": t, "k": "uint", "v": u}),
            Variant::Float(f) => json!({"t": t, "k": "float", "v": f64_json(*f)}),
            Variant::Text(s) => json!({"t": t, "k": "text", "v": s.as_str()}),
        },
    }
}

/// The plain JSON mapping of one value (see the module docs).
pub(crate) fn plain_value(v: &Value) -> J {
    let num = |f: f64| {
        serde_json::Number::from_f64(f)
            .map(J::Number)
            .unwrap_or(J::Null)
    };
    match v {
        Value::Str(s) => json!(s.as_str()),
        Value::Bool(b) => json!(b),
        Value::I8(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::U8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::F32(x) => num(*x as f64),
        Value::F64(x) => num(*x),
        Value::Bytes(b) => json!(hex(b)),
        Value::Array(a) => J::Array(
            (0..a.len())
                .map(|i| match a.kind() {
                    NumKind::F32 | NumKind::F64 => num(a.get_f64(i).unwrap_or(f64::NAN)),
                    _ => array_elem_json(a, i),
                })
                .collect(),
        ),
        Value::Frame(df) => df.to_plain_json(),
        Value::Json(j) => (**j).clone(),
        Value::Variant(var) => match var {
            Variant::Null => J::Null,
            Variant::Bool(b) => json!(b),
            Variant::Int(i) => json!(i),
            Variant::UInt(u) => json!(u),
            Variant::Float(f) => num(*f),
            Variant::Text(s) => json!(s.as_str()),
        },
    }
}

/// Checks that `text` is one JSON value exactly as [`serde_json::from_slice`] into a
/// [`serde_json::Value`] would accept it (same parser, same UTF-8, escape, number
/// range and nesting rules, including serde_json's recursion limit of 128, so at most
/// 127 nested arrays/objects), without building anything.
///
/// Cost: one linear pass over the text. Memory: no allocation per element; only
/// serde_json's scratch buffer for a string containing escapes (at most that string's
/// length) and a native stack frame per nesting level (at most 127).
pub(crate) fn validate(text: &[u8]) -> Result<(), WireError> {
    serde_json::from_slice::<Valid>(text)
        .map(drop)
        .map_err(|e| WireError::Json(e.to_string()))
}

/// A JSON value that was checked and dropped as it was read.
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Valid, D::Error> {
        // `deserialize_any` is the path `serde_json::Value` takes (unlike
        // `deserialize_ignored_any`, which skips strings and numbers without
        // checking their UTF-8, escapes or range).
        d.deserialize_any(ValidVisitor)
    }
}

struct ValidVisitor;

impl<'de> Visitor<'de> for ValidVisitor {
    type Value = Valid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Valid, E> {
        Ok(Valid)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
        while seq.next_element::<Valid>()?.is_some() {}
        Ok(Valid)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
        while map.next_key::<Valid>()?.is_some() {
            map.next_value::<Valid>()?;
        }
        Ok(Valid)
    }
}

fn bad(msg: impl Into<String>) -> WireError {
    WireError::Json(msg.into())
}

fn int_of<T: TryFrom<i128>>(v: Option<&J>) -> Result<T, WireError> {
    let n = match v {
        Some(J::Number(n)) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from)),
        _ => None,
    };
    n.and_then(|i| T::try_from(i).ok())
        .ok_or_else(|| bad("expected an integer in range"))
}

fn typed_array(kind: NumKind, items: &[J]) -> Result<NumArray, WireError> {
    macro_rules! ints {
        ($t:ty) => {{
            let v: Result<Vec<$t>, WireError> =
                items.iter().map(|x| int_of::<$t>(Some(x))).collect();
            NumArray::from_slice(&v?)
        }};
    }
    let float = |x: &J| json_f64(x).ok_or_else(|| bad("expected a number"));
    Ok(match kind {
        NumKind::I8 => ints!(i8),
        NumKind::I16 => ints!(i16),
        NumKind::I32 => ints!(i32),
        NumKind::I64 => ints!(i64),
        NumKind::U8 => ints!(u8),
        NumKind::U16 => ints!(u16),
        NumKind::U32 => ints!(u32),
        NumKind::U64 => ints!(u64),
        NumKind::F32 => {
            let v: Result<Vec<f32>, WireError> = items
                .iter()
                .map(|x| json_f32(x).ok_or_else(|| bad("expected a number")))
                .collect();
            NumArray::from_slice(&v?)
        }
        NumKind::F64 => {
            let v: Result<Vec<f64>, WireError> = items.iter().map(float).collect();
            NumArray::from_slice(&v?)
        }
    })
}

fn from_typed_value(j: &J, limits: &Limits, depth: usize) -> Result<Value, WireError> {
    let o: &Map<String, J> = j
        .as_object()
        .ok_or_else(|| bad("value must be an object"))?;
    let t = o
        .get("t")
        .and_then(J::as_str)
        .ok_or_else(|| bad("missing \"t\""))?;
    let v = o.get("v");
    let text = |v: Option<&J>| -> Result<Text, WireError> {
        v.and_then(J::as_str)
            .map(Text::from)
            .ok_or_else(|| bad("expected a string"))
    };
    let float = |v: Option<&J>| v.and_then(json_f64).ok_or_else(|| bad("expected a number"));
    Ok(match t {
        "str" => Value::Str(text(v)?),
        "bool" => Value::Bool(
            v.and_then(J::as_bool)
                .ok_or_else(|| bad("expected a bool"))?,
        ),
        "i8" => Value::I8(int_of(v)?),
        "i16" => Value::I16(int_of(v)?),
        "i32" => Value::I32(int_of(v)?),
        "i64" => Value::I64(int_of(v)?),
        "u8" => Value::U8(int_of(v)?),
        "u16" => Value::U16(int_of(v)?),
        "u32" => Value::U32(int_of(v)?),
        "u64" => Value::U64(int_of(v)?),
        "f32" => Value::F32(
            v.and_then(json_f32)
                .ok_or_else(|| bad("expected a number"))?,
        ),
        "f64" => Value::F64(float(v)?),
        "bytes" => Value::Bytes(Bytes::from(
            v.and_then(J::as_str)
                .and_then(unhex)
                .ok_or_else(|| bad("expected a hex string"))?,
        )),
        "array" => {
            let of = o.get("of").and_then(J::as_str).and_then(NumKind::from_name);
            let of = of.ok_or_else(|| bad("array needs \"of\" naming a number type"))?;
            let items = v
                .and_then(J::as_array)
                .ok_or_else(|| bad("expected a list"))?;
            Value::Array(typed_array(of, items)?)
        }
        "df" => Value::Frame(Box::new(from_typed(
            v.ok_or_else(|| bad("missing \"v\""))?,
            limits,
            depth + 1,
        )?)),
        "json" => Value::Json(Box::new(v.cloned().unwrap_or(J::Null))),
        "variant" => {
            let k = o
                .get("k")
                .and_then(J::as_str)
                .ok_or_else(|| bad("variant needs \"k\""))?;
            Value::Variant(match k {
                "null" => Variant::Null,
                "bool" => Variant::Bool(
                    v.and_then(J::as_bool)
                        .ok_or_else(|| bad("expected a bool"))?,
                ),
                "int" => Variant::Int(int_of(v)?),
                "uint" => Variant::UInt(int_of(v)?),
                "float" => Variant::Float(float(v)?),
                "text" => Variant::Text(text(v)?),
                other => return Err(bad(format!("unknown variant kind {other:?}"))),
            })
        }
        other => return Err(bad(format!("unknown type {other:?}"))),
    })
}

fn from_typed(j: &J, limits: &Limits, depth: usize) -> Result<DataFrame, WireError> {
    if depth > limits.max_depth {
        return Err(WireError::DepthExceeded {
            max: limits.max_depth,
        });
    }
    let items = j
        .as_array()
        .ok_or_else(|| bad("a DataFrame is a JSON array"))?;
    items
        .iter()
        .map(|x| from_typed_value(x, limits, depth))
        .collect()
}

impl DataFrame {
    /// The lossless typed JSON form (see the [module docs](crate::json)).
    pub fn to_json(&self) -> J {
        J::Array(self.values().iter().map(typed_value).collect())
    }

    /// Parses the typed JSON form made by [`to_json`](DataFrame::to_json); nesting is
    /// bounded by `limits.max_depth`.
    pub fn from_json(j: &J, limits: &Limits) -> Result<DataFrame, WireError> {
        from_typed(j, limits, 1)
    }

    /// The plain JSON form: one plain JSON value per value, types dropped
    /// (bytes as hex strings, non-finite floats as `null`, nested DataFrames as arrays).
    pub fn to_plain_json(&self) -> J {
        J::Array(self.values().iter().map(plain_value).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_json_round_trip_and_plain() {
        let df = DataFrame::new()
            .with("a")
            .with(f64::NAN)
            .with(f32::NEG_INFINITY)
            .with(u64::MAX)
            .with(Bytes::from_static(&[0, 0xab]))
            .with(NumArray::from_slice(&[-1i8, 2]))
            .with(NumArray::from_slice(&[
                1.5f64,
                f64::INFINITY,
                f64::from_bits(0xfff8_0000_0000_0001),
            ]))
            .with(NumArray::from_slice(&[
                f32::from_bits(0x7fc0_0abc),
                -0.0f32,
            ]))
            .with(f64::from_bits(0x7ff0_0000_0000_0001))
            .with(f32::from_bits(0xffc0_0000))
            .with(DataFrame::new().with(1u8))
            .with(Variant::Null)
            .with(json!({"k": [1, 2]}));
        let j = df.to_json();
        let back = DataFrame::from_json(&j, &Limits::default()).unwrap();
        assert_eq!(back.to_bytes(), df.to_bytes());
        assert_eq!(j[4], json!({"t": "bytes", "v": "00ab"}));
        assert_eq!(j[1], json!({"t": "f64", "v": "NaN"}));
        assert_eq!(
            j[9],
            json!({"t": "f32", "v": "NaN:ffc00000"}),
            "NaN payloads survive"
        );
        let p = df.to_plain_json();
        assert_eq!(p[0], json!("a"));
        assert_eq!(p[1], J::Null);
        assert_eq!(p[5], json!([-1, 2]));
        assert_eq!(p[10], json!([1]));
        assert!(
            DataFrame::from_json(&json!([{"t": "f64", "v": "NaN:12"}]), &Limits::default())
                .is_err()
        );
    }

    #[test]
    fn typed_json_errors() {
        let l = Limits::default();
        assert!(matches!(
            DataFrame::from_json(&json!({}), &l),
            Err(WireError::Json(_))
        ));
        assert!(matches!(
            DataFrame::from_json(&json!([{"t": "i8", "v": 300}]), &l),
            Err(WireError::Json(_))
        ));
        assert!(matches!(
            DataFrame::from_json(&json!([{"t": "nope"}]), &l),
            Err(WireError::Json(_))
        ));
        let mut deep = json!([]);
        for _ in 0..40 {
            deep = json!([{"t": "df", "v": deep}]);
        }
        assert_eq!(
            DataFrame::from_json(&deep, &l),
            Err(WireError::DepthExceeded { max: 32 })
        );
    }
}
