//! Frame decoder over arbitrary bytes: fed whole and in arbitrary chunks (both must
//! agree), going on after recoverable (body) errors, and every decoded frame must
//! re-encode and decode to the same bytes. Compression is accepted or refused
//! depending on the input's selector byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_wire::bytes::{Bytes, BytesMut};
use zs_wire::{Config, DecodeError, Decoder, Encoder, Frame, Limits, WireError};

/// Decodes everything in `input`, fed in chunks whose sizes come from `cuts`
/// (empty: all at once). Returns the frames re-encoded and the recoverable errors,
/// in order, and the fatal error that stopped it.
fn run(
    config: Config,
    input: &[u8],
    cuts: &[u8],
) -> (Vec<Result<Bytes, DecodeError>>, Option<DecodeError>) {
    let mut dec = Decoder::new(config);
    let mut enc = Encoder::new(relaxed(config));
    let mut rx = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = if cuts.is_empty() {
            input.len()
        } else {
            cuts[i % cuts.len()] as usize % 17 + 1
        };
        let n = n.min(input.len() - pos);
        rx.extend_from_slice(&input[pos..pos + n]);
        pos += n;
        i += 1;
        loop {
            let before = rx.len();
            match dec.decode_recoverable(&mut rx) {
                Ok(Some(frame)) => {
                    let mut w = BytesMut::new();
                    enc.encode(&frame, &mut w)
                        .expect("a decoded frame re-encodes");
                    out.push(Ok(w.freeze()));
                }
                Ok(None) => break,
                Err(e) if e.is_recoverable() => {
                    // Exactly the bad frame was consumed.
                    let DecodeError::BadBody { frame_len, .. } = &e else {
                        unreachable!("recoverable is BadBody")
                    };
                    assert_eq!(before - rx.len(), *frame_len, "consumed the frame");
                    out.push(Err(e));
                }
                Err(e) => {
                    assert_eq!(rx.len(), before, "a fatal error consumes nothing");
                    if let WireError::CompressionRefused(_) = e.error() {
                        assert!(!config.accept_compressed, "refused while accepting");
                    }
                    return (out, Some(e));
                }
            }
        }
    }
    (out, None)
}

/// Re-encoding may lengthen JSON values (`1e0` becomes `1.0`), so re-encoded frames
/// are checked under limits that only differ in the maximum sizes; and the
/// encoder's own compressed frames must be accepted.
fn relaxed(c: Config) -> Config {
    Config {
        limits: Limits {
            max_frame: 1 << 24,
            max_string: usize::MAX,
            max_json: usize::MAX,
            ..c.limits
        },
        accept_compressed: c.accept_compressed || c.compress_threshold.is_some(),
        ..c
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let sel = data[0];
    let ncuts = (data[1] % 8) as usize;
    let accept_compressed = data[1] & 0x80 != 0;
    let rest = &data[2..];
    let (cuts, input) = rest.split_at(ncuts.min(rest.len()));
    let config = Config {
        token: (sel & 1 != 0).then_some(*b"\xA5zs\x01"),
        compress_threshold: (sel & 2 != 0).then_some((sel >> 2) as usize),
        limits: Limits {
            max_frame: 1 << 16,
            max_depth: 8,
            max_values: 256,
            max_string: 4096,
            max_name: 32,
            max_json: (data[1] as usize & 0x70) << 5,
        },
        accept_compressed,
    };
    let whole = run(config, input, &[]);
    let chunked = run(config, input, if cuts.is_empty() { &[0] } else { cuts });
    assert_eq!(whole, chunked, "chunking changed the outcome");
    // Canonical form is stable: decode(encode(frame)) encodes to the same bytes.
    for bytes in whole.0.iter().filter_map(|r| r.as_ref().ok()) {
        let again = Frame::decode(bytes, &relaxed(config)).expect("re-encoded frame decodes");
        let mut w = BytesMut::new();
        Encoder::new(relaxed(config))
            .encode(&again, &mut w)
            .expect("encodes");
        assert_eq!(&w[..], &bytes[..], "re-encoding is not stable");
    }
});
