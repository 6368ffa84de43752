//! Heap allocations per call, server and client apart.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]
//!
//! The whole bench process runs on a counting global allocator
//! ([`stats_alloc`]: an atomic add per allocation, nothing else). To tell the two
//! ends apart the server runs in a child process (this same binary, started with
//! `ZS_RPC_ALLOC_SERVER=<hex identity seed>`) that reports its own count on
//! request; the client runs here. After a warm-up (buffers, maps and slabs at
//! their steady size) both counts are read, calls run for a while, both are read
//! again: the differences divided by the calls answered are the allocations per
//! call of each end (allocations plus reallocations; frees are not counted).
//!
//! The server answers `echo` as the main bench does (a `console` handler
//! returning a `String`: one allocation that is the handler's, not the
//! framework's) and also `echo-ref`, a `console_ref` handler answering with
//! the request's own text borrowed where it lies (no user allocation, served
//! from the input buffer as the main bench's server does); the client calls both with
//! [`Client::call_with`] (one boxed completion per call: its API) and with
//! [`Client::call_to`] (a shared [`ReplySink`]: none).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use zs_core::{Call, Client, Registry, Reply, ReplySink, Server};
use zs_crypto::session::{ClientConfig, SuitePolicy};
use zs_crypto::{ServerConfig, ServerIdentity, SuiteId, ZsSecurity};
use zs_wire::Text;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations so far in this process.
pub fn count() -> u64 {
    let s = GLOBAL.stats();
    (s.allocations + s.reallocations) as u64
}

const ENV: &str = "ZS_RPC_ALLOC_SERVER";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex seed");
    }
    out
}

fn provider(identity: Option<ServerIdentity>, pin: Option<&ServerIdentity>) -> Arc<ZsSecurity> {
    let ccfg = pin.map(|id| {
        let mut c = ClientConfig::pinned(id.fingerprint());
        c.suites = vec![SuiteId::Aes256Gcm];
        Arc::new(c)
    });
    let scfg = identity.map(|id| {
        let mut s = ServerConfig::with_identity(Arc::new(id));
        s.policy = SuitePolicy {
            allowed: vec![SuiteId::Aes256Gcm],
            ..SuitePolicy::default()
        };
        Arc::new(s)
    });
    Arc::new(ZsSecurity::new(ccfg, scfg))
}

/// In the child: serves until stdin closes, answering `count` lines with its
/// allocation count. Returns whether this process is that child.
pub fn serve_if_child() -> bool {
    let Ok(seed) = std::env::var(ENV) else {
        return false;
    };
    let identity = ServerIdentity::from_seed(&unhex(&seed)).expect("identity");
    let mut commands = Registry::new();
    commands.console("echo", |_, text| Ok(text.to_owned()));
    commands.console_ref("echo-ref", |_, text| Ok(std::borrow::Cow::Borrowed(text)));
    let server = Server::start(
        crate::secured("epoll", provider(Some(identity), None)),
        commands,
        zs_core::Options::default(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("server");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ADDR {}", server.local_addr()).expect("stdout");
    out.flush().expect("stdout");
    // One line buffer for every request, so reading a `count` line allocates
    // nothing (the count would otherwise include its own line).
    let mut stdin = std::io::stdin().lock();
    let mut line = String::with_capacity(64);
    loop {
        line.clear();
        match stdin.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.trim() == "count" {
            let n = count();
            writeln!(out, "COUNT {n}").expect("stdout");
            out.flush().expect("stdout");
        }
    }
    drop(server);
    true
}

struct ChildServer {
    child: Child,
    tx: ChildStdin,
    rx: BufReader<ChildStdout>,
    addr: SocketAddr,
}

impl ChildServer {
    fn start(seed: &[u8; 32]) -> ChildServer {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .env(ENV, hex(seed))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the server child");
        let tx = child.stdin.take().expect("stdin");
        let mut rx = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        rx.read_line(&mut line).expect("child address");
        let addr = line
            .trim()
            .strip_prefix("ADDR ")
            .expect("ADDR line")
            .parse()
            .expect("address");
        ChildServer {
            child,
            tx,
            rx,
            addr,
        }
    }

    fn count(&mut self) -> u64 {
        writeln!(self.tx, "count").expect("child stdin");
        self.tx.flush().expect("child stdin");
        let mut line = String::new();
        self.rx.read_line(&mut line).expect("child count");
        line.trim()
            .strip_prefix("COUNT ")
            .expect("COUNT line")
            .parse()
            .expect("count")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the client issues calls.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Api {
    /// `call_with` and a closure per call.
    Boxed,
    /// `call_to` and one shared sink.
    Sink,
}

struct Chains {
    client: Arc<Client>,
    cmd: Text,
    text: Text,
    api: Api,
    deadline: Mutex<Instant>,
    done: AtomicU64,
    errors: AtomicU64,
    live: AtomicUsize,
    finished: (Mutex<bool>, Condvar),
    me: Mutex<Option<Arc<dyn ReplySink>>>,
}

impl Chains {
    fn answered(self: &Arc<Self>, r: zs_core::Result<Reply>) {
        self.answered_ok(matches!(&r, Ok(Reply::Text(t)) if t.as_str() == self.text.as_str()));
    }

    fn answered_ok(self: &Arc<Self>, ok: bool) {
        if ok {
            self.done.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let go_on = ok && Instant::now() < *self.deadline.lock().expect("deadline");
        if go_on {
            self.issue();
        } else if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            let (m, c) = &self.finished;
            *m.lock().expect("finished") = true;
            c.notify_all();
        }
    }

    fn issue(self: &Arc<Self>) {
        let call = Call::Console {
            cmd: self.cmd.clone(),
            text: self.text.clone(),
        };
        match self.api {
            Api::Boxed => {
                let me = self.clone();
                self.client.call_with(call, None, move |r| me.answered(r));
            }
            Api::Sink => {
                let sink = self.me.lock().expect("sink").clone().expect("sink set");
                self.client.call_to(call, None, &sink, 0);
            }
        }
    }
}

struct SinkOf(std::sync::Weak<Chains>);

impl ReplySink for SinkOf {
    fn on_reply(&self, _tag: u64, r: zs_core::Result<Reply>) {
        if let Some(c) = self.0.upgrade() {
            c.answered(r);
        }
    }

    // As the main bench's sink: the answer's text taken borrowed.
    fn borrows_text(&self) -> bool {
        true
    }

    fn on_text(&self, _tag: u64, text: &str) {
        if let Some(c) = self.0.upgrade() {
            c.answered_ok(text == c.text.as_str());
        }
    }
}

/// Runs `inflight` chains for `dur`; returns the calls answered.
fn run(client: &Arc<Client>, cmd: &str, api: Api, inflight: usize, dur: Duration) -> u64 {
    run_from(client, cmd, api, inflight, dur, || {})
}

/// [`run`], calling `started` once the chains are set up, just before the
/// first call (where a measurement of the calls alone starts).
fn run_from(
    client: &Arc<Client>,
    cmd: &str,
    api: Api,
    inflight: usize,
    dur: Duration,
    started: impl FnOnce(),
) -> u64 {
    let chains = Arc::new(Chains {
        client: client.clone(),
        cmd: Text::from(cmd),
        text: Text::from(crate::payload().as_str()),
        api,
        deadline: Mutex::new(Instant::now() + dur),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        live: AtomicUsize::new(inflight),
        finished: (Mutex::new(false), Condvar::new()),
        me: Mutex::new(None),
    });
    let sink: Arc<dyn ReplySink> = Arc::new(SinkOf(Arc::downgrade(&chains)));
    *chains.me.lock().expect("sink") = Some(sink);
    started();
    for _ in 0..inflight {
        chains.issue();
    }
    let (m, c) = &chains.finished;
    let mut fin = m.lock().expect("finished");
    while !*fin {
        fin = c.wait(fin).expect("finished");
    }
    assert_eq!(chains.errors.load(Ordering::Relaxed), 0, "calls failed");
    chains.me.lock().expect("sink").take();
    chains.done.load(Ordering::Relaxed)
}

/// One measured configuration.
pub struct PerCall {
    /// What ran.
    pub label: String,
    /// Server allocations per call.
    pub server: f64,
    /// Client allocations per call.
    pub client: f64,
    /// Calls measured.
    pub calls: u64,
}

/// A server child and a client connected to it.
fn pair() -> (ChildServer, Arc<Client>) {
    let (identity, seed) =
        ServerIdentity::generate(&ring::rand::SystemRandom::new()).expect("identity");
    let srv = ChildServer::start(&seed);
    let client = Arc::new(
        Client::connect(
            crate::secured("epoll", provider(None, Some(&identity))),
            Registry::new(),
            zs_core::Options::client(),
            srv.addr,
        )
        .expect("client"),
    );
    (srv, client)
}

/// The headline configuration measured as suite cases, once per round like
/// every other case: `echo-ref` through `Client::call_to` (the allocation-free
/// API on both ends), `pipe` calls in flight.
pub struct Meter {
    srv: ChildServer,
    client: Arc<Client>,
    pipe: usize,
    dur: Duration,
}

impl Meter {
    /// Starts the server child and the client, and warms them up (buffers,
    /// maps and slabs at their steady size).
    pub fn new(pipe: usize, dur: Duration) -> Meter {
        let (srv, client) = pair();
        run(&client, "echo-ref", Api::Sink, pipe, dur);
        Meter {
            srv,
            client,
            pipe,
            dur,
        }
    }

    /// One measured run: (server, client) allocations per call.
    pub fn sample(&mut self) -> (f64, f64) {
        // The other cases ran meanwhile and this connection went idle, so
        // both ends released their buffers (idle shrink): refill them first,
        // the steady state is what is measured.
        run(&self.client, "echo-ref", Api::Sink, self.pipe, self.dur / 5);
        let s0 = self.srv.count();
        let mut c0 = 0;
        let calls = run_from(
            &self.client,
            "echo-ref",
            Api::Sink,
            self.pipe,
            self.dur,
            || c0 = count(),
        );
        let (c1, s1) = (count(), self.srv.count());
        let n = calls.max(1) as f64;
        ((s1 - s0) as f64 / n, (c1 - c0) as f64 / n)
    }
}

/// Measures allocations per call for `echo` / `echo-ref`, both client APIs, 1
/// and `pipe` calls in flight.
pub fn measure(pipe: usize, dur: Duration) -> Vec<PerCall> {
    let (mut srv, client) = pair();
    let mut out = Vec::new();
    for (cmd, api) in [
        ("echo", Api::Boxed),
        ("echo-ref", Api::Boxed),
        ("echo-ref", Api::Sink),
    ] {
        for inflight in [1, pipe] {
            // Warm-up: every buffer, map and slab reaches its steady size.
            run(&client, cmd, api, inflight, dur);
            let (s0, c0) = (srv.count(), count());
            let calls = run(&client, cmd, api, inflight, dur);
            let (c1, s1) = (count(), srv.count());
            out.push(PerCall {
                label: format!("{cmd} {api:?} x{inflight}"),
                // (The child's own `count` round allocates a line or two:
                // noise of under 1e-4 per call at these call counts.)
                server: (s1 - s0) as f64 / calls.max(1) as f64,
                client: (c1 - c0) as f64 / calls.max(1) as f64,
                calls,
            });
        }
    }
    out
}
