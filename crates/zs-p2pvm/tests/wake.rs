//! Work caused off the loop inside a tunnel (a virtual connection's `wake`, as
//! zs-core rings it for a delayed answer) wakes the physical loop through the
//! physical connection's own doorbell (`Connection::wake`), never through a
//! zero-length timer: on the reactor backends a timer fires only at the next
//! 5 ms tick, which made every such call inside a tunnel wait for it (issue 13:
//! `core_in_tunnel_vs_outside` 0.015).
//!
//! Deterministic: both tunnel ends run over recording physical connections; the
//! test moves the bytes and answers each doorbell at once (as the reactor does),
//! but never fires a timer. A call that needed a timer would not complete.
#![allow(clippy::unwrap_used)]

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use zs_io::testkit::RecordingConn as Link;
use zs_io::{Backend, Conn, Handler};
use zs_p2pvm::{Auth, Role, Tunnel, TunnelConfig, TunnelDriver};

/// One tunnel end: its driver and its recording link.
struct End {
    driver: TunnelDriver,
    link: Arc<Link>,
    conn: Conn,
}

impl End {
    fn new(driver: TunnelDriver, id: u64) -> End {
        let link = Arc::new(Link {
            id,
            ..Link::default()
        });
        let conn: Conn = link.clone();
        End { driver, link, conn }
    }
}

/// Moves `from`'s output to `to` and answers `from`'s doorbells; whether
/// anything happened, and how many doorbells rang.
fn step(from: &mut End, to: &mut End) -> (bool, usize) {
    let mut moved = false;
    let out: Vec<Bytes> = std::mem::take(&mut *from.link.sent.lock().unwrap());
    if !out.is_empty() {
        moved = true;
        let mut buf = BytesMut::new();
        for o in out {
            buf.extend_from_slice(&o);
        }
        to.driver.on_data(&to.conn, &mut buf);
    }
    let wakes: Vec<u64> = std::mem::take(&mut *from.link.wakes.lock().unwrap());
    let rang = wakes.len();
    for w in wakes {
        moved = true;
        from.driver.on_timer(&from.conn, w);
    }
    (moved, rang)
}

/// Moves bytes both ways and answers doorbells (never timers) until nothing is
/// left to do; returns how many doorbells were answered.
fn settle(a: &mut End, b: &mut End) -> usize {
    let mut rang = 0;
    for _ in 0..1000 {
        let (m1, r1) = step(a, b);
        let (m2, r2) = step(b, a);
        rang += r1 + r2;
        if !m1 && !m2 {
            return rang;
        }
    }
    panic!("the tunnel never settled");
}

const ANSWER: u64 = 7;

/// The server side of a call: keeps each request and hands its connection to a
/// "worker" (the test thread), which answers off the loop by ringing `wake`;
/// the answer is sent from `on_timer`, on the loop (zs-core's delayed answer).
struct Delayed {
    pending: Vec<u8>,
    work: mpsc::Sender<Conn>,
}

impl Handler for Delayed {
    fn on_data(&mut self, conn: &Conn, data: &mut BytesMut) {
        self.pending.extend_from_slice(data);
        data.clear();
        self.work.send(conn.clone()).unwrap();
    }
    fn on_timer(&mut self, conn: &Conn, token: u64) {
        if token == ANSWER {
            conn.send(Bytes::from(std::mem::take(&mut self.pending)))
                .unwrap();
        }
    }
}

/// The client side: hands its connection out when open and every answer after.
struct Caller {
    opened: mpsc::Sender<Conn>,
    answers: mpsc::Sender<Vec<u8>>,
}

impl Handler for Caller {
    fn on_open(&mut self, conn: &Conn) {
        self.opened.send(conn.clone()).unwrap();
    }
    fn on_data(&mut self, _conn: &Conn, data: &mut BytesMut) {
        self.answers.send(data.to_vec()).unwrap();
        data.clear();
    }
}

#[test]
fn delayed_answers_ring_the_physical_doorbell_not_a_timer() {
    let cfg = TunnelConfig::plaintext(Auth::None);
    let (ha, da) = Tunnel::handler(Role::Acceptor, cfg.clone()).unwrap();
    let (hb, db) = Tunnel::handler(Role::Initiator, cfg).unwrap();
    let (mut a, mut b) = (End::new(da, 1), End::new(db, 2));
    a.driver.on_open(&a.conn);
    b.driver.on_open(&b.conn);
    settle(&mut a, &mut b);
    assert!(
        ha.is_ready() && hb.is_ready(),
        "tunnel ready without timers"
    );

    let (work_tx, work_rx) = mpsc::channel();
    let work_tx = Mutex::new(work_tx);
    let l = ha
        .listen(
            "10.0.0.1:7".parse().unwrap(),
            Arc::new(move || {
                Box::new(Delayed {
                    pending: Vec::new(),
                    work: work_tx.lock().unwrap().clone(),
                }) as Box<dyn Handler>
            }),
        )
        .unwrap();
    settle(&mut a, &mut b);
    let (open_tx, open_rx) = mpsc::channel();
    let (ans_tx, ans_rx) = mpsc::channel();
    hb.connect(
        l.local_addr(),
        Duration::from_secs(5),
        Box::new(Caller {
            opened: open_tx,
            answers: ans_tx,
        }),
    )
    .unwrap();
    settle(&mut a, &mut b);
    let client = open_rx.try_recv().expect("virtual connection open");
    // Timers armed so far (keepalive, ready deadline) are the tunnel's own and
    // far away; from here on no call may need one.
    a.link.timers.lock().unwrap().clear();
    b.link.timers.lock().unwrap().clear();

    const CALLS: usize = 50;
    let mut rang = 0;
    for i in 0..CALLS {
        let req = format!("call {i}");
        // The client sends off the loop (the caller's thread).
        client.send(Bytes::from(req.clone())).unwrap();
        settle(&mut a, &mut b);
        // The worker answers off the loop: a wake of the virtual connection.
        let server = work_rx.try_recv().expect("request reached the server");
        server.wake(ANSWER).unwrap();
        rang += settle(&mut a, &mut b);
        let got = ans_rx
            .try_recv()
            .unwrap_or_else(|_| panic!("call {i} not answered without a timer tick"));
        assert_eq!(got, req.as_bytes());
    }
    assert!(
        rang >= CALLS,
        "each delayed answer rang the doorbell ({rang})"
    );
    for (name, end) in [("acceptor", &a), ("initiator", &b)] {
        let short: Vec<_> = end
            .link
            .timers
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|&(after, _)| after < Duration::from_millis(5))
            .collect();
        assert!(
            short.is_empty(),
            "{name}: timers shorter than a reactor tick were armed: {short:?}"
        );
    }
}
