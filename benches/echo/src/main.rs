//! `cargo xtask bench echo`: 64-byte messages, pipelined, echoed by each zs-io
//! backend and by a minimal hand-written epoll echo (the limit here).
//!
//! Every server runs **one** event-loop thread (epoll: `loops = 1`; tokio: one
//! worker; raw: one `mio` poll thread — mio is a thin epoll wrapper: one
//! `epoll_wait`, then `read` until `WouldBlock` and one `write` per read, which is
//! exactly what the backends do). The client is one thread in the same process
//! keeping 64 KiB (1,024 messages) in flight, written 16 KiB (256 messages) at a
//! time, and counting echoed bytes for a fixed time (1 s, 0.3 s with `--quick`).
//! Two busy threads on the 2 vCPUs: the scheduler places them (not pinned).
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use zs_bench_harness::{Better, Options, Suite};
use zs_io::{Backend, Bytes, BytesMut, Config, Conn, Error, Handler};

const MSG: usize = 64;
const CHUNK: usize = 16 * 1024;
const WINDOW: usize = 64 * 1024;

/// The seam echo: send back what arrived; on a full queue pause reading and retry
/// on `on_writable`.
struct Echo {
    pending: Option<Bytes>,
}

impl Handler for Echo {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        if self.pending.is_some() {
            conn.set_read_paused(true);
            return;
        }
        if let Err(Error::Full(back)) = conn.send(data.split().freeze()) {
            self.pending = Some(back);
            conn.set_read_paused(true);
        }
    }
    fn on_writable(&mut self, conn: &Conn) {
        if let Some(b) = self.pending.take() {
            if let Err(Error::Full(back)) = conn.send(b) {
                self.pending = Some(back);
                return;
            }
        }
        conn.set_read_paused(false);
    }
}

fn seam_server(backend: &dyn Backend) -> Box<dyn zs_io::Listener> {
    backend
        .listen(
            "127.0.0.1:0".parse().expect("addr"),
            zs_io::handler_factory(|| Echo { pending: None }),
        )
        .expect("listen")
}

/// One sample: pipelined 64-byte echo for `dur`; returns messages per second.
fn client(addr: SocketAddr, dur: Duration) -> f64 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % MSG) as u8).collect();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut inflight, mut received) = (0usize, 0usize);
    let t0 = Instant::now();
    while t0.elapsed() < dur {
        while inflight + CHUNK <= WINDOW {
            s.write_all(&chunk).expect("write");
            inflight += CHUNK;
        }
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "server closed");
        inflight -= n;
        received += n;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    while inflight > 0 {
        let n = s.read(&mut buf).expect("drain");
        assert!(n > 0, "server closed");
        inflight -= n;
    }
    (received / MSG) as f64 / elapsed
}

fn main() {
    let opts = Options::from_env();
    let dur = if opts.quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(1)
    };
    let mut suite = Suite::from_options("echo", &opts, 3, 7);
    let one = Config {
        loops: 1,
        ..Config::default()
    };

    let raw = zs_bench_harness::raw::mio_echo_server();
    suite.case("raw-epoll", "msgs_per_s", Better::Higher, move || {
        client(raw, dur)
    });

    #[cfg(target_os = "linux")]
    {
        let epoll = zs_io_epoll::EpollBackend::new(one.clone()).expect("epoll");
        let l = seam_server(&epoll);
        let addr = l.local_addr();
        suite.case("zs-epoll", "msgs_per_s", Better::Higher, move || {
            let _keep = (&epoll, &l);
            client(addr, dur)
        });
    }

    let tokio_b = zs_io_tokio::TokioBackend::new(one).expect("tokio");
    let lt = seam_server(&tokio_b);
    let taddr = lt.local_addr();
    suite.case("zs-tokio", "msgs_per_s", Better::Higher, move || {
        let _keep = (&tokio_b, &lt);
        client(taddr, dur)
    });

    suite.run();
    suite.ratio("epoll_vs_raw", "zs-epoll", "raw-epoll");
    suite.ratio("tokio_vs_raw", "zs-tokio", "raw-epoll");
    suite.note(format!(
        "64 B messages, {} in flight, {} per write; each server on 1 event-loop thread, client 1 thread in the same \
         process; 2 vCPUs, threads not pinned (the scheduler spreads the 2 busy threads over both vCPUs); {:?} per sample",
        WINDOW / MSG,
        CHUNK / MSG,
        dur
    ));
    suite.finish();
}
