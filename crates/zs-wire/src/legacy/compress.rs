//! The originals' compressed forms (their `maxsec` profile, `SendDataCompressed`):
//! zlib streams, and the "parallel select-compressor" container that wraps
//! them for BigStream chunks, CompleteBuffers and DFEs over 1 MiB
//! (`ParallelCompressMemory`, `Z.MemoryStream.pas`).
//!
//! ```text
//! container: i32 stripCount, then per strip: i64 stripLen, strip
//! strip:     u8 method, i64 rawLen, then
//!            method 0 (none):              rawLen bytes
//!            method 1/2/3 (zlib, fast, max): a zlib stream (RFC 1950) of rawLen bytes
//!                                             (absent when rawLen is 0)
//!            method 4/5 (CoreCompress Deflate, BRRC): not supported (the
//!            originals' own codecs; no profile selects them)
//! ```
//! A sender cuts its input into `len / 16 KiB` strips (at least one; the last
//! takes the remainder) and compresses each on its own.
//!
//! Every decoder here is bounded: the caller's `limit` caps the output before
//! any of it is allocated, and a stream that inflates past its announced size
//! is an error (a zip bomb stops at `limit`).

use bytes::BufMut;

use super::LegacyError;

/// `scmZLIB_Fast`: what the originals use for BigStream chunks and
/// CompleteBuffers.
pub const METHOD_ZLIB_FAST: u8 = 2;

/// Strip size of the container (`ParallelCompressMemory`: `len div 16 KiB`
/// strips).
pub const STRIP: usize = 16 * 1024;

fn bad(what: String) -> LegacyError {
    LegacyError::BadCompressed(what)
}

/// Inflates a zlib stream that must give exactly `raw_len` bytes, refusing more
/// than `limit` before inflating.
pub fn zlib_decompress(data: &[u8], raw_len: u64, limit: usize) -> Result<Vec<u8>, LegacyError> {
    if raw_len > limit as u64 {
        return Err(super::too_large("decompressed data", raw_len, limit));
    }
    let out = miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(data, raw_len as usize)
        .map_err(|e| bad(format!("zlib: {e}")))?;
    if out.len() as u64 != raw_len {
        return Err(bad(format!(
            "zlib stream gave {} bytes, {raw_len} announced",
            out.len()
        )));
    }
    Ok(out)
}

/// A zlib stream of `data` (level 1, as `scmZLIB_Fast`; the originals read any
/// level).
pub fn zlib_compress(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec_zlib(data, 1)
}

/// Reads a parallel container, giving at most `limit` bytes.
pub fn parallel_decompress(src: &[u8], limit: usize) -> Result<Vec<u8>, LegacyError> {
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], LegacyError> {
        let end = at
            .checked_add(n)
            .filter(|&e| e <= src.len())
            .ok_or_else(|| bad(format!("container cut short at byte {at}")))?;
        let s = &src[*at..end];
        *at = end;
        Ok(s)
    };
    let strips = i32::from_le_bytes(take(&mut at, 4)?.try_into().unwrap_or_default());
    // Every strip takes at least 17 bytes of input.
    if strips < 0 || strips as usize > src.len() / 17 {
        return Err(bad(format!("container of {strips} strips")));
    }
    let mut out = Vec::new();
    for _ in 0..strips {
        let len = i64::from_le_bytes(take(&mut at, 8)?.try_into().unwrap_or_default());
        if len < 9 || len as u64 > (src.len() - at) as u64 {
            return Err(bad(format!("container strip of {len} bytes")));
        }
        let strip = take(&mut at, len as usize)?;
        let method = strip[0];
        let raw = i64::from_le_bytes(strip[1..9].try_into().unwrap_or_default());
        let left = limit - out.len();
        if raw < 0 || raw as u64 > left as u64 {
            return Err(super::too_large(
                "decompressed data",
                (out.len() as u64).saturating_add(raw as u64),
                limit,
            ));
        }
        let body = &strip[9..];
        match method {
            0 => {
                if body.len() as u64 != raw as u64 {
                    return Err(bad(format!(
                        "stored strip of {} bytes, {raw} announced",
                        body.len()
                    )));
                }
                out.extend_from_slice(body);
            }
            1..=3 if raw == 0 => {}
            1..=3 => out.extend_from_slice(&zlib_decompress(body, raw as u64, left)?),
            4 | 5 => {
                return Err(LegacyError::Compressed(
                    "CoreCompress Deflate/BRRC strip (the originals' own codecs)",
                ))
            }
            m => return Err(bad(format!("strip method {m}"))),
        }
    }
    if at != src.len() {
        return Err(bad(format!("{} bytes after the container", src.len() - at)));
    }
    Ok(out)
}

/// Writes `data` as a parallel container of zlib strips (`method` 1-3),
/// cut as the originals cut it.
pub fn parallel_compress(data: &[u8], method: u8, out: &mut Vec<u8>) {
    let n = (data.len() / STRIP).max(1);
    let strip = data.len() / n;
    let mut pieces = Vec::with_capacity(n);
    let mut p = 0;
    loop {
        if p + strip < data.len() {
            pieces.push(&data[p..p + strip]);
            p += strip;
        } else {
            if data.len() > p {
                pieces.push(&data[p..]);
            }
            break;
        }
    }
    out.put_i32_le(pieces.len() as i32);
    for piece in pieces {
        let z = zlib_compress(piece);
        out.put_i64_le((9 + z.len()) as i64);
        out.put_u8(method);
        out.put_i64_le(piece.len() as i64);
        out.put_slice(&z);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_round_trips_and_is_cut_in_16_kib_strips() {
        for n in [0usize, 1, 100, STRIP, STRIP + 1, 5 * STRIP + 3, 1 << 20] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 % 253) as u8).collect();
            let mut c = Vec::new();
            parallel_compress(&data, METHOD_ZLIB_FAST, &mut c);
            let strips = i32::from_le_bytes(c[..4].try_into().unwrap());
            // The originals' cut: len / 16 KiB strips of len / that, the
            // remainder in one more.
            let want = match n {
                0 => 0,
                n if n == 5 * STRIP + 3 => 6,
                n if n == 1 << 20 => 64,
                n if n < 2 * STRIP => 1,
                _ => unreachable!(),
            };
            assert_eq!(strips, want, "{n} bytes");
            assert_eq!(parallel_decompress(&c, n).unwrap(), data);
            if n > 0 {
                // One byte short of the limit is refused before inflating.
                assert!(matches!(
                    parallel_decompress(&c, n - 1),
                    Err(LegacyError::TooLarge { .. })
                ));
            }
        }
    }

    #[test]
    fn bad_containers_are_errors() {
        let mut c = Vec::new();
        parallel_compress(&[7u8; 40_000], 1, &mut c);
        for cut in [0, 3, 4, 11, 20, c.len() - 1] {
            assert!(
                parallel_decompress(&c[..cut], 1 << 20).is_err(),
                "cut {cut}"
            );
        }
        let mut lying = c.clone();
        lying[13..21].copy_from_slice(&1_000_000i64.to_le_bytes()); // raw length
        assert!(parallel_decompress(&lying, 1 << 20).is_err());
        let mut m = c.clone();
        m[12] = 4; // CoreCompress Deflate
        assert!(matches!(
            parallel_decompress(&m, 1 << 20),
            Err(LegacyError::Compressed(_))
        ));
        let mut neg = c;
        neg[..4].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(parallel_decompress(&neg, 1 << 20).is_err());
        // A zlib bomb stops at its announced size.
        let bomb = zlib_compress(&vec![0u8; 10 << 20]);
        assert!(zlib_decompress(&bomb, 1 << 20, 1 << 20).is_err());
        assert!(zlib_decompress(&bomb, 10 << 20, 1 << 20).is_err());
    }
}
