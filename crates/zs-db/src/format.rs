//! The on-disk format (documented byte by byte in `docs/STORAGE.md`).
//!
//! A database file is a 96-byte header (a 64-byte fixed part with the file's random
//! salt, then two synced-end checkpoint slots) followed by 8-byte aligned frames.
//! Every frame carries a CRC-32 over the file's salt, its header and its payload, so
//! frame images that were not written into this very file (copied from another
//! database, or stored inside a value) do not validate; frames are grouped into
//! commits (the last frame of a commit has [`FLAG_COMMIT`]); a commit counts only if
//! every one of its frames is present and valid.

use crate::error::{Error, Result};

/// File magic: the first 8 bytes of every database file.
pub const MAGIC: [u8; 8] = *b"ZSDBLOG\0";
/// The format version this code writes and reads (version 1 files are refused).
pub const FORMAT_VERSION: u16 = 2;
/// Size of the file header in bytes (fixed part and both checkpoint slots); the first
/// frame starts here.
pub const FILE_HEADER_LEN: u64 = 96;
/// Size of the fixed part of the file header (covered by the header CRC at 40..44).
pub const FIXED_HEADER_LEN: usize = 64;
/// Size of the per-file salt.
pub const SALT_LEN: usize = 16;
/// Size of one checkpoint slot.
pub const CHECKPOINT_LEN: usize = 16;
/// File offsets of the two checkpoint slots.
pub const CHECKPOINT_OFFSETS: [u64; 2] = [64, 80];
/// Size of a frame header in bytes.
pub const FRAME_HEADER_LEN: usize = 32;
/// Frames start at multiples of this alignment.
pub const ALIGN: u64 = 8;

/// Frame op: store a record under an id (insert or update).
pub const OP_PUT: u8 = 1;
/// Frame op: delete the record with the id (no payload).
pub const OP_DELETE: u8 = 2;
/// Frame op: a metadata entry (payload = UTF-8 `key=value`), id is 0.
pub const OP_META: u8 = 3;

/// Frame flag: the last frame of a commit.
pub const FLAG_COMMIT: u8 = 0x01;
/// Frame flag: payload compressed with LZ4 block format; bytes 28..32 hold the raw length.
pub const FLAG_LZ4: u8 = 0x02;
const KNOWN_FLAGS: u8 = FLAG_COMMIT | FLAG_LZ4;

/// The highest record kind tag (see [`crate::Kind`]).
pub const MAX_KIND: u8 = 3;

/// Rounds `n` up to the frame alignment (saturating at the largest aligned `u64`).
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN)
        .checked_mul(ALIGN)
        .unwrap_or(u64::MAX - (ALIGN - 1))
}

/// The random per-file salt that keys every frame checksum of one file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Salt {
    bytes: [u8; SALT_LEN],
    /// CRC-32 of `bytes`: the checksum state every frame CRC continues from.
    seed: u32,
}

impl std::fmt::Debug for Salt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Salt(..)")
    }
}

impl Salt {
    /// A salt with the given bytes (for tests and tools; databases draw theirs with
    /// [`Salt::random`]).
    pub fn new(bytes: [u8; SALT_LEN]) -> Salt {
        Salt {
            bytes,
            seed: crc32fast::hash(&bytes),
        }
    }

    /// A fresh unpredictable salt: std's randomly keyed SipHash (keys drawn from the
    /// operating system's RNG) over a process-wide counter, the time and the process id.
    pub fn random() -> Salt {
        use std::hash::{BuildHasher, Hasher};
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut bytes = [0u8; SALT_LEN];
        for (i, part) in bytes.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            h.write_u128(now);
            h.write_u32(std::process::id());
            h.write_usize(i);
            part.copy_from_slice(&h.finish().to_le_bytes());
        }
        Salt::new(bytes)
    }

    /// The salt's bytes (as stored at header offset 24).
    pub fn bytes(&self) -> &[u8; SALT_LEN] {
        &self.bytes
    }

    /// A CRC-32 hasher that has already consumed the salt.
    pub(crate) fn hasher(&self) -> crc32fast::Hasher {
        crc32fast::Hasher::new_with_initial(self.seed)
    }
}

/// What the file header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    /// Every id below this may have been allocated; the next id is at least this.
    pub id_floor: u64,
    /// The file's frame checksum salt.
    pub salt: Salt,
    /// The synced end: the highest valid checkpoint slot, or [`FILE_HEADER_LEN`] when
    /// neither slot is valid. Every byte before it was durable when it was recorded.
    pub checkpoint: u64,
    /// The slot holding `checkpoint` (`None` if neither slot is valid).
    pub checkpoint_slot: Option<usize>,
}

/// Encodes one checkpoint slot recording the synced end `end`.
pub fn encode_checkpoint(salt: &Salt, end: u64) -> [u8; CHECKPOINT_LEN] {
    let mut s = [0u8; CHECKPOINT_LEN];
    s[0..8].copy_from_slice(&end.to_le_bytes());
    let mut h = salt.hasher();
    h.update(&s[0..8]);
    s[8..12].copy_from_slice(&h.finalize().to_le_bytes());
    s
}

/// Decodes a checkpoint slot: the synced end if the slot is valid.
pub fn decode_checkpoint(salt: &Salt, s: &[u8]) -> Option<u64> {
    if s.len() < CHECKPOINT_LEN || s[12..16] != [0; 4] {
        return None;
    }
    let end = u64::from_le_bytes(s[0..8].try_into().ok()?);
    let mut h = salt.hasher();
    h.update(&s[0..8]);
    let crc = u32::from_le_bytes(s[8..12].try_into().ok()?);
    let plausible = end >= FILE_HEADER_LEN && end % ALIGN == 0;
    (crc == h.finalize() && plausible).then_some(end)
}

/// Encodes the file header: id floor, salt, and `checkpoint` in slot 0 (slot 1 empty).
pub fn encode_file_header(
    id_floor: u64,
    salt: &Salt,
    checkpoint: u64,
) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(FILE_HEADER_LEN as u16).to_le_bytes());
    // 12..16 flags: zero
    h[16..24].copy_from_slice(&id_floor.to_le_bytes());
    h[24..40].copy_from_slice(&salt.bytes);
    let crc = crc32fast::hash(&h[0..40]);
    h[40..44].copy_from_slice(&crc.to_le_bytes());
    // 44..64 reserved: zero
    h[64..80].copy_from_slice(&encode_checkpoint(salt, checkpoint));
    // 80..96: slot 1, empty (invalid) until the first checkpoint update
    h
}

/// Decodes a file header (fixed part and checkpoint slots).
pub fn decode_file_header(name: &str, h: &[u8]) -> Result<FileHeader> {
    let bad = |reason: &str| Error::BadHeader {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if h.len() < 12 {
        return Err(bad("file shorter than its header"));
    }
    if h[0..8] != MAGIC {
        return Err(bad("not a zs-db file (magic mismatch)"));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != FORMAT_VERSION {
        return Err(bad(&format!(
            "unsupported format version {version}: this build reads and writes only \
             version {FORMAT_VERSION} (version 1 files have no checksum salt and are \
             not migrated; re-create the database)"
        )));
    }
    if h.len() < FILE_HEADER_LEN as usize {
        return Err(bad("file shorter than its 96-byte header"));
    }
    let crc = u32::from_le_bytes([h[40], h[41], h[42], h[43]]);
    if crc != crc32fast::hash(&h[0..40]) {
        return Err(bad("header checksum mismatch"));
    }
    if u16::from_le_bytes([h[10], h[11]]) as u64 != FILE_HEADER_LEN {
        return Err(bad("unexpected header length"));
    }
    if h[12..16] != [0; 4] || h[44..64].iter().any(|&b| b != 0) {
        return Err(bad("unknown header flags"));
    }
    let id_floor = u64::from_le_bytes(h[16..24].try_into().unwrap_or([0; 8]));
    let mut salt_bytes = [0u8; SALT_LEN];
    salt_bytes.copy_from_slice(&h[24..40]);
    let salt = Salt::new(salt_bytes);
    let mut checkpoint = FILE_HEADER_LEN;
    let mut checkpoint_slot = None;
    for (i, off) in CHECKPOINT_OFFSETS.iter().enumerate() {
        let off = *off as usize;
        if let Some(end) = decode_checkpoint(&salt, &h[off..off + CHECKPOINT_LEN]) {
            if checkpoint_slot.is_none() || end > checkpoint {
                checkpoint = end;
                checkpoint_slot = Some(i);
            }
        }
    }
    Ok(FileHeader {
        id_floor,
        salt,
        checkpoint,
        checkpoint_slot,
    })
}

/// The decoded fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// CRC-32 (IEEE) over the file's salt, header bytes 4..32 and the payload.
    pub crc: u32,
    /// [`OP_PUT`], [`OP_DELETE`] or [`OP_META`].
    pub op: u8,
    /// Record kind tag (0..=3).
    pub kind: u8,
    /// [`FLAG_COMMIT`] | [`FLAG_LZ4`].
    pub flags: u8,
    /// Record id (0 for META).
    pub id: u64,
    /// Stored payload length in bytes.
    pub len: u64,
    /// Index of this frame inside its commit (0-based).
    pub index: u32,
    /// Uncompressed length when [`FLAG_LZ4`] is set, else 0.
    pub raw_len: u32,
}

impl FrameHeader {
    /// Encodes the header; `crc` is taken from `self` (use [`FrameHeader::seal`]).
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut h = [0u8; FRAME_HEADER_LEN];
        h[0..4].copy_from_slice(&self.crc.to_le_bytes());
        h[4] = self.op;
        h[5] = self.kind;
        h[6] = self.flags;
        h[7] = 0;
        h[8..16].copy_from_slice(&self.id.to_le_bytes());
        h[16..24].copy_from_slice(&self.len.to_le_bytes());
        h[24..28].copy_from_slice(&self.index.to_le_bytes());
        h[28..32].copy_from_slice(&self.raw_len.to_le_bytes());
        h
    }

    /// Computes the CRC over `salt`, the header (bytes 4..32) and `payload`, stores it,
    /// and returns the encoded header.
    pub fn seal(&mut self, salt: &Salt, payload: &[u8]) -> [u8; FRAME_HEADER_LEN] {
        let mut hasher = salt.hasher();
        let enc = self.encode();
        hasher.update(&enc[4..]);
        hasher.update(payload);
        self.crc = hasher.finalize();
        self.encode()
    }

    /// Decodes and sanity-checks a header (not the CRC, which needs the payload).
    /// `max_len` bounds the payload length (bytes left in the file).
    pub fn decode(h: &[u8], max_len: u64) -> Option<FrameHeader> {
        if h.len() < FRAME_HEADER_LEN {
            return None;
        }
        let fh = FrameHeader {
            crc: u32::from_le_bytes(h[0..4].try_into().ok()?),
            op: h[4],
            kind: h[5],
            flags: h[6],
            id: u64::from_le_bytes(h[8..16].try_into().ok()?),
            len: u64::from_le_bytes(h[16..24].try_into().ok()?),
            index: u32::from_le_bytes(h[24..28].try_into().ok()?),
            raw_len: u32::from_le_bytes(h[28..32].try_into().ok()?),
        };
        let op_ok = matches!(fh.op, OP_PUT | OP_DELETE | OP_META);
        if !op_ok || fh.kind > MAX_KIND || fh.flags & !KNOWN_FLAGS != 0 || h[7] != 0 {
            return None;
        }
        if fh.len > max_len {
            return None;
        }
        if fh.op == OP_DELETE && (fh.len != 0 || fh.flags & FLAG_LZ4 != 0) {
            return None;
        }
        if fh.flags & FLAG_LZ4 == 0 && fh.raw_len != 0 {
            return None;
        }
        if fh.op == OP_META && fh.id != 0 {
            return None;
        }
        if fh.op != OP_META && fh.id == 0 {
            return None;
        }
        Some(fh)
    }

    /// True if `payload` matches the stored CRC under `salt`.
    pub fn check(&self, salt: &Salt, header_bytes: &[u8], payload: &[u8]) -> bool {
        if header_bytes.len() < FRAME_HEADER_LEN {
            return false;
        }
        let mut hasher = salt.hasher();
        hasher.update(&header_bytes[4..FRAME_HEADER_LEN]);
        hasher.update(payload);
        hasher.finalize() == self.crc
    }

    /// True if the frame image `frame` (header, then at least `len` payload bytes)
    /// matches the stored CRC under `salt`: the same check as [`FrameHeader::check`],
    /// in one pass over the contiguous bytes 4..32+len (one CRC call of ≥ 128 bytes
    /// for a 100-byte value, where two short calls take a slower path).
    pub fn check_frame(&self, salt: &Salt, frame: &[u8]) -> bool {
        let end = (FRAME_HEADER_LEN as u64).saturating_add(self.len);
        if (frame.len() as u64) < end {
            return false;
        }
        let mut hasher = salt.hasher();
        hasher.update(&frame[4..end as usize]);
        hasher.finalize() == self.crc
    }

    /// Total aligned size of the frame on disk (saturating; `decode` bounds `len` by
    /// the bytes left in the file, so real frames never come near the limit).
    pub fn frame_len(&self) -> u64 {
        align_up((FRAME_HEADER_LEN as u64).saturating_add(self.len))
    }
}

/// Appends one complete frame (header, payload, zero padding) sealed with `salt` to `out`.
#[allow(clippy::too_many_arguments)]
pub fn encode_frame(
    out: &mut Vec<u8>,
    salt: &Salt,
    op: u8,
    kind: u8,
    flags: u8,
    id: u64,
    index: u32,
    raw_len: u32,
    payload: &[u8],
) {
    let mut fh = FrameHeader {
        crc: 0,
        op,
        kind,
        flags,
        id,
        len: payload.len() as u64,
        index,
        raw_len,
    };
    // one reservation, header and payload in place, then a single CRC pass over the
    // contiguous bytes 4.. (the same CRC as `seal`, without encoding the header twice)
    let start = out.len();
    let total = start + align_up((FRAME_HEADER_LEN + payload.len()) as u64) as usize;
    out.reserve(total - start);
    out.extend_from_slice(&fh.encode());
    out.extend_from_slice(payload);
    let mut hasher = salt.hasher();
    hasher.update(&out[start + 4..]);
    fh.crc = hasher.finalize();
    out[start..start + 4].copy_from_slice(&fh.crc.to_le_bytes());
    out.resize(total, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects() {
        let salt = Salt::new([9; SALT_LEN]);
        let h = encode_file_header(42, &salt, 200);
        let d = decode_file_header("t", &h).unwrap();
        assert_eq!((d.id_floor, d.salt, d.checkpoint), (42, salt, 200));
        assert_eq!(d.checkpoint_slot, Some(0));
        let mut bad = h;
        bad[17] ^= 1;
        assert!(decode_file_header("t", &bad).is_err());
        let mut bad = h;
        bad[30] ^= 1; // the salt is covered by the header CRC
        assert!(decode_file_header("t", &bad).is_err());
        assert!(decode_file_header("t", &h[..10]).is_err());
        assert!(decode_file_header("t", &h[..64]).is_err());
    }

    #[test]
    fn version_1_is_refused_clearly() {
        let mut h = encode_file_header(1, &Salt::new([0; SALT_LEN]), FILE_HEADER_LEN);
        h[8] = 1;
        let e = decode_file_header("t", &h[..32]).unwrap_err().to_string();
        assert!(e.contains("unsupported format version 1"), "{e}");
    }

    #[test]
    fn checkpoint_slots_pick_the_highest_valid() {
        let salt = Salt::new([3; SALT_LEN]);
        let mut h = encode_file_header(1, &salt, 96);
        h[80..96].copy_from_slice(&encode_checkpoint(&salt, 4096));
        let d = decode_file_header("t", &h).unwrap();
        assert_eq!((d.checkpoint, d.checkpoint_slot), (4096, Some(1)));
        h[84] ^= 0xFF; // a torn slot write: that slot is ignored
        let d = decode_file_header("t", &h).unwrap();
        assert_eq!((d.checkpoint, d.checkpoint_slot), (96, Some(0)));
        // a slot of another file's salt does not validate
        let other = Salt::new([4; SALT_LEN]);
        h[64..80].copy_from_slice(&encode_checkpoint(&other, 8192));
        let d = decode_file_header("t", &h).unwrap();
        assert_eq!((d.checkpoint, d.checkpoint_slot), (FILE_HEADER_LEN, None));
    }

    #[test]
    fn frame_round_trip_and_salt() {
        let salt = Salt::new([1; SALT_LEN]);
        let mut out = Vec::new();
        encode_frame(&mut out, &salt, OP_PUT, 1, FLAG_COMMIT, 7, 0, 0, b"hello");
        assert_eq!(out.len(), 40);
        let fh = FrameHeader::decode(&out, 100).unwrap();
        assert_eq!((fh.op, fh.kind, fh.id, fh.len), (OP_PUT, 1, 7, 5));
        assert!(fh.check(&salt, &out, &out[32..37]));
        assert!(!fh.check(&salt, &out, b"hellp"));
        assert!(!fh.check(&Salt::new([2; SALT_LEN]), &out, &out[32..37]));
        assert!(fh.check_frame(&salt, &out));
        assert!(!fh.check_frame(&salt, &out[..36]), "payload cut short");
        assert!(!fh.check_frame(&Salt::new([2; SALT_LEN]), &out));
        let mut bad = out.clone();
        bad[36] ^= 1;
        assert!(!fh.check_frame(&salt, &bad));
        assert!(FrameHeader::decode(&out, 4).is_none());
        // the checksum is CRC-32 of salt ‖ header[4..32] ‖ payload
        let mut all = salt.bytes().to_vec();
        all.extend_from_slice(&out[4..37]);
        assert_eq!(crc32fast::hash(&all), fh.crc);
    }

    #[test]
    fn align_up_does_not_overflow() {
        assert_eq!(align_up(u64::MAX), u64::MAX - 7);
        let fh = FrameHeader {
            crc: 0,
            op: OP_PUT,
            kind: 0,
            flags: 0,
            id: 1,
            len: u64::MAX,
            index: 0,
            raw_len: 0,
        };
        assert_eq!(fh.frame_len(), u64::MAX - 7);
    }

    #[test]
    fn random_salts_differ() {
        assert_ne!(Salt::random().bytes(), Salt::random().bytes());
    }
}
