//! Keys (an order-preserving byte encoding of our own) and values (rkyv).

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::{Error, Result};

/// A table key: encoded to bytes whose byte order is the key order (commit locks are
/// taken in that order, and stored records are named by these bytes).
pub trait Key: Clone + Send + Sync + 'static {
    /// Appends the encoding of `self`.
    fn encode_key(&self, out: &mut Vec<u8>);
    /// Decodes a key written by [`Key::encode_key`] (`None` when malformed).
    fn decode_key(bytes: &[u8]) -> Option<Self>;
}

macro_rules! unsigned_key {
    ($($t:ty),*) => {$(
        impl Key for $t {
            fn encode_key(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_be_bytes());
            }
            fn decode_key(bytes: &[u8]) -> Option<Self> {
                Some(<$t>::from_be_bytes(bytes.try_into().ok()?))
            }
        }
    )*};
}
unsigned_key!(u8, u16, u32, u64, u128);

macro_rules! signed_key {
    ($($t:ty => $u:ty),*) => {$(
        impl Key for $t {
            fn encode_key(&self, out: &mut Vec<u8>) {
                // flip the sign bit so that byte order is numeric order
                out.extend_from_slice(&((*self as $u) ^ (1 << (<$u>::BITS - 1))).to_be_bytes());
            }
            fn decode_key(bytes: &[u8]) -> Option<Self> {
                let u = <$u>::from_be_bytes(bytes.try_into().ok()?);
                Some((u ^ (1 << (<$u>::BITS - 1))) as $t)
            }
        }
    )*};
}
signed_key!(i8 => u8, i16 => u16, i32 => u32, i64 => u64, i128 => u128);

impl Key for String {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode_key(bytes: &[u8]) -> Option<Self> {
        String::from_utf8(bytes.to_vec()).ok()
    }
}

impl Key for Vec<u8> {
    fn encode_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode_key(bytes: &[u8]) -> Option<Self> {
        Some(bytes.to_vec())
    }
}

impl<A: Key + FixedKey, B: Key> Key for (A, B) {
    fn encode_key(&self, out: &mut Vec<u8>) {
        self.0.encode_key(out);
        self.1.encode_key(out);
    }
    fn decode_key(bytes: &[u8]) -> Option<Self> {
        let (a, b) = bytes.split_at_checked(A::WIDTH)?;
        Some((A::decode_key(a)?, B::decode_key(b)?))
    }
}

/// A key whose encoding has one fixed width (so it can lead a pair key).
pub trait FixedKey {
    /// The encoded width in bytes.
    const WIDTH: usize;
}
macro_rules! fixed {
    ($($t:ty),*) => {$( impl FixedKey for $t { const WIDTH: usize = std::mem::size_of::<$t>(); } )*};
}
fixed!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128);

/// A table value, stored as its rkyv archive. Implemented for every type that derives
/// `rkyv::Archive`, `rkyv::Serialize` and `rkyv::Deserialize` (and checks its archive).
pub trait Value: Sized + Send + Sync + 'static {
    /// The archived form (read in place by [`crate::Table::read_archived`]).
    type Archived: rkyv::Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>;
    /// The rkyv archive of `self`.
    fn encode_value(&self) -> Result<Vec<u8>>;
    /// Decodes an archive (checked: malformed bytes are an error, never a panic).
    fn decode_value(bytes: &[u8]) -> Result<Self>;
}

impl<T> Value for T
where
    T: rkyv::Archive
        + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
        + Send
        + Sync
        + 'static,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    type Archived = T::Archived;
    fn encode_value(&self) -> Result<Vec<u8>> {
        rkyv::to_bytes::<rancor::Error>(self)
            .map(|v| v.to_vec())
            .map_err(|e| Error::Codec(e.to_string()))
    }
    fn decode_value(bytes: &[u8]) -> Result<Self> {
        with_aligned(bytes, |b| {
            rkyv::from_bytes::<T, rancor::Error>(b).map_err(|e| Error::Codec(e.to_string()))
        })
    }
}

/// Runs `f` on `bytes`, copied into 16-byte aligned memory when they are not aligned
/// (rkyv checks alignment; stored values are plain byte slices).
pub(crate) fn with_aligned<R>(bytes: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if (bytes.as_ptr() as usize).is_multiple_of(16) {
        f(bytes)
    } else {
        let mut v = AlignedVec::<16>::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        f(&v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_is_byte_order() {
        let enc = |k: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            k(&mut v);
            v
        };
        let ints = [-5i64, -1, 0, 1, 7, i64::MIN, i64::MAX];
        let mut by_bytes: Vec<i64> = ints.to_vec();
        by_bytes.sort_by_key(|k| enc(&|o| k.encode_key(o)));
        let mut by_value = ints.to_vec();
        by_value.sort();
        assert_eq!(by_bytes, by_value);
        for k in ints {
            assert_eq!(i64::decode_key(&enc(&|o| k.encode_key(o))), Some(k));
        }
        let pair = (7u32, "abc".to_string());
        let b = enc(&|o| pair.encode_key(o));
        assert_eq!(<(u32, String)>::decode_key(&b), Some(pair));
        assert_eq!(u64::decode_key(&[1, 2, 3]), None);
    }

    #[test]
    fn values_round_trip_and_reject_garbage() {
        let v: Vec<u32> = vec![1, 2, 3];
        let b = v.encode_value().unwrap();
        assert_eq!(Vec::<u32>::decode_value(&b).unwrap(), v);
        // misaligned copy decodes too
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&b);
        assert_eq!(Vec::<u32>::decode_value(&shifted[1..]).unwrap(), v);
        assert!(matches!(
            Vec::<u32>::decode_value(&[0xff; 3]),
            Err(Error::Codec(_))
        ));
    }
}
