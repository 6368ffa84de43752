//! The steady-state call path allocates nothing (issue 13): after a warm-up,
//! calls answered by a handler that replies with the request's own text, made
//! through `Client::call_to`, cost no heap allocation on either end. Counted
//! with a counting global allocator over this whole test binary (both ends and
//! both event loops run in it); the bound leaves room for the few per-second
//! housekeeping allocations (buffer-release timers), none per call: neither
//! zs-core's nor the security layer's ([`LAYER_ALLOCS_PER_CALL`]).
#![cfg(target_os = "linux")]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use zs_core::{Call, Client, Options, Registry, Reply, ReplySink, Result, Server};
use zs_wire::Text;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// What the security layer under zs-core allocates per call, both ends
/// together. Session 11 first measured 4 (`valgrind --tool=dhat` on this
/// test): one record buffer per sealed record in
/// `zs_crypto::session::Session::append_data` and one `bytes::Shared` box in
/// `zs_secure::conn::SecureConn::flush` (`Bytes::from(Vec)`), per end per call.
/// The session now seals into one reusable `BytesMut` whose sealed part is
/// split off for the raw connection and reclaimed once written, so the layer
/// allocates nothing per call either; zs-core never did (frames are decoded as
/// slices of the layer's buffer and its output buffer is swapped out, not
/// copied).
const LAYER_ALLOCS_PER_CALL: u64 = 0;

fn allocations() -> u64 {
    let s = GLOBAL.stats();
    (s.allocations + s.reallocations) as u64
}

/// Runs `n` calls, `inflight` at a time, each next call started from the
/// previous one's answer (on the client's loop thread).
struct Chain {
    client: Arc<Client>,
    cmd: &'static str,
    text: Text,
    left: AtomicU64,
    bad: AtomicU64,
    done: Mutex<Option<mpsc::Sender<()>>>,
    me: Mutex<Option<Arc<dyn ReplySink>>>,
}

impl Chain {
    fn issue(&self) {
        let sink = self.me.lock().unwrap().clone().expect("sink");
        let call = Call::Console {
            cmd: Text::from_static(self.cmd),
            text: self.text.clone(),
        };
        self.client.call_to(call, None, &sink, 0);
    }
}

/// The chain's sink; with `borrows`, text answers come borrowed (`on_text`).
struct Sink(std::sync::Weak<Chain>, bool);

impl ReplySink for Sink {
    fn on_reply(&self, _tag: u64, r: Result<Reply>) {
        let Some(c) = self.0.upgrade() else { return };
        let ok = matches!(&r, Ok(Reply::Text(t)) if t.as_str() == c.text.as_str());
        self.answered(&c, ok);
    }

    fn borrows_text(&self) -> bool {
        self.1
    }

    fn on_text(&self, _tag: u64, text: &str) {
        let Some(c) = self.0.upgrade() else { return };
        self.answered(&c, text == c.text.as_str());
    }
}

impl Sink {
    fn answered(&self, c: &Chain, ok: bool) {
        if !ok {
            c.bad.fetch_add(1, Ordering::Relaxed);
        }
        // (Not below 0: with calls still in flight after the last one
        // counted, a plain `fetch_sub` wrapped round and those answers
        // started new calls after the run ended.)
        let down = |n: u64| n.checked_sub(1);
        match c
            .left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, down)
        {
            Ok(1) => {
                if let Some(tx) = c.done.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
            Ok(n) if n > 1 => c.issue(),
            _ => {}
        }
    }
}

fn run(client: &Arc<Client>, (cmd, borrows): (&'static str, bool), n: u64, inflight: u64) {
    let (tx, rx) = mpsc::channel();
    let chain = Arc::new(Chain {
        client: client.clone(),
        cmd,
        text: Text::from("x".repeat(64).as_str()),
        // The chains that find `left` at 1 or below stop issuing.
        left: AtomicU64::new(n + inflight - 1),
        bad: AtomicU64::new(0),
        done: Mutex::new(Some(tx)),
        me: Mutex::new(None),
    });
    let sink: Arc<dyn ReplySink> = Arc::new(Sink(Arc::downgrade(&chain), borrows));
    *chain.me.lock().unwrap() = Some(sink);
    for _ in 0..inflight {
        chain.issue();
    }
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("calls finished");
    assert_eq!(chain.bad.load(Ordering::Relaxed), 0, "every call answered");
    chain.me.lock().unwrap().take();
}

#[test]
fn steady_state_calls_allocate_nothing() {
    let backend = common::epoll(1);
    let security = common::provider();
    let mut commands = Registry::new();
    commands.console_delayed("echo", |_, text, r| {
        let _ = r.reply_text(text);
    });
    // Session 14: served from the request's bytes, the answer handed to a
    // sink that borrows it.
    commands.console_ref("echo-ref", |_, t| Ok(std::borrow::Cow::Borrowed(t)));
    let server = Server::start(
        Arc::new(zs_secure::SecureBackend::new(
            backend.clone(),
            security.clone(),
        )),
        commands,
        Options::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let client = Arc::new(
        Client::connect(
            Arc::new(zs_secure::SecureBackend::new(backend, security)),
            Registry::new(),
            Options::client(),
            server.local_addr(),
        )
        .unwrap(),
    );
    for (form, inflight) in [
        (("echo", false), 1),
        (("echo", false), 16),
        (("echo-ref", true), 1),
        (("echo-ref", true), 16),
    ] {
        run(&client, form, 300, inflight); // warm-up: buffers, maps and slabs at size
        let n = 3000;
        let before = allocations();
        run(&client, form, n, inflight);
        let used = allocations() - before;
        eprintln!("{form:?}, {inflight} in flight: {used} allocations for {n} calls");
        // Before this work: about 10 per call (5 on each end). The bound is a
        // quarter of an allocation per call: under heavy machine load the
        // calls arrive in sparse batches, and a session that ends a batch
        // with nothing pending releases its buffers and makes them again for
        // the next one (issue 13's idle-memory policy, not a per-call cost):
        // 11-320 allocations per 3,000 calls were seen at load 1-26 (session
        // 14), against a bound of 300 before; one allocation per call is 3,000.
        assert!(
            used < n * LAYER_ALLOCS_PER_CALL + n / 4,
            "{used} allocations for {n} calls ({inflight} in flight)"
        );
    }
}
