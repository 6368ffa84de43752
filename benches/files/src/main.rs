//! `cargo xtask bench files`: one file of 1 GiB, the size (32 MiB with `--quick`)
//! uploaded and downloaded through the zs-services file service (AES-256-GCM
//! session in the security layer over the epoll backend, 1 MiB chunks with several in flight, each checked
//! against its CRC-32, fsynced every few MiB and before the final answer;
//! SHA3-256 of the whole file checked at the end), against a raw TCP copy of
//! the same bytes over the same loopback and against one SHA3-256 pass over
//! them (the floor of an upload that checks that hash); and a delta upload of
//! an edited file against rsync in daemon mode (Debian's `rsync`, started
//! here as a plain process with its own config in the temp dir).
//!
//! Upload samples use a new path and different content each time (the first
//! 8 bytes carry the sample number), so dedup never turns one into an instant
//! upload; the client's hashing of the whole file is part of the sample, as
//! for a real client. Download samples fetch the file with `file.read` calls
//! of `zs_services::READ_CHUNK` (1 MiB − 4 KiB, as `zs file get` does; several
//! in flight), each range checksummed in place as it arrives with the raw
//! copy's checksum (as the raw sink does), checked at the end.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Instant;

use zs_bench_harness::raw::{self, Checksum};
use zs_bench_harness::{Better, Options, Suite};
use zs_core::{Client, Registry, Server};
use zs_crypto::{ClientConfig, ServerConfig, ServerIdentity, SuiteId, ZsSecurity};
use zs_services::{Services, ServicesClient, ServicesConfig, Space};

const CHUNK: usize = 1 << 20;
/// Block of the delta case (rsync picks about sqrt(size): 4 to 8 KiB here).
const DELTA_BLOCK: u32 = 8 << 10;

/// An rsync daemon on 127.0.0.1 serving module `m` from a temp directory
/// (a plain child process, killed on drop).
struct Rsyncd {
    child: std::process::Child,
    port: u16,
    module: std::path::PathBuf,
    local: std::path::PathBuf,
}

impl Rsyncd {
    fn start(dir: &std::path::Path) -> Option<Rsyncd> {
        let found = std::process::Command::new("rsync")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return None;
        }
        let root = dir.join("rsync");
        let (module, local) = (root.join("module"), root.join("local"));
        std::fs::create_dir_all(&module).expect("module dir");
        std::fs::create_dir_all(&local).expect("local dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let conf = root.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = no\nuid = 0\ngid = 0\npid file = {}\n[m]\npath = {}\nread only = false\n",
                root.join("rsyncd.pid").display(),
                module.display()
            ),
        )
        .expect("rsyncd.conf");
        let child = std::process::Command::new("rsync")
            .args(["--daemon", "--no-detach", "--address=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", conf.display()))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start rsync --daemon");
        let d = Rsyncd {
            child,
            port,
            module,
            local,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(d);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("rsync --daemon did not listen on {port}");
    }

    /// `rsync -I` of local file `name` onto the module's copy (delta transfer
    /// against it: -I skips the size/mtime shortcut).
    fn push(&self, name: &str) {
        let st = std::process::Command::new("rsync")
            .args(["-I", "--no-whole-file"])
            .arg(self.local.join(name))
            .arg(format!("rsync://127.0.0.1:{}/m/{name}", self.port))
            .status()
            .expect("run rsync");
        assert!(st.success(), "rsync failed: {st}");
    }
}

impl Drop for Rsyncd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pseudo-random bytes (xorshift64*), so compression or patterns cannot help.
fn data(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while v.len() + 8 <= len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    while v.len() < len {
        v.push(v.len() as u8);
    }
    v
}

fn backend() -> Arc<dyn zs_io::Backend> {
    Arc::new(
        zs_io_epoll::EpollBackend::new(zs_io::Config {
            loops: 1,
            ..zs_io::Config::default()
        })
        .expect("epoll"),
    )
}

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn upload(c: &ServicesClient, path: &str, body: &[u8]) {
    let hash = zs_crypto::hash::sha3_256(body);
    let st = c
        .upload_begin(Space::Private, path, body.len() as u64, &hash)
        .expect("begin");
    assert!(!st.instant, "a sample must send its bytes");
    let end = c
        .upload_window(
            st.id,
            0,
            body.len() as u64,
            CHUNK,
            zs_services::UPLOAD_WINDOW,
            |at, buf| {
                buf.copy_from_slice(&body[at as usize..at as usize + buf.len()]);
                Ok(())
            },
            |_, _| {},
        )
        .expect("chunks");
    assert_eq!(end, body.len() as u64);
    c.upload_finish(st.id).expect("finish");
}

/// The client hashes while it sends (`upload_hashing`): begin without a
/// hash, finish announcing it.
fn upload_hashing(c: &ServicesClient, path: &str, body: &[u8]) {
    let rep = c
        .upload_hashing(
            Space::Private,
            path,
            body.len() as u64,
            CHUNK,
            |at, buf| {
                buf.copy_from_slice(&body[at as usize..at as usize + buf.len()]);
                Ok(())
            },
            |_, _| {},
        )
        .expect("upload");
    assert_eq!(rep.sent, body.len() as u64);
}

/// One `upload_hashing` sample: a new path and new content each time (the
/// first 8 bytes carry the sample number, from `first`), deleted after.
fn upload_sampler(
    c: ServicesClient,
    prefix: &'static str,
    first: u64,
    mut body: Vec<u8>,
) -> impl FnMut() -> f64 {
    let mut n = first;
    move || {
        n += 1;
        body[..8].copy_from_slice(&n.to_le_bytes());
        let path = format!("{prefix}-{n}");
        let t0 = Instant::now();
        upload_hashing(&c, &path, &body);
        let el = t0.elapsed().as_secs_f64();
        c.delete(Space::Private, &path).expect("delete");
        mb_per_s(body.len(), el)
    }
}

/// Downloads `path` and returns the raw copy's checksum of what arrived
/// (length, value): each range is checksummed in place as it arrives, as the
/// raw copy's sink does with what it reads (session 12: the bytes used to be
/// copied into a 32 MiB vector first and SHA3-checked after the timing, a
/// copy per byte the raw side never makes; the checksum catches a missing,
/// repeated, swapped or changed range).
fn download(c: &ServicesClient, path: &str, size: usize) -> (u64, u64) {
    download_range(c, path, 0, size)
}

/// [`download`] of bytes `from..to` only.
fn download_range(c: &ServicesClient, path: &str, from: usize, to: usize) -> (u64, u64) {
    let mut sum = Checksum::new();
    c.read_window(
        Space::Private,
        path,
        from as u64,
        to as u64,
        zs_services::READ_CHUNK,
        None,
        |_, d| {
            sum.update(d);
            Ok(())
        },
    )
    .expect("read");
    (sum.len(), sum.value())
}

/// Names the only cases to run (comma-separated), for a profile.
const ONLY: &str = "ZS_FILES_ONLY";

/// The file service on `dir` behind a server on loopback, and a client
/// logged in as `bench` (plus a second connection attached to its session,
/// with its own event loop, as `zs file get -j 2` makes).
fn serve(dir: &std::path::Path) -> (Services, Server, ServicesClient, ServicesClient) {
    let mut cfg = ServicesConfig::default();
    cfg.files.quota_per_user = u64::MAX;
    cfg.files.max_file_size = 1 << 40;
    let services = Services::open_dir(dir, cfg).expect("services");
    services
        .accounts
        .create_user("bench", "bench-password", false)
        .expect("user");

    let (identity, _) = ServerIdentity::generate(&ring::rand::SystemRandom::new()).expect("id");
    let mut ccfg = ClientConfig::pinned(identity.fingerprint());
    ccfg.suites = vec![SuiteId::Aes256Gcm];
    let provider = Arc::new(ZsSecurity::new(
        Some(Arc::new(ccfg)),
        Some(Arc::new(ServerConfig::with_identity(Arc::new(identity)))),
    ));
    let mut r = Registry::new();
    services.register(&mut r);
    let server = Server::start(
        zs_secure::compose::secure(backend(), provider.clone()),
        r,
        zs_core::Options::default(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let connect = || {
        ServicesClient::new(
            Client::connect(
                zs_secure::compose::secure(backend(), provider.clone()),
                Registry::new(),
                zs_core::Options::client(),
                server.local_addr(),
            )
            .expect("client"),
        )
    };
    let client = connect();
    client.login("bench", "bench-password").expect("login");
    let second = connect();
    second
        .attach("bench", &client.ticket().expect("ticket"))
        .expect("attach");
    (services, server, client, second)
}

fn main() {
    let opts = Options::from_env();
    let size = if opts.quick { 32 << 20 } else { 1 << 30 };
    let mut suite = Suite::from_options("files", &opts, 3, 5);

    let dir = tempfile::tempdir().expect("temp dir");
    let (_services, server, client, second) = serve(dir.path());
    // The same service with its store on tmpfs (fsync costs nothing there):
    // what the upload costs in CPU alone, against one SHA3-256 pass.
    let shm = tempfile::tempdir_in("/dev/shm").ok();
    let on_shm = shm.as_ref().map(|d| serve(d.path()));

    let body = data(size);
    let mut sum = Checksum::new();
    sum.update(&body);
    let want = (sum.len(), sum.value());
    let sink = raw::sink_server();
    let payload = zs_io::Bytes::from(body.clone());
    // Short samples swing with the machine's load (one 32 MiB raw copy takes
    // ~13 ms): the raw copy moves at least 256 MiB per sample, the download
    // at least 128 MiB (the file several times over).
    let raw_reps = ((256usize << 20) / size).max(1);
    let down_reps = ((128usize << 20) / size).max(1);
    suite.case_selected(
        ONLY,
        "raw-tcp-copy",
        "mb_per_s",
        Better::Higher,
        move || {
            let t0 = Instant::now();
            for _ in 0..raw_reps {
                let got = raw::copy_to(sink, &payload).expect("raw copy");
                assert_eq!(got, want, "raw sink saw different bytes");
            }
            mb_per_s(size * raw_reps, t0.elapsed().as_secs_f64())
        },
    );

    let mut body_up = body.clone();
    let mut n = 0u64;
    suite.case_selected(
        ONLY,
        "zs-upload-hashing",
        "mb_per_s",
        Better::Higher,
        upload_sampler(client.clone(), "uh", 1 << 32, body.clone()),
    );
    if let Some((_, _, shm_client, _)) = &on_shm {
        suite.case_selected(
            ONLY,
            "zs-upload-hashing-tmpfs",
            "mb_per_s",
            Better::Higher,
            upload_sampler(shm_client.clone(), "ut", 2 << 32, body.clone()),
        );
    }
    // The floor of any upload that is on disk when it is acknowledged: the
    // same bytes written to a new file on the same file system, fdatasync'd.
    let body_w = body.clone();
    let wdir = dir.path().to_path_buf();
    suite.case_selected(
        ONLY,
        "durable-write",
        "mb_per_s",
        Better::Higher,
        move || {
            use std::io::Write;
            let p = wdir.join("durable-write.tmp");
            let t0 = Instant::now();
            let mut f = std::fs::File::create(&p).expect("create");
            f.write_all(&body_w).expect("write");
            f.sync_data().expect("fdatasync");
            let el = t0.elapsed().as_secs_f64();
            drop(f);
            std::fs::remove_file(&p).expect("remove");
            mb_per_s(size, el)
        },
    );
    let up = client.clone();
    suite.case_selected(ONLY, "zs-upload", "mb_per_s", Better::Higher, move || {
        n += 1;
        body_up[..8].copy_from_slice(&n.to_le_bytes());
        let t0 = Instant::now();
        upload(&up, &format!("up-{n}"), &body_up);
        let el = t0.elapsed().as_secs_f64();
        up.delete(Space::Private, &format!("up-{n}"))
            .expect("delete");
        mb_per_s(size, el)
    });

    upload(&client, "down", &body);
    let down = client.clone();
    suite.case_selected(ONLY, "zs-download", "mb_per_s", Better::Higher, move || {
        let t0 = Instant::now();
        for _ in 0..down_reps {
            let got = download(&down, "down", size);
            assert_eq!(got, want, "downloaded bytes differ");
        }
        mb_per_s(size * down_reps, t0.elapsed().as_secs_f64())
    });
    // The same over two connections (each with its own event loop, as `zs
    // file get -j 2`), each fetching and checksumming its half.
    let halves = [(0, size / 2), (size / 2, size)].map(|(a, b)| {
        let mut sum = Checksum::new();
        sum.update(&body[a..b]);
        ((a, b), (sum.len(), sum.value()))
    });
    let conns = [client.clone(), second.clone()];
    suite.case_selected(
        ONLY,
        "zs-download-2conn",
        "mb_per_s",
        Better::Higher,
        move || {
            let t0 = Instant::now();
            for _ in 0..down_reps {
                std::thread::scope(|s| {
                    for (c, ((a, b), want)) in conns.iter().zip(halves) {
                        s.spawn(move || {
                            let got = download_range(c, "down", a, b);
                            assert_eq!(got, want, "downloaded bytes differ");
                        });
                    }
                });
            }
            mb_per_s(size * down_reps, t0.elapsed().as_secs_f64())
        },
    );

    // The floor of any upload that checks a SHA3-256 of the whole file: one
    // pass of the hash over the same bytes, on one core.
    let body_h = body.clone();
    suite.case_selected(
        ONLY,
        "sha3-256-pass",
        "mb_per_s",
        Better::Higher,
        move || {
            let t0 = Instant::now();
            std::hint::black_box(zs_crypto::hash::sha3_256(&body_h));
            mb_per_s(size, t0.elapsed().as_secs_f64())
        },
    );

    // Delta: the same edit uploaded by rsync (daemon mode) and by us.
    let (dsize, edit) = if opts.quick {
        (16 << 20, 256 << 10)
    } else {
        (64 << 20, 1 << 20)
    };
    let base = data(dsize + 8)[8..].to_vec();
    let mut edited = base.clone();
    let at = dsize / 3;
    for (i, b) in edited[at..at + edit].iter_mut().enumerate() {
        *b = b.wrapping_add(1 + (i % 251) as u8);
    }
    let rsync = Rsyncd::start(dir.path()).inspect(|d| {
        std::fs::write(d.local.join("target"), &edited).expect("local copy");
        std::fs::write(d.local.join("base"), &base).expect("base copy");
    });
    if let Some(d) = rsync {
        let d = Arc::new(d);
        let dd = d.clone();
        suite.case_selected(ONLY, "rsync-delta", "ms", Better::Lower, move || {
            std::fs::copy(dd.local.join("base"), dd.module.join("target")).expect("reset");
            let t0 = Instant::now();
            dd.push("target");
            t0.elapsed().as_secs_f64() * 1e3
        });
        upload(&client, "delta-base", &base);
        let dc = client.clone();
        let mut n = 0u64;
        let want_literal = edit as u64 + 4 * DELTA_BLOCK as u64;
        suite.case_selected(ONLY, "zs-delta", "ms", Better::Lower, move || {
            n += 1;
            let path = format!("delta-{n}");
            let t0 = Instant::now();
            let rep = dc
                .upload_delta(
                    Space::Private,
                    &edited,
                    &path,
                    Space::Private,
                    "delta-base",
                    DELTA_BLOCK,
                )
                .expect("delta upload");
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            assert!(!rep.instant && rep.literal <= want_literal, "{rep:?}");
            dc.delete(Space::Private, &path).expect("delete");
            ms
        });
    } else {
        eprintln!("skipped: rsync not installed (delta_vs_rsync not measured)");
    }

    suite.run();
    suite.ratio("upload_vs_raw", "zs-upload-hashing", "raw-tcp-copy");
    suite.ratio("upload_dedup_vs_raw", "zs-upload", "raw-tcp-copy");
    suite.ratio("download_vs_raw", "zs-download", "raw-tcp-copy");
    suite.ratio("download_2conn_vs_raw", "zs-download-2conn", "raw-tcp-copy");
    suite.ratio("upload_vs_sha3_pass", "zs-upload-hashing", "sha3-256-pass");
    suite.ratio(
        "upload_vs_durable_write",
        "zs-upload-hashing",
        "durable-write",
    );
    suite.ratio(
        "upload_tmpfs_vs_sha3_pass",
        "zs-upload-hashing-tmpfs",
        "sha3-256-pass",
    );
    suite.ratio("delta_vs_rsync", "zs-delta", "rsync-delta");
    suite.note(format!(
        "{} MiB per sample, 1 MiB chunks, {} in flight, each CRC-32 checked by the server, fsynced every \
         8 MiB and before file.finish answers; whole-file SHA3-256 on both ends inside the upload sample \
         (zs-upload-hashing: the client sends at once while another thread reads and hashes the file and \
         announces the hash with file.hash (late dedup); zs-upload: it hashes first, to ask for an instant upload; \
         sha3-256-pass: one such pass alone on one core; durable-write: the same bytes written to a file on the \
         store's file system and fdatasync'd, the floor of any upload acknowledged on disk; \
         zs-upload-hashing-tmpfs: the same upload with the store on /dev/shm, where fsync is free: its CPU cost); download = file.read \
         of {} KiB (answer form 1: the range sent apart from the frame head), {} in flight, each range checksummed in place as it arrives (the raw sink's checksum); zs-download-2conn: the same over \
         two connections of one login (a second attached, each with its own event loop, as zs file get -j 2), each \
         fetching half; delta: {} MiB file, {} KiB edited in the middle, \
         ours = upload_delta with {} B blocks (signature, scan, file.copy/file.chunk, whole SHA3 checked, \
         fsynced) vs rsync -I to an rsync daemon holding the old version; AES-256-GCM, epoll, 1 loop per \
         side, one process; store on the temp dir's file system; a raw sample copies the file {}x, a download \
         sample fetches it {}x",
        size >> 20,
        zs_services::UPLOAD_WINDOW,
        zs_services::READ_CHUNK >> 10,
        zs_services::DOWNLOAD_WINDOW,
        dsize >> 20,
        edit >> 10,
        DELTA_BLOCK,
        ((256usize << 20) / size).max(1),
        ((128usize << 20) / size).max(1),
    ));
    suite.finish();
    drop(server);
    drop(on_shm);
}
