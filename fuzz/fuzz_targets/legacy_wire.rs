//! The legacy ZNet wire decoders with hostile input, as our legacy server runs
//! them: arbitrary bytes fed in arbitrary slices through the sequence layer
//! (records, MD5, acks, keepalives, resends), the frame decoder (head/tail, sizes,
//! hash, cipher byte, BigStream/CompleteBuffer bodies, with and without a
//! response expected), the compressed forms (zlib DFEs, the parallel container
//! of BigStream chunks and CompleteBuffers) and the command/DFE decoding and
//! DataFrame mapping. Nothing
//! may panic; every error ends the stream (as it ends the connection). A second
//! pass checks that a valid request wrapped in sequence packets round-trips.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use zs_wire::legacy::{
    self, frame, CmdBody, Dfe, FrameDecoder, LegacyFrame, LegacyLimits, PlainCrypto, SeqLayer,
};

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let limits = LegacyLimits {
        max_frame: 1 << 16,
        max_complete_buffer: 1 << 16,
        max_big_chunk: 1 << 16,
        max_unacked: 1 << 16,
        ..LegacyLimits::default()
    };
    // Bit 0: input is sequence records (else frames directly); bits 1-7: slice size.
    let chunk = usize::from(ctl >> 1).max(1);
    let mut seq = SeqLayer::new(limits);
    let mut dec = FrameDecoder::new(limits);
    let (mut src, mut plain, mut reply) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
    let mut expect = false;
    for piece in rest.chunks(chunk) {
        if ctl & 1 == 1 {
            src.extend_from_slice(piece);
            if seq.receive(&mut src, &mut plain, &mut reply).is_err() {
                return;
            }
        } else {
            plain.extend_from_slice(piece);
        }
        loop {
            match dec.decode(&mut plain, expect, &PlainCrypto) {
                Ok(Some(f)) => {
                    if let LegacyFrame::Request { kind, payload, .. } = &f {
                        if let Ok((_, CmdBody::Dfe(d))) =
                            legacy::decode_command(*kind, payload, &limits)
                        {
                            if let Ok(df) = d.to_dataframe() {
                                let _ = Dfe::from_dataframe(&df);
                            }
                        }
                        expect = kind.answered();
                    } else if let LegacyFrame::Response { payload, .. } = &f {
                        let _ = Dfe::decode(payload, &limits);
                        expect = false;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    // The compressed forms (maxsec): the container and a zlib DFE read from the
    // raw input stay within their limit; the input compressed reads back.
    if let Ok(v) = legacy::compress::parallel_decompress(rest, 1 << 16) {
        assert!(v.len() <= 1 << 16);
    }
    if let Ok(v) = legacy::compress::zlib_decompress(rest, 4096, 1 << 16) {
        assert_eq!(v.len(), 4096);
    }
    let mut c = Vec::new();
    legacy::compress::parallel_compress(rest, 2, &mut c);
    assert_eq!(
        legacy::compress::parallel_decompress(&c, rest.len()).unwrap(),
        rest
    );
    // A console request carrying the input as text round-trips through both layers.
    let text = String::from_utf8_lossy(rest).into_owned();
    let payload = frame::encode_command("cmd", &CmdBody::Text(text.clone()));
    let mut f = Vec::new();
    frame::encode_request(
        legacy::CmdKind::Console,
        &payload,
        1,
        0,
        &PlainCrypto,
        &mut f,
    )
    .unwrap();
    let mut tx = SeqLayer::new(LegacyLimits::default());
    let mut rx = SeqLayer::new(LegacyLimits::default());
    let mut wire = BytesMut::new();
    tx.send(&f, &mut wire).unwrap();
    let (mut plain, mut reply) = (BytesMut::new(), BytesMut::new());
    rx.receive(&mut wire, &mut plain, &mut reply).unwrap();
    let mut dec = FrameDecoder::new(LegacyLimits::default());
    let Some(LegacyFrame::Request { kind, payload, .. }) =
        dec.decode(&mut plain, false, &PlainCrypto).unwrap()
    else {
        panic!("the request did not come back")
    };
    let (cmd, body) = legacy::decode_command(kind, &payload, &LegacyLimits::default()).unwrap();
    assert_eq!((cmd.as_str(), body), ("cmd", CmdBody::Text(text)));
});
