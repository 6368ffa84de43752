//! The XNat control-protocol decoder fed arbitrary bytes in arbitrary pieces:
//! no panic, the buffer never holds more than one maximal frame plus one
//! piece, and every message decoded re-encodes to bytes that decode to the
//! same message. The same bytes also go through the chunk decoder of a
//! framed (reusable) data connection, cut into pieces: its payload equals
//! a one-piece parse, it stops at the end chunk and never reads past it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_xnat::proto::{ChunkDecoder, Decoder, Msg, MAX_CHUNK, MAX_FRAME};

/// The chunk decoder over `data` cut into pieces sized by `cut`: (payload,
/// offset just past the end chunk), or `None` on a protocol error.
fn chunks(data: &[u8], cut: impl Fn(usize) -> usize) -> Option<(Vec<u8>, Option<usize>)> {
    let mut d = ChunkDecoder::new();
    let (mut payload, mut at, mut i) = (Vec::new(), 0usize, 0usize);
    while at < data.len() {
        let n = cut(i).min(data.len() - at);
        i += 1;
        let piece = &data[at..at + n];
        match d.feed(piece, &mut |r| {
            assert!(r.end <= piece.len() && r.start < r.end);
            payload.extend_from_slice(&piece[r]);
        }) {
            Err(_) => return None,
            Ok(Some(end)) => {
                assert!(end <= piece.len() && d.ended());
                return Some((payload, Some(at + end)));
            }
            Ok(None) => at += n,
        }
    }
    Some((payload, None))
}

fuzz_target!(|data: &[u8]| {
    let mut d = Decoder::new();
    let mut rest = data;
    'messages: while !rest.is_empty() {
        let n = (rest[0] as usize % 61 + 1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        d.push(piece);
        assert!(d.buffered() <= MAX_FRAME + 5 + 61);
        loop {
            match d.next_msg() {
                Ok(Some(m)) => {
                    let bytes = m.to_bytes();
                    let again = Msg::decode(bytes[0], &bytes[5..]).expect("re-decodes");
                    assert_eq!(again, m);
                }
                Ok(None) => break,
                // The decoder is dropped after an error (the peer too).
                Err(_) => break 'messages,
            }
        }
    }
    let whole = chunks(data, |_| usize::MAX);
    let cut = chunks(data, |i| data.get(i).map_or(1, |b| *b as usize % 7 + 1));
    assert_eq!(whole, cut);
    if let Some((payload, end)) = whole {
        // Headers take 4 bytes per chunk of at most MAX_CHUNK.
        let used = end.unwrap_or(data.len());
        assert!(payload.len() <= used);
        assert!(payload.len() / MAX_CHUNK <= used / 4);
    }
});
