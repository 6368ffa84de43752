//! Records: a kind tag plus bytes, and typed field access for queries.

use crate::error::{Error, Result};

/// What the bytes of a record are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Opaque bytes.
    Raw = 0,
    /// UTF-8 JSON text.
    Json = 1,
    /// A key/value map in this crate's encoding (see [`encode_kv`]).
    KeyValue = 2,
    /// A zs-wire DataFrame (its own encoding; fields are named `f0`, `f1`, …).
    DataFrame = 3,
}

impl Kind {
    /// The kind for a tag byte.
    pub fn from_tag(t: u8) -> Option<Kind> {
        Some(match t {
            0 => Kind::Raw,
            1 => Kind::Json,
            2 => Kind::KeyValue,
            3 => Kind::DataFrame,
            _ => return None,
        })
    }

    /// Lower-case name (`raw`, `json`, `kv`, `dataframe`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Json => "json",
            Kind::KeyValue => "kv",
            Kind::DataFrame => "dataframe",
        }
    }
}

/// An owned record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Stable id.
    pub id: u64,
    /// Kind tag.
    pub kind: Kind,
    /// The (uncompressed) bytes.
    pub data: Vec<u8>,
}

impl Record {
    /// A borrowed view.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            id: self.id,
            kind: self.kind,
            data: &self.data,
        }
    }
}

/// A borrowed record, as handed to scan filters.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Stable id.
    pub id: u64,
    /// Kind tag.
    pub kind: Kind,
    /// The (uncompressed) bytes.
    pub data: &'a [u8],
}

impl RecordRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> Record {
        Record {
            id: self.id,
            kind: self.kind,
            data: self.data.to_vec(),
        }
    }

    /// The value of field `name` (a dotted path for nested JSON objects), or `None`
    /// when the record has no such field or cannot be decoded. The pseudo-field
    /// `id` is the record id unless the record has its own `id` field.
    pub fn field(&self, name: &str) -> Option<FieldValue> {
        let v = match self.kind {
            Kind::Raw => None,
            Kind::Json => json_field(self.data, name),
            Kind::KeyValue => kv_field(self.data, name),
            Kind::DataFrame => crate::dataframe::field(self.data, name),
        };
        match v {
            None if name == "id" => Some(FieldValue::Int(self.id as i64)),
            v => v,
        }
    }
}

impl RecordRef<'_> {
    /// The values of several fields, decoding the record once (see [`RecordRef::field`]).
    pub fn fields(&self, names: &[String]) -> Vec<Option<FieldValue>> {
        let mut out = match self.kind {
            Kind::Raw => vec![None; names.len()],
            Kind::Json => match serde_json::from_slice::<serde_json::Value>(self.data) {
                Ok(v) => names
                    .iter()
                    .map(|n| {
                        let mut cur = &v;
                        for part in n.split('.') {
                            cur = cur.get(part)?;
                        }
                        Some(json_to_field(cur))
                    })
                    .collect(),
                Err(_) => vec![None; names.len()],
            },
            Kind::KeyValue => {
                let mut out = vec![None; names.len()];
                let _ = walk_kv(self.data, |k, v| {
                    if let Some(i) = names.iter().position(|n| n == k) {
                        out[i] = Some(v);
                    }
                    true
                });
                out
            }
            Kind::DataFrame => crate::dataframe::fields(self.data, names),
        };
        for (o, n) in out.iter_mut().zip(names) {
            if o.is_none() && n == "id" {
                *o = Some(FieldValue::Int(self.id as i64));
            }
        }
        out
    }
}

/// A typed scalar field value.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// Absent / null.
    Null,
    /// Boolean.
    Bool(bool),
    /// Signed integer.
    Int(i64),
    /// Floating point.
    Float(f64),
    /// Text.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl FieldValue {
    /// Numeric value if the field is a number (or a boolean, as 0/1).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            FieldValue::Int(i) => Some(*i as f64),
            FieldValue::Float(f) => Some(*f),
            FieldValue::Bool(b) => Some(*b as u8 as f64),
            _ => None,
        }
    }

    /// Parses a command-line style literal: integers, floats, `true`/`false`, `null`, else text.
    pub fn parse_literal(s: &str) -> FieldValue {
        if let Ok(i) = s.parse::<i64>() {
            FieldValue::Int(i)
        } else if let Ok(f) = s.parse::<f64>() {
            FieldValue::Float(f)
        } else {
            match s {
                "true" => FieldValue::Bool(true),
                "false" => FieldValue::Bool(false),
                "null" => FieldValue::Null,
                _ => FieldValue::Str(s.to_string()),
            }
        }
    }

    /// JSON form of the value.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            FieldValue::Null => J::Null,
            FieldValue::Bool(b) => J::Bool(*b),
            FieldValue::Int(i) => J::from(*i),
            FieldValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or(J::Null),
            FieldValue::Str(s) => J::String(s.clone()),
            FieldValue::Bytes(b) => J::Array(b.iter().map(|x| J::from(*x)).collect()),
        }
    }
}

fn json_to_field(v: &serde_json::Value) -> FieldValue {
    use serde_json::Value as J;
    match v {
        J::Null => FieldValue::Null,
        J::Bool(b) => FieldValue::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::Int(i),
            None => FieldValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => FieldValue::Str(s.clone()),
        other => FieldValue::Str(other.to_string()),
    }
}

fn json_field(data: &[u8], name: &str) -> Option<FieldValue> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    let mut cur = &v;
    for part in name.split('.') {
        cur = cur.get(part)?;
    }
    Some(json_to_field(cur))
}

/// Upper bound on the number of entries of a decoded key/value map.
pub const MAX_KV_ENTRIES: usize = 1 << 20;

const KV_NULL: u8 = 0;
const KV_BOOL: u8 = 1;
const KV_INT: u8 = 2;
const KV_FLOAT: u8 = 3;
const KV_STR: u8 = 4;
const KV_BYTES: u8 = 5;

/// Encodes a key/value map: `u32 count`, then per entry `u16 key_len`, key (UTF-8),
/// `u8 tag` and the value (see docs/STORAGE.md §5).
pub fn encode_kv(entries: &[(String, FieldValue)]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(16 * entries.len() + 4);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (k, v) in entries {
        if k.len() > u16::MAX as usize {
            return Err(Error::TooLarge {
                what: "key",
                len: k.len() as u64,
                max: u16::MAX as u64,
            });
        }
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
        match v {
            FieldValue::Null => out.push(KV_NULL),
            FieldValue::Bool(b) => {
                out.push(KV_BOOL);
                out.push(*b as u8);
            }
            FieldValue::Int(i) => {
                out.push(KV_INT);
                out.extend_from_slice(&i.to_le_bytes());
            }
            FieldValue::Float(f) => {
                out.push(KV_FLOAT);
                out.extend_from_slice(&f.to_le_bytes());
            }
            FieldValue::Str(s) => {
                out.push(KV_STR);
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            FieldValue::Bytes(b) => {
                out.push(KV_BYTES);
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.extend_from_slice(b);
            }
        }
    }
    Ok(out)
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::Decode("key/value map truncated".into()));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

/// Walks a key/value encoding, calling `f(key, value)` until it returns `false`.
fn walk_kv(data: &[u8], mut f: impl FnMut(&str, FieldValue) -> bool) -> Result<()> {
    let mut r = Reader { b: data };
    let count = r.u32()? as usize;
    if count > MAX_KV_ENTRIES || count > data.len() {
        return Err(Error::Decode(format!(
            "key/value count {count} out of bounds"
        )));
    }
    for _ in 0..count {
        let klen = r.u16()? as usize;
        let key = std::str::from_utf8(r.take(klen)?)
            .map_err(|_| Error::Decode("key not UTF-8".into()))?;
        let tag = r.take(1)?[0];
        let v = match tag {
            KV_NULL => FieldValue::Null,
            KV_BOOL => match r.take(1)?[0] {
                0 => FieldValue::Bool(false),
                1 => FieldValue::Bool(true),
                b => return Err(Error::Decode(format!("bad bool byte {b}"))),
            },
            KV_INT => FieldValue::Int(r.u64()? as i64),
            KV_FLOAT => FieldValue::Float(f64::from_bits(r.u64()?)),
            KV_STR => {
                let n = r.u32()? as usize;
                let s = std::str::from_utf8(r.take(n)?)
                    .map_err(|_| Error::Decode("value not UTF-8".into()))?;
                FieldValue::Str(s.to_string())
            }
            KV_BYTES => {
                let n = r.u32()? as usize;
                FieldValue::Bytes(r.take(n)?.to_vec())
            }
            t => return Err(Error::Decode(format!("unknown value tag {t}"))),
        };
        if !f(key, v) {
            return Ok(());
        }
    }
    if !r.b.is_empty() {
        return Err(Error::Decode("trailing bytes after key/value map".into()));
    }
    Ok(())
}

/// Decodes a key/value map (total: errors, never panics).
pub fn decode_kv(data: &[u8]) -> Result<Vec<(String, FieldValue)>> {
    let mut out = Vec::new();
    walk_kv(data, |k, v| {
        out.push((k.to_string(), v));
        true
    })?;
    Ok(out)
}

fn kv_field(data: &[u8], name: &str) -> Option<FieldValue> {
    let mut found = None;
    walk_kv(data, |k, v| {
        if k == name {
            found = Some(v);
            false
        } else {
            true
        }
    })
    .ok()?;
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn json_and_kv_fields() {
        let r = RecordRef {
            id: 9,
            kind: Kind::Json,
            data: br#"{"age":31,"name":"bob","a":{"b":1.5}}"#,
        };
        assert_eq!(r.field("age"), Some(FieldValue::Int(31)));
        assert_eq!(r.field("a.b"), Some(FieldValue::Float(1.5)));
        assert_eq!(r.field("id"), Some(FieldValue::Int(9)));
        assert_eq!(r.field("nope"), None);
        let kv = encode_kv(&[
            ("age".into(), FieldValue::Int(5)),
            ("n".into(), FieldValue::Str("x".into())),
        ])
        .unwrap();
        let r = RecordRef {
            id: 1,
            kind: Kind::KeyValue,
            data: &kv,
        };
        assert_eq!(r.field("n"), Some(FieldValue::Str("x".into())));
    }

    fn fv() -> impl Strategy<Value = FieldValue> {
        prop_oneof![
            Just(FieldValue::Null),
            any::<bool>().prop_map(FieldValue::Bool),
            any::<i64>().prop_map(FieldValue::Int),
            any::<f64>()
                .prop_filter("nan", |f| !f.is_nan())
                .prop_map(FieldValue::Float),
            ".*".prop_map(FieldValue::Str),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(FieldValue::Bytes),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn kv_round_trip(entries in proptest::collection::vec(("[a-z]{0,8}", fv()), 0..10)) {
            let enc = encode_kv(&entries).unwrap();
            prop_assert_eq!(decode_kv(&enc).unwrap(), entries);
        }

        #[test]
        fn kv_decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_kv(&bytes);
        }
    }
}
