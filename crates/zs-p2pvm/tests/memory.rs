//! Memory cost of idle virtual connections, measured as resident-set growth of this
//! process (Linux `/proc/self/statm`) while 100,000 streams are open on both ends of
//! an in-memory pair. One test per binary so no other test allocates meanwhile.

#![cfg(target_os = "linux")]

use zs_p2pvm::testkit::Pair;
use zs_p2pvm::{Auth, MuxConfig, MuxEvent};

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn idle_streams_cost_little_memory() {
    let cfg = MuxConfig {
        keepalive: None,
        idle_timeout: None,
        max_streams: 1_000_000,
        ..MuxConfig::new(Auth::None)
    };
    let mut p = Pair::new(cfg.clone(), cfg);
    let addr = "10.0.0.1:80".parse().unwrap();
    p.server.mux.listen(addr).unwrap();
    p.drive();
    p.client.take_events();
    p.server.take_events();
    // Warm up allocator pools with a small round first.
    let mut warm = Vec::new();
    for _ in 0..1000 {
        warm.push(p.client.mux.connect(addr).unwrap());
    }
    p.drive();
    for id in warm {
        p.client.mux.reset(id);
    }
    p.drive();
    p.client.take_events();
    p.server.take_events();

    let n = 100_000;
    let before = rss_bytes();
    let mut first = None;
    for chunk in 0..n / 1000 {
        for _ in 0..1000 {
            let id = p.client.mux.connect(addr).unwrap();
            first.get_or_insert(id.0);
        }
        p.drive();
        // Events are the application's to consume; don't count them.
        let incoming = p
            .server
            .take_events()
            .iter()
            .filter(|e| matches!(e, MuxEvent::Incoming { .. }))
            .count();
        assert_eq!(incoming, 1000, "chunk {chunk}");
        p.client.take_events();
    }
    let after = rss_bytes();
    assert_eq!(p.client.mux.stream_count(), n);
    assert_eq!(p.server.mux.stream_count(), n);
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    eprintln!("idle stream: {per:.0} bytes of RSS per stream, both ends together ({n} streams)");
    assert!(per <= 512.0, "{per} bytes per idle stream (both ends)");

    // Closing them all gives the memory back (the tables shrink).
    let first = first.unwrap();
    for i in 0..n as u32 {
        p.client.mux.reset(zs_p2pvm::StreamId(first + 2 * i));
    }
    p.drive();
    p.client.take_events();
    p.server.take_events();
    assert_eq!(p.client.mux.stream_count() + p.server.mux.stream_count(), 0);
    let closed = rss_bytes();
    let kept = closed.saturating_sub(before);
    eprintln!("after closing all: {kept} bytes above the start");
    assert!(
        kept < (after - before) / 4,
        "{kept} bytes kept after closing everything"
    );
}
