//! LEB128 varints (unsigned, 7 bits per byte, low group first) and a body cursor.

use bytes::{Buf, BufMut, Bytes};

use crate::{Text, WireError};

/// Largest encoded size of a u64 varint.
pub(crate) const MAX_VARINT: usize = 10;

/// Appends `v` as a varint.
#[inline]
pub(crate) fn put_varint(dst: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        dst.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    dst.put_u8(v as u8);
}

/// Encoded size of `v` as a varint.
#[inline]
pub(crate) fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits, at least 1.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Outcome of reading a varint from a possibly incomplete buffer.
pub(crate) enum Varint {
    /// Value and number of bytes used.
    Done(u64, usize),
    /// The buffer ends inside the varint.
    Incomplete,
}

/// The inline fast path of [`get_varint`]: a canonical one- or two-byte varint at
/// the start of `src` (counts, lengths, ids below 16384) and its size; `None` for
/// anything else (longer, non-canonical, incomplete), which `get_varint` handles.
#[inline(always)]
pub(crate) fn varint_fast(src: &[u8]) -> Option<(u64, usize)> {
    match *src {
        [b0, ..] if b0 < 0x80 => Some((b0 as u64, 1)),
        [b0, b1, ..] if b1 < 0x80 && b1 != 0 => Some(((b0 & 0x7f) as u64 | (b1 as u64) << 7, 2)),
        _ => None,
    }
}

/// The next step after [`varint_fast`]: a canonical three- or four-byte
/// varint (16384 to 2^28 - 1, e.g. the ids of a long-lived connection's
/// calls) and its size; `None` for anything else. Only for a `src` whose
/// first two bytes [`varint_fast`] did not take.
#[inline(always)]
pub(crate) fn varint_mid(src: &[u8]) -> Option<(u64, usize)> {
    let low = |b0: u8, b1: u8| (b0 & 0x7f) as u64 | ((b1 & 0x7f) as u64) << 7;
    match *src {
        [b0, b1, b2, ..] if b0 >= 0x80 && b1 >= 0x80 && b2 < 0x80 && b2 != 0 => {
            Some((low(b0, b1) | (b2 as u64) << 14, 3))
        }
        [b0, b1, b2, b3, ..] if b0 >= 0x80 && b1 >= 0x80 && b2 >= 0x80 && b3 < 0x80 && b3 != 0 => {
            Some((
                low(b0, b1) | ((b2 & 0x7f) as u64) << 14 | (b3 as u64) << 21,
                4,
            ))
        }
        _ => None,
    }
}

/// Reads a canonical varint from the start of `src`.
#[inline]
pub(crate) fn get_varint(src: &[u8]) -> Result<Varint, WireError> {
    if let Some((v, n)) = varint_fast(src) {
        return Ok(Varint::Done(v, n));
    }
    if src.is_empty() {
        return Ok(Varint::Incomplete);
    }
    let mut v: u64 = 0;
    for (i, &b) in src.iter().enumerate().take(MAX_VARINT) {
        let group = (b & 0x7f) as u64;
        if i == 9 && b > 1 {
            return Err(WireError::VarintOverflow);
        }
        v |= group << (7 * i);
        if b < 0x80 {
            if b == 0 && i > 0 {
                return Err(WireError::NonCanonicalVarint);
            }
            return Ok(Varint::Done(v, i + 1));
        }
    }
    if src.len() >= MAX_VARINT {
        Err(WireError::VarintOverflow)
    } else {
        Ok(Varint::Incomplete)
    }
}

/// A read position inside one complete frame body (owns a handle to the buffer, so
/// the last field can take the rest without another reference-count update).
pub(crate) struct Cursor {
    buf: Bytes,
    pos: usize,
}

impl Cursor {
    #[inline]
    pub(crate) fn new(buf: Bytes) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Current byte position.
    #[inline]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Moves to byte `pos` (at most the end).
    #[inline]
    pub(crate) fn set_pos(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(WireError::TrailingBytes(n)),
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        match self.buf.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err(WireError::Truncated { field }),
        }
    }

    #[inline]
    pub(crate) fn varint(&mut self, field: &'static str) -> Result<u64, WireError> {
        if let Some((v, n)) = varint_fast(&self.buf[self.pos..]) {
            self.pos += n;
            return Ok(v);
        }
        match get_varint(&self.buf[self.pos..])? {
            Varint::Done(v, n) => {
                self.pos += n;
                Ok(v)
            }
            Varint::Incomplete => Err(WireError::Truncated { field }),
        }
    }

    /// Skips exactly `n` bytes, returning the borrowed slice.
    #[inline]
    pub(crate) fn slice(&mut self, n: usize, field: &'static str) -> Result<&[u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated { field });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Skips exactly `n` bytes.
    #[inline]
    pub(crate) fn skip(&mut self, n: usize, field: &'static str) -> Result<(), WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated { field });
        }
        self.pos += n;
        Ok(())
    }

    /// Fixed-size array of `N` bytes.
    #[inline]
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], WireError> {
        if N > self.remaining() {
            return Err(WireError::Truncated { field });
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        Ok(a)
    }

    /// A text of exactly `n` bytes, validated as UTF-8: copied inline when short,
    /// else a zero-copy slice.
    #[inline]
    pub(crate) fn text(&mut self, n: usize, field: &'static str) -> Result<Text, WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated { field });
        }
        let (s, e) = (self.pos, self.pos + n);
        let t = Text::from_utf8_slice(&self.buf[s..e], || self.buf.slice(s..e))?;
        self.pos = e;
        Ok(t)
    }

    /// A zero-copy `Bytes` slice of exactly `n` bytes.
    #[inline]
    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<Bytes, WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated { field });
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    /// Everything that is left, zero-copy; the cursor's own handle is handed over
    /// (no reference-count traffic), leaving the cursor at the end.
    #[inline]
    pub(crate) fn rest(&mut self) -> Bytes {
        self.rest_from(self.pos)
    }

    /// The bytes from `start` (at most the current position) to the end, handing
    /// over the cursor's handle; the cursor is left at the end.
    #[inline]
    pub(crate) fn rest_from(&mut self, start: usize) -> Bytes {
        let mut b = std::mem::take(&mut self.buf);
        b.advance(start.min(b.len()));
        self.pos = 0;
        b
    }

    /// A zero-copy slice from `start` to the current position.
    #[inline]
    pub(crate) fn since(&self, start: usize) -> Bytes {
        self.buf.slice(start..self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: u64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        out
    }

    #[test]
    fn known_encodings() {
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        assert_eq!(enc(u64::MAX).len(), 10);
        for v in [0, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX] {
            assert_eq!(varint_len(v), enc(v).len(), "{v}");
            match get_varint(&enc(v)).unwrap() {
                Varint::Done(x, n) => assert_eq!((x, n), (v, enc(v).len())),
                Varint::Incomplete => panic!("incomplete"),
            }
        }
    }

    /// `varint_mid` reads what `get_varint` reads for three- and four-byte
    /// varints, and declines everything else (shorter, longer,
    /// non-canonical, incomplete).
    #[test]
    fn mid_varints_agree_with_the_general_reader() {
        let edges = [0u64, 127, 128, 16383, 16384, 16385, 2_097_151, 2_097_152];
        let more = [268_435_455u64, 268_435_456, 300_000, 1 << 27, u64::MAX];
        for v in edges.into_iter().chain(more) {
            let e = enc(v);
            let want = match e.len() {
                3 | 4 => Some((v, e.len())),
                _ => None,
            };
            assert_eq!(varint_mid(&e), want, "{v}");
            let mut tail = e.clone();
            tail.push(0x55);
            assert_eq!(varint_mid(&tail), want, "{v} with a byte after it");
            assert_eq!(varint_mid(&e[..e.len() - 1]), None, "{v} cut");
        }
        // Non-canonical: a zero last group.
        assert_eq!(varint_mid(&[0x80, 0x80, 0x00]), None);
        assert_eq!(varint_mid(&[0x80, 0x80, 0x80, 0x00]), None);
        for b in [[0xffu8, 0xff, 0x7f], [0x81, 0x80, 0x01]] {
            match get_varint(&b).unwrap() {
                Varint::Done(x, n) => assert_eq!(varint_mid(&b), Some((x, n))),
                Varint::Incomplete => panic!("incomplete"),
            }
        }
    }

    #[test]
    fn rejects_bad_varints() {
        assert_eq!(
            get_varint(&[0x80, 0x00]).err(),
            Some(WireError::NonCanonicalVarint)
        );
        let mut over = vec![0xff; 9];
        over.push(0x02);
        assert_eq!(get_varint(&over).err(), Some(WireError::VarintOverflow));
        assert_eq!(
            get_varint(&[0xff; 11]).err(),
            Some(WireError::VarintOverflow)
        );
        assert!(matches!(get_varint(&[0xff; 3]), Ok(Varint::Incomplete)));
        assert!(matches!(get_varint(&[]), Ok(Varint::Incomplete)));
    }
}
