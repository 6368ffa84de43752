//! The on-disk format (documented byte by byte in `docs/STORAGE.md`).
//!
//! A database file is a 32-byte header followed by 8-byte aligned frames. Every
//! frame carries a CRC-32 over its header and payload; frames are grouped into
//! commits (the last frame of a commit has [`FLAG_COMMIT`]); a commit counts only
//! if every one of its frames is present and valid.

use crate::error::{Error, Result};

/// File magic: the first 8 bytes of every database file.
pub const MAGIC: [u8; 8] = *b"ZSDBLOG\0";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Size of the file header in bytes.
pub const FILE_HEADER_LEN: u64 = 32;
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

/// Rounds `n` up to the frame alignment.
pub fn align_up(n: u64) -> u64 {
    n.div_ceil(ALIGN) * ALIGN
}

/// Encodes the file header with the given id floor.
pub fn encode_file_header(id_floor: u64) -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(FILE_HEADER_LEN as u16).to_le_bytes());
    // 12..16 flags: zero
    h[16..24].copy_from_slice(&id_floor.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a file header, returning the id floor.
pub fn decode_file_header(name: &str, h: &[u8]) -> Result<u64> {
    let bad = |reason: &str| Error::BadHeader {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if h.len() < FILE_HEADER_LEN as usize {
        return Err(bad("file shorter than its 32-byte header"));
    }
    if h[0..8] != MAGIC {
        return Err(bad("not a zs-db file (magic mismatch)"));
    }
    let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc != crc32fast::hash(&h[0..24]) {
        return Err(bad("header checksum mismatch"));
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != FORMAT_VERSION {
        return Err(bad(&format!("unsupported format version {version}")));
    }
    if u16::from_le_bytes([h[10], h[11]]) as u64 != FILE_HEADER_LEN {
        return Err(bad("unexpected header length"));
    }
    if h[12..16] != [0; 4] || h[28..32] != [0; 4] {
        return Err(bad("unknown header flags"));
    }
    Ok(u64::from_le_bytes(h[16..24].try_into().unwrap_or([0; 8])))
}

/// The decoded fixed part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// CRC-32 (IEEE) over header bytes 4..32 and the payload.
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

    /// Computes the CRC over the header (bytes 4..32) and `payload`, stores it, and
    /// returns the encoded header.
    pub fn seal(&mut self, payload: &[u8]) -> [u8; FRAME_HEADER_LEN] {
        let mut hasher = crc32fast::Hasher::new();
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

    /// True if `payload` matches the stored CRC.
    pub fn check(&self, header_bytes: &[u8], payload: &[u8]) -> bool {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header_bytes[4..FRAME_HEADER_LEN]);
        hasher.update(payload);
        hasher.finalize() == self.crc
    }

    /// Total aligned size of the frame on disk.
    pub fn frame_len(&self) -> u64 {
        align_up(FRAME_HEADER_LEN as u64 + self.len)
    }
}

/// Appends one complete frame (header, payload, zero padding) to `out`.
#[allow(clippy::too_many_arguments)]
pub fn encode_frame(
    out: &mut Vec<u8>,
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
    let h = fh.seal(payload);
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let total = align_up(out.len() as u64) as usize;
    out.resize(total, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects() {
        let h = encode_file_header(42);
        assert_eq!(decode_file_header("t", &h).unwrap(), 42);
        let mut bad = h;
        bad[17] ^= 1;
        assert!(decode_file_header("t", &bad).is_err());
        assert!(decode_file_header("t", &h[..10]).is_err());
    }

    #[test]
    fn frame_round_trip() {
        let mut out = Vec::new();
        encode_frame(&mut out, OP_PUT, 1, FLAG_COMMIT, 7, 0, 0, b"hello");
        assert_eq!(out.len(), 40);
        let fh = FrameHeader::decode(&out, 100).unwrap();
        assert_eq!((fh.op, fh.kind, fh.id, fh.len), (OP_PUT, 1, 7, 5));
        assert!(fh.check(&out, &out[32..37]));
        assert!(!fh.check(&out, b"hellp"));
        assert!(FrameHeader::decode(&out, 4).is_none());
    }
}
