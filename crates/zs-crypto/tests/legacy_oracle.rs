//! The legacy ciphers and hashes against the original library: `znet_cipher`,
//! ZNet's own `Z.Cipher.pas` compiled with Free Pascal (see
//! `shared/peers/znet/README.md`). Every cipher id (enc and dec) and every
//! hash id, over lengths 0..300 including the 1..=5-byte MD5 rule, a large
//! payload, and fresh key buffers; plus `GenerateKey` for every cipher.
//!
//! The oracle is found at `$ZNET_PEERS_BIN/znet_cipher`, else
//! `<cargo target dir>/znet/znet_cipher`, which this test builds with the
//! peers' `build.sh` when Free Pascal is installed. Without it the tests fail
//! under `CI` and print `skipped: ...` otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use zs_crypto::legacy::{
    derive_key_buffer, generate_key_buffer, legacy_hash, FrameCipher, LegacyCipher, LegacyHash,
};

/// `shared/peers/znet` in an ancestor of this crate, or `$ZNET_PEERS_SRC`.
fn source_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ZNET_PEERS_SRC") {
        return Some(PathBuf::from(p));
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared/peers/znet"))
        .find(|p| p.join("build.sh").is_file())
}

/// The cargo target directory of this test binary (`<target>/<profile>/deps/<bin>`).
fn target_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(p);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

/// `$ZNET_PEERS_BIN/znet_cipher`, else `<target>/znet/znet_cipher` (the
/// directory zs-legacy's tests use too), built there with the peers'
/// `build.sh` (beside, then renamed, so concurrent test binaries never see
/// half a build) when Free Pascal is installed.
fn oracle_path() -> Result<PathBuf, String> {
    static P: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    P.get_or_init(|| {
        for var in ["ZNET_PEERS_BIN", "ZNET_PEERS"] {
            if let Some(dir) = std::env::var_os(var) {
                let p = PathBuf::from(dir).join("znet_cipher");
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        let out = target_dir().join("znet");
        let p = out.join("znet_cipher");
        if p.is_file() {
            return Ok(p);
        }
        let src = source_dir().ok_or("shared/peers/znet not found")?;
        if Command::new("fpc").arg("-iV").output().is_err() {
            return Err("fpc (Free Pascal) not installed".into());
        }
        let tmp = target_dir().join(format!("znet.build.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let st = Command::new("bash")
            .arg(src.join("build.sh"))
            .arg(&tmp)
            .status()
            .map_err(|e| format!("build.sh: {e}"))?;
        if !st.success() || !tmp.join("znet_cipher").is_file() {
            return Err(format!("build.sh {} failed", tmp.display()));
        }
        if std::fs::rename(&tmp, &out).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        if p.is_file() {
            Ok(p)
        } else {
            Err(format!("{} missing after the build", p.display()))
        }
    })
    .clone()
}

/// The oracle, or `None` after printing the skip line (panics under CI).
fn oracle() -> Option<PathBuf> {
    match oracle_path() {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("znet_cipher oracle missing under CI: {e}")
        }
        Err(e) => {
            println!("skipped: znet_cipher not installed ({e})");
            None
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn run(oracle: &Path, args: &[String]) -> Vec<u8> {
    let out = Command::new(oracle)
        .args(args)
        .output()
        .expect("run znet_cipher");
    assert!(out.status.success(), "znet_cipher {args:?}: {out:?}");
    unhex(&String::from_utf8_lossy(&out.stdout))
}

/// Runs the oracle for every job on many threads (each call is mostly start-up wait).
fn run_all(oracle: &Path, jobs: &[Vec<String>]) -> Vec<Vec<u8>> {
    let threads = 16;
    let mut results = vec![Vec::new(); jobs.len()];
    std::thread::scope(|s| {
        let chunks: Vec<_> = results
            .chunks_mut(jobs.len().div_ceil(threads).max(1))
            .collect();
        for (ci, chunk) in chunks.into_iter().enumerate() {
            let per = jobs.len().div_ceil(threads).max(1);
            s.spawn(move || {
                for (j, slot) in chunk.iter_mut().enumerate() {
                    *slot = run(oracle, &jobs[ci * per + j]);
                }
            });
        }
    });
    results
}

/// `LEGACY_ORACLE_FULL=1` runs the wide sweep (every length class, about 1,000
/// oracle runs, a minute on 2 busy cores); the default sweep draws fewer
/// lengths per run (each run a new random draw, seed printed).
fn full() -> bool {
    std::env::var_os("LEGACY_ORACLE_FULL").is_some()
}

/// xorshift64*, seeded from the clock and printed, so a failure can be replayed with `LEGACY_SEED`.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("LEGACY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        println!("LEGACY_SEED={seed}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// ZNet's SHA3 finaliser writes past its block buffer when the input leaves
/// exactly two bytes of the last block (`len % rate == rate - 2`): the
/// original `znet_cipher` dies with an access violation there (found by a
/// random CI seed: hash 8 over 206 bytes), so those lengths have no reference
/// output. A real ZNet peer hashing such a frame crashes the same way.
fn oracle_faults(h: LegacyHash, n: usize) -> bool {
    let rate = match h {
        LegacyHash::Sha3_224 => 144,
        LegacyHash::Sha3_256 => 136,
        LegacyHash::Sha3_384 => 104,
        LegacyHash::Sha3_512 => 72,
        _ => return false,
    };
    n % rate == rate - 2
}

/// The lengths `oracle_faults` names are exactly the ones the original
/// cannot hash (every SHA3 id, two blocks' worth of lengths).
#[test]
fn the_original_sha3_faults_only_where_expected() {
    let Some(o) = oracle() else { return };
    for h in [
        LegacyHash::Sha3_224,
        LegacyHash::Sha3_256,
        LegacyHash::Sha3_384,
        LegacyHash::Sha3_512,
    ] {
        for n in [
            0usize, 1, 70, 71, 72, 102, 103, 104, 134, 135, 142, 143, 206, 214, 270, 286,
        ] {
            let ok = std::process::Command::new(&o)
                .args(["hash", &(h as u8).to_string(), &hex(&vec![0x5a; n])])
                .output()
                .expect("run znet_cipher")
                .status
                .success();
            assert_eq!(!ok, oracle_faults(h, n), "hash {} over {n} bytes", h as u8);
        }
    }
}

#[test]
fn every_hash_id_matches_the_oracle() {
    let Some(o) = oracle() else { return };
    let mut rng = Rng::new();
    let mut cases = Vec::new();
    for h in LegacyHash::ALL {
        let mut lens: Vec<usize> = if full() {
            let mut l = vec![0, 1, 2, 3, 4, 5, 6, 7, 15, 16, 17];
            l.extend((0..5).map(|_| 18 + rng.below(283)));
            l
        } else {
            vec![1 + rng.below(5), 6 + rng.below(12)]
        };
        lens.push(rng.below(301));
        for n in lens {
            // the original has no answer there: it faults (see `oracle_faults`)
            let n = if oracle_faults(h, n) { n + 1 } else { n };
            cases.push((h, rng.bytes(n)));
        }
    }
    let jobs: Vec<Vec<String>> = cases
        .iter()
        .map(|(h, d)| vec!["hash".into(), (*h as u8).to_string(), hex(d)])
        .collect();
    let want = run_all(&o, &jobs);
    for ((h, d), w) in cases.iter().zip(&want) {
        assert_eq!(
            hex(&legacy_hash(*h, d)),
            hex(w),
            "hash {h} ({}) over {} bytes {}",
            *h as u8,
            d.len(),
            hex(d)
        );
        assert_eq!(w.len(), h.frame_hash_len(d.len()), "{h}");
    }
}

#[test]
fn every_key_buffer_matches_the_oracle() {
    let Some(o) = oracle() else { return };
    let mut rng = Rng::new();
    let mut cases = Vec::new();
    for c in LegacyCipher::ALL {
        for _ in 0..if full() { 3 } else { 1 } {
            let seed: [u8; 8] = rng.bytes(8).try_into().unwrap();
            cases.push((c, seed));
        }
    }
    let jobs: Vec<Vec<String>> = cases
        .iter()
        .map(|(c, s)| vec!["key".into(), (*c as u8).to_string(), hex(s)])
        .collect();
    let want = run_all(&o, &jobs);
    for ((c, s), w) in cases.iter().zip(&want) {
        let got = generate_key_buffer(*c, s);
        assert_eq!(hex(&got), hex(w), "key {c} seed {}", hex(s));
        assert_eq!(got.len(), c.key_len(), "{c}");
        assert_eq!(got[0], c.key_style(), "{c}");
        assert_eq!(derive_key_buffer(*c, s), got);
    }
}

fn cipher_cases(ciphers: &[LegacyCipher]) {
    let Some(o) = oracle() else { return };
    let mut rng = Rng::new();
    let mut cases = Vec::new();
    for &c in ciphers {
        let b = c.block_len().max(8);
        let mut lens: Vec<usize> = if full() {
            vec![
                0, 1, 5, 7, 8, 9, 15, 16, 17, 33, 63, 64, 65, 129, 300, 65_000,
            ]
        } else {
            let mut l = vec![1 + rng.below(b - 1), b + rng.below(2 * b)];
            // The largest payload an argv can carry in hex (MAX_ARG_STRLEN is
            // 128 KiB), for a third of the ciphers per run.
            if rng.below(3) == 0 {
                l.push(65_000);
            }
            l
        };
        lens.push(rng.below(301));
        for n in lens {
            // A fresh key buffer per case: the cipher's own style, or any bytes
            // (the library derives the real key from whatever it is given).
            let key = if rng.below(2) == 0 {
                let seed: [u8; 8] = rng.bytes(8).try_into().unwrap();
                generate_key_buffer(c, &seed)
            } else {
                let n = 1 + rng.below(40);
                rng.bytes(n)
            };
            let data = rng.bytes(n);
            cases.push((c, key, data));
        }
    }
    // Every case is encrypted by the oracle. Decryption by the oracle for the
    // first case of each cipher and every large one (in the wide sweep: all),
    // since each oracle start is costly; our decrypt is also checked to undo
    // the oracle's encryption in every case.
    let mut jobs = Vec::new();
    let mut dec_job = Vec::new();
    let mut last = None;
    for (c, k, d) in &cases {
        jobs.push(vec![
            "enc".to_string(),
            (*c as u8).to_string(),
            hex(k),
            hex(d),
        ]);
        if full() || last != Some(*c) || d.len() > 1000 {
            dec_job.push(Some(jobs.len()));
            jobs.push(vec![
                "dec".to_string(),
                (*c as u8).to_string(),
                hex(k),
                hex(d),
            ]);
        } else {
            dec_job.push(None);
        }
        last = Some(*c);
    }
    let want = run_all(&o, &jobs);
    let mut failures = Vec::new();
    let mut at = 0;
    for (i, (c, k, d)) in cases.iter().enumerate() {
        let fc = FrameCipher::new(*c, k).unwrap();
        let mut enc = d.clone();
        fc.encrypt(&mut enc);
        if enc != want[at] {
            failures.push(format!("enc {c} key {} len {}", hex(k), d.len()));
        }
        let mut theirs = want[at].clone();
        fc.decrypt(&mut theirs);
        if &theirs != d {
            failures.push(format!(
                "dec of the oracle's enc {c} key {} len {}",
                hex(k),
                d.len()
            ));
        }
        at += 1;
        if let Some(j) = dec_job[i] {
            let mut dec = d.clone();
            fc.decrypt(&mut dec);
            if dec != want[j] {
                failures.push(format!("dec {c} key {} len {}", hex(k), d.len()));
            }
            at += 1;
        }
        fc.decrypt(&mut enc);
        assert_eq!(&enc, d, "round trip {c}");
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn des_blowfish_lbc_lqc_match_the_oracle() {
    use LegacyCipher::*;
    cipher_cases(&[None, Des64, Des128, Des192, Blowfish, Lbc, Lqc]);
}

#[test]
fn xxtea_and_nist_ciphers_match_the_oracle() {
    use LegacyCipher::*;
    cipher_cases(&[XxTea512, Rc6, Serpent, Mars, Rijndael, TwoFish]);
}

#[test]
fn aes_and_stream_ciphers_match_the_oracle() {
    use LegacyCipher::*;
    cipher_cases(&[Aes128, Aes192, Aes256, Rng32, Rng64, Lsc]);
}
