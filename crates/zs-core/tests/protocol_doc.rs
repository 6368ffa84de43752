//! The hex examples of docs/PROTOCOL.md Part 3 are exactly the plaintext frames
//! zs-core sessions produce (the security layer under them, whose records
//! Part 2 specifies, is not part of zs-core).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use zs_core::{Call, Event, Reply, Session, SessionConfig};
use zs_wire::{DataFrame, Text};

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

/// What the security layer reports for a link: the channel binding is fixed,
/// so the examples are reproducible (a real layer's is secret and different
/// on every connection).
fn link() -> zs_io::SecurityInfo {
    zs_io::SecurityInfo::new("test", "AES-256-GCM", None, None)
        .with_channel_binding(Some([0x42; 32]))
}

/// A session whose link is up.
fn session(cfg: SessionConfig, now: Instant) -> Session {
    let mut s = Session::new(cfg);
    s.open_link(&link(), now).unwrap();
    s
}

/// Feeds `b` (whole frames) to `s`.
fn feed(s: &mut Session, b: &[u8], now: Instant) {
    let mut b = BytesMut::from(b);
    s.handle_input(&mut b, now).unwrap();
    assert!(b.is_empty());
}

/// Every ```` ```hex session-<name> ```` block of Part 3 (`#` comments ignored).
fn examples() -> HashMap<String, Vec<u8>> {
    let part3 = DOC
        .split("# Part 3")
        .nth(1)
        .expect("Part 3")
        .split("\n# Part ")
        .next()
        .unwrap_or_default();
    let mut out = HashMap::new();
    let mut lines = part3.lines();
    while let Some(l) = lines.next() {
        let Some(name) = l.trim().strip_prefix("```hex ") else {
            continue;
        };
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            let l = l.split('#').next().unwrap_or("");
            bytes.extend(
                l.split_whitespace()
                    .map(|b| u8::from_str_radix(b, 16).expect("hex byte")),
            );
        }
        out.insert(name.to_string(), bytes);
    }
    out
}

fn take(s: &mut Session) -> Vec<u8> {
    let mut b = BytesMut::new();
    s.write_output(&mut b);
    b.to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the documented exchange and returns `(name, bytes)` in order.
fn exchange() -> Vec<(&'static str, Vec<u8>)> {
    let now = Instant::now();
    let cfg = SessionConfig::default();
    let mut out = Vec::new();
    let mut c = Session::new(cfg);
    let mut s = Session::new(cfg);
    let sid = 0x0102_0304_0506_0708;
    let secret = [0xab; 32];
    s.serve_stable(Some((sid, secret)));
    s.open_link(&link(), now).unwrap();

    c.request_stable(now).unwrap();
    c.open_link(&link(), now).unwrap();
    let b = take(&mut c);
    out.push(("session-stable-request", b.clone()));
    feed(&mut s, &b, now);
    let b = take(&mut s);
    out.push(("session-stable-grant", b.clone()));
    feed(&mut c, &b, now);
    assert_eq!(c.stable_id(), Some(sid));

    let id = c
        .call(
            Call::Console {
                cmd: Text::from("echo"),
                text: Text::from("hi"),
            },
            None,
            now,
        )
        .unwrap();
    assert_eq!(id, 1);
    let b = take(&mut c);
    out.push(("session-stable-call", b.clone()));
    feed(&mut s, &b, now);
    s.respond(1, Ok(Reply::Text(Text::from("hi"))), now)
        .unwrap();
    let b = take(&mut s);
    out.push(("session-stable-answer", b.clone()));
    feed(&mut c, &b, now);
    let later = now + Duration::from_millis(50);
    s.handle_timeout(later).unwrap();
    let b = take(&mut s);
    out.push(("session-stable-ack", b.clone()));
    feed(&mut c, &b, later);

    // The link dies; a new one (fresh handshake) resumes the session.
    assert!(c.link_lost("test") && s.link_lost("test"));
    c.attach().unwrap();
    c.open_link(&link(), later).unwrap();
    let b = take(&mut c);
    out.push(("session-resume-request", b.clone()));
    let mut fresh = Session::new(cfg);
    fresh.serve_stable(None);
    fresh.open_link(&link(), later).unwrap();
    feed(&mut fresh, &b, later);
    let mut req = None;
    while let Some(ev) = fresh.poll_event() {
        if let Event::ResumeRequest {
            session,
            proof,
            delivered,
        } = ev
        {
            assert_eq!(session, sid);
            assert!(fresh.verify_resume(&secret, &proof));
            req = Some(delivered);
        }
    }
    let input = fresh.take_input();
    let next = [0x17; 32];
    s.resume_link(input, &link(), req.expect("resume request"), next, later)
        .unwrap();
    let b = take(&mut s);
    out.push(("session-resume-answer", b.clone()));
    feed(&mut c, &b, later);

    // The client ends the session in an orderly way: `__@close` before the
    // FIN, so the server ends it at once instead of keeping it offline.
    c.close(later);
    let b = take(&mut c);
    out.push(("session-stable-close", b.clone()));
    while s.poll_event().is_some() {}
    feed(&mut s, &b, later);
    assert!(matches!(s.poll_event(), Some(Event::Closed)));
    assert!(!s.link_lost("EOF"), "the session ended with its link");

    // A refused resume (fresh server, unknown session).
    let mut other = Session::new(cfg);
    other.serve_stable(None);
    other.open_link(&link(), later).unwrap();
    feed(&mut other, &out[5].1, later);
    other.refuse_resume("unknown or expired StableIO session", later);
    out.push(("session-resume-refused", take(&mut other)));

    // A batch of one frame and its checksum answer (no StableIO).
    let mut c = session(cfg, now);
    let mut s = session(cfg, now);
    let frames = vec![DataFrame::new().with(1u32)];
    c.call(
        Call::Batch {
            cmd: Text::from("sum"),
            frames,
        },
        None,
        now,
    )
    .unwrap();
    let b = take(&mut c);
    out.push(("session-batch-request", b.clone()));
    feed(&mut s, &b, now);
    s.respond(1, Ok(Reply::Data(DataFrame::new().with(1u32))), now)
        .unwrap();
    let b = take(&mut s);
    out.push(("session-batch-answer", b.clone()));
    feed(&mut c, &b, now);
    let mut ok = false;
    while let Some(ev) = c.poll_event() {
        if let Event::Reply { result, .. } = ev {
            ok = result.is_ok();
        }
    }
    assert!(ok, "the checksums matched");
    out
}

#[test]
fn part3_examples_are_what_the_sessions_send() {
    let doc = examples();
    let mut wrong = Vec::new();
    for (name, bytes) in exchange() {
        if doc.get(name) != Some(&bytes) {
            wrong.push(format!("```hex {name}\n{}\n```", hex(&bytes)));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/PROTOCOL.md Part 3 disagrees with the code; actual bytes:\n{}",
        wrong.join("\n")
    );
}
