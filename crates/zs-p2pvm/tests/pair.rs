//! Deterministic two-ended tests of the mux over the in-memory `Pair` (virtual time).

use std::net::SocketAddr;
use std::time::Duration;

use zs_p2pvm::frame::{self, Frame};
use zs_p2pvm::testkit::{Pair, Side};
use zs_p2pvm::{Auth, Error, Mux, MuxConfig, MuxEvent, Role, StreamId};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Defaults without timers, so `drive` never waits on them.
fn cfg() -> MuxConfig {
    MuxConfig {
        keepalive: None,
        idle_timeout: None,
        ..MuxConfig::new(Auth::None)
    }
}

const SRV: &str = "10.0.0.1:80";

/// A ready pair whose server listens on `SRV`.
fn ready_pair(c: MuxConfig, s: MuxConfig) -> Pair {
    let mut p = Pair::new(c, s);
    p.server.mux.listen(addr(SRV)).unwrap();
    p.drive();
    assert!(p.client.mux.is_ready() && p.server.mux.is_ready());
    p.client.take_events();
    p.server.take_events();
    p
}

/// Opens a stream client → server; returns (client id, server id).
fn open(p: &mut Pair) -> (StreamId, StreamId) {
    let cid = p.client.mux.connect(addr(SRV)).unwrap();
    p.drive();
    let sid = match p
        .server
        .take_event(|e| matches!(e, MuxEvent::Incoming { .. }))
    {
        Some(MuxEvent::Incoming { id, local, .. }) => {
            assert_eq!(local, addr(SRV));
            id
        }
        other => panic!("no Incoming: {other:?}"),
    };
    assert!(p
        .client
        .take_event(|e| *e == MuxEvent::Connected { id: cid })
        .is_some());
    (cid, sid)
}

/// Reads until `None` (or until the stream is gone: it is freed by the read that
/// drains it once both sides finished).
fn read_all(side: &mut Side, id: StreamId) -> Vec<u8> {
    let mut v = Vec::new();
    loop {
        match side.mux.read(id, usize::MAX) {
            Ok(Some(b)) => {
                assert!(!b.is_empty(), "read returned Some(empty)");
                v.extend_from_slice(&b);
            }
            Ok(None) | Err(Error::UnknownStream(_)) => return v,
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// Like assert_eq for byte vectors, without printing megabytes.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: got {} bytes, want {}; first difference at {at}",
            got.len(),
            want.len()
        );
    }
}

/// Sends all of `data`, driving the pair while the send buffer is full.
fn send_all(
    p: &mut Pair,
    from_client: bool,
    id: StreamId,
    data: &[u8],
    reader: Option<StreamId>,
) -> Vec<u8> {
    let mut off = 0;
    let mut got = Vec::new();
    while off < data.len() {
        let (tx, _) = if from_client {
            (&mut p.client, ())
        } else {
            (&mut p.server, ())
        };
        off += tx.mux.send(id, &data[off..]).unwrap();
        p.drive();
        if let Some(r) = reader {
            let rx = if from_client {
                &mut p.server
            } else {
                &mut p.client
            };
            got.extend(read_all(rx, r));
            p.drive();
        }
    }
    got
}

fn pattern(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

#[test]
fn open_data_close_both_directions() {
    let mut p = ready_pair(cfg(), cfg());
    let (c, s) = open(&mut p);
    assert_eq!(p.client.mux.stream_addrs(c).unwrap().1, addr(SRV));
    assert_eq!(p.server.mux.stream_addrs(s).unwrap().0, addr(SRV));

    p.client.mux.send(c, b"hello server").unwrap();
    p.drive();
    assert!(p
        .server
        .take_event(|e| *e == MuxEvent::Readable { id: s })
        .is_some());
    assert_eq!(read_all(&mut p.server, s), b"hello server");

    p.server.mux.send(s, b"hello client").unwrap();
    p.drive();
    assert_eq!(read_all(&mut p.client, c), b"hello client");

    // Client finishes its side; the server still writes, then closes.
    p.client.mux.shutdown_write(c).unwrap();
    p.drive();
    assert!(p
        .server
        .take_event(|e| *e == MuxEvent::Finished { id: s })
        .is_some());
    assert_eq!(p.client.mux.send(c, b"x"), Err(Error::StreamClosed(c)));
    p.server.mux.send(s, b"last words").unwrap();
    p.server.mux.close(s);
    p.drive();
    assert_eq!(read_all(&mut p.client, c), b"last words");
    assert!(p
        .client
        .take_event(|e| *e == MuxEvent::Finished { id: c })
        .is_some());
    p.drive();
    assert!(p
        .server
        .take_event(|e| *e
            == MuxEvent::Closed {
                id: s,
                reset: false
            })
        .is_some());
    assert!(p
        .client
        .take_event(|e| *e
            == MuxEvent::Closed {
                id: c,
                reset: false
            })
        .is_some());
    assert_eq!(p.client.mux.stream_count(), 0);
    assert_eq!(p.server.mux.stream_count(), 0);
    assert_eq!(p.client.mux.read(c, 10), Err(Error::UnknownStream(c)));

    // The other direction: the client listens, the server connects.
    let back = addr("[fd00::7]:9000");
    p.client.mux.listen(back).unwrap();
    p.drive();
    let s2 = p.server.mux.connect(back).unwrap();
    assert_eq!(s2.0 % 2, 0, "acceptor ids are even");
    p.server.mux.send(s2, b"reverse").unwrap();
    p.server.mux.close(s2);
    p.drive();
    let c2 = match p
        .client
        .take_event(|e| matches!(e, MuxEvent::Incoming { .. }))
    {
        Some(MuxEvent::Incoming { id, local, peer }) => {
            assert_eq!(local, back);
            assert!(peer.ip().is_unspecified() && peer.is_ipv6());
            id
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(read_all(&mut p.client, c2), b"reverse");
    p.client.mux.close(c2);
    p.drive();
    assert_eq!(p.client.mux.stream_count(), 0);
    assert_eq!(p.server.mux.stream_count(), 0);
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
}

#[test]
fn connect_to_unknown_address_fails_clearly() {
    // After ready: immediate error.
    let mut p = ready_pair(cfg(), cfg());
    let nowhere = addr("10.9.9.9:1");
    assert_eq!(
        p.client.mux.connect(nowhere),
        Err(Error::UnknownAddress(nowhere))
    );

    // Before ready: queued, then ConnectFailed when the table arrives.
    let mut p = Pair::new(cfg(), cfg());
    p.server.mux.listen(addr(SRV)).unwrap();
    let bad = p.client.mux.connect(nowhere).unwrap();
    let good = p.client.mux.connect(addr(SRV)).unwrap();
    p.drive();
    assert_eq!(
        p.client
            .take_event(|e| matches!(e, MuxEvent::ConnectFailed { .. })),
        Some(MuxEvent::ConnectFailed {
            id: bad,
            error: Error::UnknownAddress(nowhere)
        })
    );
    assert!(p
        .client
        .take_event(|e| *e == MuxEvent::Connected { id: good })
        .is_some());

    // Race: the server unlistens while the OPEN is in flight → refused by the peer.
    let mut p = ready_pair(cfg(), cfg());
    p.latency = Duration::from_millis(10);
    let id = p.client.mux.connect(addr(SRV)).unwrap();
    p.server.mux.unlisten(addr(SRV));
    p.drive();
    assert_eq!(
        p.client
            .take_event(|e| matches!(e, MuxEvent::ConnectFailed { .. })),
        Some(MuxEvent::ConnectFailed {
            id,
            error: Error::UnknownAddress(addr(SRV))
        })
    );
    assert_eq!(p.client.mux.stream_count(), 0);
    assert_eq!(p.server.mux.stream_count(), 0);
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
}

#[test]
fn listen_tables_and_updates() {
    let mut p = Pair::new(cfg(), cfg());
    let (a, b, c) = (addr("10.0.0.1:1"), addr("10.0.0.2:2"), addr("[::1]:3"));
    p.server.mux.listen(a).unwrap();
    p.server.mux.listen(b).unwrap();
    assert_eq!(p.server.mux.listen(a), Err(Error::AddressInUse(a)));
    assert!(!p.client.mux.is_ready());
    p.drive();
    let ev = p.client.take_events();
    let added = ev
        .iter()
        .find_map(|e| match e {
            MuxEvent::PeerListen { added, removed } if removed.is_empty() => Some(added.clone()),
            _ => None,
        })
        .unwrap();
    let mut added = added;
    added.sort();
    assert_eq!(added, vec![a, b]);
    let ready_at = ev.iter().position(|e| *e == MuxEvent::Ready).unwrap();
    let table_at = ev
        .iter()
        .position(|e| matches!(e, MuxEvent::PeerListen { .. }))
        .unwrap();
    assert!(table_at < ready_at, "the table is reported before Ready");
    assert!(p.server.take_events().contains(&MuxEvent::Ready));

    p.server.mux.listen(c).unwrap();
    p.server.mux.unlisten(a);
    p.server.mux.unlisten(addr("10.0.0.3:3")); // not listening: no-op
    p.drive();
    let ev = p.client.take_events();
    assert_eq!(
        ev,
        vec![
            MuxEvent::PeerListen {
                added: vec![c],
                removed: vec![]
            },
            MuxEvent::PeerListen {
                added: vec![],
                removed: vec![a]
            },
        ]
    );
    let mut now: Vec<_> = p.client.mux.peer_listens().collect();
    now.sort();
    assert_eq!(now, vec![b, c]);
    assert_eq!(p.client.mux.connect(a), Err(Error::UnknownAddress(a)));
    assert!(p.client.mux.connect(c).is_ok());

    // A big table is split into several frames and still arrives whole.
    let mut p = Pair::new(cfg(), cfg());
    for port in 0..500u16 {
        p.client
            .mux
            .listen(addr(&format!("[fd00::1]:{port}")))
            .unwrap();
    }
    p.drive();
    assert_eq!(p.server.mux.peer_listens().count(), 500);
    assert!(p.server.mux.is_ready());
}

#[test]
fn open_close_storm_leaves_tables_empty() {
    let mut p = ready_pair(cfg(), cfg());
    for round in 0..3 {
        let n = 3000;
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = p.client.mux.connect(addr(SRV)).unwrap();
            p.client.mux.send(id, b"x").unwrap();
            ids.push(id);
        }
        p.drive();
        assert_eq!(p.client.mux.stream_count(), n);
        assert_eq!(p.server.mux.stream_count(), n);
        // Half closed gracefully by the client, half reset by the server.
        let incoming: Vec<StreamId> = p
            .server
            .take_events()
            .into_iter()
            .filter_map(|e| match e {
                MuxEvent::Incoming { id, .. } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(incoming.len(), n);
        for (i, id) in ids.iter().enumerate() {
            if i % 2 == 0 {
                p.client.mux.close(*id);
            }
        }
        for (i, id) in incoming.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(read_all(&mut p.server, *id), b"x");
                p.server.mux.close(*id);
            } else {
                p.server.mux.reset(*id);
            }
        }
        p.drive();
        let closed = p
            .client
            .take_events()
            .iter()
            .filter(|e| matches!(e, MuxEvent::Closed { .. }))
            .count();
        assert_eq!(closed, n, "round {round}");
        assert_eq!(p.client.mux.stream_count(), 0);
        assert_eq!(p.server.mux.stream_count(), 0);
        assert_eq!(p.server.mux.buffered_bytes(), 0);
        let budget = p.server.mux.config().session_budget;
        let committed = p.server.mux.session_committed();
        assert!(
            committed <= budget && committed > budget - 64 * 1024,
            "{committed}"
        );
        assert!(!p.client.mux.wants_write() && !p.server.mux.wants_write());
    }
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
}

#[test]
fn slow_reader_does_not_stall_others() {
    let mut p = ready_pair(cfg(), cfg());
    p.latency = Duration::from_millis(5);
    p.bandwidth = Some(100 * 1024 * 1024);
    let (slow_c, slow_s) = open(&mut p);
    let (fast_c, fast_s) = open(&mut p);
    // The slow stream has far more to send than its window; nobody reads it.
    let big = pattern(4 << 20, 1);
    let mut sent_slow = p.client.mux.send(slow_c, &big).unwrap();
    let fast = pattern(2 << 20, 2);
    let got = {
        let mut off = 0;
        let mut got = Vec::new();
        while got.len() < fast.len() {
            if off < fast.len() {
                off += p.client.mux.send(fast_c, &fast[off..]).unwrap();
            }
            sent_slow += p.client.mux.send(slow_c, &big[sent_slow..]).unwrap();
            p.drive();
            got.extend(read_all(&mut p.server, fast_s));
            p.drive();
        }
        got
    };
    same(&got, &fast, "fast stream");
    // The slow stream holds at most its (un-grown) window.
    let held = p.server.mux.readable_len(slow_s);
    assert!(held > 0 && held <= 64 * 1024, "slow stream holds {held}");
    assert_eq!(p.server.mux.recv_window(slow_s), Some(64 * 1024));
    // And once read, the slow stream's data is intact.
    let mut slow_got = Vec::new();
    while slow_got.len() < big.len() {
        sent_slow += p.client.mux.send(slow_c, &big[sent_slow..]).unwrap();
        p.drive();
        slow_got.extend(read_all(&mut p.server, slow_s));
        p.drive();
    }
    same(&slow_got, &big, "slow stream");
}

#[test]
fn small_messages_are_not_stuck_behind_bulk() {
    // Bulk data fills a slow link; a small message on another stream still goes out
    // within one round-robin turn, not after the bulk backlog.
    let mut p = ready_pair(cfg(), cfg());
    p.bandwidth = Some(1024 * 1024); // 1 MiB/s
    p.burst = 16 * 1024;
    let (bulk_c, _bulk_s) = open(&mut p);
    let (msg_c, msg_s) = open(&mut p);
    let sent = p.client.mux.send(bulk_c, &pattern(256 * 1024, 3)).unwrap();
    assert_eq!(sent, 256 * 1024);
    p.client.mux.send(msg_c, b"urgent").unwrap();
    let start = p.now;
    while p.server.mux.readable_len(msg_s) == 0 {
        p.drive_for(Duration::from_millis(1));
    }
    let waited = p.now - start;
    // 256 KiB of bulk takes 250 ms on this link; the message needs ~2 quanta.
    assert!(
        waited < Duration::from_millis(60),
        "small message waited {waited:?}"
    );
}

#[test]
fn ten_thousand_streams_with_unread_data_stay_under_budget() {
    let budget = 8 << 20;
    // More streams than the default limit (4,096): raised on purpose.
    let many = MuxConfig {
        max_streams: 20_000,
        ..cfg()
    };
    let scfg = MuxConfig {
        session_budget: budget,
        ..many.clone()
    };
    let mut p = ready_pair(many, scfg);
    let n = 10_000;
    let per = 4096;
    let mut ids = Vec::new();
    for i in 0..n {
        let id = p.client.mux.connect(addr(SRV)).unwrap();
        assert_eq!(p.client.mux.send(id, &pattern(per, i as u32)).unwrap(), per);
        ids.push(id);
    }
    p.drive();
    // 40 MB offered, nothing read: the server holds no more than its budget.
    assert!(
        p.server.max_buffered <= budget,
        "buffered {}",
        p.server.max_buffered
    );
    assert!(
        p.server.max_committed <= budget,
        "committed {}",
        p.server.max_committed
    );
    assert!(
        p.server.mux.buffered_bytes() > budget - 64 * 1024,
        "the budget is used"
    );
    assert_eq!(p.server.mux.stream_count(), n);
    // Reading everything lets the rest through, byte for byte.
    let incoming: Vec<StreamId> = p
        .server
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            MuxEvent::Incoming { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    let mut got = vec![Vec::new(); n];
    let mut total = 0;
    while total < n * per {
        for (i, id) in incoming.iter().enumerate() {
            let b = read_all(&mut p.server, *id);
            total += b.len();
            got[i].extend(b);
        }
        p.drive();
        assert!(p.server.max_committed <= budget);
    }
    for (i, g) in got.iter().enumerate() {
        same(g, &pattern(per, i as u32), &format!("stream {i}"));
    }
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
}

/// Moves `total` bytes over one stream with an eager reader; returns (virtual
/// time taken, final receive window).
fn transfer(latency: Duration, total: usize, max_window: u32) -> (Duration, u32) {
    let scfg = MuxConfig {
        max_window,
        ..cfg()
    };
    // A send buffer as big as the transfer, so only the window limits the rate.
    let ccfg = MuxConfig {
        send_buffer: total,
        ..cfg()
    };
    let mut p = Pair::new(ccfg, scfg);
    p.latency = latency;
    p.bandwidth = Some(1 << 30); // 1 GiB/s: the window, not the link, limits
    p.server.mux.listen(addr(SRV)).unwrap();
    p.drive(); // the RTT is measured by the first ping after auth
    let rtt = p.server.mux.rtt().unwrap();
    assert!(
        rtt >= latency * 2 && rtt < latency * 2 + Duration::from_millis(1),
        "{rtt:?}"
    );
    let (c, s) = open(&mut p);
    let data = pattern(total, 9);
    let start = p.now;
    let mut got = send_all(&mut p, true, c, &data, Some(s));
    while got.len() < data.len() {
        p.drive();
        let more = read_all(&mut p.server, s);
        assert!(!more.is_empty(), "stalled at {}", got.len());
        got.extend(more);
    }
    same(&got, &data, "transfer");
    (p.now - start, p.server.mux.recv_window(s).unwrap())
}

#[test]
fn window_auto_tunes_up_on_a_high_latency_link() {
    let lat = Duration::from_millis(50);
    let total = 16 << 20;
    let (fixed_time, fixed_win) = transfer(lat, total, 64 * 1024);
    let (tuned_time, tuned_win) = transfer(lat, total, 16 << 20);
    assert_eq!(fixed_win, 64 * 1024);
    assert!(tuned_win >= 1 << 20, "window grew only to {tuned_win}");
    // Throughput rises by a wide margin (64 KiB per 100 ms RTT is 640 KiB/s).
    eprintln!("16 MiB over 50 ms one-way: fixed 64 KiB window {fixed_time:?}, auto-tuned {tuned_time:?} (window {tuned_win})");
    assert!(
        tuned_time * 8 < fixed_time,
        "tuned {tuned_time:?} vs fixed {fixed_time:?}"
    );
}

#[test]
fn window_does_not_grow_for_a_slow_reader() {
    let mut p = ready_pair(cfg(), cfg());
    p.latency = Duration::from_millis(10);
    p.drive_for(Duration::from_millis(50));
    let (c, s) = open(&mut p);
    let data = pattern(1 << 20, 4);
    let mut off = 0;
    let mut got = Vec::new();
    while got.len() < data.len() {
        off += p.client.mux.send(c, &data[off..]).unwrap();
        p.drive();
        // Reads 8 KiB every 100 ms: far slower than the link.
        p.drive_for(Duration::from_millis(100));
        if let Some(b) = p.server.mux.read(s, 8192).unwrap() {
            got.extend_from_slice(&b);
        }
        if got.len() > 256 * 1024 {
            break;
        }
    }
    assert_eq!(&got[..], &data[..got.len()]);
    assert_eq!(p.server.mux.recv_window(s), Some(64 * 1024));
}

/// A fake peer: raw frames into a real Mux after a None-auth HELLO.
fn raw_peer(role_of_mux: Role, cfg: MuxConfig) -> Mux {
    let mut m = Mux::new(role_of_mux, cfg, std::time::Instant::now()).unwrap();
    let mut out = Vec::new();
    m.write_output(&mut out);
    let mut hello = Vec::new();
    Frame::Hello {
        mode: frame::AuthMode::None,
        max_payload: 65536,
        nonce: [7; 32],
    }
    .encode(&mut hello);
    Frame::Listen {
        done: true,
        changes: vec![],
    }
    .encode(&mut hello);
    Frame::Window {
        id: 0,
        increment: 1 << 20,
    }
    .encode(&mut hello);
    m.handle_input(&hello, std::time::Instant::now()).unwrap();
    assert!(m.is_ready());
    m
}

#[test]
fn credit_violation_kills_the_tunnel() {
    let scfg = MuxConfig {
        initial_window: 1000,
        ..cfg()
    };
    let mut m = raw_peer(Role::Acceptor, scfg);
    m.listen(addr(SRV)).unwrap();
    let mut b = Vec::new();
    Frame::Open {
        id: 1,
        window: 5000,
        addr: addr(SRV),
    }
    .encode(&mut b);
    Frame::Data {
        id: 1,
        payload: &[1; 1000],
    }
    .encode(&mut b);
    m.handle_input(&b, std::time::Instant::now()).unwrap();
    // One byte more than the 1000 granted.
    let mut b = Vec::new();
    Frame::Data {
        id: 1,
        payload: &[2],
    }
    .encode(&mut b);
    let err = m.handle_input(&b, std::time::Instant::now()).unwrap_err();
    assert!(
        matches!(err, Error::Protocol(ref s) if s.contains("credit")),
        "{err:?}"
    );
    let mut events = Vec::new();
    while let Some(e) = m.poll_event() {
        events.push(e);
    }
    assert!(
        matches!(events.last(), Some(MuxEvent::TunnelClosed { reason }) if reason.contains("credit"))
    );
    assert_eq!(m.stream_count(), 0);
    assert!(matches!(m.close_error(), Some(Error::Protocol(_))));
    // The GOAWAY goes out.
    let mut out = Vec::new();
    m.write_output(&mut out);
    let mut last = None;
    let mut rest = &out[..];
    while let Some((f, n)) = frame::decode(rest, 1 << 20).unwrap() {
        last = Some(format!("{f:?}"));
        rest = &rest[n..];
    }
    assert!(last.unwrap().starts_with("GoAway"));
    assert_eq!(
        m.handle_input(&[0], std::time::Instant::now()),
        Err(Error::TunnelClosed)
    );

    // Session credit: the peer granted 1 MiB of session credit... here the mux
    // granted its default budget; exceed it across streams.
    let scfg = MuxConfig {
        session_budget: 1500,
        initial_window: 1000,
        ..cfg()
    };
    let mut m = raw_peer(Role::Acceptor, scfg);
    m.listen(addr(SRV)).unwrap();
    let mut b = Vec::new();
    Frame::Open {
        id: 1,
        window: 5000,
        addr: addr(SRV),
    }
    .encode(&mut b);
    Frame::Open {
        id: 3,
        window: 5000,
        addr: addr(SRV),
    }
    .encode(&mut b);
    Frame::Data {
        id: 1,
        payload: &[1; 1000],
    }
    .encode(&mut b);
    Frame::Data {
        id: 3,
        payload: &[1; 501],
    }
    .encode(&mut b);
    let err = m.handle_input(&b, std::time::Instant::now()).unwrap_err();
    assert!(
        matches!(err, Error::Protocol(ref s) if s.contains("session credit")),
        "{err:?}"
    );
}

#[test]
fn nothing_is_accepted_before_auth() {
    let mut m = Mux::new(Role::Acceptor, cfg(), std::time::Instant::now()).unwrap();
    m.listen(addr(SRV)).unwrap();
    let mut b = Vec::new();
    Frame::Open {
        id: 1,
        window: 5000,
        addr: addr(SRV),
    }
    .encode(&mut b);
    let err = m.handle_input(&b, std::time::Instant::now()).unwrap_err();
    assert!(matches!(err, Error::Protocol(ref s) if s.contains("before authentication")));
    assert_eq!(m.stream_count(), 0);

    // With a token: a HELLO alone does not authenticate; data before PROOF is refused.
    let tcfg = MuxConfig {
        auth: Some(Auth::token(b"sixteen byte key").unwrap()),
        ..cfg()
    };
    let mut m = Mux::new(Role::Acceptor, tcfg, std::time::Instant::now()).unwrap();
    let mut b = Vec::new();
    Frame::Hello {
        mode: frame::AuthMode::Token,
        max_payload: 65536,
        nonce: [1; 32],
    }
    .encode(&mut b);
    Frame::Listen {
        done: true,
        changes: vec![],
    }
    .encode(&mut b);
    assert!(m.handle_input(&b, std::time::Instant::now()).is_err());
    assert!(!m.is_ready());
}

#[test]
fn auth_with_token() {
    let token = b"correct horse battery staple".to_vec();
    let tcfg = MuxConfig {
        auth: Some(Auth::token(&token).unwrap()),
        ..cfg()
    };
    let mut p = Pair::new(tcfg.clone(), tcfg.clone());
    p.record = true;
    p.max_chunk = Some(7);
    p.server.mux.listen(addr(SRV)).unwrap();
    p.drive();
    assert!(p.client.mux.is_ready() && p.server.mux.is_ready());
    let (c, s) = open(&mut p);
    p.client.mux.send(c, b"authenticated").unwrap();
    p.drive();
    assert_eq!(read_all(&mut p.server, s), b"authenticated");
    // The token never appears on the wire.
    for t in [&p.client.transcript, &p.server.transcript] {
        assert!(!t.is_empty());
        assert!(
            !t.windows(token.len()).any(|w| w == &token[..]),
            "token on the wire"
        );
        assert!(
            !t.windows(8).any(|w| w == &token[..8]),
            "token prefix on the wire"
        );
    }

    // Wrong token: both sides close with an auth failure, nothing gets through.
    let wrong = MuxConfig {
        auth: Some(Auth::token(b"the wrong token!").unwrap()),
        ..cfg()
    };
    let mut p = Pair::new(tcfg.clone(), wrong);
    p.server.mux.listen(addr(SRV)).unwrap();
    let early = p.client.mux.connect(addr(SRV)).unwrap();
    p.drive();
    for side in [&mut p.client, &mut p.server] {
        assert!(!side.mux.is_ready());
        assert!(
            side.errors.contains(&Error::AuthFailed),
            "{:?}",
            side.errors
        );
        assert_eq!(side.mux.close_error(), Some(&Error::AuthFailed));
        let closed = side.take_event(|e| matches!(e, MuxEvent::TunnelClosed { .. }));
        assert!(
            matches!(&closed, Some(MuxEvent::TunnelClosed { reason }) if reason.contains("authentication failed")),
            "{closed:?}"
        );
        assert!(!side
            .events
            .iter()
            .any(|e| matches!(e, MuxEvent::Incoming { .. } | MuxEvent::Ready)));
    }
    assert_eq!(p.client.mux.send(early, b"x"), Err(Error::TunnelClosed));

    // One side with a token, the other without: refused too.
    let mut p = Pair::new(tcfg, cfg());
    p.drive();
    assert!(p.client.errors.contains(&Error::AuthFailed));
    assert!(p.server.errors.contains(&Error::AuthFailed));
}

#[test]
fn ping_rtt_matches_latency() {
    let c = MuxConfig {
        keepalive: Some(Duration::from_secs(1)),
        idle_timeout: None,
        ..MuxConfig::new(Auth::None)
    };
    let mut p = Pair::new(c.clone(), c);
    p.latency = Duration::from_millis(40);
    p.drive_for(Duration::from_millis(3500));
    let pongs: Vec<Duration> = p
        .client
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            MuxEvent::Pong { rtt } => Some(rtt),
            _ => None,
        })
        .collect();
    // The first probe right after auth, then one per second.
    assert!(pongs.len() >= 4, "{pongs:?}");
    for r in &pongs {
        assert_eq!(*r, Duration::from_millis(80));
    }
    assert_eq!(p.client.mux.rtt(), Some(Duration::from_millis(80)));
    assert_eq!(p.server.mux.rtt(), Some(Duration::from_millis(80)));
}

#[test]
fn idle_timeout_closes_the_tunnel() {
    // Keepalive below the idle timeout keeps a quiet tunnel alive.
    let alive = MuxConfig {
        keepalive: Some(Duration::from_secs(5)),
        idle_timeout: Some(Duration::from_secs(12)),
        ..MuxConfig::new(Auth::None)
    };
    let mut p = Pair::new(alive.clone(), alive);
    p.latency = Duration::from_millis(20);
    p.drive_for(Duration::from_secs(60));
    assert!(p.client.mux.is_ready() && p.server.mux.is_ready());

    // Without keepalive on the far side and with the link silent, it times out.
    let quiet = MuxConfig {
        keepalive: None,
        idle_timeout: None,
        ..MuxConfig::new(Auth::None)
    };
    let strict = MuxConfig {
        keepalive: None,
        idle_timeout: Some(Duration::from_secs(3)),
        ..MuxConfig::new(Auth::None)
    };
    let mut p = Pair::new(strict, quiet);
    p.drive();
    let start = p.now;
    assert!(p.client.mux.is_ready());
    p.drive_for(Duration::from_secs(10));
    assert!(p.client.mux.is_closed());
    let ev = p
        .client
        .take_event(|e| matches!(e, MuxEvent::TunnelClosed { .. }));
    assert!(matches!(ev, Some(MuxEvent::TunnelClosed { reason }) if reason.contains("idle")));
    assert_eq!(p.client.mux.close_error(), Some(&Error::TunnelClosed));
    assert!(p.client.mux.poll_timeout().is_none());
    // The GOAWAY reached the other side.
    assert!(p.server.mux.is_closed());
    assert!(p.now - start >= Duration::from_secs(3));
}

#[test]
fn reset_drops_queued_data() {
    let mut p = ready_pair(cfg(), cfg());
    let (c, s) = open(&mut p);
    // More than one window queued; reset before it can all go.
    let n = p.client.mux.send(c, &pattern(200 * 1024, 5)).unwrap();
    assert_eq!(n, 200 * 1024);
    assert_eq!(p.client.mux.send_queued(c), 200 * 1024);
    let mut out = Vec::new();
    p.client.mux.write_output_limit(&mut out, 1); // one frame only, kept off the link
    assert_eq!(p.client.mux.send_queued(c), 200 * 1024 - 16 * 1024);
    p.client.mux.reset(c);
    assert_eq!(p.client.mux.send(c, b"x"), Err(Error::UnknownStream(c)));
    assert!(p
        .client
        .take_event(|e| *e == MuxEvent::Closed { id: c, reset: true })
        .is_some());
    let mut rest = Vec::new();
    p.client.mux.write_output(&mut rest);
    let mut frames = Vec::new();
    let mut r = &rest[..];
    while let Some((f, n)) = frame::decode(r, 1 << 20).unwrap() {
        frames.push(f);
        r = &r[n..];
    }
    assert_eq!(
        frames,
        vec![Frame::Reset { id: c.0 }],
        "no data after reset"
    );
    p.server.mux.handle_input(&out, p.now).unwrap();
    p.server.mux.handle_input(&rest, p.now).unwrap();
    p.drive();
    assert!(p
        .server
        .take_event(|e| *e == MuxEvent::Closed { id: s, reset: true })
        .is_some());
    assert_eq!(p.server.mux.stream_count(), 0);
    assert_eq!(p.server.mux.buffered_bytes(), 0, "unread data freed");
    assert_eq!(p.client.mux.stream_count(), 0);
}

#[test]
fn integrity_with_random_chunking() {
    for seed in 1..=4u64 {
        let mut p = ready_pair(cfg(), cfg());
        p.seed(seed);
        p.max_chunk = Some(1 + (seed as usize * 37) % 300);
        p.latency = Duration::from_micros(300 * seed);
        let streams: Vec<_> = (0..8).map(|_| open(&mut p)).collect();
        let data: Vec<Vec<u8>> = (0..8)
            .map(|i| pattern(100_000 + i * 7919, i as u32 + seed as u32))
            .collect();
        let mut off = [0; 8];
        let mut got = vec![Vec::new(); 8];
        while got.iter().zip(&data).any(|(g, d)| g.len() < d.len()) {
            for i in 0..8 {
                let (c, s) = streams[i];
                if off[i] < data[i].len() {
                    let n =
                        (data[i].len() - off[i]).min(1 + (seed as usize * 1000 + i * 313) % 40_000);
                    off[i] += p.client.mux.send(c, &data[i][off[i]..off[i] + n]).unwrap();
                    // And the reverse direction on the same stream.
                    p.server.mux.send(s, &data[i][..n.min(100)]).unwrap();
                }
                got[i].extend(read_all(&mut p.server, s));
            }
            p.drive();
            for &(c, _) in &streams {
                read_all(&mut p.client, c);
            }
        }
        for i in 0..8 {
            same(&got[i], &data[i], &format!("seed {seed} stream {i}"));
        }
        assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
    }
}

#[test]
fn extreme_settings_are_clamped_and_work() {
    let odd = MuxConfig {
        initial_window: 0,
        max_window: 0,
        session_budget: 0,
        max_frame_payload: 0,
        send_buffer: 0,
        keepalive: Some(Duration::MAX),
        idle_timeout: Some(Duration::MAX),
        ..MuxConfig::new(Auth::None)
    };
    let mut p = ready_pair(odd.clone(), odd);
    p.drive_for(Duration::from_secs(5));
    let (c, s) = open(&mut p);
    let data = pattern(5000, 77);
    let got = send_all(&mut p, true, c, &data, Some(s));
    same(&got, &data, "tiny windows");
    assert!(p.client.errors.is_empty() && p.server.errors.is_empty());
}

#[test]
fn readable_and_writable_are_edges() {
    let ccfg = MuxConfig {
        send_buffer: 10_000,
        ..cfg()
    };
    let mut p = ready_pair(ccfg, cfg());
    let (c, s) = open(&mut p);
    // Two deliveries before any read: one Readable.
    p.client.mux.send(c, b"one").unwrap();
    p.drive();
    p.client.mux.send(c, b"two").unwrap();
    p.drive();
    let readable = |side: &mut Side| {
        side.take_events()
            .iter()
            .filter(|e| matches!(e, MuxEvent::Readable { .. }))
            .count()
    };
    assert_eq!(readable(&mut p.server), 1);
    assert_eq!(p.server.mux.readable_len(s), 6);
    assert_eq!(read_all(&mut p.server, s), b"onetwo");
    // Drained: the next delivery is a new edge.
    p.client.mux.send(c, b"three").unwrap();
    p.drive();
    assert_eq!(readable(&mut p.server), 1);
    read_all(&mut p.server, s);

    // The send buffer fills (the reader does not read, so credit runs out).
    let big = pattern(200_000, 8);
    let mut off = 0;
    loop {
        let n = p.client.mux.send(c, &big[off..]).unwrap();
        off += n;
        p.drive();
        if n == 0 {
            break;
        }
    }
    assert_eq!(p.client.mux.send_queued(c), 10_000);
    // (Writable may have fired while the credit lasted.) Now nothing moves.
    p.client.take_events();
    p.drive();
    assert!(p
        .client
        .take_event(|e| matches!(e, MuxEvent::Writable { .. }))
        .is_none());
    // Reading returns credit; the sender drains and reports Writable once.
    let got = read_all(&mut p.server, s);
    p.drive();
    let writable = p
        .client
        .take_events()
        .iter()
        .filter(|e| **e == MuxEvent::Writable { id: c })
        .count();
    assert_eq!(writable, 1);
    assert!(p.client.mux.send_queued(c) <= 5_000);
    assert_eq!(
        got.len() + read_all(&mut p.server, s).len() + p.client.mux.send_queued(c),
        off
    );
}

/// `handle_input_buf` (the link's buffer in, frames as slices of it) delivers
/// exactly the bytes of `handle_input` whatever the read boundaries, leaves only
/// an incomplete frame in the buffer, and queues a large DATA payload as a slice
/// of the very buffer it arrived in (no copy); small payloads are copied.
#[test]
fn input_buffer_path_slices_large_payloads_and_keeps_partial_frames() {
    use bytes::BytesMut;
    let now = std::time::Instant::now();
    let mut client = Mux::new(Role::Initiator, cfg(), now).unwrap();
    let mut server = Mux::new(Role::Acceptor, cfg(), now).unwrap();
    server.listen(addr(SRV)).unwrap();
    // The server's link buffer, as a zs-io backend keeps it between reads.
    let mut link = BytesMut::new();
    let pump = |c: &mut Mux, s: &mut Mux, link: &mut BytesMut, step: usize| loop {
        let (mut cs, mut sc) = (Vec::new(), Vec::new());
        c.write_output(&mut cs);
        s.write_output(&mut sc);
        if cs.is_empty() && sc.is_empty() {
            break;
        }
        c.handle_input(&sc, now).unwrap();
        for piece in cs.chunks(step.max(1)) {
            link.extend_from_slice(piece);
            s.handle_input_buf(link, now).unwrap();
            // Whatever is left is one incomplete frame.
            assert!(frame::decode(link, 1 << 20).unwrap().is_none());
        }
    };
    pump(&mut client, &mut server, &mut link, 7);
    let cid = client.connect(addr(SRV)).unwrap();
    pump(&mut client, &mut server, &mut link, 3);
    let sid = loop {
        match server.poll_event() {
            Some(MuxEvent::Incoming { id, .. }) => break id,
            Some(_) => continue,
            None => panic!("no Incoming"),
        }
    };
    let want = pattern(200_000, 9);
    let mut got = Vec::new();
    let mut sent = 0;
    let mut steps = [1000usize, 70_000, 4096, 100_000, 17].into_iter().cycle();
    while got.len() < want.len() {
        sent += client.send(cid, &want[sent..]).unwrap();
        pump(&mut client, &mut server, &mut link, steps.next().unwrap());
        while let Some(b) = server.read_buf(sid, usize::MAX).unwrap() {
            got.extend_from_slice(&b);
        }
        pump(&mut client, &mut server, &mut link, 64 * 1024);
    }
    same(&got, &want, "through handle_input_buf");

    // One whole large DATA frame in one buffer: queued as a slice of it.
    let big = pattern(40_000, 3);
    assert_eq!(client.send(cid, &big).unwrap(), big.len());
    let mut out = Vec::new();
    client.write_output(&mut out);
    let mut one = BytesMut::from(&out[..]);
    let (base, end) = (one.as_ptr() as usize, one.as_ptr() as usize + one.len());
    server.handle_input_buf(&mut one, now).unwrap();
    assert!(one.is_empty(), "whole frames are taken out");
    let mut seen = Vec::new();
    let mut sliced = false;
    while let Some(b) = server.read_buf(sid, usize::MAX).unwrap() {
        let p = b.as_ptr() as usize;
        sliced |= b.len() >= zs_p2pvm::ZERO_COPY_MIN && p >= base && p < end;
        seen.extend_from_slice(&b);
    }
    same(&seen, &big, "the large payload");
    assert!(sliced, "a large payload was copied");
}

#[test]
fn output_parts_keep_payloads_uncopied_and_equal_the_contiguous_output() {
    use bytes::{Bytes, BytesMut};
    use std::collections::VecDeque;
    let mut p = ready_pair(cfg(), cfg());
    let (cid, sid) = open(&mut p);
    let (client, server) = (&mut p.client.mux, &mut p.server.mux);
    // A large payload given as `Bytes`, a small one copied in, then FIN.
    let big = Bytes::from(pattern(40_000, 5));
    let (base, end) = (big.as_ptr() as usize, big.as_ptr() as usize + big.len());
    assert_eq!(client.send_bytes(cid, big.clone()).unwrap(), big.len());
    let small = pattern(100, 6);
    assert_eq!(client.send(cid, &small).unwrap(), small.len());
    client.shutdown_write(cid).unwrap();
    let (mut head, mut parts) = (BytesMut::new(), VecDeque::new());
    let n = client.write_output_parts(&mut head, &mut parts, usize::MAX);
    assert!(head.is_empty());
    let wire: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    assert_eq!(n, wire.len());
    // The large payload left in pieces that point into the caller's `Bytes`.
    let uncopied: usize = parts
        .iter()
        .filter(|p| (p.as_ptr() as usize) >= base && (p.as_ptr() as usize) < end)
        .map(|p| p.len())
        .sum();
    assert_eq!(uncopied, big.len(), "the large payload was copied");
    // The pieces decode to the same stream contents.
    server
        .handle_input(&wire, std::time::Instant::now())
        .unwrap();
    let mut got = Vec::new();
    while let Some(b) = server.read_buf(sid, usize::MAX).unwrap() {
        got.extend_from_slice(&b);
    }
    let mut want = big.to_vec();
    want.extend_from_slice(&small);
    same(&got, &want, "through write_output_parts");
}
