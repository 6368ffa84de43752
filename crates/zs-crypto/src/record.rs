//! The record layer: framing, per-direction keys, sequence-number nonces and
//! key generations. Sans-IO and allocation-free on the hot path: a record is
//! sealed in the caller's buffer and opened in place.
//!
//! Record = `content_type u8 | length u32 LE | body[length]`, where a sealed
//! body is `ciphertext || tag` and the 5-byte header is the associated data.
//! The sequence number is implicit (counted by both sides from 0 in each key
//! generation), so a replayed, reordered or dropped record fails its tag.

use crate::error::{Error, Result};
use zeroize::Zeroize;

use crate::suite::{next_secret, Protector, SuiteId};

/// Bytes of the record header.
pub const HEADER_LEN: usize = 5;

/// Largest tag of any suite.
pub const MAX_TAG_LEN: usize = 32;

/// Hard upper bound of a record body (16 MiB), whatever the configuration says.
pub const MAX_RECORD_BODY: usize = 1 << 24;

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ContentType {
    /// Handshake failure notice, plaintext, handshake phase only (`0x14`).
    Alert = 0x14,
    /// Handshake message, plaintext (`0x16`).
    Handshake = 0x16,
    /// Application data, sealed (`0x17`).
    Data = 0x17,
    /// Key update, sealed (`0x18`).
    KeyUpdate = 0x18,
    /// Orderly close, sealed, empty (`0x19`).
    Close = 0x19,
}

impl ContentType {
    /// Parses the type byte.
    pub fn from_u8(b: u8) -> Option<ContentType> {
        Some(match b {
            0x14 => ContentType::Alert,
            0x16 => ContentType::Handshake,
            0x17 => ContentType::Data,
            0x18 => ContentType::KeyUpdate,
            0x19 => ContentType::Close,
            _ => return None,
        })
    }
}

/// Writes a record header.
pub fn header(ty: ContentType, body_len: usize) -> [u8; HEADER_LEN] {
    let l = (body_len as u32).to_le_bytes();
    [ty as u8, l[0], l[1], l[2], l[3]]
}

/// Reads a record header: the type byte (unchecked) and the body length.
pub fn parse_header(h: &[u8]) -> Option<(u8, usize)> {
    if h.len() < HEADER_LEN {
        return None;
    }
    Some((h[0], u32::from_le_bytes([h[1], h[2], h[3], h[4]]) as usize))
}

/// State of one direction: suite, traffic secret, generation, sequence number,
/// and the cipher keys expanded from the secret. The traffic secret is zeroized
/// on drop and overwritten on each update; it is what a key update needs (the
/// next generation's secret is derived from it). The expanded keys (ring's
/// AES-256-GCM key is 544 bytes, most of an idle session) are made on first use
/// and may be dropped with [`RecordSealer::release_keys`] /
/// [`RecordOpener::release_keys`]; they are made again from the secret when the
/// next record needs them.
struct DirectionKeys {
    suite: SuiteId,
    secret: [u8; 32],
    prot: Option<Box<Protector>>,
    generation: u32,
    seq: u64,
}

impl Drop for DirectionKeys {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl core::fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DirectionKeys")
            .field("suite", &self.suite)
            .field("generation", &self.generation)
            .field("seq", &self.seq)
            .field("keys_expanded", &self.prot.is_some())
            .finish_non_exhaustive()
    }
}

impl DirectionKeys {
    fn new(suite: SuiteId, secret: [u8; 32]) -> Result<Self> {
        Ok(DirectionKeys {
            suite,
            // Made at once: an unsupported suite fails here, not at the first record.
            prot: Some(Box::new(Protector::new(suite, &secret)?)),
            secret,
            generation: 0,
            seq: 0,
        })
    }

    /// The expanded keys, made from the secret if they were released.
    fn prot(&mut self) -> Result<&Protector> {
        let prot = match self.prot.take() {
            Some(p) => p,
            None => Box::new(Protector::new(self.suite, &self.secret)?),
        };
        Ok(self.prot.insert(prot))
    }

    fn advance(&mut self) -> Result<()> {
        self.secret = next_secret(&self.secret);
        let expanded = self.prot.is_some();
        // The old generation's keys go now; the new ones are made as before
        // (at once when the old ones were in use, else on first use).
        self.prot = None;
        if expanded {
            self.prot = Some(Box::new(Protector::new(self.suite, &self.secret)?));
        }
        self.generation = self.generation.wrapping_add(1);
        self.seq = 0;
        Ok(())
    }

    fn release(&mut self) {
        self.prot = None;
    }

    fn take_seq(&mut self) -> Result<u64> {
        let s = self.seq;
        // Never reuse a nonce: refuse rather than wrap (a rekey resets it).
        self.seq = self
            .seq
            .checked_add(1)
            // Built only on failure: this runs for every record.
            .ok_or_else(|| Error::Config("sequence number exhausted".into()))?;
        Ok(s)
    }
}

/// A growable buffer records are sealed into: `Vec<u8>`, or a reusable
/// `BytesMut` whose sealed part is split off and frozen for the transport
/// (the session's output; see [`crate::session::Session::take_output_bytes`]).
pub trait RecordBuf: AsRef<[u8]> + AsMut<[u8]> {
    /// Appends `s`.
    fn put_slice(&mut self, s: &[u8]);
    /// Room for `n` more bytes.
    fn reserve_bytes(&mut self, n: usize);
}

impl RecordBuf for Vec<u8> {
    fn put_slice(&mut self, s: &[u8]) {
        self.extend_from_slice(s);
    }
    fn reserve_bytes(&mut self, n: usize) {
        self.reserve(n);
    }
}

impl RecordBuf for bytes::BytesMut {
    fn put_slice(&mut self, s: &[u8]) {
        self.extend_from_slice(s);
    }
    fn reserve_bytes(&mut self, n: usize) {
        self.reserve(n);
    }
}

/// Seals records of one direction. `Debug` shows no key material.
#[derive(Debug)]
pub struct RecordSealer {
    keys: DirectionKeys,
}

impl RecordSealer {
    /// A sealer for `suite` keyed from a 32-byte traffic secret (generation 0).
    pub fn new(suite: SuiteId, secret: [u8; 32]) -> Result<Self> {
        Ok(RecordSealer {
            keys: DirectionKeys::new(suite, secret)?,
        })
    }

    /// The suite.
    pub fn suite(&self) -> SuiteId {
        self.keys.suite
    }

    /// Current key generation (0 after the handshake, +1 per key update).
    pub fn generation(&self) -> u32 {
        self.keys.generation
    }

    /// Sequence number the next record will use.
    pub fn next_seq(&self) -> u64 {
        self.keys.seq
    }

    /// Bytes a record of `n` plaintext bytes takes on the wire.
    pub fn wire_len(&self, n: usize) -> usize {
        HEADER_LEN + n + self.keys.suite.tag_len()
    }

    /// Starts a record in `buf`: pushes a placeholder header and returns its
    /// offset. Append the plaintext to `buf`, then call [`Self::seal_in_place`].
    pub fn begin<B: RecordBuf>(&self, buf: &mut B) -> usize {
        let start = buf.as_ref().len();
        buf.put_slice(&[0; HEADER_LEN]);
        start
    }

    /// Seals the record that starts at `start` in `buf` (header placeholder
    /// then plaintext up to the end): writes the header, encrypts in place and
    /// appends the tag. No copy of the payload is made.
    pub fn seal_in_place<B: RecordBuf>(
        &mut self,
        ty: ContentType,
        buf: &mut B,
        start: usize,
    ) -> Result<()> {
        let plen = buf
            .as_ref()
            .len()
            .checked_sub(start + HEADER_LEN)
            .ok_or(Error::Malformed("record start beyond buffer"))?;
        let tag_len = self.keys.suite.tag_len();
        if plen + tag_len > MAX_RECORD_BODY {
            return Err(Error::RecordTooLarge {
                len: plen + tag_len,
                max: MAX_RECORD_BODY,
            });
        }
        let h = header(ty, plen + tag_len);
        buf.as_mut()[start..start + HEADER_LEN].copy_from_slice(&h);
        self.keys.prot()?; // made first: a failure burns no sequence number
        let seq = self.keys.take_seq()?;
        let mut tag = [0u8; MAX_TAG_LEN];
        let prot = self.keys.prot.as_deref().ok_or(Error::Failed)?;
        let n = prot.seal(seq, &h, &mut buf.as_mut()[start + HEADER_LEN..], &mut tag)?;
        buf.put_slice(&tag[..n]);
        Ok(())
    }

    /// Seals a record the caller laid out in `record`: [`HEADER_LEN`] bytes
    /// for the header, the plaintext, then exactly the suite's tag length
    /// (see [`Self::wire_len`]). The header and tag bytes are overwritten and
    /// the plaintext is encrypted where it lies: a caller that received the
    /// plaintext straight into `record` seals it with no copy at all.
    pub fn seal_slice(&mut self, ty: ContentType, record: &mut [u8]) -> Result<()> {
        let tag_len = self.keys.suite.tag_len();
        let body = record
            .len()
            .checked_sub(HEADER_LEN)
            .filter(|b| *b >= tag_len)
            .ok_or(Error::Malformed("record shorter than its header and tag"))?;
        if body > MAX_RECORD_BODY {
            return Err(Error::RecordTooLarge {
                len: body,
                max: MAX_RECORD_BODY,
            });
        }
        let h = header(ty, body);
        let (head, rest) = record.split_at_mut(HEADER_LEN);
        head.copy_from_slice(&h);
        self.keys.prot()?; // made first: a failure burns no sequence number
        let seq = self.keys.take_seq()?;
        let (plain, tag_out) = rest.split_at_mut(body - tag_len);
        let mut tag = [0u8; MAX_TAG_LEN];
        let prot = self.keys.prot.as_deref().ok_or(Error::Failed)?;
        let n = prot.seal(seq, &h, plain, &mut tag)?;
        if n != tag_len {
            return Err(Error::Failed);
        }
        tag_out.copy_from_slice(&tag[..n]);
        Ok(())
    }

    /// Appends one sealed record carrying `plaintext` to `out`.
    pub fn seal<B: RecordBuf>(
        &mut self,
        ty: ContentType,
        plaintext: &[u8],
        out: &mut B,
    ) -> Result<()> {
        out.reserve_bytes(self.wire_len(plaintext.len()));
        let start = self.begin(out);
        out.put_slice(plaintext);
        self.seal_in_place(ty, out, start)
    }

    /// Moves to the next key generation (after sending a key-update record).
    pub fn update_keys(&mut self) -> Result<()> {
        self.keys.advance()
    }

    /// Drops the expanded cipher keys (the traffic secret stays); the next
    /// record makes them again (the session's `release_keys`, for idle
    /// connections: ring's AES-256-GCM key is 544 bytes).
    pub fn release_keys(&mut self) {
        self.keys.release()
    }

    /// Whether the expanded cipher keys are in memory.
    pub fn keys_expanded(&self) -> bool {
        self.keys.prot.is_some()
    }
}

/// Opens records of one direction. `Debug` shows no key material.
#[derive(Debug)]
pub struct RecordOpener {
    keys: DirectionKeys,
}

impl RecordOpener {
    /// An opener for `suite` keyed from a 32-byte traffic secret (generation 0).
    pub fn new(suite: SuiteId, secret: [u8; 32]) -> Result<Self> {
        Ok(RecordOpener {
            keys: DirectionKeys::new(suite, secret)?,
        })
    }

    /// The suite.
    pub fn suite(&self) -> SuiteId {
        self.keys.suite
    }

    /// Current key generation.
    pub fn generation(&self) -> u32 {
        self.keys.generation
    }

    /// The type, body length and tag length of the complete record `record`
    /// (header + body, nothing after it).
    fn check(&self, record: &[u8]) -> Result<(ContentType, usize, usize)> {
        let (ty, len) = parse_header(record).ok_or(Error::Malformed("record header"))?;
        if record.len() != HEADER_LEN + len {
            return Err(Error::Malformed("record length"));
        }
        let ty = ContentType::from_u8(ty).ok_or(Error::Malformed("record content type"))?;
        let tag_len = self.keys.suite.tag_len();
        if len < tag_len {
            return Err(Error::BadRecordMac);
        }
        Ok((ty, len, tag_len))
    }

    /// Opens one complete record (header + body) in place and returns its
    /// type and the decrypted payload (a sub-slice of `record`). On error the
    /// sequence number does not advance.
    pub fn open_in_place<'a>(
        &mut self,
        record: &'a mut [u8],
    ) -> Result<(ContentType, &'a mut [u8])> {
        let (ty, len, tag_len) = self.check(record)?;
        let (h, body) = record.split_at_mut(HEADER_LEN);
        let (data, tag) = body.split_at_mut(len - tag_len);
        let seq = self.keys.seq;
        self.keys.prot()?.open(seq, h, data, tag)?;
        self.keys.take_seq()?;
        Ok((ty, data))
    }

    /// Opens the complete record at `region[off..]` (header + body, to the
    /// end of `region`) like [`Self::open_in_place`], but writes the payload
    /// at the start of `region`: records opened one after another this way
    /// leave their payloads contiguous, with no header or tag between them
    /// (for ring's AEADs the move costs nothing: it is done by the
    /// decryption pass). The bytes before `off` are overwritten.
    pub fn open_shifted<'a>(
        &mut self,
        region: &'a mut [u8],
        off: usize,
    ) -> Result<(ContentType, &'a mut [u8])> {
        let record = region.get(off..).ok_or(Error::Malformed("record offset"))?;
        let (ty, _, tag_len) = self.check(record)?;
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&record[..HEADER_LEN]);
        let seq = self.keys.seq;
        let n = self
            .keys
            .prot()?
            .open_shifted(seq, &h, region, off + HEADER_LEN, tag_len)?;
        self.keys.take_seq()?;
        Ok((ty, &mut region[..n]))
    }

    /// Moves to the next key generation (after opening a key-update record).
    pub fn update_keys(&mut self) -> Result<()> {
        self.keys.advance()
    }

    /// Drops the expanded cipher keys (the traffic secret stays); the next
    /// record makes them again.
    pub fn release_keys(&mut self) {
        self.keys.release()
    }

    /// Whether the expanded cipher keys are in memory.
    pub fn keys_expanded(&self) -> bool {
        self.keys.prot.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `open_shifted` gives what `open_in_place` gives, written at the start
    /// of the region, for every suite and shift; a changed byte fails it.
    #[test]
    fn open_shifted_moves_the_payload_down() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 13) as u8).collect();
        for suite in SuiteId::ALL {
            for off in [0usize, 1, 5, 21, 4096] {
                let Ok(mut s) = RecordSealer::new(suite, [3; 32]) else {
                    break;
                };
                let mut rec = Vec::new();
                s.seal(ContentType::Data, &payload, &mut rec).unwrap();
                let mut o = RecordOpener::new(suite, [3; 32]).unwrap();
                let mut region = vec![0xee; off];
                region.extend_from_slice(&rec);
                let mut bad = region.clone();
                *bad.last_mut().unwrap() ^= 1;
                assert_eq!(
                    o.open_shifted(&mut bad, off).unwrap_err(),
                    Error::BadRecordMac,
                    "{suite} {off}"
                );
                let (ty, p) = o.open_shifted(&mut region, off).unwrap();
                assert_eq!(ty, ContentType::Data);
                assert_eq!(p, &payload[..], "{suite} {off}");
                assert_eq!(p.as_ptr(), region.as_ptr());
            }
        }
    }

    #[test]
    fn seal_open_and_reject_replay_reorder_truncation() {
        for suite in SuiteId::ALL {
            let mut s = RecordSealer::new(suite, [1; 32]).unwrap();
            let mut o = RecordOpener::new(suite, [1; 32]).unwrap();
            let mut r0 = Vec::new();
            s.seal(ContentType::Data, b"first", &mut r0).unwrap();
            let mut r1 = Vec::new();
            s.seal(ContentType::Data, b"second", &mut r1).unwrap();
            // reorder: record 1 before record 0
            assert_eq!(
                o.open_in_place(&mut r1.clone()).unwrap_err(),
                Error::BadRecordMac
            );
            let (ty, p) = o
                .open_in_place(&mut r0.clone())
                .map(|(t, p)| (t, p.to_vec()))
                .unwrap();
            assert_eq!((ty, &p[..]), (ContentType::Data, &b"first"[..]));
            // replay of record 0
            assert_eq!(
                o.open_in_place(&mut r0.clone()).unwrap_err(),
                Error::BadRecordMac
            );
            // truncated body with a matching header
            let mut t = r1[..r1.len() - 1].to_vec();
            let n = t.len() - HEADER_LEN;
            t[1..5].copy_from_slice(&(n as u32).to_le_bytes());
            assert_eq!(o.open_in_place(&mut t).unwrap_err(), Error::BadRecordMac);
            // type byte changed (header is associated data)
            let mut c = r1.clone();
            c[0] = ContentType::Close as u8;
            assert_eq!(o.open_in_place(&mut c).unwrap_err(), Error::BadRecordMac);
            let (_, p) = o.open_in_place(&mut r1).unwrap();
            assert_eq!(p, b"second");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let s = RecordSealer::new(SuiteId::Aes256Gcm, [0xab; 32]).unwrap();
        let d = format!("{s:?}");
        assert!(d.contains("AES-256-GCM") || d.contains("Aes256Gcm"), "{d}");
        assert!(!d.contains("171") && !d.contains("ab"), "{d}");
    }

    #[test]
    fn generations_must_match() {
        let mut s = RecordSealer::new(SuiteId::Aes256Gcm, [3; 32]).unwrap();
        let mut o = RecordOpener::new(SuiteId::Aes256Gcm, [3; 32]).unwrap();
        s.update_keys().unwrap();
        let mut r = Vec::new();
        s.seal(ContentType::Data, b"x", &mut r).unwrap();
        assert!(o.open_in_place(&mut r.clone()).is_err());
        o.update_keys().unwrap();
        assert_eq!(o.open_in_place(&mut r).unwrap().1, b"x");
        assert_eq!((s.generation(), o.generation()), (1, 1));
    }

    #[test]
    fn released_keys_are_made_again_from_the_secret() {
        for suite in SuiteId::ALL {
            let mut s = RecordSealer::new(suite, [4; 32]).unwrap();
            let mut o = RecordOpener::new(suite, [4; 32]).unwrap();
            assert!(s.keys_expanded() && o.keys_expanded());
            s.release_keys();
            o.release_keys();
            assert!(!s.keys_expanded() && !o.keys_expanded());
            let mut r = Vec::new();
            s.seal(ContentType::Data, b"first", &mut r).unwrap();
            assert!(s.keys_expanded());
            assert_eq!(o.open_in_place(&mut r).unwrap().1, b"first");
            assert!(o.keys_expanded());
            // Released, then a key update: the next generation's keys.
            s.release_keys();
            o.release_keys();
            s.update_keys().unwrap();
            o.update_keys().unwrap();
            assert!(!s.keys_expanded() && !o.keys_expanded());
            let mut r = Vec::new();
            s.seal(ContentType::Data, b"second", &mut r).unwrap();
            let mut stale = RecordOpener::new(suite, [4; 32]).unwrap();
            assert!(stale.open_in_place(&mut r.clone()).is_err(), "{suite}");
            assert_eq!(o.open_in_place(&mut r).unwrap().1, b"second");
            assert_eq!((s.generation(), o.generation()), (1, 1));
        }
    }

    #[test]
    fn a_released_direction_is_small() {
        // The expanded keys live behind a pointer: what stays per direction
        // while idle is the secret, the counters and that pointer.
        assert!(std::mem::size_of::<RecordSealer>() <= 64);
        assert!(std::mem::size_of::<RecordOpener>() <= 64);
    }
}
