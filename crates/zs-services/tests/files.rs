//! Files through a real server on loopback: resumable uploads (a writer that
//! vanishes, a lease holder that goes silent, a server restart), chunk and
//! whole-file hashes, dedup with instant upload, ranged and parallel
//! download, quotas, 1,000 abandoned uploads, hostile paths.

mod common;

use std::time::Duration;

use common::*;
use zs_services::files::file_code;
use zs_services::{code, Services, ServicesClient, ServicesConfig, Space};

/// Size of the test files: small, because SHA3 in an unoptimized build runs
/// at well under 1 MB/s on a loaded machine and each byte is hashed about five
/// times (raise it for a longer run, or in release).
const SIZE: usize = 192 << 10;
const CHUNK: usize = 16 << 10;

/// The call timeout of the clients of the tests at the sizes (64 and
/// 256 MiB, where one call may hash or copy the whole file in a debug build
/// on a loaded machine): a failure guard only.
const FULL_SIZE_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// `n` pseudo-random bytes (xorshift64, 8 bytes a step: the 256 MiB test
/// spent a third of its time making its data a byte a step in the debug
/// build).
fn data(seed: u8, n: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed as u64;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn sha3(b: &[u8]) -> [u8; 32] {
    zs_crypto::hash::sha3_256(b)
}

fn rig_in(dir: &std::path::Path, f: impl FnOnce(&mut ServicesConfig)) -> Rig {
    let mut cfg = cheap();
    f(&mut cfg);
    Rig::with(Services::open_dir(dir, cfg).unwrap())
}

fn login(rig: &Rig, name: &str) -> ServicesClient {
    let c = rig.client();
    c.login(name, &format!("{name}-password")).unwrap();
    c
}

#[test]
fn an_upload_cut_off_several_times_resumes_to_the_right_hash() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let _ann = rig.user("ann");
    let body = data(1, SIZE);
    let local = dir.path().join("local.bin");
    std::fs::write(&local, &body).unwrap();
    let hash = sha3(&body);
    // Three writers vanish after a few chunks each (the connection closes).
    let mut resent_total = 0;
    for (k, chunks) in [2usize, 1, 2].into_iter().enumerate() {
        let c = login(&rig, "ann");
        let st = c
            .upload_begin(Space::Private, "big.bin", SIZE as u64, &hash)
            .unwrap();
        assert!(!st.instant);
        if k > 0 {
            assert!(st.offset > 0, "resumes where the last writer stopped");
        }
        let mut off = st.offset;
        for _ in 0..chunks {
            let end = (off as usize + CHUNK).min(SIZE);
            off = c
                .upload_chunk(st.id, off, &body[off as usize..end])
                .unwrap();
            resent_total += end - off as usize;
        }
        c.close();
    }
    assert_eq!(resent_total, 0, "nothing acknowledged is sent twice");
    let c = login(&rig, "ann");
    let mut last = 0;
    let rep = c
        .upload_file(Space::Private, &local, "big.bin", CHUNK, |done, total| {
            assert!(done >= last && total == SIZE as u64);
            last = done;
        })
        .unwrap();
    assert_eq!(rep.resumed_from, 5 * CHUNK as u64);
    assert!(rep.resumed_from < SIZE as u64);
    assert_eq!(rep.sent, SIZE as u64 - rep.resumed_from);
    let list = c.list_files(Space::Private, "").unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].size, SIZE as u64);
    assert_eq!(list[0].hash, zs_crypto::hash::to_hex(&hash));
    // Download (resumable too) and compare.
    let out = dir.path().join("out.bin");
    c.download_file(Space::Private, "big.bin", &out, 100_000, |_, _| {})
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), body);
    assert_eq!(rig.services.files.as_ref().unwrap().uploads(), 0);
}

#[test]
fn a_silent_writer_loses_its_lease_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |c| c.files.lease = Duration::from_millis(1500));
    let _ = rig.user("ann");
    let body = data(2, 200_000);
    let hash = sha3(&body);
    let a = login(&rig, "ann");
    let st = a
        .upload_begin(Space::Private, "f", body.len() as u64, &hash)
        .unwrap();
    a.upload_chunk(st.id, 0, &body[..50_000]).unwrap();
    // A second connection of the same user: refused while A holds the lease.
    let b = rig.client();
    // (Log in by the admin path: a second login of ann would kick A.)
    let files = rig.services.files.clone().unwrap();
    let peer_b = {
        b.client().call("scratch", "x").wait().unwrap();
        rig.server
            .peers()
            .into_iter()
            .max_by_key(|p| p.id())
            .unwrap()
    };
    let uid = rig.services.accounts.resolve("ann").unwrap();
    let e = files
        .begin(&peer_b, uid, Space::Private, "f", body.len() as u64, &hash)
        .unwrap_err();
    assert_eq!(e.code, file_code::LOCKED, "{e}");
    assert_eq!(
        files
            .chunk(
                &peer_b,
                uid,
                st.id,
                50_000,
                &body[50_000..60_000],
                &sha3(&body[50_000..60_000])
            )
            .unwrap_err()
            .code,
        file_code::LOCKED
    );
    // A goes silent (connection open, nothing sent): after the lease, B takes over.
    std::thread::sleep(Duration::from_millis(1600));
    let st2 = files
        .begin(&peer_b, uid, Space::Private, "f", body.len() as u64, &hash)
        .unwrap();
    assert_eq!((st2.id, st2.offset), (st.id, 50_000));
    // Now A is the one refused.
    assert_eq!(
        a.upload_chunk(st.id, 50_000, &body[50_000..60_000])
            .unwrap_err()
            .code,
        file_code::LOCKED
    );
}

#[test]
fn bad_chunks_and_a_wrong_whole_hash_are_refused_and_the_partial_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let c = rig.user("ann");
    let body = data(3, 100_000);
    let st = c
        .upload_begin(Space::Private, "f", 100_000, &sha3(&body))
        .unwrap();
    // Wrong offset: the answer says where the upload stands.
    let e = c.upload_chunk(st.id, 10, &body[..10]).unwrap_err();
    assert_eq!(e.code, file_code::OFFSET);
    assert!(e.message.contains("offset 0"), "{e}");
    // A chunk whose hash does not match: refused, nothing written.
    let df = zs_wire::DataFrame::new()
        .with(st.id)
        .with(0u64)
        .with(body[..1000].to_vec())
        .with(vec![0u8; 32]);
    let e = c.client().call_stream("file.chunk", df).wait().unwrap_err();
    assert!(
        matches!(
            e,
            zs_core::Error::Remote {
                code: file_code::HASH_MISMATCH,
                ..
            }
        ),
        "{e}"
    );
    // Past the announced size.
    let too_big = data(9, 100_001);
    assert_eq!(
        c.upload_chunk(st.id, 0, &too_big).unwrap_err().code,
        zs_core::code::TOO_LARGE
    );
    // Finishing early.
    c.upload_chunk(st.id, 0, &body[..60_000]).unwrap();
    assert_eq!(c.upload_finish(st.id).unwrap_err().code, file_code::OFFSET);
    // A whole-file hash mismatch: announced hash of other bytes.
    let other = data(4, 100_000);
    let st2 = c
        .upload_begin(Space::Private, "g", 100_000, &sha3(&other))
        .unwrap();
    c.upload_chunk(st2.id, 0, &body).unwrap();
    let e = c.upload_finish(st2.id).unwrap_err();
    assert_eq!(e.code, file_code::HASH_MISMATCH, "{e}");
    let files = rig.services.files.as_ref().unwrap();
    assert_eq!(files.uploads(), 2, "the partial data is kept");
    assert_eq!(files.partial_bytes(), 160_000);
    assert_eq!(c.list_files(Space::Private, "").unwrap().len(), 0);
    // Termination drops it, and its reservation.
    let uid = rig.services.accounts.resolve("ann").unwrap();
    assert_eq!(files.usage(uid), 200_000);
    c.upload_abort(st2.id).unwrap();
    assert_eq!(files.usage(uid), 100_000);
    assert_eq!(
        c.upload_abort(st2.id).unwrap_err().code,
        file_code::NO_UPLOAD
    );
    // Someone else's upload id is unknown to them.
    let bob = rig.user("bob");
    assert_eq!(
        bob.upload_chunk(st.id, 60_000, &body[60_000..])
            .unwrap_err()
            .code,
        file_code::NO_UPLOAD
    );
    // The first upload completes after all that.
    c.upload_chunk(st.id, 60_000, &body[60_000..]).unwrap();
    c.upload_finish(st.id).unwrap();
    assert_eq!(
        c.read_range(Space::Private, "f", 0, 100_000).unwrap().0,
        body
    );
}

#[test]
fn known_content_uploads_instantly_and_blobs_are_shared() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let ann = rig.user("ann");
    let bob = rig.user("bob");
    let body = data(5, 64_000);
    let local = dir.path().join("x");
    std::fs::write(&local, &body).unwrap();
    assert!(
        !ann.upload_file(Space::Private, &local, "a", CHUNK, |_, _| {})
            .unwrap()
            .instant
    );
    let rep = ann
        .upload_file(Space::Private, &local, "b", CHUNK, |_, _| {})
        .unwrap();
    assert!(rep.instant && rep.sent == 0);
    // bob knows the hash, not the bytes: ann's private file is not his to claim.
    let rep = bob
        .upload_file(Space::Private, &local, "mine", CHUNK, |_, _| {})
        .unwrap();
    assert!(!rep.instant);
    // Content in the public area is claimable by anyone.
    let body2 = data(6, 1000);
    std::fs::write(&local, &body2).unwrap();
    ann.upload_file(Space::Public, &local, "pub", CHUNK, |_, _| {})
        .unwrap();
    assert!(
        bob.upload_file(Space::Private, &local, "copy", CHUNK, |_, _| {})
            .unwrap()
            .instant
    );
    let blobs = || {
        std::fs::read_dir(dir.path().join("files/blobs"))
            .unwrap()
            .count()
    };
    assert_eq!(blobs(), 2, "one blob per content");
    // bob may read the public file, not change it.
    assert_eq!(
        bob.read_range(Space::Public, "pub", 0, 10).unwrap().0,
        body2[..10]
    );
    assert_eq!(
        bob.delete(Space::Public, "pub").unwrap_err().code,
        code::FORBIDDEN
    );
    // Deleting every reference removes the blob.
    ann.delete(Space::Private, "a").unwrap();
    ann.delete(Space::Private, "b").unwrap();
    assert_eq!(blobs(), 2, "bob's copy still uses it");
    bob.delete(Space::Private, "mine").unwrap();
    assert_eq!(blobs(), 1);
}

#[test]
fn ranged_and_parallel_download() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let ann = rig.user("ann");
    let body = data(7, SIZE);
    let local = dir.path().join("x");
    std::fs::write(&local, &body).unwrap();
    ann.upload_file(Space::Public, &local, "f", 128 << 10, |_, _| {})
        .unwrap();
    let (d, size, _) = ann.read_range(Space::Public, "f", 1000, 10).unwrap();
    assert_eq!((d.as_slice(), size), (&body[1000..1010], SIZE as u64));
    assert!(ann
        .read_range(Space::Public, "f", SIZE as u64, 10)
        .unwrap()
        .0
        .is_empty());
    assert_eq!(
        ann.read_range(Space::Public, "f", SIZE as u64 + 1, 10)
            .unwrap_err()
            .code,
        file_code::OFFSET
    );
    // Four connections fetch a quarter each, at once.
    let quarter = SIZE / 4;
    let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|k| {
                let c = rig.client();
                let _ = rig
                    .services
                    .accounts
                    .create_user(&format!("r{k}"), "password1", false);
                c.login(&format!("r{k}"), "password1").unwrap();
                s.spawn(move || {
                    let mut out = Vec::new();
                    let mut off = (k * quarter) as u64;
                    while out.len() < quarter {
                        let (d, _, _) = c.read_range(Space::Public, "f", off, 100_000).unwrap();
                        let take = d.len().min(quarter - out.len());
                        out.extend_from_slice(&d[..take]);
                        off += take as u64;
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(parts.concat(), body);
}

#[test]
fn quotas_count_files_and_unfinished_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |c| c.files.quota_per_user = 1000);
    let c = rig.user("ann");
    let a = data(8, 600);
    let local = dir.path().join("x");
    std::fs::write(&local, &a).unwrap();
    c.upload_file(Space::Private, &local, "a", 100, |_, _| {})
        .unwrap();
    let b = data(9, 500);
    let e = c
        .upload_begin(Space::Private, "b", 500, &sha3(&b))
        .unwrap_err();
    assert_eq!(e.code, file_code::QUOTA, "{e}");
    let st = c
        .upload_begin(Space::Private, "b", 400, &sha3(&b[..400]))
        .unwrap();
    // The reservation counts too.
    assert_eq!(
        c.upload_begin(Space::Private, "c", 1, &sha3(b"x"))
            .unwrap_err()
            .code,
        file_code::QUOTA
    );
    c.upload_abort(st.id).unwrap();
    c.delete(Space::Private, "a").unwrap();
    c.upload_begin(Space::Private, "b", 500, &sha3(&b)).unwrap();
    assert_eq!(
        c.upload_begin(Space::Private, "huge", 1 << 40, &sha3(b""))
            .unwrap_err()
            .code,
        zs_core::code::TOO_LARGE
    );
}

#[test]
fn a_thousand_abandoned_uploads_stay_within_limits_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |c| {
        c.files.max_uploads_per_user = 16;
        c.files.upload_ttl = Duration::from_millis(500);
    });
    let c = rig.user("ann");
    let files = rig.services.files.clone().unwrap();
    let parts = || {
        std::fs::read_dir(dir.path().join("files/uploads"))
            .unwrap()
            .count()
    };
    let mut ok = 0;
    let mut refused = 0;
    for i in 0..1000u32 {
        // Never more than the limit at once, in memory or on disk (uploads
        // older than the TTL may expire meanwhile and make room).
        assert!(files.uploads() <= 16 && parts() <= 16);
        let h = sha3(&i.to_le_bytes());
        match c.upload_begin(Space::Private, &format!("u{i}"), 1 << 20, &h) {
            Ok(st) => {
                c.upload_chunk(st.id, 0, &[1; 1000]).map(drop).unwrap_or(());
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.code, file_code::TOO_MANY_UPLOADS, "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!(ok + refused, 1000);
    assert!(ok >= 16 && refused > 0, "{ok} accepted, {refused} refused");
    c.close();
    assert!(files.uploads() <= 16 && files.partial_bytes() <= 16 * 1000);
    // Expired: the next begin sweeps them (files, records, reservations).
    std::thread::sleep(Duration::from_millis(600));
    let c = login(&rig, "ann");
    c.upload_begin(Space::Private, "fresh", 10, &sha3(b"0123456789"))
        .unwrap();
    assert_eq!(files.uploads(), 1);
    assert_eq!(parts(), 1);
    let uid = rig.services.accounts.resolve("ann").unwrap();
    assert_eq!(files.usage(uid), 10);
}

#[test]
fn hostile_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let c = rig.user("ann");
    for bad in [
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a//b",
        "./a",
        "a\\b",
        "c:x",
        "CON",
        "nul.txt",
        "Com1.log",
        "a/lpt9",
        "x\0y",
        "dot.",
        "sp ",
        &"d/".repeat(40),
        &"n".repeat(300),
    ] {
        let bad = bad.trim_end_matches('/');
        let e = c.mkdir(Space::Private, bad).unwrap_err();
        assert_eq!(e.code, code::INVALID, "{bad:?}: {e}");
        let e = c
            .upload_begin(Space::Private, bad, 1, &sha3(b"x"))
            .unwrap_err();
        assert_eq!(e.code, code::INVALID, "{bad:?}");
    }
    // Nothing escaped into the server's directories.
    assert!(!dir.path().join("x").exists());
    assert_eq!(c.list_files(Space::Private, "").unwrap().len(), 0);
    // Malformed payloads.
    let e = c
        .client()
        .call_stream("file.begin", zs_wire::DataFrame::new().with("private"))
        .wait()
        .unwrap_err();
    assert!(matches!(e, zs_core::Error::Remote { code: 400, .. }), "{e}");
    assert_eq!(c.list_files(Space::Private, "").unwrap().len(), 0);
    // Not logged in.
    let anon = rig.client();
    assert_eq!(
        anon.list_files(Space::Public, "").unwrap_err().code,
        code::NOT_LOGGED_IN
    );
}

#[test]
fn mkdir_list_rename_delete() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let c = rig.user("ann");
    c.mkdir(Space::Private, "docs").unwrap();
    c.mkdir(Space::Private, "docs/old").unwrap();
    assert_eq!(
        c.mkdir(Space::Private, "docs").unwrap_err().code,
        file_code::EXISTS
    );
    assert_eq!(
        c.mkdir(Space::Private, "nope/x").unwrap_err().code,
        file_code::NOT_FOUND
    );
    let local = dir.path().join("x");
    std::fs::write(&local, b"hello").unwrap();
    c.upload_file(Space::Private, &local, "docs/old/a.txt", 10, |_, _| {})
        .unwrap();
    let names = |p: &str| -> Vec<String> {
        c.list_files(Space::Private, p)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect()
    };
    assert_eq!(names(""), ["docs"]);
    assert_eq!(names("docs"), ["old"]);
    assert_eq!(names("docs/old"), ["a.txt"]);
    assert_eq!(
        c.delete(Space::Private, "docs").unwrap_err().code,
        code::INVALID
    );
    c.rename(Space::Private, "docs", "papers").unwrap();
    assert_eq!(names("papers/old"), ["a.txt"]);
    assert_eq!(
        c.list_files(Space::Private, "docs").unwrap_err().code,
        file_code::NOT_FOUND
    );
    assert_eq!(
        c.rename(Space::Private, "papers", "papers/old/in")
            .unwrap_err()
            .code,
        code::INVALID
    );
    assert_eq!(
        c.read_range(Space::Private, "papers/old/a.txt", 0, 100)
            .unwrap()
            .0,
        b"hello"
    );
    c.delete(Space::Private, "papers/old/a.txt").unwrap();
    c.delete(Space::Private, "papers/old").unwrap();
    c.delete(Space::Private, "papers").unwrap();
    assert!(names("").is_empty());
    // Private spaces are separate.
    let bob = rig.user("bob");
    c.mkdir(Space::Private, "mine").unwrap();
    assert!(bob.list_files(Space::Private, "").unwrap().is_empty());
}

#[test]
fn unfinished_uploads_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let body = data(11, 100_000);
    let hash = sha3(&body);
    {
        let rig = rig_in(dir.path(), |_| {});
        let c = rig.user("ann");
        let st = c.upload_begin(Space::Private, "f", 100_000, &hash).unwrap();
        c.upload_chunk(st.id, 0, &body[..40_000]).unwrap();
        rig.server.shutdown();
        rig.services.close().unwrap();
    }
    let rig = rig_in(dir.path(), |_| {});
    let c = login(&rig, "ann");
    let st = c.upload_begin(Space::Private, "f", 100_000, &hash).unwrap();
    assert_eq!(st.offset, 40_000);
    c.upload_chunk(st.id, 40_000, &body[40_000..]).unwrap();
    c.upload_finish(st.id).unwrap();
    assert_eq!(
        c.read_range(Space::Private, "f", 0, 1 << 20).unwrap().0,
        body
    );
}

#[test]
fn rolling_checksum_slides() {
    use zs_services::files::{roll, rolling};
    let d = data(12, 5000);
    let w = 700;
    let mut sum = rolling(&d[..w]);
    for i in 0..(d.len() - w) {
        sum = roll(sum, w, d[i], d[i + w]);
        assert_eq!(sum, rolling(&d[i + 1..i + 1 + w]), "at {i}");
    }
}

#[test]
fn a_delta_upload_sends_only_the_changed_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let c = rig.user("ann");
    let base = data(13, SIZE);
    let local = dir.path().join("v1");
    std::fs::write(&local, &base).unwrap();
    c.upload_file(Space::Private, &local, "doc", 64 << 10, |_, _| {})
        .unwrap();
    // v2: 100 bytes inserted near the start (everything after shifts), 1 KiB
    // overwritten in the middle.
    let mut v2 = base[..1000].to_vec();
    v2.extend_from_slice(&[0xAB; 100]);
    v2.extend_from_slice(&base[1000..]);
    let mid = v2.len() / 2;
    v2[mid..mid + 1024].copy_from_slice(&[0xCD; 1024]);
    let rep = c
        .upload_delta(Space::Private, &v2, "doc-v2", Space::Private, "doc", 2048)
        .unwrap();
    println!("{rep:?}");
    assert!(!rep.instant);
    assert_eq!(rep.literal + rep.copied, v2.len() as u64);
    assert!(
        rep.literal * 20 < v2.len() as u64,
        "sent {} of {} bytes (want under 5%)",
        rep.literal,
        v2.len()
    );
    assert_eq!(
        c.read_range(Space::Private, "doc-v2", 0, 1 << 20)
            .unwrap()
            .0,
        v2
    );
    // Against a base it may not read: refused.
    let bob = rig.user("bob");
    assert_eq!(
        bob.upload_delta(Space::Private, &v2, "x", Space::Private, "doc", 2048)
            .unwrap_err()
            .code,
        file_code::NOT_FOUND
    );
    // A copy past the end of the base is refused.
    let st = c
        .upload_begin(Space::Private, "y", 10, &sha3(b"0123456789"))
        .unwrap();
    assert_eq!(
        c.upload_copy(st.id, 0, Space::Private, "doc", SIZE as u64 - 5, 10)
            .unwrap_err()
            .code,
        file_code::OFFSET
    );
}

/// The offset a resume reports is a durable one: bytes written after the
/// last sync (here: appended to the partial file behind the service's back,
/// as a crash may leave them) are cut off at the next start, and the chunk
/// answers say how far the upload is synced.
#[test]
fn resume_continues_from_the_synced_offset() {
    let dir = tempfile::tempdir().unwrap();
    let body = data(21, 300_000);
    let hash = sha3(&body);
    let part;
    {
        let rig = rig_in(dir.path(), |c| c.files.sync_every = 100_000);
        let _ = rig.user("ann");
        let c = login(&rig, "ann");
        let st = c.upload_begin(Space::Private, "f", 300_000, &hash).unwrap();
        let raw = |off: usize, len: usize| {
            let crc = zs_hash::crc32(&body[off..off + len]).to_le_bytes().to_vec();
            let df = zs_wire::DataFrame::new()
                .with(st.id)
                .with(off as u64)
                .with(body[off..off + len].to_vec())
                .with(crc);
            let r = c.client().call_stream("file.chunk", df).wait().unwrap();
            let mut rd = r.reader();
            (rd.read_u64().unwrap(), rd.read_u64().unwrap())
        };
        let files = rig.services.files.clone().unwrap();
        // Under sync_every: written, not synced.
        assert_eq!(raw(0, 60_000), (60_000, 0));
        assert_eq!(files.synced(st.id), Some(0));
        // Past it: synced in the background, and recorded.
        assert_eq!(raw(60_000, 60_000).0, 120_000);
        eventually("the background sync", || {
            files.synced(st.id) == Some(120_000)
        });
        assert_eq!(raw(120_000, 30_000), (150_000, 120_000));
        part = dir
            .path()
            .join("files/uploads")
            .join(format!("{}.part", st.id));
        rig.server.shutdown();
        rig.services.close().unwrap();
    }
    // A clean close synced everything (150,000). Now pretend a crash left
    // 7 bytes that were never synced.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .unwrap();
        f.write_all(b"garbage").unwrap();
    }
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 150_007);
    let rig = rig_in(dir.path(), |_| {});
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 150_000);
    let c = login(&rig, "ann");
    let st = c.upload_begin(Space::Private, "f", 300_000, &hash).unwrap();
    assert_eq!(st.offset, 150_000);
    let end = c
        .upload_window(
            st.id,
            st.offset,
            300_000,
            20_000,
            4,
            |at, buf| {
                buf.copy_from_slice(&body[at as usize..at as usize + buf.len()]);
                Ok(())
            },
            |_, _| {},
        )
        .unwrap();
    assert_eq!(end, 300_000);
    c.upload_finish(st.id).unwrap();
    assert_eq!(
        c.read_range(Space::Private, "f", 0, 1 << 20).unwrap().0,
        body
    );
}

/// Several chunks in flight: written in order; a chunk that skips ahead of
/// the upload, or whose CRC-32 is wrong, is refused and nothing is written.
#[test]
fn chunks_in_flight_land_in_order_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let _ = rig.user("ann");
    let c = login(&rig, "ann");
    let body = data(22, SIZE);
    let st = c
        .upload_begin(Space::Private, "w", SIZE as u64, &sha3(&body))
        .unwrap();
    let send = |off: usize, len: usize, crc: u32| {
        let df = zs_wire::DataFrame::new()
            .with(st.id)
            .with(off as u64)
            .with(body[off..off + len].to_vec())
            .with(crc.to_le_bytes().to_vec());
        c.client().call_stream("file.chunk", df)
    };
    // A wrong CRC-32: refused.
    let e = zs_services::ServiceError::from(send(0, CHUNK, 1).wait().unwrap_err());
    assert_eq!(e.code, file_code::HASH_MISMATCH, "{e}");
    // A chunk ahead of where the upload stands: refused, with the offset.
    let e = zs_services::ServiceError::from(
        send(CHUNK, CHUNK, zs_hash::crc32(&body[CHUNK..2 * CHUNK]))
            .wait()
            .unwrap_err(),
    );
    assert_eq!(e.code, file_code::OFFSET, "{e}");
    assert!(e.message.contains("offset 0"), "{e}");
    // All chunks at once, then each answer in order.
    let futs: Vec<_> = (0..SIZE / CHUNK)
        .map(|i| {
            let off = i * CHUNK;
            send(off, CHUNK, zs_hash::crc32(&body[off..off + CHUNK]))
        })
        .collect();
    for (i, f) in futs.into_iter().enumerate() {
        let r = f.wait().unwrap();
        assert_eq!(r.reader().read_u64().unwrap(), ((i + 1) * CHUNK) as u64);
    }
    c.upload_finish(st.id).unwrap();
    assert_eq!(
        c.read_range(Space::Private, "w", 0, 1 << 20).unwrap().0,
        body
    );
}

/// Uploads `body` to `path` in the caller's private space, 1 MiB chunks, 4 in
/// flight.
fn put(c: &ServicesClient, path: &str, body: &[u8]) {
    let st = c
        .upload_begin(Space::Private, path, body.len() as u64, &sha3(body))
        .unwrap();
    c.upload_window(
        st.id,
        0,
        body.len() as u64,
        1 << 20,
        4,
        |at, buf| {
            buf.copy_from_slice(&body[at as usize..at as usize + buf.len()]);
            Ok(())
        },
        |_, _| {},
    )
    .unwrap();
    c.upload_finish(st.id).unwrap();
}

/// A signature answer of the most blocks the server gives reaches a client
/// of the security layer's default configuration over epoll (as `zs file
/// put --base` against `zs serve`), more blocks are refused with `TOO_LARGE`
/// (not answered with a frame the client cannot receive: at 65,536 blocks
/// the 1.31 MiB answer made the client's layer reset the connection, `zs
/// file: connection lost: Local`, for a 256 MiB base in 4 KiB blocks), and a
/// delta upload against a base of more blocks than that is matched in
/// larger blocks.
#[test]
fn signatures_fit_a_frame_the_client_receives_and_large_bases_take_larger_blocks() {
    use zs_services::files::MAX_SIGNATURE_BLOCKS;
    use zs_services::BlockSum;
    let size = 65_536 * 512; // 65,536 blocks of 512 bytes (32 MiB)
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cheap();
    cfg.files.max_file_size = 1 << 30;
    cfg.files.quota_per_user = 1 << 30;
    let services = Services::open_dir(dir.path(), cfg).unwrap();
    let rig = Rig::on(epoll_backend(), services, |_| {});
    let c = rig.user("ann");
    let v1 = data(61, size);
    put(&c, "base", &v1);
    match c.signature_with(Space::Private, "base", 512, BlockSum::Xxh3) {
        Err(e) => assert_eq!(e.code, zs_core::code::TOO_LARGE, "65,536 blocks: {e}"),
        Ok((sig, _)) => panic!("{} blocks answered", sig.len()),
    }
    // The smallest block that fits: the largest answer there is.
    let block = size.div_ceil(MAX_SIGNATURE_BLOCKS as usize) as u32;
    let (sig, _) = c
        .signature_with(Space::Private, "base", block, BlockSum::Xxh3)
        .unwrap();
    assert_eq!(sig.len(), size.div_ceil(block as usize));
    assert!(sig.len() as u64 > MAX_SIGNATURE_BLOCKS - 64);
    let mut v2 = v1.clone();
    for b in &mut v2[size / 3..size / 3 + 100] {
        *b ^= 0x33;
    }
    let rep = c
        .upload_delta(Space::Private, &v2, "v2", Space::Private, "base", 512)
        .unwrap();
    assert_eq!(rep.block, 1024, "{rep:?}");
    assert!(rep.literal <= 2048, "{rep:?}");
    assert_eq!(rep.literal + rep.copied, size as u64);
    let got = c.read_range(Space::Private, "v2", 0, 1).unwrap();
    assert_eq!(got.2, zs_crypto::hash::to_hex(&sha3(&v2)));
}

/// A rig in `dir` that takes files up to 1 GiB, and user ann logged in on a
/// client whose calls may copy and hash a whole 64 MiB file (its timeout a
/// failure guard, not a timing).
fn ann_with_large_files(dir: &std::path::Path) -> (Rig, ServicesClient) {
    let rig = rig_in(dir, |c| {
        c.files.max_file_size = 1 << 30;
        c.files.quota_per_user = 1 << 30;
    });
    let _ = rig.user("ann");
    let c = rig.client_timeout(zs_core::Registry::new(), FULL_SIZE_CALL_TIMEOUT);
    c.login("ann", "ann-password").unwrap();
    (rig, c)
}

/// The delta figure: a 1 MiB edit of a 64 MiB file sends under 5% of
/// it (always at the issue's size: ARCHITECTURE, zs-services "Session 14
/// (full16)").
#[test]
fn an_edit_of_a_64th_of_a_file_sends_under_5_percent() {
    let (size, edit, block) = (64 << 20, 1 << 20, 8192);
    let dir = tempfile::tempdir().unwrap();
    let (_rig, c) = ann_with_large_files(dir.path());
    let v1 = data(31, size);
    put(&c, "big", &v1);
    let mut v2 = v1.clone();
    let at = size / 2 + 123; // not on a block boundary
    for b in &mut v2[at..at + edit] {
        *b ^= 0x5a;
    }
    let rep = c
        .upload_delta(Space::Private, &v2, "big-v2", Space::Private, "big", block)
        .unwrap();
    println!(
        "{size} bytes, {edit} edited: {} bytes sent ({:.2}%), {} copied on the server",
        rep.literal,
        rep.literal as f64 * 100.0 / size as f64,
        rep.copied
    );
    assert!(rep.literal < size as u64 / 20, "{rep:?}");
    assert_eq!(rep.literal + rep.copied, size as u64);
    let got = c
        .read_range(Space::Private, "big-v2", at as u64, 1 << 20)
        .unwrap();
    assert_eq!(got.2, zs_crypto::hash::to_hex(&sha3(&v2)));
}

/// Pseudo-random bytes by position (nothing held: byte `i` comes from word
/// `i / 8`), with bytes `edit` flipped: a file as large as a test wants,
/// read front to back by a delta upload. Records the most bytes it had
/// handed out beyond what the server holds of the unfinished upload
/// (`Files::partial_bytes`): what the client read and did not yet send or
/// have copied.
struct GenFile {
    seed: u64,
    len: u64,
    pos: u64,
    edit: std::ops::Range<u64>,
    files: Option<zs_services::Files>,
    max_ahead: u64,
}

impl GenFile {
    fn fill(&self, at: u64, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let p = at + i as u64;
            let mut x = (p / 8)
                .wrapping_add(self.seed)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
            x ^= x >> 29;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^= x >> 32;
            *b = (x >> ((p % 8) * 8)) as u8 ^ if self.edit.contains(&p) { 0x5a } else { 0 };
        }
    }
}

impl std::io::Read for GenFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.len - self.pos) as usize;
        self.fill(self.pos, &mut buf[..n]);
        self.pos += n as u64;
        if let Some(f) = &self.files {
            self.max_ahead = self
                .max_ahead
                .max(self.pos.saturating_sub(f.partial_bytes()));
        }
        Ok(n)
    }
}

impl std::io::Seek for GenFile {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        match to {
            std::io::SeekFrom::Start(p) if p <= self.len => self.pos = p,
            std::io::SeekFrom::Current(0) => {}
            _ => return Err(std::io::ErrorKind::Unsupported.into()),
        }
        Ok(self.pos)
    }
}

/// A delta upload reads its file as a stream in bounded memory: of a 32 MiB
/// file with 1 MiB edited (sent in several literal pieces), the client never
/// read more than `delta_memory_bound` plus two coalesced copies (requests,
/// not bytes held) beyond what the server held; a client that reads the whole
/// file first (the CLI's `std::fs::read` before session 14) is 32 MiB ahead.
/// The file still ends with the right hash and little is sent.
#[test]
fn a_delta_upload_reads_its_file_in_bounded_memory() {
    let (size, block) = (32u64 << 20, 4096u32);
    let dir = tempfile::tempdir().unwrap();
    let (rig, c) = ann_with_large_files(dir.path());
    let v1 = GenFile {
        seed: 7,
        len: size,
        pos: 0,
        edit: 0..0,
        files: None,
        max_ahead: 0,
    };
    c.upload_hashing(
        Space::Private,
        "big",
        size,
        256 << 10,
        |at, buf| {
            v1.fill(at, buf);
            Ok(())
        },
        |_, _| {},
    )
    .unwrap();
    let files = rig.services.files.clone().unwrap();
    assert_eq!(files.partial_bytes(), 0);
    let edit = (10 << 20) + 123..(11 << 20) + 123;
    let mut v2 = GenFile {
        edit: edit.clone(),
        files: Some(files.clone()),
        ..v1
    };
    let rep = c
        .upload_delta_from(
            Space::Private,
            &mut v2,
            size,
            "big-v2",
            Space::Private,
            "big",
            block,
        )
        .unwrap();
    let bound = zs_services::delta_memory_bound(block)
        + 2 * zs_services::client::DELTA_COPY_RUN
        + 2 * block as u64;
    println!(
        "{size} bytes: {rep:?}; read at most {} bytes ahead of the server (bound {bound})",
        v2.max_ahead
    );
    assert!(v2.max_ahead <= bound, "{} > {bound}", v2.max_ahead);
    assert_eq!(rep.literal + rep.copied, size);
    assert!(rep.literal >= edit.end - edit.start, "{rep:?}");
    assert!(
        rep.literal <= edit.end - edit.start + 2 * block as u64,
        "{rep:?}"
    );
    // The file the server assembled is v2.
    let mut h = zs_crypto::hash::Sha3_256::new();
    let mut buf = vec![0u8; 1 << 20];
    for at in (0..size).step_by(1 << 20) {
        v2.fill(at, &mut buf);
        h.update(&buf);
    }
    let got = c.read_range(Space::Private, "big-v2", 0, 0).unwrap();
    assert_eq!(got.2, zs_crypto::hash::to_hex(&h.finalize()));
    assert_eq!(files.uploads(), 0);
}

/// tus concatenation: three partial uploads sent at once over one connection
/// (their chunks interleaved), then joined into one file; a part that is not
/// complete, a wrong whole hash and someone else's part are refused and the
/// parts kept.
#[test]
fn partial_uploads_sent_in_parallel_are_concatenated() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let _ = rig.user("ann");
    let c = login(&rig, "ann");
    let body = data(41, SIZE);
    let cuts = [0, SIZE / 3, SIZE / 3 * 2 + 7, SIZE];
    let ids: Vec<u64> = (0..3)
        .map(|k| {
            let part = &body[cuts[k]..cuts[k + 1]];
            c.upload_begin(
                Space::Private,
                &format!("p{k}"),
                part.len() as u64,
                &sha3(part),
            )
            .unwrap()
            .id
        })
        .collect();
    // An incomplete part is refused.
    let e = c
        .upload_concat(Space::Private, "whole", &sha3(&body), &ids)
        .unwrap_err();
    assert_eq!(e.code, file_code::OFFSET, "{e}");
    // All three at once: chunks of every part in flight together.
    let mut futs = Vec::new();
    let mut offs = [0usize; 3];
    while (0..3).any(|k| cuts[k] + offs[k] < cuts[k + 1]) {
        for k in 0..3 {
            let (a, b) = (cuts[k] + offs[k], cuts[k + 1]);
            if a < b {
                let end = (a + CHUNK).min(b);
                let df = zs_wire::DataFrame::new()
                    .with(ids[k])
                    .with(offs[k] as u64)
                    .with(body[a..end].to_vec())
                    .with(zs_hash::crc32(&body[a..end]).to_le_bytes().to_vec());
                futs.push(c.client().call_stream("file.chunk", df));
                offs[k] += end - a;
            }
        }
    }
    for f in futs {
        f.wait().unwrap();
    }
    // A wrong whole hash: refused, parts kept.
    let e = c
        .upload_concat(Space::Private, "whole", &sha3(b"other"), &ids)
        .unwrap_err();
    assert_eq!(e.code, file_code::HASH_MISMATCH, "{e}");
    // Someone else cannot join ann's parts.
    let bob = rig.user("bob");
    let e = bob
        .upload_concat(Space::Private, "stolen", &sha3(&body), &ids)
        .unwrap_err();
    assert_eq!(e.code, file_code::NO_UPLOAD, "{e}");
    // Out of order is another file (and the hash says so).
    let swapped = [ids[1], ids[0], ids[2]];
    let e = c
        .upload_concat(Space::Private, "whole", &sha3(&body), &swapped)
        .unwrap_err();
    assert_eq!(e.code, file_code::HASH_MISMATCH, "{e}");
    c.upload_concat(Space::Private, "whole", &sha3(&body), &ids)
        .unwrap();
    assert_eq!(
        c.read_range(Space::Private, "whole", 0, 1 << 20).unwrap().0,
        body
    );
    let files = rig.services.files.as_ref().unwrap();
    assert_eq!(files.uploads(), 0, "the parts are gone");
    let uid = rig.services.accounts.resolve("ann").unwrap();
    assert_eq!(files.usage(uid), SIZE as u64, "charged once, for the file");
    // The parts never became files.
    let names: Vec<String> = c
        .list_files(Space::Private, "")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["whole"]);
}

/// The resume figure: a 256 MiB upload cut off at 20 random points
/// (the writer's connection dropped with chunks in flight) and resumed each
/// time, ending with the right SHA3-256; the bytes sent again after each
/// resume are reported (always at the size).
#[test]
fn a_large_upload_cut_at_random_points_resumes_to_the_right_hash() {
    let (size, cuts, chunk) = (256usize << 20, 20, 1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |c| {
        c.files.max_file_size = 1 << 30;
        c.files.quota_per_user = 1 << 30;
    });
    let _ = rig.user("ann");
    // `upload_finish` may wait for the server's whole-file hash of what it
    // has not hashed yet (256 MiB): a failure guard, not a timing.
    let login = |rig: &Rig, name: &str| {
        let c = rig.client_timeout(zs_core::Registry::new(), FULL_SIZE_CALL_TIMEOUT);
        c.login(name, &format!("{name}-password")).unwrap();
        c
    };
    let body = data(51, size);
    let hash = sha3(&body);
    let mut x = 0x2545_f491u64;
    let (mut acked, mut sent_end) = (0u64, 0u64);
    let mut resent = Vec::new();
    for k in 0..=cuts {
        let c = login(&rig, "ann");
        let st = c
            .upload_begin(Space::Private, "big", size as u64, &hash)
            .unwrap();
        assert!(
            st.offset >= acked,
            "cut {k}: resumed at {} < {acked} acknowledged",
            st.offset
        );
        // Bytes the last writer sent that the server did not keep.
        if k > 0 {
            resent.push(sent_end.saturating_sub(st.offset));
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let chunks_left = (size as u64 - st.offset).div_ceil(chunk as u64);
        let stop_after = if k == cuts {
            u64::MAX
        } else {
            1 + x % (chunks_left / (cuts - k + 1) as u64).max(1)
        };
        let mut sent = 0u64;
        let mut n = 0u64;
        let r = c.upload_window(
            st.id,
            st.offset,
            size as u64,
            chunk,
            zs_services::UPLOAD_WINDOW,
            |at, buf| {
                n += 1;
                if n > stop_after {
                    return Err(zs_services::ServiceError::new(code::CLIENT, "cut"));
                }
                buf.copy_from_slice(&body[at as usize..at as usize + buf.len()]);
                sent += buf.len() as u64;
                Ok(())
            },
            |done, _| acked = acked.max(done),
        );
        if k == cuts {
            assert_eq!(r.unwrap(), size as u64);
            c.upload_finish(st.id).unwrap();
        } else {
            assert!(r.is_err());
            // The writer vanishes with its chunks in flight.
            c.close();
            sent_end = st.offset + sent;
        }
    }
    println!("{size} bytes, cut {cuts} times; bytes sent again after each resume: {resent:?}");
    let c = login(&rig, "ann");
    let list = c.list_files(Space::Private, "").unwrap();
    assert_eq!(
        (list[0].size, list[0].hash.clone()),
        (size as u64, zs_crypto::hash::to_hex(&hash))
    );
}

/// `n` connections attached to `main`'s session.
fn attached(rig: &Rig, main: &ServicesClient, name: &str, n: usize) -> Vec<ServicesClient> {
    let t = main.ticket().unwrap();
    (0..n)
        .map(|_| {
            let c = rig.client();
            c.attach(name, &t).unwrap();
            c
        })
        .collect()
}

#[test]
fn a_download_over_several_connections_resumes_with_any_number_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let ann = rig.user("ann");
    let body = data(11, SIZE + 1234);
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &body).unwrap();
    ann.upload_file(Space::Private, &src, "big", CHUNK, |_, _| {})
        .unwrap();
    // Four connections of one user (three attached), each its own share.
    let more = attached(&rig, &ann, "ann", 3);
    let out = dir.path().join("out.bin");
    let mut seen = Vec::new();
    let n = ann
        .download_parallel(&more, Space::Private, "big", &out, CHUNK as u32, |d, t| {
            seen.push((d, t))
        })
        .unwrap();
    assert_eq!(n, body.len() as u64);
    assert_eq!(std::fs::read(&out).unwrap(), body);
    assert_eq!(seen.last(), Some(&(body.len() as u64, body.len() as u64)));
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "progress grows");
    assert!(!dir.path().join("out.bin.part.state").exists());
    // Every connection given takes a share: one not logged in fails the
    // download (and its share stays to fetch).
    let stranger = rig.client();
    let out1 = dir.path().join("out1.bin");
    let e = ann
        .download_parallel(
            &[more[0].clone(), stranger],
            Space::Private,
            "big",
            &out1,
            CHUNK as u32,
            |_, _| {},
        )
        .unwrap_err();
    assert_eq!(e.code, code::NOT_LOGGED_IN);
    assert!(!out1.exists() && dir.path().join("out1.bin.part.state").exists());
    // The two good shares were fetched: the rerun fetches only the third.
    let n = ann
        .download_parallel(&more, Space::Private, "big", &out1, CHUNK as u32, |_, _| {})
        .unwrap();
    assert!(n > 0 && n < body.len() as u64 / 2, "fetched {n} again");
    assert_eq!(std::fs::read(&out1).unwrap(), body);
    // A run stopped part way: shares half done (the state file says so;
    // the bytes not yet fetched are garbage), resumed with two connections:
    // only the missing bytes are fetched, and the file is right.
    let out2 = dir.path().join("out2.bin");
    let len = body.len() as u64;
    let q = len / 4;
    let mut part = vec![0xEEu8; body.len()];
    let mut state = format!("zs-download {len} {}\n", hex(&sha3(&body)));
    let mut missing = 0;
    for k in 0..4u64 {
        let (a, b) = (k * q, if k == 3 { len } else { (k + 1) * q });
        let done = a + (b - a) / 2;
        part[a as usize..done as usize].copy_from_slice(&body[a as usize..done as usize]);
        state.push_str(&format!("{done} {b}\n"));
        missing += b - done;
    }
    std::fs::write(dir.path().join("out2.bin.part"), &part).unwrap();
    std::fs::write(dir.path().join("out2.bin.part.state"), state).unwrap();
    let n = ann
        .download_parallel(&more[..1], Space::Private, "big", &out2, 5000, |_, _| {})
        .unwrap();
    assert_eq!(n, missing);
    assert_eq!(std::fs::read(&out2).unwrap(), body);
    // A partial file whose "done" bytes are wrong: the hash check catches
    // it and the partial file is removed (the next run starts over).
    let out3 = dir.path().join("out3.bin");
    let mut state = format!("zs-download {len} {}\n", hex(&sha3(&body)));
    state.push_str(&format!("{} {len}\n", len / 2));
    std::fs::write(dir.path().join("out3.bin.part"), vec![0u8; body.len()]).unwrap();
    std::fs::write(dir.path().join("out3.bin.part.state"), state).unwrap();
    let e = ann
        .download_parallel(&[], Space::Private, "big", &out3, CHUNK as u32, |_, _| {})
        .unwrap_err();
    assert!(e.message.contains("SHA3-256"), "{e:?}");
    assert!(!dir.path().join("out3.bin.part").exists() && !out3.exists());
    assert_eq!(
        ann.download_file(Space::Private, "big", &out3, CHUNK as u32, |_, _| {})
            .unwrap(),
        len
    );
    assert_eq!(std::fs::read(&out3).unwrap(), body);
    // A state file for other content (another hash) is ignored: a fresh start.
    let out4 = dir.path().join("out4.bin");
    std::fs::write(
        dir.path().join("out4.bin.part.state"),
        format!("zs-download {len} {}\n0 1\n", "00".repeat(32)),
    )
    .unwrap();
    assert_eq!(
        ann.download_parallel(&more, Space::Private, "big", &out4, CHUNK as u32, |_, _| {})
            .unwrap(),
        len
    );
    assert_eq!(std::fs::read(&out4).unwrap(), body);
    // Attached connections lose the user with the session: a download over
    // them fails cleanly.
    ann.logout().unwrap();
    assert_eq!(
        more[0]
            .read_range(Space::Private, "big", 0, 10)
            .unwrap_err()
            .code,
        code::NOT_LOGGED_IN
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `upload_hashing` of bytes in memory to a private path.
trait UploadCut {
    /// Uploads `body` to `path` in chunks of [`CHUNK`], the reader failing
    /// ("cut") from offset `cut_from` on.
    fn upload_cut(
        &self,
        path: &str,
        body: &[u8],
        cut_from: u64,
    ) -> zs_services::Result<zs_services::UploadReport>;
}

impl UploadCut for ServicesClient {
    fn upload_cut(
        &self,
        path: &str,
        body: &[u8],
        cut_from: u64,
    ) -> zs_services::Result<zs_services::UploadReport> {
        self.upload_hashing(
            Space::Private,
            path,
            body.len() as u64,
            CHUNK,
            |at, buf| {
                if at >= cut_from {
                    return Err(zs_services::ServiceError::new(code::CLIENT, "cut"));
                }
                buf.copy_from_slice(&body[at as usize..at as usize + buf.len()]);
                Ok(())
            },
            |_, _| {},
        )
    }
}

#[test]
fn an_upload_hashed_while_sent_is_checked_at_finish_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let ann = rig.user("ann");
    let body = data(21, SIZE);
    let len = body.len() as u64;
    // Cut off: the reader fails past a third of the file.
    let e = ann.upload_cut("h", &body[..], len / 3 + 1).unwrap_err();
    assert_eq!(e.message, "cut");
    assert_eq!(rig.services.files.as_ref().unwrap().uploads(), 1);
    // Run again: resumed where the server stands, only the rest sent.
    let rep = ann.upload_cut("h", &body[..], u64::MAX).unwrap();
    assert!(!rep.instant && rep.resumed_from > 0, "{rep:?}");
    assert_eq!(rep.resumed_from + rep.sent, len);
    let out = dir.path().join("h.out");
    ann.download_file(Space::Private, "h", &out, CHUNK as u32, |_, _| {})
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), body);
    let listed = ann.list_files(Space::Private, "").unwrap();
    assert_eq!(listed[0].hash, hex(&sha3(&body)));

    // By hand: no hash at begin (never an instant upload, although the
    // server holds this content), so finish must bring the right one.
    let (id, off, instant) = begin_deferred(&ann, "h2", len);
    assert_eq!((off, instant), (0, false));
    let mut at = 0;
    while at < len {
        at = ann
            .upload_chunk(
                id,
                at,
                &body[at as usize..(at as usize + CHUNK).min(body.len())],
            )
            .unwrap();
    }
    let finish = |h: Option<Vec<u8>>| {
        let mut df = zs_wire::DataFrame::new().with(id);
        if let Some(h) = h {
            df.push(h);
        }
        ann.client()
            .call_stream("file.finish", df)
            .wait()
            .map_err(zs_services::ServiceError::from)
    };
    assert_eq!(
        finish(None).unwrap_err().code,
        zs_core::code::BAD_REQUEST,
        "the hash must come at finish"
    );
    let mut wrong = sha3(&body);
    wrong[5] ^= 1;
    assert_eq!(
        finish(Some(wrong.to_vec())).unwrap_err().code,
        file_code::HASH_MISMATCH
    );
    assert_eq!(
        finish(Some(vec![1, 2, 3])).unwrap_err().code,
        zs_core::code::BAD_REQUEST
    );
    // Kept for a retry: the right hash completes it.
    finish(Some(sha3(&body).to_vec())).unwrap();
    assert_eq!(rig.services.files.as_ref().unwrap().uploads(), 0);
    // An upload that announced its hash at begin: finish may repeat it, not change it.
    let st = ann
        .upload_begin(Space::Private, "h3", 5, &sha3(b"hello"))
        .unwrap();
    ann.upload_chunk(st.id, 0, b"hello").unwrap();
    let df = zs_wire::DataFrame::new().with(st.id).with(wrong.to_vec());
    assert_eq!(
        ann.client()
            .call_stream("file.finish", df)
            .wait()
            .map_err(zs_services::ServiceError::from)
            .unwrap_err()
            .code,
        file_code::HASH_MISMATCH
    );
    let df = zs_wire::DataFrame::new()
        .with(st.id)
        .with(sha3(b"hello").to_vec());
    ann.client().call_stream("file.finish", df).wait().unwrap();
}

/// A chunk whose answer the server holds back: the test releases it.
type Held = (zs_core::Peer, zs_wire::DataFrame, zs_core::Responder);

#[test]
fn a_failed_upload_returns_only_after_its_chunks_in_flight_are_answered() {
    use std::sync::{mpsc, Arc, Mutex};
    // The last chunk the client sends before its reader fails (at 64 KiB:
    // the read of the chunk after it fails) is held at the server, unwritten
    // and unanswered, until the test releases it.
    const HOLD_AT: u64 = 4 * CHUNK as u64;
    let dir = tempfile::tempdir().unwrap();
    let services = Services::open_dir(dir.path(), cheap()).unwrap();
    let files = services.files.clone().unwrap();
    let accounts = services.accounts.clone();
    let held: Arc<Mutex<Option<Held>>> = Arc::default();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let write = {
        let (files, accounts) = (files.clone(), accounts.clone());
        move |peer: &zs_core::Peer, df: &zs_wire::DataFrame| -> zs_services::Result<_> {
            let uid = accounts.require_user(peer)?;
            let mut r = df.reader();
            let (id, offset) = (r.read_u64()?, r.read_u64()?);
            let (data, check) = (r.read_slice()?, r.read_slice()?);
            let (at, synced) = files.chunk(peer, uid, id, offset, data, check)?;
            Ok(zs_wire::DataFrame::new().with(at).with(synced))
        }
    };
    let answer = {
        let write = write.clone();
        move |peer: &zs_core::Peer, df: &zs_wire::DataFrame, resp: zs_core::Responder| {
            let _ = resp.reply(
                write(peer, df)
                    .map(zs_core::Reply::Data)
                    .map_err(zs_core::HandlerError::from),
            );
        }
    };
    let rig = {
        let (held, answer) = (held.clone(), answer.clone());
        let held_tx = Mutex::new(held_tx);
        Rig::with_registry(services, move |r| {
            // Replaces the service's `file.chunk`: chunks are written in
            // arrival order on the loop, the one at HOLD_AT is kept.
            r.stream_delayed("file.chunk", move |peer, df, resp| {
                let mut rd = df.reader();
                let offset = rd.read_u64().and_then(|_| rd.read_u64()).unwrap_or(0);
                let mut h = held.lock().unwrap();
                if offset == HOLD_AT && h.is_none() {
                    *h = Some((peer.clone(), df, resp));
                    let _ = held_tx.lock().unwrap().send(());
                } else {
                    drop(h);
                    answer(peer, &df, resp);
                }
            });
        })
    };
    let ann = Arc::new(rig.user("ann"));
    let body = Arc::new(data(23, SIZE));
    let len = body.len() as u64;
    let (done_tx, done_rx) = mpsc::channel();
    let first = {
        let (ann, body) = (ann.clone(), body.clone());
        std::thread::spawn(move || {
            let r = ann.upload_cut("held", &body[..], HOLD_AT + 1);
            let _ = done_tx.send(());
            r
        })
    };
    held_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the chunk at HOLD_AT reached the server");
    // While that chunk is unanswered the failed upload must not return (a
    // retry would ask where the upload stands before the chunk landed). The
    // hold lasts until the upload returns or one second passes: a client
    // that does not wait returns within microseconds of its reader failing.
    let returned_while_held = done_rx.recv_timeout(Duration::from_secs(1)).is_ok();
    let (peer, df, resp) = held.lock().unwrap().take().unwrap();
    answer(&peer, &df, resp);
    let e = first.join().unwrap().unwrap_err();
    assert_eq!(e.message, "cut");
    assert!(
        !returned_while_held,
        "the failed upload returned while one of its chunks was unanswered"
    );
    // The retry on the same connection resumes after the held chunk.
    let rep = ann.upload_cut("held", &body[..], u64::MAX).unwrap();
    assert_eq!(rep.resumed_from, HOLD_AT + CHUNK as u64, "{rep:?}");
    assert_eq!(rep.resumed_from + rep.sent, len);
    let out = dir.path().join("held.out");
    ann.download_file(Space::Private, "held", &out, CHUNK as u32, |_, _| {})
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), *body);
    drop(write);
}

#[test]
fn block_signatures_are_kept_for_the_next_delta_within_their_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the signature of 96 blocks of 2 KiB (96 * 20 + 64 bytes) or
    // of 48 blocks of 4 KiB, not both.
    let rig = rig_in(dir.path(), |c| c.files.signature_cache_bytes = 3000);
    let c = rig.user("ann");
    let uid = rig.services.accounts.resolve("ann").unwrap();
    let files = rig.services.files.as_ref().unwrap();
    let local = dir.path().join("a");
    std::fs::write(&local, data(31, SIZE)).unwrap();
    c.upload_file(Space::Private, &local, "a", 64 << 10, |_, _| {})
        .unwrap();
    let sig = |name: &str, block| files.signature(uid, Space::Private, name, block).unwrap();
    let a1 = sig("a", 2048);
    assert_eq!(a1.len(), SIZE / 2048);
    // The same content and block size: served from memory, nothing re-read.
    assert!(std::sync::Arc::ptr_eq(&a1, &sig("a", 2048)));
    // Another block size is another signature; the bound holds: it pushes
    // out the oldest, so the 2 KiB one is computed again (and equal).
    let a4 = sig("a", 4096);
    assert_eq!(a4.len(), SIZE / 4096);
    let a1_again = sig("a", 2048);
    assert!(!std::sync::Arc::ptr_eq(&a1, &a1_again));
    assert_eq!(a1, a1_again);
    // What the client sees through file.signature is the same list.
    assert_eq!(c.signature(Space::Private, "a", 2048).unwrap(), *a1);
}

/// Begins an upload of `len` bytes to `path` without a hash (by hand):
/// (id, offset, instant).
fn begin_deferred(c: &ServicesClient, path: &str, len: u64) -> (u64, u64, bool) {
    let df = c
        .client()
        .call_stream(
            "file.begin",
            zs_wire::DataFrame::new()
                .with("private")
                .with(path)
                .with(len)
                .with(Vec::new()),
        )
        .wait()
        .unwrap();
    let mut r = df.reader();
    (
        r.read_u64().unwrap(),
        r.read_u64().unwrap(),
        r.read_bool().unwrap(),
    )
}

#[test]
fn a_hash_announced_while_sending_completes_known_content_by_reference() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let files = rig.services.files.clone().unwrap();
    let ann = rig.user("ann");
    let bob = rig.user("bob");
    let ann_id = rig.services.accounts.resolve("ann").unwrap();
    let body = data(31, SIZE);
    let (len, hash) = (body.len() as u64, sha3(&body));
    let piece = |at: u64| &body[at as usize..(at as usize + CHUNK).min(body.len())];
    let local = dir.path().join("known");
    std::fs::write(&local, &body).unwrap();
    ann.upload_file(Space::Private, &local, "a", CHUNK, |_, _| {})
        .unwrap();
    assert_eq!(files.usage(ann_id), len);

    // Two chunks sent, then the hash is known: the server holds it.
    let (id, _, _) = begin_deferred(&ann, "b", len);
    let mut at = 0;
    for _ in 0..2 {
        at = ann.upload_chunk(id, at, piece(at)).unwrap();
    }
    assert!(
        ann.announce_hash(id, &hash).unwrap(),
        "completed by reference"
    );
    assert_eq!(
        code_of(ann.upload_chunk(id, at, piece(at))),
        file_code::NO_UPLOAD,
        "a chunk after that finds no upload"
    );
    assert_eq!(files.uploads(), 0);
    assert_eq!(files.partial_bytes(), 0);
    let b = ann.list_files(Space::Private, "b").unwrap();
    assert_eq!((b[0].size, b[0].hash.clone()), (len, hex(&hash)));
    assert_eq!(
        files.usage(ann_id),
        2 * len,
        "the reservation became the file's charge"
    );
    let blobs = std::fs::read_dir(dir.path().join("files/blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1, "one blob for both");

    // bob knows the hash, not the bytes: he must send them all.
    let (id, _, _) = begin_deferred(&bob, "mine", len);
    let at = bob.upload_chunk(id, 0, piece(0)).unwrap();
    assert!(!bob.announce_hash(id, &hash).unwrap());
    let mut wrong = hash;
    wrong[0] ^= 1;
    assert_eq!(
        code_of(bob.announce_hash(id, &wrong)),
        file_code::HASH_MISMATCH,
        "a second, different hash is refused"
    );
    assert_eq!(
        code_of(bob.announce_hash(id + 1000, &hash)),
        file_code::NO_UPLOAD
    );
    let mut at = at;
    while at < len {
        at = bob.upload_chunk(id, at, piece(at)).unwrap();
    }
    bob.upload_finish(id).unwrap();
    assert_eq!(
        bob.list_files(Space::Private, "mine").unwrap()[0].hash,
        hex(&hash)
    );
}

#[test]
fn a_late_instant_upload_stops_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let files = rig.services.files.clone().unwrap();
    let ann = rig.user("ann");
    let ann_id = rig.services.accounts.resolve("ann").unwrap();
    // Larger than one window of chunks: sent at once, hashed alongside.
    let body = data(33, 2 * SIZE);
    let len = body.len() as u64;
    let window = zs_services::UPLOAD_WINDOW as u64;
    assert!(len > (3 + window) * CHUNK as u64);
    let local = dir.path().join("known");
    std::fs::write(&local, &body).unwrap();
    let first = ann
        .upload_file(Space::Private, &local, "a", CHUNK, |_, _| {})
        .unwrap();
    assert!(!first.instant && first.sent == len);
    // The sender (not the hashing thread) is held at its third chunk until
    // the server has completed the file by reference.
    let rep = ann
        .upload_hashing(
            Space::Private,
            "c",
            len,
            CHUNK,
            |at, buf| {
                if std::thread::current().name() != Some("zs-upload-hash") && at >= 2 * CHUNK as u64
                {
                    eventually("the file completed by reference", || {
                        files.stat(ann_id, Space::Private, "c").is_ok()
                    });
                }
                buf.copy_from_slice(&body[at as usize..at as usize + buf.len()]);
                Ok(())
            },
            |_, _| {},
        )
        .unwrap();
    assert!(rep.instant, "{rep:?}");
    // Chunk 2 is answered "no upload"; by then at most a window more went.
    assert!(
        rep.sent <= (3 + window) * CHUNK as u64 && rep.sent < len,
        "the sender stopped: {rep:?}"
    );
    assert_eq!(files.uploads(), 0);
    let out = dir.path().join("c.out");
    ann.download_file(Space::Private, "c", &out, CHUNK as u32, |_, _| {})
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), body);
}

#[test]
fn a_resumed_upload_of_changed_content_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let ann = rig.user("ann");
    let old = data(35, SIZE);
    let new = data(36, SIZE);
    let len = old.len() as u64;
    // The old content is cut off half way.
    let e = ann.upload_cut("f", &old[..], len / 2).unwrap_err();
    assert_eq!(e.message, "cut");
    // The same path and size with other bytes: the first try resumes and
    // finds the held bytes are another content's; the second sends it all.
    let rep = ann.upload_cut("f", &new[..], u64::MAX).unwrap();
    assert_eq!((rep.instant, rep.resumed_from, rep.sent), (false, 0, len));
    let out = dir.path().join("f.out");
    ann.download_file(Space::Private, "f", &out, CHUNK as u32, |_, _| {})
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), new);
    assert_eq!(rig.services.files.as_ref().unwrap().uploads(), 0);
}

/// A service with user `ann` holding `doc` ([`SIZE`] bytes of `data(seed)`):
/// (its directory, the rig, ann's client, the bytes).
fn ann_with_doc(seed: u8) -> (tempfile::TempDir, Rig, ServicesClient, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let rig = rig_in(dir.path(), |_| {});
    let c = rig.user("ann");
    let body = data(seed, SIZE);
    let local = dir.path().join("v1");
    std::fs::write(&local, &body).unwrap();
    c.upload_file(Space::Private, &local, "doc", 64 << 10, |_, _| {})
        .unwrap();
    (dir, rig, c, body)
}

/// `file.signature` version 2: the block sum the client names (XXH3-128
/// here) against the version 1 request (no sum byte: SHA3-256/16), an
/// unknown sum refused with `400`; and the client's delta upload matches
/// blocks with XXH3-128 and still sends only the changed ones.
#[test]
fn signature_versions_give_their_block_sums_and_unknown_ones_are_refused() {
    use zs_services::client::parse_signature_answer;
    use zs_services::BlockSum;
    let (_dir, _rig, c, body) = ann_with_doc(41);
    let v1 = c
        .client()
        .call_stream(
            "file.signature",
            zs_wire::DataFrame::new()
                .with("private")
                .with("doc")
                .with(2048u32),
        )
        .wait()
        .unwrap();
    let (s1, sum1) = parse_signature_answer(&v1).unwrap();
    assert_eq!(sum1, BlockSum::Sha3);
    assert_eq!(s1[0].1, BlockSum::Sha3.of(&body[..2048]));
    let (s2, sum2) = c
        .signature_with(Space::Private, "doc", 2048, BlockSum::Xxh3)
        .unwrap();
    assert_eq!(sum2, BlockSum::Xxh3);
    assert_eq!(s2.len(), SIZE / 2048);
    for (i, (w, s)) in s2.iter().enumerate() {
        let b = &body[i * 2048..(i + 1) * 2048];
        assert_eq!((*w, *s), (s1[i].0, BlockSum::Xxh3.of(b)), "block {i}");
    }
    let bad = c
        .client()
        .call_stream(
            "file.signature",
            zs_services::client::file_signature_request(
                Space::Private,
                "doc",
                2048,
                BlockSum::Xxh3,
            )
            .with(0u8),
        )
        .wait();
    assert!(bad.is_ok(), "a trailing byte after the sum is ignored");
    let mut req = zs_wire::DataFrame::new()
        .with("private")
        .with("doc")
        .with(2048u32);
    req.push(9u8);
    let err = c
        .client()
        .call_stream("file.signature", req)
        .wait()
        .unwrap_err();
    assert!(
        matches!(err, zs_core::Error::Remote { code: 400, .. }),
        "{err}"
    );
    // The delta upload itself (XXH3 sums): 1 KiB edited, little sent.
    let mut v2 = body.clone();
    v2[SIZE / 2..SIZE / 2 + 1024].fill(0x5A);
    let rep = c
        .upload_delta(Space::Private, &v2, "doc-v2", Space::Private, "doc", 2048)
        .unwrap();
    assert!(rep.literal <= 4096, "{rep:?}");
    assert_eq!(
        c.read_range(Space::Private, "doc-v2", 0, 1 << 20)
            .unwrap()
            .0,
        v2
    );
}

/// A delta upload that resumes an unfinished upload of the same path and size
/// holding other bytes: `file.finish` answers `624` (the path a block-sum
/// collision takes too), the client aborts and does it again from 0 with
/// SHA3 sums, and the file ends right.
#[test]
fn a_delta_whose_whole_hash_differs_is_done_again_from_the_start() {
    let (_dir, rig, c, base) = ann_with_doc(43);
    let mut v2 = base.clone();
    v2[100..200].fill(7);
    // Someone began "doc-v2" with the same size and other bytes (no hash).
    let other = data(44, SIZE);
    let (id, at, instant) = begin_deferred(&c, "doc-v2", SIZE as u64);
    assert_eq!((at, instant), (0, false));
    c.upload_window(
        id,
        0,
        64 << 10,
        64 << 10,
        1,
        |a, buf| {
            buf.copy_from_slice(&other[a as usize..a as usize + buf.len()]);
            Ok(())
        },
        |_, _| {},
    )
    .unwrap();
    let rep = c
        .upload_delta(Space::Private, &v2, "doc-v2", Space::Private, "doc", 2048)
        .unwrap();
    assert_eq!(
        rep.literal + rep.copied,
        SIZE as u64,
        "{rep:?}: sent again from 0"
    );
    assert_eq!(
        c.read_range(Space::Private, "doc-v2", 0, 1 << 20)
            .unwrap()
            .0,
        v2
    );
    assert_eq!(rig.services.files.as_ref().unwrap().uploads(), 0);
}

/// `file.read` version 2: answer form 1 puts the data last (the form the
/// client asks for, so the server sends a range apart from its frame head
/// without copying it into the frame); version 1 (no form byte) and form 0
/// put it first; an unknown form is refused with `400`.
#[test]
fn read_answer_forms_carry_the_same_range_and_form_1_leaves_it_apart() {
    let (_dir, _rig, c, body) = ann_with_doc(43);
    let hash = hex(&sha3(&body));
    let raw = |form: Option<u8>| {
        let mut req = zs_wire::DataFrame::new()
            .with("private")
            .with("doc")
            .with(1000u64)
            .with(40_000u32);
        if let Some(f) = form {
            req.push(f);
        }
        c.client().call_stream("file.read", req).wait()
    };
    let want = &body[1000..41_000];
    for form in [None, Some(0u8)] {
        let df = raw(form).unwrap();
        let mut r = df.reader();
        assert_eq!(r.read_slice().unwrap(), want, "form {form:?}");
        assert_eq!(r.read_u64().unwrap(), SIZE as u64);
        assert_eq!(r.read_str().unwrap(), hash);
    }
    let df = raw(Some(1)).unwrap();
    let mut r = df.reader();
    assert_eq!(r.read_u64().unwrap(), SIZE as u64);
    assert_eq!(r.read_str().unwrap(), hash);
    assert_eq!(r.read_slice().unwrap(), want);
    let err = raw(Some(7)).unwrap_err();
    assert!(
        matches!(err, zs_core::Error::Remote { code: 400, .. }),
        "{err}"
    );
    // The client's own reads (form 1) see the same bytes.
    let (d, size, h) = c.read_range(Space::Private, "doc", 1000, 40_000).unwrap();
    assert_eq!(
        (d.as_slice(), size, h.as_str()),
        (want, SIZE as u64, &*hash)
    );
    let mut got = Vec::new();
    c.read_window(
        Space::Private,
        "doc",
        0,
        SIZE as u64,
        50_000,
        None,
        |off, d| {
            assert_eq!(off as usize, got.len());
            got.extend_from_slice(d);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(got, body);
    // What the server answers in form 1 leaves apart from its frame head:
    // the encoder hands back the range itself (no copy into the frame).
    let range = zs_wire::bytes::Bytes::from(want.to_vec());
    for (data_last, apart) in [(true, true), (false, false)] {
        let frame = zs_wire::Frame::StreamResponse {
            id: 9,
            data: zs_services::files::read_answer(
                range.clone(),
                SIZE as u64,
                hash.clone(),
                data_last,
            ),
        };
        let mut head = zs_wire::bytes::BytesMut::new();
        let payload = zs_wire::Encoder::new(zs_wire::Config::default())
            .encode_apart(&frame, 16 << 10, &mut head)
            .unwrap();
        assert_eq!(payload.is_some(), apart, "data_last {data_last}");
        if let Some(p) = payload {
            assert_eq!(p.as_ptr(), range.as_ptr(), "the range is not copied");
            let mut wire = head.to_vec();
            wire.extend_from_slice(&p);
            assert_eq!(wire, frame.to_bytes(&zs_wire::Config::default()).unwrap());
        }
    }
}

/// A read of `READ_CHUNK` bytes is answered in a frame of at most 1 MiB
/// (zs-core reserves such a frame whole once its header is in, and the
/// security layer lets a connection hold that much unconsumed): with the
/// largest id, size and the 64-hex hash, head and range included.
#[test]
fn a_read_chunk_answer_fits_the_whole_frame_bound() {
    let range = zs_wire::bytes::Bytes::from(vec![0u8; zs_services::READ_CHUNK as usize]);
    let frame = zs_wire::Frame::StreamResponse {
        id: u64::MAX,
        data: zs_services::files::read_answer(range, u64::MAX, "f".repeat(64), true),
    };
    let wire = frame.to_bytes(&zs_wire::Config::default()).unwrap();
    assert!(wire.len() <= 1 << 20, "{} bytes", wire.len());
    assert!(
        wire.len() > (1 << 20) - (8 << 10),
        "a read well below the bound"
    );
}
