//! The hex examples of docs/PROTOCOL.md Part 3 are exactly the plaintext frames
//! zs-core sessions produce (a pass-through security layer stands in for
//! zs-crypto, whose records Part 2 specifies).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use zs_core::{Call, Event, Reply, Session, SessionConfig};
use zs_crypto::{SecureSession, SuiteId};
use zs_wire::{DataFrame, Text};

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

/// A security layer that adds nothing: the session's plaintext frames become
/// visible.
#[derive(Default)]
struct Plain {
    out: Vec<u8>,
    events: VecDeque<zs_crypto::Event>,
    announced: bool,
}

impl SecureSession for Plain {
    fn handle_input(&mut self, data: &[u8], _: Instant) -> zs_crypto::Result<()> {
        self.events.push_back(zs_crypto::Event::Data(data.to_vec()));
        Ok(())
    }
    fn write_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.out);
    }
    fn poll_event(&mut self) -> Option<zs_crypto::Event> {
        if !self.announced {
            self.announced = true;
            return Some(zs_crypto::Event::HandshakeComplete {
                suite: SuiteId::Aes256Gcm,
                psk_identity: None,
            });
        }
        self.events.pop_front()
    }
    fn send(&mut self, data: &[u8], _: Instant) -> zs_crypto::Result<()> {
        self.out.extend_from_slice(data);
        Ok(())
    }
    fn is_handshaking(&self) -> bool {
        false
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _: Instant) -> zs_crypto::Result<()> {
        Ok(())
    }
    fn rekey(&mut self, _: Instant) -> zs_crypto::Result<()> {
        Ok(())
    }
    fn close(&mut self) -> zs_crypto::Result<()> {
        Ok(())
    }
    fn channel_binding(&self) -> Option<[u8; 32]> {
        // Fixed, so the examples are reproducible (a real layer's is secret
        // and different on every connection).
        Some([0x42; 32])
    }
    fn handle_eof(&mut self) -> zs_crypto::Result<()> {
        Ok(())
    }
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
    let mut b = Vec::new();
    s.write_output(&mut b);
    b
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
    let mut c = Session::new(Box::new(Plain::default()), cfg);
    let mut s = Session::new(Box::new(Plain::default()), cfg);
    let sid = 0x0102_0304_0506_0708;
    let secret = [0xab; 32];
    s.serve_stable(Some((sid, secret)));

    c.request_stable(now).unwrap();
    c.handle_input(&[], now).unwrap();
    let b = take(&mut c);
    out.push(("session-stable-request", b.clone()));
    s.handle_input(&b, now).unwrap();
    let b = take(&mut s);
    out.push(("session-stable-grant", b.clone()));
    c.handle_input(&b, now).unwrap();
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
    s.handle_input(&b, now).unwrap();
    s.respond(1, Ok(Reply::Text(Text::from("hi"))), now)
        .unwrap();
    let b = take(&mut s);
    out.push(("session-stable-answer", b.clone()));
    c.handle_input(&b, now).unwrap();
    let later = now + Duration::from_millis(50);
    s.handle_timeout(later).unwrap();
    let b = take(&mut s);
    out.push(("session-stable-ack", b.clone()));
    c.handle_input(&b, later).unwrap();

    // The link dies; a new one (fresh handshake) resumes the session.
    assert!(c.link_lost("test") && s.link_lost("test"));
    c.attach(Box::new(Plain::default())).unwrap();
    c.handle_input(&[], later).unwrap();
    let b = take(&mut c);
    out.push(("session-resume-request", b.clone()));
    let mut fresh = Session::new(Box::new(Plain::default()), cfg);
    fresh.serve_stable(None);
    fresh.handle_input(&b, later).unwrap();
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
    let link = fresh.take_link();
    let next = [0x17; 32];
    s.resume_link(link, req.expect("resume request"), next, later)
        .unwrap();
    let b = take(&mut s);
    out.push(("session-resume-answer", b.clone()));
    c.handle_input(&b, later).unwrap();

    // A refused resume (fresh server, unknown session).
    let mut other = Session::new(Box::new(Plain::default()), cfg);
    other.serve_stable(None);
    other.handle_input(&out[5].1, later).unwrap();
    other.refuse_resume("unknown or expired StableIO session", later);
    out.push(("session-resume-refused", take(&mut other)));

    // A batch of one frame and its checksum answer (no StableIO).
    let mut c = Session::new(Box::new(Plain::default()), cfg);
    let mut s = Session::new(Box::new(Plain::default()), cfg);
    c.handle_input(&[], now).unwrap();
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
    s.handle_input(&b, now).unwrap();
    s.respond(1, Ok(Reply::Data(DataFrame::new().with(1u32))), now)
        .unwrap();
    let b = take(&mut s);
    out.push(("session-batch-answer", b.clone()));
    c.handle_input(&b, now).unwrap();
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
