//! DataFrame records: encoded with zs-wire; fields are addressed by position as
//! `f0`, `f1`, … (or `0`, `1`, …).

use bytes::Bytes;
use zs_wire::{DataFrame, Limits, Value};

use crate::error::{Error, Result};
use crate::record::FieldValue;

/// Encodes a DataFrame as record bytes (zs-wire's encoding).
pub fn encode_dataframe(df: &DataFrame) -> Vec<u8> {
    df.to_bytes().to_vec()
}

/// Decodes record bytes of kind [`crate::Kind::DataFrame`].
pub fn decode_dataframe(data: &[u8]) -> Result<DataFrame> {
    DataFrame::decode(&Bytes::copy_from_slice(data), &Limits::default())
        .map_err(|e| Error::Decode(e.to_string()))
}

fn position(name: &str) -> Option<usize> {
    name.strip_prefix('f').unwrap_or(name).parse().ok()
}

pub(crate) fn convert(v: &Value) -> Option<FieldValue> {
    Some(match v {
        Value::Str(t) => FieldValue::Str(t.as_str().to_string()),
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::I8(x) => FieldValue::Int(*x as i64),
        Value::I16(x) => FieldValue::Int(*x as i64),
        Value::I32(x) => FieldValue::Int(*x as i64),
        Value::I64(x) => FieldValue::Int(*x),
        Value::U8(x) => FieldValue::Int(*x as i64),
        Value::U16(x) => FieldValue::Int(*x as i64),
        Value::U32(x) => FieldValue::Int(*x as i64),
        Value::U64(x) => match i64::try_from(*x) {
            Ok(i) => FieldValue::Int(i),
            Err(_) => FieldValue::Float(*x as f64),
        },
        Value::F32(x) => FieldValue::Float(*x as f64),
        Value::F64(x) => FieldValue::Float(*x),
        Value::Bytes(b) => FieldValue::Bytes(b.to_vec()),
        Value::Json(j) => FieldValue::Str(j.to_string()),
        _ => return None,
    })
}

/// Field `name` of an encoded DataFrame record.
pub(crate) fn field(data: &[u8], name: &str) -> Option<FieldValue> {
    let i = position(name)?;
    let df = decode_dataframe(data).ok()?;
    convert(df.get(i)?)
}

/// Several fields at once (one decode).
pub(crate) fn fields(data: &[u8], names: &[String]) -> Vec<Option<FieldValue>> {
    match decode_dataframe(data) {
        Ok(df) => names
            .iter()
            .map(|n| position(n).and_then(|i| df.get(i)).and_then(convert))
            .collect(),
        Err(_) => vec![None; names.len()],
    }
}
