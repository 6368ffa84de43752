//! DataFrameEngine (DFE): the originals' typed value lists, and their mapping to
//! and from our [`DataFrame`].
//!
//! Encoded form (the "fast" encoding both originals send):
//! `FF`, u32 body size, `00` (not compressed), 16 zero bytes (no MD5), body;
//! body = i32 count, then per value a type byte and the value (table in
//! `docs/PROTOCOL.md`). `FA` with an i64 size is accepted too. Compressed forms
//! (token 1 and up, the `maxsec` profile) are refused with
//! [`LegacyError::CompressedDfe`].

use bytes::{BufMut, Bytes};

use super::{too_large, LegacyError, LegacyLimits};
use crate::{DataFrame, NumArray, NumKind, Text, Value, Variant};

/// DFE type ids (`TRunTimeDataType` ordinals).
pub mod tid {
    /// `i32 len` + UTF-8 bytes.
    pub const STRING: u8 = 0;
    /// i32.
    pub const INTEGER: u8 = 1;
    /// u16.
    pub const WORD: u8 = 3;
    /// u8 (also Bool).
    pub const BYTE: u8 = 4;
    /// f32.
    pub const SINGLE: u8 = 5;
    /// f64.
    pub const DOUBLE: u8 = 6;
    /// i32 count + i32s.
    pub const ARRAY_INTEGER: u8 = 7;
    /// i32 count + f32s.
    pub const ARRAY_SINGLE: u8 = 8;
    /// i32 count + f64s.
    pub const ARRAY_DOUBLE: u8 = 9;
    /// `i32 len` + bytes (often a nested DFE).
    pub const STREAM: u8 = 10;
    /// u16 VarType + value.
    pub const VARIANT: u8 = 11;
    /// i64.
    pub const INT64: u8 = 12;
    /// i32 count + i8s.
    pub const ARRAY_SHORTINT: u8 = 13;
    /// u32.
    pub const CARDINAL: u8 = 14;
    /// u64.
    pub const UINT64: u8 = 15;
    /// i32 count + bytes.
    pub const ARRAY_BYTE: u8 = 16;
    /// i32 count + i64s.
    pub const ARRAY_INT64: u8 = 17;
    /// i32 count + i128s (ZNet only).
    pub const ARRAY_INT128: u8 = 18;
    /// i128 (ZNet only).
    pub const INT128: u8 = 19;
    /// u128 (ZNet only).
    pub const UINT128: u8 = 20;
}

/// One DFE value.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum DfeValue {
    /// Text (UTF-8 by convention; kept as bytes).
    String(Bytes),
    Integer(i32),
    Word(u16),
    /// A byte; the originals' `WriteBool` writes one too.
    Byte(u8),
    Single(f32),
    Double(f64),
    ArrayInteger(Vec<i32>),
    ArraySingle(Vec<f32>),
    ArrayDouble(Vec<f64>),
    /// Raw bytes: `WriteStream`, and a nested DFE (`WriteDataFrame`).
    Stream(Bytes),
    Variant(DfeVariant),
    Int64(i64),
    ArrayShortInt(Vec<i8>),
    Cardinal(u32),
    UInt64(u64),
    /// Raw bytes: `WriteArrayByte`, `WriteMD5`.
    ArrayByte(Bytes),
    ArrayInt64(Vec<i64>),
    ArrayInt128(Vec<i128>),
    Int128(i128),
    UInt128(u128),
}

/// A Delphi/FPC `Variant` as the DFE stores it (u16 VarType, then the value).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum DfeVariant {
    Empty,
    Null,
    SmallInt(i16),
    Integer(i32),
    Single(f32),
    Double(f64),
    /// Currency: a fixed-point i64 in units of 1/10000.
    Currency(i64),
    Boolean(bool),
    ShortInt(i8),
    Byte(u8),
    Word(u16),
    LongWord(u32),
    Int64(i64),
    UInt64(u64),
    /// `varOleStr` (8), `varString` (0x100) or `varUString` (0x102): u32 length + UTF-8.
    String {
        vt: u16,
        text: Bytes,
    },
}

impl DfeValue {
    /// A String value.
    pub fn string(s: &str) -> DfeValue {
        DfeValue::String(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// A Stream value holding `dfe` encoded (the originals' `WriteDataFrame`).
    pub fn dfe(dfe: &Dfe) -> DfeValue {
        DfeValue::Stream(dfe.to_bytes().into())
    }

    /// The type id.
    pub fn type_id(&self) -> u8 {
        use DfeValue::*;
        match self {
            String(_) => tid::STRING,
            Integer(_) => tid::INTEGER,
            Word(_) => tid::WORD,
            Byte(_) => tid::BYTE,
            Single(_) => tid::SINGLE,
            Double(_) => tid::DOUBLE,
            ArrayInteger(_) => tid::ARRAY_INTEGER,
            ArraySingle(_) => tid::ARRAY_SINGLE,
            ArrayDouble(_) => tid::ARRAY_DOUBLE,
            Stream(_) => tid::STREAM,
            Variant(_) => tid::VARIANT,
            Int64(_) => tid::INT64,
            ArrayShortInt(_) => tid::ARRAY_SHORTINT,
            Cardinal(_) => tid::CARDINAL,
            UInt64(_) => tid::UINT64,
            ArrayByte(_) => tid::ARRAY_BYTE,
            ArrayInt64(_) => tid::ARRAY_INT64,
            ArrayInt128(_) => tid::ARRAY_INT128,
            Int128(_) => tid::INT128,
            UInt128(_) => tid::UINT128,
        }
    }

    /// The text of a String value (None when not a String or not UTF-8).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            DfeValue::String(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// An integer value of any integer type (the originals' lenient `ReadInteger`).
    pub fn as_i128(&self) -> Option<i128> {
        use DfeValue::*;
        Some(match self {
            Integer(v) => *v as i128,
            Word(v) => *v as i128,
            Byte(v) => *v as i128,
            Int64(v) => *v as i128,
            Cardinal(v) => *v as i128,
            UInt64(v) => *v as i128,
            Int128(v) => *v,
            UInt128(v) => i128::try_from(*v).ok()?,
            _ => return None,
        })
    }

    /// The bytes of a Stream or ArrayByte value.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            DfeValue::Stream(b) | DfeValue::ArrayByte(b) => Some(b),
            _ => None,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        use DfeValue::*;
        out.push(self.type_id());
        fn arr<T: Copy>(out: &mut Vec<u8>, v: &[T], put: impl Fn(&mut Vec<u8>, T)) {
            out.put_i32_le(v.len() as i32);
            for x in v {
                put(out, *x);
            }
        }
        match self {
            String(b) | Stream(b) | ArrayByte(b) => {
                out.put_i32_le(b.len() as i32);
                out.put_slice(b);
            }
            Integer(v) => out.put_i32_le(*v),
            Word(v) => out.put_u16_le(*v),
            Byte(v) => out.put_u8(*v),
            Single(v) => out.put_f32_le(*v),
            Double(v) => out.put_f64_le(*v),
            ArrayInteger(v) => arr(out, v, |o, x| o.put_i32_le(x)),
            ArraySingle(v) => arr(out, v, |o, x| o.put_f32_le(x)),
            ArrayDouble(v) => arr(out, v, |o, x| o.put_f64_le(x)),
            ArrayShortInt(v) => arr(out, v, |o, x| o.put_i8(x)),
            ArrayInt64(v) => arr(out, v, |o, x| o.put_i64_le(x)),
            ArrayInt128(v) => arr(out, v, |o, x| o.put_i128_le(x)),
            Variant(v) => v.encode(out),
            Int64(v) => out.put_i64_le(*v),
            Cardinal(v) => out.put_u32_le(*v),
            UInt64(v) => out.put_u64_le(*v),
            Int128(v) => out.put_i128_le(*v),
            UInt128(v) => out.put_u128_le(*v),
        }
    }
}

impl DfeVariant {
    fn encode(&self, out: &mut Vec<u8>) {
        use DfeVariant::*;
        match self {
            Empty => out.put_u16_le(0),
            Null => out.put_u16_le(1),
            SmallInt(v) => {
                out.put_u16_le(2);
                out.put_i16_le(*v)
            }
            Integer(v) => {
                out.put_u16_le(3);
                out.put_i32_le(*v)
            }
            Single(v) => {
                out.put_u16_le(4);
                out.put_f32_le(*v)
            }
            Double(v) => {
                out.put_u16_le(5);
                out.put_f64_le(*v)
            }
            Currency(v) => {
                out.put_u16_le(6);
                out.put_i64_le(*v)
            }
            Boolean(v) => {
                out.put_u16_le(0x0b);
                out.put_u8(*v as u8)
            }
            ShortInt(v) => {
                out.put_u16_le(0x10);
                out.put_i8(*v)
            }
            Byte(v) => {
                out.put_u16_le(0x11);
                out.put_u8(*v)
            }
            Word(v) => {
                out.put_u16_le(0x12);
                out.put_u16_le(*v)
            }
            LongWord(v) => {
                out.put_u16_le(0x13);
                out.put_u32_le(*v)
            }
            Int64(v) => {
                out.put_u16_le(0x14);
                out.put_i64_le(*v)
            }
            UInt64(v) => {
                out.put_u16_le(0x15);
                out.put_u64_le(*v)
            }
            String { vt, text } => {
                out.put_u16_le(*vt);
                out.put_u32_le(text.len() as u32);
                out.put_slice(text);
            }
        }
    }
}

/// A DFE: an ordered list of typed values without names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dfe(pub Vec<DfeValue>);

impl From<Vec<DfeValue>> for Dfe {
    fn from(v: Vec<DfeValue>) -> Dfe {
        Dfe(v)
    }
}

/// A bounds-checked reader over a byte slice.
struct Cur<'a> {
    buf: &'a Bytes,
    at: usize,
    end: usize,
}

impl Cur<'_> {
    fn take(&mut self, n: usize) -> Result<(usize, usize), LegacyError> {
        if self.end - self.at < n {
            return Err(LegacyError::BadDfe(format!(
                "truncated: {n} bytes needed at {}, {} left",
                self.at,
                self.end - self.at
            )));
        }
        let s = self.at;
        self.at += n;
        Ok((s, self.at))
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], LegacyError> {
        let (s, e) = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[s..e]);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, LegacyError> {
        Ok(self.arr::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, LegacyError> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    fn u32(&mut self) -> Result<u32, LegacyError> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn i32(&mut self) -> Result<i32, LegacyError> {
        Ok(i32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> Result<u64, LegacyError> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    /// A length (i32 or u32 on the wire) that must fit in what is left, in units
    /// of `unit` bytes.
    fn len(&mut self, raw: i64, unit: usize) -> Result<usize, LegacyError> {
        let left = (self.end - self.at) / unit;
        if raw < 0 || raw as u64 > left as u64 {
            return Err(LegacyError::BadDfe(format!(
                "length {raw} (x{unit} bytes) at {} with {} bytes left",
                self.at,
                self.end - self.at
            )));
        }
        Ok(raw as usize)
    }
    fn bytes(&mut self, n: usize) -> Result<Bytes, LegacyError> {
        let (s, e) = self.take(n)?;
        Ok(self.buf.slice(s..e))
    }
    fn vec<T>(&mut self, size: usize, f: impl Fn([u8; 16]) -> T) -> Result<Vec<T>, LegacyError> {
        let raw = self.i32()? as i64;
        let n = self.len(raw, size)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let (s, e) = self.take(size)?;
            let mut a = [0u8; 16];
            a[..size].copy_from_slice(&self.buf[s..e]);
            v.push(f(a));
        }
        Ok(v)
    }
}

fn a4(a: [u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}
fn a8(a: [u8; 16]) -> [u8; 8] {
    let mut o = [0u8; 8];
    o.copy_from_slice(&a[..8]);
    o
}

impl Dfe {
    /// An empty DFE.
    pub fn new() -> Dfe {
        Dfe(Vec::new())
    }

    /// Appends a value.
    pub fn with(mut self, v: DfeValue) -> Dfe {
        self.0.push(v);
        self
    }

    /// The values.
    pub fn values(&self) -> &[DfeValue] {
        &self.0
    }

    /// Size of the encoded form.
    pub fn encoded_len(&self) -> usize {
        let mut v = Vec::new();
        self.encode_body(&mut v);
        22 + v.len()
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        out.put_i32_le(self.0.len() as i32);
        for v in &self.0 {
            v.encode(out);
        }
    }

    /// Appends the fast encoding (`FF`, u32 size, `00`, zero MD5, body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u8(0xff);
        out.put_u32_le(0);
        out.put_u8(0);
        out.put_slice(&[0u8; 16]);
        let body = out.len();
        self.encode_body(out);
        let size = (out.len() - body) as u32;
        out[start + 1..start + 5].copy_from_slice(&size.to_le_bytes());
    }

    /// The fast encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode(&mut v);
        v
    }

    /// Decodes one DFE at the start of `src`; returns it and the bytes it took.
    /// Trailing bytes are left to the caller.
    pub fn decode_prefix(src: &Bytes, limits: &LegacyLimits) -> Result<(Dfe, usize), LegacyError> {
        let mut c = Cur {
            buf: src,
            at: 0,
            end: src.len(),
        };
        let edition = c.u8()?;
        let size = match edition {
            0xff => c.u32()? as u64,
            0xfa => c.u64()?,
            other => return Err(LegacyError::BadDfe(format!("edition byte {other:#04x}"))),
        };
        let comp = c.u8()?;
        if comp != 0 {
            return Dfe::decode_compressed(src, c, size, comp, limits);
        }
        c.take(16)?; // MD5: zero in fast mode; the originals do not check it on receive
        if size > limits.max_frame as u64 {
            return Err(too_large("DFE body", size, limits.max_frame));
        }
        let body_len = c.len(size as i64, 1)?;
        let end = c.at + body_len;
        let values = decode_body(src, c.at, end, limits)?;
        Ok((Dfe(values), end))
    }

    /// The compressed forms (`SendDataCompressed`): edition, compressed size,
    /// token, raw size (u32 for tokens 1 and 4, u64 for 11 and 44), MD5 of the
    /// raw body (not checked, as the originals), then the compressed body:
    /// a zlib stream (1, 11) or a parallel container (4, 44).
    fn decode_compressed(
        src: &Bytes,
        mut c: Cur<'_>,
        size: u64,
        comp: u8,
        limits: &LegacyLimits,
    ) -> Result<(Dfe, usize), LegacyError> {
        let raw = match comp {
            1 | 4 => c.u32()? as u64,
            11 | 44 => c.u64()?,
            other => return Err(LegacyError::CompressedDfe(other)),
        };
        c.take(16)?;
        if size > limits.max_frame as u64 {
            return Err(too_large("compressed DFE", size, limits.max_frame));
        }
        if raw > limits.max_frame as u64 {
            return Err(too_large("DFE body", raw, limits.max_frame));
        }
        let n = c.len(size as i64, 1)?;
        let data = &src[c.at..c.at + n];
        let body = if comp % 10 == 1 {
            super::compress::zlib_decompress(data, raw, limits.max_frame)?
        } else {
            let b = super::compress::parallel_decompress(data, limits.max_frame)?;
            if b.len() as u64 != raw {
                return Err(LegacyError::BadCompressed(format!(
                    "container gave {} bytes, {raw} announced",
                    b.len()
                )));
            }
            b
        };
        let body = Bytes::from(body);
        let values = decode_body(&body, 0, body.len(), limits)?;
        Ok((Dfe(values), c.at + n))
    }

    /// The compressed form the originals send with `SendDataCompressed`: zlib
    /// (token 1, [`Dfe::encode_zlib`]) up to 1 MiB of encoded values, the
    /// parallel container (token 4, zlib strips marked `scmZLIB_Max`) above.
    pub fn encode_compressed(&self, out: &mut Vec<u8>) {
        if self.0.is_empty() || self.encoded_len() <= 1 << 20 {
            return self.encode_zlib(out);
        }
        let mut body = Vec::with_capacity(self.encoded_len());
        self.encode_body(&mut body);
        let mut c = Vec::with_capacity(body.len() / 2);
        super::compress::parallel_compress(&body, 3, &mut c);
        out.put_u8(0xff);
        out.put_u32_le(c.len() as u32);
        out.put_u8(4);
        out.put_u32_le(body.len() as u32);
        out.put_slice(&[0u8; 16]);
        out.put_slice(&c);
    }

    /// The compressed bytes as a new vector ([`Dfe::encode_compressed`]).
    pub fn to_compressed_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.encode_compressed(&mut v);
        v
    }

    /// The zlib form the originals send with `SendDataCompressed` (`EncodeAsZLib`
    /// in fast mode: token 1, zero MD5); an empty DFE keeps its plain form, as
    /// theirs.
    pub fn encode_zlib(&self, out: &mut Vec<u8>) {
        if self.0.is_empty() {
            return self.encode(out);
        }
        let mut body = Vec::with_capacity(self.encoded_len());
        self.encode_body(&mut body);
        let z = super::compress::zlib_compress(&body);
        out.put_u8(0xff);
        out.put_u32_le(z.len() as u32);
        out.put_u8(1);
        out.put_u32_le(body.len() as u32);
        out.put_slice(&[0u8; 16]);
        out.put_slice(&z);
    }
}

/// The values of a DFE body at `buf[at..end]`.
fn decode_body(
    buf: &Bytes,
    at: usize,
    end: usize,
    limits: &LegacyLimits,
) -> Result<Vec<DfeValue>, LegacyError> {
    {
        let mut b = Cur { buf, at, end };
        let raw = b.i32()? as i64;
        if raw > limits.max_values as i64 {
            return Err(too_large("DFE value count", raw as u64, limits.max_values));
        }
        let count = b.len(raw, 1)?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            values.push(decode_value(&mut b)?);
        }
        if b.at != end {
            return Err(LegacyError::BadDfe(format!(
                "{} bytes after the last value",
                end - b.at
            )));
        }
        Ok(values)
    }
}

impl Dfe {
    /// Decodes a DFE that must fill `src` exactly.
    pub fn decode(src: &Bytes, limits: &LegacyLimits) -> Result<Dfe, LegacyError> {
        let (d, n) = Dfe::decode_prefix(src, limits)?;
        if n != src.len() {
            return Err(LegacyError::BadDfe(format!(
                "{} bytes after the DFE",
                src.len() - n
            )));
        }
        Ok(d)
    }

    /// Our [`DataFrame`] for this DFE (the server hands it to `Registry` handlers).
    ///
    /// String → `Str` (`Bytes` when not UTF-8), Integer → `I32`, Word → `U16`,
    /// Byte → `U8`, Single → `F32`, Double → `F64`, Int64 → `I64`, Cardinal →
    /// `U32`, UInt64 → `U64`, Stream → `Bytes`, ArrayByte → `Array` of u8, the
    /// other arrays → `Array` of their type, Variant → `Variant`, Int128/UInt128
    /// → `I64`/`U64` when in range (else decimal `Str`), ArrayInt128 → `Array` of
    /// i64 when every element fits (else an error).
    pub fn to_dataframe(&self) -> Result<DataFrame, LegacyError> {
        let mut df = DataFrame::with_capacity(self.0.len());
        for v in &self.0 {
            df.push(to_value(v)?);
        }
        Ok(df)
    }

    /// The DFE for one of our [`DataFrame`]s (what the server sends back to a
    /// legacy client): the inverse of [`Dfe::to_dataframe`], plus Bool → Byte
    /// 0/1, I8/I16 → Integer, nested DataFrame → Stream holding its DFE, JSON →
    /// String (its text); u16/u32 arrays → ArrayInteger/ArrayInt64, i16 arrays →
    /// ArrayInteger, u64 arrays → ArrayInt64 when every element fits.
    pub fn from_dataframe(df: &DataFrame) -> Result<Dfe, LegacyError> {
        let mut out = Vec::with_capacity(df.len());
        for v in df.values() {
            out.push(from_value(v)?);
        }
        Ok(Dfe(out))
    }
}

fn decode_value(c: &mut Cur<'_>) -> Result<DfeValue, LegacyError> {
    use DfeValue as V;
    let t = c.u8()?;
    Ok(match t {
        tid::STRING | tid::STREAM | tid::ARRAY_BYTE => {
            let raw = c.i32()? as i64;
            let n = c.len(raw, 1)?;
            let b = c.bytes(n)?;
            match t {
                tid::STRING => V::String(b),
                tid::STREAM => V::Stream(b),
                _ => V::ArrayByte(b),
            }
        }
        tid::INTEGER => V::Integer(c.i32()?),
        tid::WORD => V::Word(c.u16()?),
        tid::BYTE => V::Byte(c.u8()?),
        tid::SINGLE => V::Single(f32::from_le_bytes(c.arr()?)),
        tid::DOUBLE => V::Double(f64::from_le_bytes(c.arr()?)),
        tid::ARRAY_INTEGER => V::ArrayInteger(c.vec(4, |a| i32::from_le_bytes(a4(a)))?),
        tid::ARRAY_SINGLE => V::ArraySingle(c.vec(4, |a| f32::from_le_bytes(a4(a)))?),
        tid::ARRAY_DOUBLE => V::ArrayDouble(c.vec(8, |a| f64::from_le_bytes(a8(a)))?),
        tid::ARRAY_SHORTINT => V::ArrayShortInt(c.vec(1, |a| a[0] as i8)?),
        tid::ARRAY_INT64 => V::ArrayInt64(c.vec(8, |a| i64::from_le_bytes(a8(a)))?),
        tid::ARRAY_INT128 => V::ArrayInt128(c.vec(16, i128::from_le_bytes)?),
        tid::VARIANT => V::Variant(decode_variant(c)?),
        tid::INT64 => V::Int64(c.u64()? as i64),
        tid::CARDINAL => V::Cardinal(c.u32()?),
        tid::UINT64 => V::UInt64(c.u64()?),
        tid::INT128 => V::Int128(i128::from_le_bytes(c.arr()?)),
        tid::UINT128 => V::UInt128(u128::from_le_bytes(c.arr()?)),
        other => return Err(LegacyError::BadDfe(format!("unknown type id {other}"))),
    })
}

fn decode_variant(c: &mut Cur<'_>) -> Result<DfeVariant, LegacyError> {
    use DfeVariant as V;
    let vt = c.u16()?;
    Ok(match vt {
        0 => V::Empty,
        1 => V::Null,
        2 => V::SmallInt(i16::from_le_bytes(c.arr()?)),
        3 => V::Integer(c.i32()?),
        4 => V::Single(f32::from_le_bytes(c.arr()?)),
        5 => V::Double(f64::from_le_bytes(c.arr()?)),
        6 => V::Currency(c.u64()? as i64),
        0x0b => V::Boolean(c.u8()? != 0),
        0x10 => V::ShortInt(c.u8()? as i8),
        0x11 => V::Byte(c.u8()?),
        0x12 => V::Word(c.u16()?),
        0x13 => V::LongWord(c.u32()?),
        0x14 => V::Int64(c.u64()? as i64),
        0x15 => V::UInt64(c.u64()?),
        8 | 0x100 | 0x102 => {
            let raw = c.u32()? as i64;
            let n = c.len(raw, 1)?;
            V::String {
                vt,
                text: c.bytes(n)?,
            }
        }
        other => return Err(LegacyError::BadDfe(format!("variant type {other:#x}"))),
    })
}

fn to_value(v: &DfeValue) -> Result<Value, LegacyError> {
    use DfeValue as D;
    Ok(match v {
        D::String(b) => match Text::from_utf8(b.clone()) {
            Ok(t) => Value::Str(t),
            Err(_) => Value::Bytes(b.clone()),
        },
        D::Integer(x) => Value::I32(*x),
        D::Word(x) => Value::U16(*x),
        D::Byte(x) => Value::U8(*x),
        D::Single(x) => Value::F32(*x),
        D::Double(x) => Value::F64(*x),
        D::Int64(x) => Value::I64(*x),
        D::Cardinal(x) => Value::U32(*x),
        D::UInt64(x) => Value::U64(*x),
        D::Stream(b) => Value::Bytes(b.clone()),
        D::ArrayByte(b) => Value::Array(NumArray::from_slice::<u8>(b)),
        D::ArrayInteger(a) => Value::Array(NumArray::from_slice(a)),
        D::ArraySingle(a) => Value::Array(NumArray::from_slice(a)),
        D::ArrayDouble(a) => Value::Array(NumArray::from_slice(a)),
        D::ArrayShortInt(a) => Value::Array(NumArray::from_slice(a)),
        D::ArrayInt64(a) => Value::Array(NumArray::from_slice(a)),
        D::ArrayInt128(a) => {
            let v: Option<Vec<i64>> = a.iter().map(|x| i64::try_from(*x).ok()).collect();
            let v =
                v.ok_or_else(|| LegacyError::Convert("ArrayInt128 element beyond i64".into()))?;
            Value::Array(NumArray::from_slice(&v))
        }
        D::Int128(x) => match i64::try_from(*x) {
            Ok(v) => Value::I64(v),
            Err(_) => Value::Str(Text::from(x.to_string())),
        },
        D::UInt128(x) => match u64::try_from(*x) {
            Ok(v) => Value::U64(v),
            Err(_) => Value::Str(Text::from(x.to_string())),
        },
        D::Variant(v) => Value::Variant(match v {
            DfeVariant::Empty | DfeVariant::Null => Variant::Null,
            DfeVariant::SmallInt(x) => Variant::Int(*x as i64),
            DfeVariant::Integer(x) => Variant::Int(*x as i64),
            DfeVariant::ShortInt(x) => Variant::Int(*x as i64),
            DfeVariant::Int64(x) => Variant::Int(*x),
            DfeVariant::Byte(x) => Variant::UInt(*x as u64),
            DfeVariant::Word(x) => Variant::UInt(*x as u64),
            DfeVariant::LongWord(x) => Variant::UInt(*x as u64),
            DfeVariant::UInt64(x) => Variant::UInt(*x),
            DfeVariant::Single(x) => Variant::Float(*x as f64),
            DfeVariant::Double(x) => Variant::Float(*x),
            DfeVariant::Currency(x) => Variant::Float(*x as f64 / 10_000.0),
            DfeVariant::Boolean(b) => Variant::Bool(*b),
            DfeVariant::String { text, .. } => Variant::Text(
                Text::from_utf8(text.clone())
                    .map_err(|_| LegacyError::Convert("variant string is not UTF-8".into()))?,
            ),
        }),
    })
}

fn from_value(v: &Value) -> Result<DfeValue, LegacyError> {
    use DfeValue as D;
    Ok(match v {
        Value::Str(t) => D::String(t.to_bytes()),
        Value::Bool(b) => D::Byte(*b as u8),
        Value::I8(x) => D::Integer(*x as i32),
        Value::I16(x) => D::Integer(*x as i32),
        Value::I32(x) => D::Integer(*x),
        Value::I64(x) => D::Int64(*x),
        Value::U8(x) => D::Byte(*x),
        Value::U16(x) => D::Word(*x),
        Value::U32(x) => D::Cardinal(*x),
        Value::U64(x) => D::UInt64(*x),
        Value::F32(x) => D::Single(*x),
        Value::F64(x) => D::Double(*x),
        Value::Bytes(b) => D::Stream(b.clone()),
        Value::Frame(df) => D::Stream(Dfe::from_dataframe(df)?.to_bytes().into()),
        Value::Json(j) => D::String(Bytes::from(j.to_string())),
        Value::Variant(v) => D::Variant(match v {
            Variant::Null => DfeVariant::Null,
            Variant::Bool(b) => DfeVariant::Boolean(*b),
            Variant::Int(i) => DfeVariant::Int64(*i),
            Variant::UInt(u) => DfeVariant::UInt64(*u),
            Variant::Float(f) => DfeVariant::Double(*f),
            Variant::Text(t) => DfeVariant::String {
                vt: 0x102,
                text: t.to_bytes(),
            },
        }),
        Value::Array(a) => {
            let bad = || LegacyError::Convert(format!("{:?} array element out of range", a.kind()));
            match a.kind() {
                NumKind::U8 => D::ArrayByte(a.raw().clone()),
                NumKind::I8 => D::ArrayShortInt(a.to_vec::<i8>().ok_or_else(bad)?),
                NumKind::I16 => D::ArrayInteger(
                    a.to_vec::<i16>()
                        .ok_or_else(bad)?
                        .into_iter()
                        .map(i32::from)
                        .collect(),
                ),
                NumKind::U16 => D::ArrayInteger(
                    a.to_vec::<u16>()
                        .ok_or_else(bad)?
                        .into_iter()
                        .map(i32::from)
                        .collect(),
                ),
                NumKind::I32 => D::ArrayInteger(a.to_vec::<i32>().ok_or_else(bad)?),
                NumKind::U32 => D::ArrayInt64(
                    a.to_vec::<u32>()
                        .ok_or_else(bad)?
                        .into_iter()
                        .map(i64::from)
                        .collect(),
                ),
                NumKind::I64 => D::ArrayInt64(a.to_vec::<i64>().ok_or_else(bad)?),
                NumKind::U64 => {
                    let v: Option<Vec<i64>> = a
                        .to_vec::<u64>()
                        .ok_or_else(bad)?
                        .into_iter()
                        .map(|x| i64::try_from(x).ok())
                        .collect();
                    D::ArrayInt64(v.ok_or_else(bad)?)
                }
                NumKind::F32 => D::ArraySingle(a.to_vec::<f32>().ok_or_else(bad)?),
                NumKind::F64 => D::ArrayDouble(a.to_vec::<f64>().ok_or_else(bad)?),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_dfe_is_the_fixed_26_byte_form() {
        let b = Dfe::new().to_bytes();
        let mut want = vec![0xff, 4, 0, 0, 0, 0];
        want.extend_from_slice(&[0; 16]);
        want.extend_from_slice(&[0; 4]);
        assert_eq!(b, want);
        assert_eq!(
            Dfe::decode(&b.into(), &LegacyLimits::default()).unwrap(),
            Dfe::new()
        );
    }

    #[test]
    fn every_type_round_trips() {
        let d = Dfe(vec![
            DfeValue::string("héllo"),
            DfeValue::Integer(-5),
            DfeValue::Word(65535),
            DfeValue::Byte(7),
            DfeValue::Single(1.5),
            DfeValue::Double(-2.25),
            DfeValue::ArrayInteger(vec![1, -2, 3]),
            DfeValue::ArraySingle(vec![0.5]),
            DfeValue::ArrayDouble(vec![1e300, -0.0]),
            DfeValue::Stream(Bytes::from_static(b"\x00\x01")),
            DfeValue::Variant(DfeVariant::String {
                vt: 0x102,
                text: Bytes::from_static(b"v"),
            }),
            DfeValue::Variant(DfeVariant::Currency(12_345)),
            DfeValue::Int64(i64::MIN),
            DfeValue::ArrayShortInt(vec![-1, 1]),
            DfeValue::Cardinal(u32::MAX),
            DfeValue::UInt64(u64::MAX),
            DfeValue::ArrayByte(Bytes::from_static(b"abc")),
            DfeValue::ArrayInt64(vec![i64::MAX]),
            DfeValue::ArrayInt128(vec![-1]),
            DfeValue::Int128(i128::MIN),
            DfeValue::UInt128(u128::MAX),
        ]);
        let b = Bytes::from(d.to_bytes());
        assert_eq!(b.len(), d.encoded_len());
        assert_eq!(Dfe::decode(&b, &LegacyLimits::default()).unwrap(), d);
        // Every strict prefix fails cleanly.
        for n in 0..b.len() {
            assert!(Dfe::decode(&b.slice(..n), &LegacyLimits::default()).is_err());
        }
    }

    #[test]
    fn dataframe_mapping_round_trips_the_echo_values() {
        let d = Dfe(vec![
            DfeValue::string("abc"),
            DfeValue::Integer(3),
            DfeValue::Int64(3_000_000_021),
            DfeValue::Stream(Bytes::from_static(b"raw")),
            DfeValue::ArrayByte(Bytes::from_static(b"\x01\x02")),
            DfeValue::Cardinal(9),
            DfeValue::Variant(DfeVariant::Boolean(true)),
        ]);
        let df = d.to_dataframe().unwrap();
        assert_eq!(df.reader().read_text().unwrap(), "abc");
        let back = Dfe::from_dataframe(&df).unwrap();
        assert_eq!(back, d);
        // Ours → DFE: bool, nested frame, JSON.
        let nested = DataFrame::new().with("in");
        let df = DataFrame::new()
            .with(Value::Bool(true))
            .with(Value::Frame(Box::new(nested)))
            .with(Value::Json(Box::new(serde_json::json!({"a": 1}))));
        let d = Dfe::from_dataframe(&df).unwrap();
        assert_eq!(d.0[0], DfeValue::Byte(1));
        let inner = Dfe::decode(d.0[1].as_bytes().unwrap(), &LegacyLimits::default()).unwrap();
        assert_eq!(inner.0[0].as_str(), Some("in"));
        assert_eq!(d.0[2].as_str(), Some("{\"a\":1}"));
    }

    #[test]
    fn hostile_sizes_are_refused_before_allocating() {
        let lim = LegacyLimits::default();
        // count 2^31-1 in a 4-byte body
        let mut b = vec![0xff, 4, 0, 0, 0, 0];
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&i32::MAX.to_le_bytes());
        assert!(matches!(
            Dfe::decode(&b.into(), &lim),
            Err(LegacyError::TooLarge { .. })
        ));
        // a String of -1 bytes, and one longer than the body
        for len in [-1i32, 1000] {
            let d = Dfe(vec![DfeValue::string("x")]);
            let mut b = d.to_bytes();
            let at = 22 + 4 + 1;
            b[at..at + 4].copy_from_slice(&len.to_le_bytes());
            assert!(matches!(
                Dfe::decode(&b.into(), &lim),
                Err(LegacyError::BadDfe(_))
            ));
        }
        // body size over the limit; a compressed DFE
        let mut b = Dfe::new().to_bytes();
        b[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Dfe::decode(&b.into(), &lim),
            Err(LegacyError::TooLarge { .. })
        ));
        let mut b = Dfe::new().to_bytes();
        b[5] = 2; // CoreCompress Deflate: not read
        assert_eq!(
            Dfe::decode(&b.into(), &lim),
            Err(LegacyError::CompressedDfe(2))
        );
    }

    #[test]
    fn zlib_dfes_round_trip_and_are_bounded() {
        let lim = LegacyLimits::default();
        let d = Dfe(vec![
            DfeValue::string(&"abc".repeat(10_000)),
            DfeValue::Integer(30_000),
            DfeValue::Int64(7),
        ]);
        let mut z = Vec::new();
        d.encode_zlib(&mut z);
        assert_eq!((z[0], z[5]), (0xff, 1));
        assert!(z.len() < 1000, "compressed: {} bytes", z.len());
        assert_eq!(Dfe::decode(&z.clone().into(), &lim).unwrap(), d);
        // The raw size over max_frame is refused before inflating.
        let small = LegacyLimits {
            max_frame: 1000,
            ..lim
        };
        assert!(matches!(
            Dfe::decode(&z.clone().into(), &small),
            Err(LegacyError::TooLarge { .. })
        ));
        // A raw size that lies, a cut stream.
        let mut lie = z.clone();
        lie[6..10].copy_from_slice(&100u32.to_le_bytes());
        assert!(Dfe::decode(&lie.into(), &lim).is_err());
        let cut = z[..z.len() - 3].to_vec();
        assert!(Dfe::decode(&cut.into(), &lim).is_err());
        // The parallel container form (token 4), as the originals send DFEs
        // over 1 MiB.
        let mut body = Vec::new();
        d.encode_body(&mut body);
        let mut c = Vec::new();
        crate::legacy::compress::parallel_compress(&body, 3, &mut c);
        let mut p = vec![0xff];
        p.put_u32_le(c.len() as u32);
        p.put_u8(4);
        p.put_u32_le(body.len() as u32);
        p.put_slice(&[0u8; 16]);
        p.put_slice(&c);
        assert_eq!(Dfe::decode(&p.into(), &lim).unwrap(), d);
        // Over 1 MiB: the container form.
        let big = Dfe(vec![DfeValue::string(&"xyz".repeat(400_000))]);
        let b = big.to_compressed_bytes();
        assert_eq!(b[5], 4);
        assert_eq!(Dfe::decode(&b.into(), &lim).unwrap(), big);
        // Empty stays plain.
        let mut e = Vec::new();
        Dfe::new().encode_zlib(&mut e);
        assert_eq!(e, Dfe::new().to_bytes());
    }
}
