//! The services' commands as a state machine: a sequence of requests (command
//! chosen by a byte, payload an arbitrary DataFrame) from three connections
//! against accounts and messages on an in-memory store. Nothing may panic, and
//! the queues' bookkeeping must match what a fetch sees. Also the stored-record
//! decoder, the file path checker and the client's reader of `file.signature`
//! answers (versions 1 and 2) on raw bytes.
#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use zs_core::{Outbox, Peer, Registry, Request};
use zs_services::{Services, ServicesConfig};
use zs_wire::bytes::Bytes;
use zs_wire::{DataFrame, Frame, Limits, Text};

struct Sink(AtomicBool);

impl Outbox for Sink {
    fn send_frame(&self, _: Frame) -> zs_core::Result<()> {
        Ok(())
    }
    fn is_open(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn close(&self, _: &str) {
        self.0.store(false, Ordering::Relaxed)
    }
}

const COMMANDS: &[&str] = &[
    "user.register",
    "user.login",
    "user.logout",
    "user.whoami",
    "user.passwd",
    "user.reset",
    "user.disable",
    "user.alias",
    "user.online",
    "user.list",
    "user.ticket",
    "user.attach",
    "msg.send",
    "msg.fetch",
    "msg.ack",
    "msg.subscribe",
    "msg.broadcast",
    "msg.group",
    "file.list",
    "file.mkdir",
    "file.rename",
    "file.delete",
    "file.begin",
    "file.chunk",
    "file.finish",
    "file.hash",
    "file.concat",
    "file.abort",
    "file.signature",
    "file.copy",
    "file.read",
];

fn cfg() -> ServicesConfig {
    let mut c = ServicesConfig::cheap_for_tests();
    c.accounts.min_password = 1;
    // Argon2id at its minimum: the fuzzer explores commands, not hashing.
    c.accounts.password_params.memory_kib = 8;
    c.messages.max_queue_len = 16;
    c.messages.max_queue_bytes = 4096;
    c.messages.push_window = 4;
    c.files.max_file_size = 1 << 16;
    c.files.quota_per_user = 1 << 18;
    c.files.max_uploads_per_user = 4;
    c.files.sync_every = 1 << 12;
    c
}

fuzz_target!(|data: &[u8]| {
    let _ = zs_services::messages::decode_record(data);
    // The path checker: whatever it accepts has no way out of the namespace.
    let text = String::from_utf8_lossy(data);
    if let Ok(parts) = zs_services::check_path(&text, 1024, 32) {
        for p in &parts {
            assert!(!p.is_empty() && p != "." && p != "..");
            assert!(!p.contains('/') && !p.contains('\\') && !p.contains('\0'));
        }
        assert!(!text.starts_with('/'));
    }
    // A file.signature answer from a server the client need not trust:
    // whatever it accepts is consistent (one entry per block, a known sum).
    if let Ok(df) = DataFrame::decode(
        &Bytes::copy_from_slice(data),
        &Limits {
            max_frame: 1 << 16,
            ..Limits::default()
        },
    ) {
        if let Ok((sig, _sum)) = zs_services::client::parse_signature_answer(&df) {
            let n = df.reader().read_u64().unwrap_or(u64::MAX);
            assert_eq!(sig.len() as u64, n);
        }
    }
    let env = zs_db::Env::with_vfs(Arc::new(zs_db::MemVfs::new()));
    // Files keep their blobs in a real directory.
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "zs-fuzz-files-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let mut c = cfg();
    c.files.root = Some(dir.clone());
    let services = Services::open(&env, c).unwrap();
    // Two known users so sends can land.
    services.accounts.create_user("a", "p", true).unwrap();
    services.accounts.create_user("b", "p", false).unwrap();
    let mut r = Registry::new();
    services.register(&mut r);
    let peers: Vec<Peer> = (1..=3)
        .map(|i| {
            let addr = format!("127.0.0.{i}:1000").parse().ok();
            Peer::new(i, addr, Arc::new(Sink(AtomicBool::new(true))))
        })
        .collect();
    let limits = Limits {
        max_frame: 1 << 14,
        max_depth: 3,
        max_values: 256,
        max_string: 2048,
        ..Limits::default()
    };
    // Records: [peer+command byte][len u8][DataFrame bytes]...
    let mut rest = data;
    let mut id = 0;
    while rest.len() >= 2 && id < 64 {
        let sel = rest[0] as usize;
        let len = (rest[1] as usize).min(rest.len() - 2);
        let body = Bytes::copy_from_slice(&rest[2..2 + len]);
        rest = &rest[2 + len..];
        let Ok(df) = DataFrame::decode(&body, &limits) else {
            continue;
        };
        id += 1;
        let peer = &peers[sel % 3];
        let cmd = COMMANDS[(sel / 3) % COMMANDS.len()];
        zs_core::runtime::dispatch(
            &r,
            peer,
            Request::Stream {
                id,
                cmd: Text::from(cmd),
                data: df,
            },
            None,
        );
    }
    // Bookkeeping matches what is stored (once the committer has answered
    // every send and ack dispatched above).
    services.messages.settle();
    let (total, _) = services.messages.totals();
    let queued: usize = services
        .accounts
        .list(0, usize::MAX)
        .iter()
        .map(|u| services.messages.queued(u.id))
        .sum();
    assert_eq!(total, queued);
    // Nothing written beyond the quota.
    let files = services.files.as_ref().unwrap();
    for u in services.accounts.list(0, usize::MAX) {
        assert!(files.usage(u.id) <= 1 << 18);
    }
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
});
