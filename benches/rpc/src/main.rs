//! `cargo xtask bench rpc`: 64-byte console call/response over loopback, the
//! whole zserver stack (zs-core session + zs-wire frames + zs-crypto
//! AES-256-GCM records + the zs-io backend), against the limits and the peers.
//!
//! Cases (all interleaved, same run, same 64-byte payload, TCP_NODELAY everywhere):
//! - **sequential** (one call in flight): `zs-epoll-seq` (each answer starts the
//!   next call from its completion callback, on the client's loop thread),
//!   `zs-epoll-seq-wait` (a user thread calling `client.call(..).wait()` in a
//!   loop: one more thread hop per call), `raw-pingpong` (blocking
//!   `std::net::TcpStream`, 64 B each way), `tarpc-seq`, `tonic-seq`;
//! - **pipelined** (64 calls in flight on one connection): `zs-epoll-pipe64`,
//!   `zs-tokio-pipe64` (the same stack on the tokio backend), `raw-echo-pipe64`
//!   (the hand-written mio/epoll echo of the transports issue, from
//!   `zs_bench_harness::raw`, with 64 × 64 B in flight), `tarpc-pipe64`,
//!   `tonic-pipe64` (64 tasks sharing one client / one HTTP/2 channel).
//!
//! Every server has one event-loop thread (zs: `loops = 1`; tarpc and tonic: a
//! tokio runtime with one worker) and every client one more (zs: its own backend
//! with `loops = 1`; peers: their own one-worker runtime). tarpc runs its
//! documented bincode TCP transport; tonic a hand-written service with a prost
//! message (no protoc), plaintext HTTP/2. Neither peer encrypts; zserver does.
//!
//! Allocations per call are cases too (`zs-epoll-pipe64-allocs-client` and
//! `-server`, metric `allocs_per_call`, in the JSON line): each round runs the
//! allocation-free configuration below (`echo-ref`, `Client::call_to`, 64 in
//! flight) against a server in a child process and divides each end's count by
//! the calls answered.
//!
//! After the timed cases, heap allocations per call are counted for each end
//! apart (see `alloc.rs`: a counting global allocator, the server in a child
//! process) and printed as notes: the steady-state call path of zs-core
//! allocates nothing (`echo-ref`: a handler answering with the request's own
//! text, calls through `Client::call_to`); the handler of `echo` allocates its
//! `String`, and `Client::call_with` boxes its closure.
//!
//! Thread placement: by default the whole process is pinned to one vCPU before
//! any thread starts (threads inherit it), so both ends of every connection share
//! that vCPU in every case (ping-pong latency on this VM differs ~5× between
//! "same vCPU" and "different vCPUs"). `ZS_BENCH_SPREAD=1` leaves placement to
//! the scheduler instead. The table's notes say which was used.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use zs_bench_harness::{raw, Better, Options, Suite};
use zs_core::{Call, Client, Registry, Reply, ReplySink, Server};
use zs_crypto::session::{ClientConfig, SuitePolicy};
use zs_crypto::{ServerConfig, ServerIdentity, SuiteId, ZsSecurity};
use zs_wire::Text;

mod alloc;

const MSG: usize = 64;
const PIPE: usize = 64;

fn payload() -> String {
    (0..MSG)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect()
}

// ---------------------------------------------------------------- zserver ---

/// A server and a client of the full stack on `kind` ("epoll" or "tokio"),
/// AES-256-GCM only on both sides.
struct ZsPair {
    client: Arc<Client>,
    _server: Server,
}

/// The zs-io backend called `kind` (`epoll`, `tokio`), through the facade.
fn backend(kind: &str) -> Arc<dyn zs_io::Backend> {
    let cfg = zs_io::Config {
        loops: 1,
        ..zs_io::Config::default()
    };
    Arc::from(zserver::backend_by_name(kind, cfg).expect("backend"))
}

/// A zs-core server and client over `zs_secure::SecureBackend(kind)` (the
/// security is a transport layer under zs-core's plaintext sessions).
fn zs_pair(kind: &str) -> ZsPair {
    let (identity, _seed) =
        ServerIdentity::generate(&ring::rand::SystemRandom::new()).expect("identity");
    let mut ccfg = ClientConfig::pinned(identity.fingerprint());
    ccfg.suites = vec![SuiteId::Aes256Gcm];
    let mut scfg = ServerConfig::with_identity(Arc::new(identity));
    scfg.policy = SuitePolicy {
        allowed: vec![SuiteId::Aes256Gcm],
        ..SuitePolicy::default()
    };
    let provider = Arc::new(ZsSecurity::new(Some(Arc::new(ccfg)), Some(Arc::new(scfg))));
    let mut commands = Registry::new();
    commands.console("echo", |_, text| Ok(text.to_owned()));
    // What a user writes for an echo that needs no owned value: the answer
    // borrows the request's text where it lies in the input buffer.
    commands.console_ref("echo-ref", |_, text| Ok(std::borrow::Cow::Borrowed(text)));
    let addr = "127.0.0.1:0".parse().expect("addr");
    let server = Server::start(
        secured(kind, provider.clone()),
        commands,
        zs_core::Options::default(),
        addr,
    )
    .expect("server");
    let client = Client::connect(
        secured(kind, provider),
        Registry::new(),
        zs_core::Options::client(),
        server.local_addr(),
    )
    .expect("client");
    let text = payload();
    assert_eq!(client.call("echo", &text).wait().expect("echo"), text);
    ZsPair {
        client: Arc::new(client),
        _server: server,
    }
}

/// `SecureBackend(backend(kind))` with the raw backend's send queue bound.
fn secured(kind: &str, provider: Arc<dyn zs_crypto::SecurityProvider>) -> Arc<dyn zs_io::Backend> {
    Arc::new(zs_secure::SecureBackend::with_config(
        backend(kind),
        provider,
        zs_secure::SecureConfig::for_io(&zs_io::Config::default()),
    ))
}

/// `inflight` chains of calls: each answer starts the next call from the
/// completion callback until the measuring thread raises `stop`.
///
/// Two client APIs: [`Api::Sink`] (`Client::call_to` reporting to one shared
/// [`ReplySink`], the allocation-free form) against the server's `echo-ref`
/// (answers with the request's own text, as the raw echo answers with the
/// bytes it read), and [`Api::Boxed`] (`Client::call_with`, one boxed closure
/// per call) against `echo` (a handler returning a new `String`).
struct Chains {
    client: Arc<Client>,
    api: Api,
    cmd: Text,
    text: Text,
    stop: AtomicBool,
    done: AtomicU64,
    errors: AtomicU64,
    live: AtomicUsize,
    finished: (Mutex<bool>, Condvar),
    /// The sink handed to `call_to` (a weak link back to these chains).
    sink: std::sync::OnceLock<Arc<dyn ReplySink>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Api {
    Sink,
    Boxed,
}

struct SinkOf(std::sync::Weak<Chains>);

impl ReplySink for SinkOf {
    fn on_reply(&self, _tag: u64, r: zs_core::Result<Reply>) {
        if let Some(c) = self.0.upgrade() {
            c.answered(r);
        }
    }

    // The answer's text is only compared: taken borrowed where it lies.
    fn borrows_text(&self) -> bool {
        true
    }

    fn on_text(&self, _tag: u64, text: &str) {
        if let Some(c) = self.0.upgrade() {
            c.answered_ok(text == c.text.as_str());
        }
    }
}

impl Chains {
    fn issue(self: &Arc<Self>) {
        let call = Call::Console {
            cmd: self.cmd.clone(),
            text: self.text.clone(),
        };
        match self.api {
            Api::Sink => match self.sink.get() {
                Some(sink) => self.client.call_to(call, None, sink, 0),
                None => self.answered(Err(zs_core::Error::Config("no sink".into()))),
            },
            Api::Boxed => {
                let me = self.clone();
                self.client.call_with(call, None, move |r| me.answered(r));
            }
        }
    }

    fn answered(self: &Arc<Self>, r: zs_core::Result<Reply>) {
        self.answered_ok(matches!(&r, Ok(Reply::Text(t)) if t.as_str() == self.text.as_str()));
    }

    fn answered_ok(self: &Arc<Self>, ok: bool) {
        if ok {
            self.done.fetch_add(1, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if ok && !self.stop.load(Ordering::Relaxed) {
            self.issue();
        } else if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            let (m, c) = &self.finished;
            *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
            c.notify_all();
        }
    }
}

/// Calls per second with `inflight` chained calls for `dur`: the calls
/// answered by the time the last chain stopped, over that time.
fn zs_chained(client: &Arc<Client>, api: Api, inflight: usize, dur: Duration) -> f64 {
    let (cmd, sink_api) = match api {
        Api::Sink => ("echo-ref", true),
        Api::Boxed => ("echo", false),
    };
    let chains = Arc::new(Chains {
        client: client.clone(),
        api,
        cmd: Text::from(cmd),
        text: Text::from(payload().as_str()),
        stop: AtomicBool::new(false),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        live: AtomicUsize::new(inflight),
        finished: (Mutex::new(false), Condvar::new()),
        sink: std::sync::OnceLock::new(),
    });
    if sink_api {
        let sink: Arc<dyn ReplySink> = Arc::new(SinkOf(Arc::downgrade(&chains)));
        let _ = chains.sink.set(sink);
    }
    let t0 = Instant::now();
    for _ in 0..inflight {
        chains.issue();
    }
    // The chains read no clock per call: this thread stops them.
    std::thread::sleep(dur);
    chains.stop.store(true, Ordering::Relaxed);
    let (m, c) = &chains.finished;
    let mut fin = m.lock().unwrap_or_else(|p| p.into_inner());
    while !*fin {
        fin = c.wait(fin).unwrap_or_else(|p| p.into_inner());
    }
    drop(fin);
    let el = t0.elapsed().as_secs_f64();
    let errors = chains.errors.load(Ordering::Relaxed);
    assert_eq!(errors, 0, "zserver calls failed");
    chains.done.load(Ordering::Relaxed) as f64 / el
}

/// Calls per second of a user thread calling `.wait()` in a loop.
fn zs_wait_loop(client: &Client, dur: Duration) -> f64 {
    let text = payload();
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < dur {
        for _ in 0..16 {
            let back = client.call("echo", &text).wait().expect("echo");
            assert_eq!(back.len(), MSG);
        }
        n += 16;
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

// -------------------------------------------------------------------- raw ---

/// The raw epoll echo with `inflight` 64-byte messages in flight: every read of
/// n echoed bytes is answered with one write of n new bytes.
fn raw_echo_pipelined(addr: SocketAddr, inflight: usize, dur: Duration) -> f64 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let window = inflight * MSG;
    let out: Vec<u8> = (0..window).map(|i| (i % 251) as u8).collect();
    let mut buf = vec![0u8; window];
    s.write_all(&out).expect("write");
    let mut in_flight = window;
    let mut received = 0usize;
    let t0 = Instant::now();
    loop {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "raw echo closed");
        in_flight -= n;
        received += n;
        if t0.elapsed() < dur {
            s.write_all(&out[..n]).expect("write");
            in_flight += n;
        } else if in_flight == 0 {
            break;
        }
    }
    (received / MSG) as f64 / t0.elapsed().as_secs_f64()
}

// ------------------------------------------------------------------ tokio ---

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `inflight` tasks, each calling `call` in a loop until the deadline;
/// returns calls per second.
fn tokio_load<F, Fut>(rt: &tokio::runtime::Runtime, inflight: usize, dur: Duration, call: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    rt.block_on(async move {
        let t0 = Instant::now();
        let deadline = t0 + dur;
        let tasks: Vec<_> = (0..inflight)
            .map(|_| {
                let call = call.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        assert!(call().await, "peer call failed");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0u64;
        for t in tasks {
            total += t.await.expect("task");
        }
        total as f64 / t0.elapsed().as_secs_f64()
    })
}

// ------------------------------------------------------------------ tarpc ---

mod peer_tarpc {
    use super::*;
    use futures::prelude::*;
    use tarpc::server::{BaseChannel, Channel};
    use tarpc::tokio_serde::formats::Bincode;
    use tarpc::{client, context};

    #[tarpc::service]
    pub trait EchoSvc {
        /// Answers its argument.
        async fn echo(text: String) -> String;
    }

    #[derive(Clone)]
    struct Echoer;

    impl EchoSvc for Echoer {
        async fn echo(self, _: context::Context, text: String) -> String {
            text
        }
    }

    /// Starts the tarpc server on `rt`; returns its address.
    pub fn server(rt: &tokio::runtime::Runtime) -> SocketAddr {
        rt.block_on(async {
            let mut incoming = tarpc::serde_transport::tcp::listen("127.0.0.1:0", Bincode::default)
                .await
                .expect("tarpc listen");
            let addr = incoming.local_addr();
            tokio::spawn(async move {
                while let Some(t) = incoming.next().await {
                    let Ok(t) = t else { continue };
                    let _ = t.get_ref().set_nodelay(true);
                    tokio::spawn(
                        BaseChannel::with_defaults(t)
                            .execute(Echoer.serve())
                            .for_each(|resp| async move {
                                tokio::spawn(resp);
                            }),
                    );
                }
            });
            addr
        })
    }

    /// A connected client (default config) on `rt`.
    pub fn client(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> EchoSvcClient {
        rt.block_on(async {
            let t = tarpc::serde_transport::tcp::connect(addr, Bincode::default)
                .await
                .expect("tarpc connect");
            t.get_ref().set_nodelay(true).expect("nodelay");
            EchoSvcClient::new(client::Config::default(), t).spawn()
        })
    }

    /// One call; true when the echo matches.
    pub async fn call(c: EchoSvcClient, text: Arc<String>) -> bool {
        matches!(c.echo(context::current(), (*text).clone()).await, Ok(t) if t == *text)
    }
}

// ------------------------------------------------------------------ tonic ---

mod peer_tonic {
    use super::*;
    use std::convert::Infallible;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::codegen::{http, BoxFuture, Service};
    use tonic::{Request, Response, Status};

    const PATH: &str = "/bench.Echo/Echo";

    /// The protobuf message: `message EchoMsg { bytes payload = 1; }`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EchoMsg {
        /// The echoed bytes.
        #[prost(bytes = "vec", tag = "1")]
        pub payload: Vec<u8>,
    }

    /// A prost codec for [`EchoMsg`] both ways (what tonic-prost generates).
    #[derive(Clone, Copy, Default)]
    pub struct MsgCodec;

    impl Encoder for MsgCodec {
        type Item = EchoMsg;
        type Error = Status;
        fn encode(&mut self, item: EchoMsg, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
        }
    }

    impl Decoder for MsgCodec {
        type Item = EchoMsg;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<EchoMsg>, Status> {
            <EchoMsg as prost::Message>::decode(src)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()))
        }
    }

    impl Codec for MsgCodec {
        type Encode = EchoMsg;
        type Decode = EchoMsg;
        type Encoder = MsgCodec;
        type Decoder = MsgCodec;
        fn encoder(&mut self) -> MsgCodec {
            MsgCodec
        }
        fn decoder(&mut self) -> MsgCodec {
            MsgCodec
        }
    }

    /// The unary method.
    struct EchoMethod;

    impl tonic::server::UnaryService<EchoMsg> for EchoMethod {
        type Response = EchoMsg;
        type Future = BoxFuture<Response<EchoMsg>, Status>;
        fn call(&mut self, req: Request<EchoMsg>) -> Self::Future {
            Box::pin(async move { Ok(Response::new(req.into_inner())) })
        }
    }

    /// The service: routes `/bench.Echo/Echo`, answers `Unimplemented` otherwise.
    #[derive(Clone, Copy)]
    pub struct EchoServer;

    impl tonic::server::NamedService for EchoServer {
        const NAME: &'static str = "bench.Echo";
    }

    impl<B> Service<http::Request<B>> for EchoServer
    where
        B: tonic::codegen::Body + Send + 'static,
        B::Error: Into<tonic::codegen::StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Infallible>;

        fn poll_ready(
            &mut self,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            if req.uri().path() == PATH {
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(MsgCodec);
                    Ok(grpc.unary(EchoMethod, req).await)
                })
            } else {
                Box::pin(async move {
                    let mut resp = http::Response::new(tonic::body::Body::default());
                    resp.headers_mut().insert(
                        "grpc-status",
                        http::HeaderValue::from(tonic::Code::Unimplemented as i32),
                    );
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    Ok(resp)
                })
            }
        }
    }

    /// Starts the tonic server on `rt`; returns its address.
    pub fn server(rt: &tokio::runtime::Runtime) -> SocketAddr {
        rt.block_on(async {
            let incoming =
                tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().expect("addr"))
                    .expect("tonic bind")
                    .with_nodelay(Some(true));
            let addr = incoming.local_addr().expect("addr");
            tokio::spawn(async move {
                let r = tonic::transport::Server::builder()
                    .add_service(EchoServer)
                    .serve_with_incoming(incoming)
                    .await;
                if let Err(e) = r {
                    eprintln!("tonic server: {e}");
                }
            });
            addr
        })
    }

    /// The client side: one HTTP/2 channel, cloned per task.
    pub type Grpc = tonic::client::Grpc<tonic::transport::Channel>;

    /// A connected client (default endpoint settings) on `rt`.
    pub fn client(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> Grpc {
        rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("tonic connect");
            tonic::client::Grpc::new(ch)
        })
    }

    /// One unary call; true when the echo matches.
    pub async fn call(mut g: Grpc, payload: Arc<Vec<u8>>) -> bool {
        if g.ready().await.is_err() {
            return false;
        }
        let req = Request::new(EchoMsg {
            payload: (*payload).clone(),
        });
        let r = g
            .unary::<EchoMsg, EchoMsg, _>(req, http::uri::PathAndQuery::from_static(PATH), MsgCodec)
            .await;
        matches!(r, Ok(resp) if resp.get_ref().payload == *payload)
    }
}

// ------------------------------------------------------------------- main ---

fn pin_process() -> String {
    if std::env::var_os("ZS_BENCH_SPREAD").is_some() {
        return "threads not pinned (ZS_BENCH_SPREAD set): the scheduler places both ends".into();
    }
    match core_affinity::get_core_ids().and_then(|ids| ids.into_iter().next()) {
        Some(core) if core_affinity::set_for_current(core) => format!(
            "whole process pinned to vCPU {} before any thread started: both ends of every connection share it",
            core.id
        ),
        _ => "pinning failed: threads not pinned".into(),
    }
}

fn main() {
    if alloc::serve_if_child() {
        return;
    }
    let opts = Options::from_env();
    let placement = pin_process();
    // Profiling aid (not part of the suite): `ZS_RPC_PROFILE=SECS` runs only
    // the pipelined epoll case (`ZS_RPC_INFLIGHT=N` calls in flight, default
    // 64) for SECS seconds, for `perf record`, callgrind or `strace -c`.
    #[cfg(target_os = "linux")]
    if let Some(secs) = std::env::var("ZS_RPC_PROFILE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
    {
        let inflight = std::env::var("ZS_RPC_INFLIGHT")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(PIPE)
            .max(1);
        let p = zs_pair("epoll");
        let rate = zs_chained(
            &p.client,
            Api::Sink,
            inflight,
            Duration::from_secs_f64(secs),
        );
        println!("zs-epoll, {inflight} in flight: {rate:.0} calls/s ({placement})");
        return;
    }
    let dur = if opts.quick {
        Duration::from_millis(250)
    } else {
        Duration::from_millis(800)
    };
    // Nine quick rounds: the medians of the 1-in-flight cases swung 0.48-1.63
    // (seq_vs_raw) over three rounds on this shared machine.
    let mut suite = Suite::from_options("rpc", &opts, 9, 15);

    // Sequential: one call in flight.
    let pp = raw::pingpong_server(MSG);
    suite.case("raw-pingpong", "calls_per_s", Better::Higher, move || {
        raw::pingpong_client(pp, MSG, dur)
    });
    #[cfg(target_os = "linux")]
    let epoll = Arc::new(zs_pair("epoll"));
    #[cfg(target_os = "linux")]
    {
        let p = epoll.clone();
        suite.case("zs-epoll-seq", "calls_per_s", Better::Higher, move || {
            zs_chained(&p.client, Api::Sink, 1, dur)
        });
        let p = epoll.clone();
        suite.case(
            "zs-epoll-seq-wait",
            "calls_per_s",
            Better::Higher,
            move || zs_wait_loop(&p.client, dur),
        );
    }
    let (srt, crt) = (
        Arc::new(runtime("peer-server")),
        Arc::new(runtime("peer-client")),
    );
    let tarpc_addr = peer_tarpc::server(&srt);
    let tarpc_client = peer_tarpc::client(&crt, tarpc_addr);
    let tonic_addr = peer_tonic::server(&srt);
    let tonic_client = peer_tonic::client(&crt, tonic_addr);
    let text = Arc::new(payload());
    let bytes = Arc::new(payload().into_bytes());
    {
        let (rt, c, t) = (crt.clone(), tarpc_client.clone(), text.clone());
        suite.case("tarpc-seq", "calls_per_s", Better::Higher, move || {
            let (c, t) = (c.clone(), t.clone());
            tokio_load(&rt, 1, dur, move || peer_tarpc::call(c.clone(), t.clone()))
        });
        let (rt, c, b) = (crt.clone(), tonic_client.clone(), bytes.clone());
        suite.case("tonic-seq", "calls_per_s", Better::Higher, move || {
            let (c, b) = (c.clone(), b.clone());
            tokio_load(&rt, 1, dur, move || peer_tonic::call(c.clone(), b.clone()))
        });
    }

    // Pipelined: 64 calls in flight on one connection.
    let echo = raw::mio_echo_server();
    suite.case("raw-echo-pipe64", "msgs_per_s", Better::Higher, move || {
        raw_echo_pipelined(echo, PIPE, dur)
    });
    #[cfg(target_os = "linux")]
    {
        let p = epoll.clone();
        suite.case("zs-epoll-pipe64", "msgs_per_s", Better::Higher, move || {
            zs_chained(&p.client, Api::Sink, PIPE, dur)
        });
        let p = epoll.clone();
        suite.case(
            "zs-epoll-pipe64-boxed",
            "msgs_per_s",
            Better::Higher,
            move || zs_chained(&p.client, Api::Boxed, PIPE, dur),
        );
    }
    let tk = zs_pair("tokio");
    suite.case("zs-tokio-pipe64", "msgs_per_s", Better::Higher, move || {
        zs_chained(&tk.client, Api::Sink, PIPE, dur)
    });
    {
        let (rt, c, t) = (crt.clone(), tarpc_client, text);
        suite.case("tarpc-pipe64", "msgs_per_s", Better::Higher, move || {
            let (c, t) = (c.clone(), t.clone());
            tokio_load(&rt, PIPE, dur, move || {
                peer_tarpc::call(c.clone(), t.clone())
            })
        });
        let (rt, c, b) = (crt.clone(), tonic_client, bytes);
        suite.case("tonic-pipe64", "msgs_per_s", Better::Higher, move || {
            let (c, b) = (c.clone(), b.clone());
            tokio_load(&rt, PIPE, dur, move || {
                peer_tonic::call(c.clone(), b.clone())
            })
        });
    }

    // Heap allocations per call of the pipelined zs case, each end apart, one
    // sample per round like the timed cases (server: a child process; see
    // alloc.rs). The call path's goal is 0 on both ends.
    #[cfg(target_os = "linux")]
    {
        let meter = Arc::new(Mutex::new(alloc::Meter::new(PIPE, dur)));
        let last_server = Arc::new(Mutex::new(f64::NAN));
        let (m, s) = (meter.clone(), last_server.clone());
        suite.case(
            "zs-epoll-pipe64-allocs-client",
            "allocs_per_call",
            Better::Lower,
            move || {
                let (server, client) = m.lock().expect("meter").sample();
                *s.lock().expect("server") = server;
                client
            },
        );
        // The server's count of the same run (cases run in order in a round).
        suite.case(
            "zs-epoll-pipe64-allocs-server",
            "allocs_per_call",
            Better::Lower,
            move || *last_server.lock().expect("server"),
        );
    }

    suite.run();
    suite.ratio("seq_vs_raw", "zs-epoll-seq", "raw-pingpong");
    suite.ratio("seq_wait_vs_raw", "zs-epoll-seq-wait", "raw-pingpong");
    suite.ratio("pipelined_vs_raw", "zs-epoll-pipe64", "raw-echo-pipe64");
    suite.ratio(
        "tokio_pipelined_vs_raw",
        "zs-tokio-pipe64",
        "raw-echo-pipe64",
    );
    suite.ratio("zs_vs_tarpc", "zs-epoll-pipe64", "tarpc-pipe64");
    suite.ratio("zs_vs_tonic", "zs-epoll-pipe64", "tonic-pipe64");
    suite.ratio("seq_zs_vs_tarpc", "zs-epoll-seq", "tarpc-seq");
    suite.ratio("seq_zs_vs_tonic", "zs-epoll-seq", "tonic-seq");
    suite.note(format!(
        "64 B payload each way; zserver: AES-256-GCM records in zs_secure::SecureBackend under zs-core, epoll backend unless named tokio, 1 server loop + 1 client loop thread; \
         tarpc (bincode/TCP) and tonic (HTTP/2, prost) plaintext, 1-worker tokio runtime per side; {dur:?} per sample"
    ));
    suite.note(
        "zs_vs_tarpc / zs_vs_tonic are measured with 64 calls in flight (the seq_* ratios are the 1-in-flight case); \
         zs-*-seq chains each next call from the answer's callback, zs-epoll-seq-wait blocks a user thread on .wait()",
    );
    suite.note(
        "zs-epoll-seq, zs-*-pipe64: Client::call_to with one shared ReplySink against `echo-ref` (answers with the request's own text, \
         as the raw echo answers with the bytes it read; no allocation per call on either end); zs-epoll-pipe64-boxed: \
         Client::call_with (a boxed closure per call) against `echo` (a handler returning a new String). \
         Every zs case: 64 B each way, AES-256-GCM records, the answer checked against the request; the raw cases: plaintext, unchecked",
    );
    suite.note(format!("thread placement: {placement}"));
    #[cfg(target_os = "linux")]
    for m in alloc::measure(PIPE, dur) {
        suite.note(format!(
            "allocations per call, {}: server {:.3}, client {:.3} ({} calls)",
            m.label, m.server, m.client, m.calls
        ));
    }
    suite.finish();
}
