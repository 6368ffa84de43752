//! Checks the example bytes of `docs/PROTOCOL.md` Part 2 against the code:
//! a handshake with fixed keys and randomness, then one record each way, a
//! key update and a close. The document cannot drift from the code.

#![allow(deprecated)] // ring::test::rand: deterministic randomness for a fixed transcript.

use std::sync::Arc;
use std::time::Instant;

use ring::test::rand::FixedSliceSequenceRandom;
use zs_crypto::hash::{from_hex, to_hex};
use zs_crypto::session::{
    ClientConfig, Selection, ServerConfig, ServerIdentity, Session, SuitePolicy,
};
use zs_crypto::SuiteId;

const DOC: &str = include_str!("../../../docs/PROTOCOL.md");

/// Hex of the fenced block tagged ```` ```hex <name> ```` in Part 2 (whitespace and `#` comments ignored).
fn doc_block(name: &str) -> Option<Vec<u8>> {
    let part2 = DOC.split("# Part 2").nth(1)?;
    let fence = format!("```hex {name}\n");
    let start = part2.find(&fence)? + fence.len();
    let body = &part2[start..start + part2[start..].find("```")?];
    let hex: String = body
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect();
    from_hex(&hex)
}

fn fixed_transcript() -> Vec<(&'static str, Vec<u8>)> {
    let now = Instant::now();
    let id = Arc::new(ServerIdentity::from_seed(&[0x33; 32]).unwrap());
    let mut ccfg = ClientConfig::pinned(id.fingerprint());
    ccfg.suites = vec![SuiteId::Aes256Gcm, SuiteId::Mars256CtrHmacSha3];
    let mut scfg = ServerConfig::with_identity(id);
    scfg.policy = SuitePolicy {
        allowed: vec![SuiteId::Aes256Gcm, SuiteId::Mars256CtrHmacSha3],
        selection: Selection::ServerPreference,
    };
    let crand = FixedSliceSequenceRandom {
        bytes: &[&[0x11; 32]],
        current: Default::default(),
    };
    let srand = FixedSliceSequenceRandom {
        bytes: &[&[0x22; 32], &[0, 0, 0, 0]],
        current: Default::default(),
    };
    let mut c = Session::client(Arc::new(ccfg), &crand, now).unwrap();
    let mut s = Session::server(Arc::new(scfg), &srand, now).unwrap();
    let client_hello = c.take_output();
    s.handle_input(&client_hello, now).unwrap();
    let server_hello = s.take_output();
    c.handle_input(&server_hello, now).unwrap();
    let client_finished = c.take_output();
    s.handle_input(&client_finished, now).unwrap();
    c.send(b"hello", now).unwrap();
    let client_data = c.take_output();
    c.rekey(now).unwrap();
    let client_key_update = c.take_output();
    c.close().unwrap();
    let client_close = c.take_output();
    s.handle_input(
        &[
            client_data.clone(),
            client_key_update.clone(),
            client_close.clone(),
        ]
        .concat(),
        now,
    )
    .unwrap();
    // The server answered the update request with its own key update.
    let server_key_update = s.take_output();
    vec![
        ("client-hello", client_hello),
        ("server-hello", server_hello),
        ("client-finished", client_finished),
        ("client-data", client_data),
        ("client-key-update", client_key_update),
        ("client-close", client_close),
        ("server-key-update", server_key_update),
    ]
}

#[test]
fn documented_bytes_match_the_code() {
    let mut missing = Vec::new();
    for (name, bytes) in fixed_transcript() {
        match doc_block(name) {
            Some(doc) if doc == bytes => {}
            _ => missing.push(format!("```hex {name}\n{}\n```", to_hex(&bytes))),
        }
    }
    assert!(
        missing.is_empty(),
        "docs/PROTOCOL.md Part 2 disagrees with the code; actual bytes:\n{}",
        missing.join("\n")
    );
}

#[test]
fn documented_fingerprint_matches() {
    let id = ServerIdentity::from_seed(&[0x33; 32]).unwrap();
    let fp = id.fingerprint().to_string();
    assert!(
        DOC.split("# Part 2").nth(1).unwrap().contains(&fp),
        "fingerprint {fp} not in the doc"
    );
}
