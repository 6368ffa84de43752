//! Audit L13: running out of file descriptors must not stall an edge-triggered
//! listener. The connection that `accept` could not take (EMFILE) raises no new
//! edge, so the reactor has to retry on its timer; without that, the connection
//! below would only be accepted once some other connection arrived.
//!
//! This lowers the process's `RLIMIT_NOFILE` soft limit and fills the descriptor
//! table, so it is the only test in its binary (its own process).
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zs_io::testkit::{Recorder, WAIT};
use zs_io::{Backend, Config, Handler};
use zs_io_epoll::{AcceptMode, EpollBackend};

fn nofile() -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit for the call to fill.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    assert_eq!(rc, 0, "getrlimit: {}", std::io::Error::last_os_error());
    r
}

fn set_nofile(r: libc::rlimit) {
    // SAFETY: `r` is a valid rlimit read by the call only.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    assert_eq!(rc, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn exhausted_accept_is_retried(mode: AcceptMode) {
    let backend = EpollBackend::with_mode(
        Config {
            loops: 1,
            ..Config::default()
        },
        mode,
    )
    .unwrap();
    let (server, sev) = Recorder::new(true);
    let server = Mutex::new(server);
    let listener = backend
        .listen(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(move || Box::new(server.lock().unwrap().sibling()) as Box<dyn Handler>),
        )
        .unwrap();
    let addr = listener.local_addr();
    // Warm up: the loop and the listener are running.
    let mut first = TcpStream::connect(addr).unwrap();
    first.set_read_timeout(Some(WAIT)).unwrap();
    first.write_all(b"warm").unwrap();
    let mut b = [0u8; 4];
    first.read_exact(&mut b).unwrap();
    sev.open();
    assert_eq!(sev.data(4), b"warm");

    // Fill the descriptor table under a low limit, keeping one slot for the client.
    let saved = nofile();
    set_nofile(libc::rlimit {
        rlim_cur: (open_fds() + 32).min(saved.rlim_max),
        rlim_max: saved.rlim_max,
    });
    let mut fillers = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("unexpected error filling the descriptor table: {e}"),
        }
        assert!(
            fillers.len() < 100_000,
            "the descriptor limit did not apply"
        );
    }
    drop(fillers.pop());
    let mut client = TcpStream::connect(addr).unwrap(); // takes the last descriptor
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(b"ping").unwrap();
    // The server cannot accept it (EMFILE): nothing opens.
    if let Some(ev) = sev.try_next(Duration::from_millis(300)) {
        panic!("accepted while out of descriptors? {ev:?}");
    }

    // Descriptors come back, but no new connection arrives to raise an edge: the
    // retry timer alone must accept the queued connection.
    let freed = Instant::now();
    drop(fillers);
    set_nofile(saved);
    sev.open();
    assert_eq!(sev.data(4), b"ping");
    let took = freed.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "accepted only {took:?} after descriptors were freed"
    );
    let mut b = [0u8; 4];
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    drop(listener);
    backend.shutdown();
}

#[test]
fn emfile_on_accept_is_retried_on_a_timer() {
    // Both accept modes in one test: the descriptor limit is process-wide.
    exhausted_accept_is_retried(AcceptMode::ReusePort);
    exhausted_accept_is_retried(AcceptMode::HandOff);
}
