//! `cargo xtask bench crypto`: seal+open throughput of every record suite at
//! 64 B, 1 KiB and 16 KiB against ring used directly, the legacy block
//! ciphers, MARS against the twofish crate, SHA3-256, and memcpy as the
//! physical reference. Ratios are measured in the same run.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::Duration;

use cipher::array::Array;
use cipher::{BlockCipherEncrypt, KeyInit};
use ring::aead;
use zs_bench_harness::{time_loop, Better, Options, Suite};
use zs_crypto::record::{header, ContentType, RecordOpener, RecordSealer};
use zs_crypto::{Algorithm, SuiteId};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (16384, "16KiB")];

fn gbps(bytes: usize, iters: u64, el: Duration) -> f64 {
    bytes as f64 * iters as f64 / el.as_secs_f64().max(1e-12) / 1e9
}

fn main() {
    let opts = Options::from_env();
    let dwell = if opts.quick {
        Duration::from_millis(15)
    } else {
        Duration::from_millis(80)
    };
    let mut suite = Suite::from_options("crypto", &opts, 3, 7);

    for (size, label) in SIZES {
        let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
        for s in SuiteId::ALL {
            let mut sealer = RecordSealer::new(s, [7; 32]).expect("suite keys");
            let mut opener = RecordOpener::new(s, [7; 32]).expect("suite keys");
            let mut buf = Vec::with_capacity(size + 64);
            let p = payload.clone();
            suite.case(
                &format!("zs-{}-{label}", s.name()),
                "GB_per_s",
                Better::Higher,
                move || {
                    let (n, el) = time_loop(dwell, || {
                        buf.clear();
                        let start = sealer.begin(&mut buf);
                        buf.extend_from_slice(&p);
                        sealer
                            .seal_in_place(ContentType::Data, &mut buf, start)
                            .expect("seal");
                        let (_, plain) = opener.open_in_place(&mut buf).expect("open");
                        black_box(plain);
                    });
                    gbps(size, n, el)
                },
            );
        }
        // ring AES-256-GCM used directly, the same work: copy in, seal in place, open in place.
        let key = aead::LessSafeKey::new(
            aead::UnboundKey::new(&aead::AES_256_GCM, &[7; 32]).expect("key"),
        );
        let mut buf = Vec::with_capacity(size + 64);
        let p = payload.clone();
        let mut seq = 0u64;
        suite.case(
            &format!("ring-AES-256-GCM-{label}"),
            "GB_per_s",
            Better::Higher,
            move || {
                let (n, el) = time_loop(dwell, || {
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&seq.to_be_bytes());
                    seq += 1;
                    let h = header(ContentType::Data, size + 16);
                    buf.clear();
                    buf.extend_from_slice(&p);
                    let tag = key
                        .seal_in_place_separate_tag(
                            aead::Nonce::assume_unique_for_key(nonce),
                            aead::Aad::from(h),
                            &mut buf,
                        )
                        .expect("seal");
                    buf.extend_from_slice(tag.as_ref());
                    let plain = key
                        .open_in_place(
                            aead::Nonce::assume_unique_for_key(nonce),
                            aead::Aad::from(h),
                            &mut buf,
                        )
                        .expect("open");
                    black_box(plain);
                });
                gbps(size, n, el)
            },
        );
        let src = payload.clone();
        let mut dst = vec![0u8; size];
        suite.case(
            &format!("memcpy-{label}"),
            "GB_per_s",
            Better::Higher,
            move || {
                let (n, el) = time_loop(dwell, || {
                    dst.copy_from_slice(black_box(&src));
                    black_box(&dst);
                });
                gbps(size, n, el)
            },
        );
    }

    // Legacy block ciphers (ECB encrypt + decrypt of 16 KiB), and MARS next to Twofish.
    let legacy: [(Algorithm, &[u8]); 6] = [
        (Algorithm::Blowfish, &[5; 16]),
        (Algorithm::Des, &[5; 8]),
        (Algorithm::TripleDes, &[5; 24]),
        (Algorithm::Xxtea512, &[5; 16]),
        (Algorithm::Mars, &[5; 32]),
        (Algorithm::Twofish, &[5; 32]),
    ];
    for (alg, key) in legacy {
        let c = alg.new_cipher(key).expect("key");
        let mut data = vec![1u8; 16384];
        suite.case(
            &format!("zs-{}-ecb-16KiB", alg.name()),
            "GB_per_s",
            Better::Higher,
            move || {
                let (n, el) = time_loop(dwell, || {
                    c.encrypt_blocks(&mut data).expect("aligned");
                    c.decrypt_blocks(&mut data).expect("aligned");
                });
                gbps(16384, n, el)
            },
        );
    }
    // Encrypt-only, block cipher against block cipher: our MARS vs the twofish crate.
    let mars = Algorithm::Mars.new_cipher(&[5; 32]).expect("key");
    let mut data = vec![1u8; 16384];
    suite.case("zs-MARS-enc-16KiB", "GB_per_s", Better::Higher, move || {
        let (n, el) = time_loop(dwell, || mars.encrypt_blocks(&mut data).expect("aligned"));
        gbps(16384, n, el)
    });
    let ours = Algorithm::Twofish.new_cipher(&[5; 32]).expect("key");
    let mut data = vec![1u8; 16384];
    suite.case(
        "zs-Twofish-enc-16KiB",
        "GB_per_s",
        Better::Higher,
        move || {
            let (n, el) = time_loop(dwell, || ours.encrypt_blocks(&mut data).expect("aligned"));
            gbps(16384, n, el)
        },
    );
    let tf = twofish::Twofish::new_from_slice(&[5; 32]).expect("key");
    let mut data = vec![1u8; 16384];
    suite.case(
        "twofish-crate-enc-16KiB",
        "GB_per_s",
        Better::Higher,
        move || {
            let (n, el) = time_loop(dwell, || {
                let (blocks, _) = Array::<u8, cipher::consts::U16>::slice_as_chunks_mut(&mut data);
                tf.encrypt_blocks(blocks);
            });
            gbps(16384, n, el)
        },
    );
    // ZNet/ZServer4D frame ciphers as a legacy peer runs them (ECB + fixed pad,
    // zs_crypto::legacy): encrypt + decrypt of one 16 KiB frame payload.
    for c in zs_crypto::legacy::LegacyCipher::ALL {
        if c == zs_crypto::legacy::LegacyCipher::None {
            continue;
        }
        let key = zs_crypto::legacy::generate_key_buffer(c, &[5; 8]);
        let fc = zs_crypto::legacy::FrameCipher::new(c, &key).expect("key buffer");
        let mut data = vec![1u8; 16384];
        suite.case(
            &format!("znet-{}-16KiB", c.name()),
            "GB_per_s",
            Better::Higher,
            move || {
                let (n, el) = time_loop(dwell, || {
                    fc.encrypt(&mut data);
                    fc.decrypt(&mut data);
                });
                gbps(16384, n, el)
            },
        );
    }
    // The frame hash a ZNet peer checks on every frame (MD5 is ZServer4D's default).
    for h in [
        zs_crypto::legacy::LegacyHash::Md5,
        zs_crypto::legacy::LegacyHash::Sha3_256,
        zs_crypto::legacy::LegacyHash::Lmd16,
    ] {
        let msg = vec![3u8; 16384];
        suite.case(
            &format!("znet-hash-{}-16KiB", h.name()),
            "MB_per_s",
            Better::Higher,
            move || {
                let (n, el) = time_loop(dwell, || {
                    black_box(zs_crypto::legacy::legacy_hash(h, black_box(&msg)));
                });
                gbps(16384, n, el) * 1000.0
            },
        );
    }
    let msg = vec![3u8; 16384];
    suite.case("sha3-256-16KiB", "MB_per_s", Better::Higher, move || {
        let (n, el) = time_loop(dwell, || {
            black_box(zs_crypto::hash::sha3_256(black_box(&msg)));
        });
        gbps(16384, n, el) * 1000.0
    });
    let msg = vec![3u8; 16384];
    suite.case("ring-sha256-16KiB", "MB_per_s", Better::Higher, move || {
        let (n, el) = time_loop(dwell, || {
            black_box(ring::digest::digest(&ring::digest::SHA256, black_box(&msg)));
        });
        gbps(16384, n, el) * 1000.0
    });

    suite.run();
    for (_, label) in SIZES {
        suite.ratio(
            &format!("aesgcm_vs_ring_{label}"),
            &format!("zs-AES-256-GCM-{label}"),
            &format!("ring-AES-256-GCM-{label}"),
        );
    }
    suite.ratio(
        "aesgcm_vs_ring",
        "zs-AES-256-GCM-16KiB",
        "ring-AES-256-GCM-16KiB",
    );
    suite.ratio("aesgcm_vs_memcpy", "zs-AES-256-GCM-16KiB", "memcpy-16KiB");
    suite.ratio(
        "chacha_vs_aesgcm",
        "zs-CHACHA20-POLY1305-16KiB",
        "zs-AES-256-GCM-16KiB",
    );
    suite.ratio(
        "twofish_vs_twofish_crate",
        "zs-Twofish-enc-16KiB",
        "twofish-crate-enc-16KiB",
    );
    suite.ratio(
        "mars_vs_twofish",
        "zs-MARS-enc-16KiB",
        "twofish-crate-enc-16KiB",
    );
    suite.ratio(
        "mars_suite_vs_aes_ctr_suite",
        "zs-MARS-256-CTR-HMAC-SHA3-256-16KiB",
        "zs-AES-256-CTR-HMAC-SHA3-256-16KiB",
    );
    suite.ratio("sha3_vs_sha256", "sha3-256-16KiB", "ring-sha256-16KiB");
    suite.ratio(
        "znet_aes256_vs_aesgcm",
        "znet-AES256-16KiB",
        "zs-AES-256-GCM-16KiB",
    );
    suite.ratio(
        "znet_sha3_vs_fips_sha3",
        "znet-hash-SHA3_256-16KiB",
        "sha3-256-16KiB",
    );

    suite.note("seal+open: one record sealed in place then opened in place; GB/s of plaintext");
    suite.note("legacy ciphers: ECB encrypt+decrypt of 16 KiB (they are not record suites)");
    suite.note(
        "znet-*: ZNet frame cipher encrypt+decrypt of a 16 KiB payload (GB/s), frame hash (MB/s)",
    );
    suite.finish();
}
