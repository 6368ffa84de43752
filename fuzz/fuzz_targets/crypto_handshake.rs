//! Handshake messages: decoders on raw bytes, and arbitrary bytes fed to a
//! server awaiting ClientHello and to a client awaiting ServerHello.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use zs_crypto::handshake::{decode_client_finished, ClientHello, ServerHello};
use zs_crypto::session::{ClientConfig, ServerConfig, ServerIdentity, Session};

fuzz_target!(|data: &[u8]| {
    let _ = ClientHello::decode(data);
    let _ = ServerHello::decode(data);
    let _ = decode_client_finished(data);
    if let Ok(ch) = ClientHello::decode(data) {
        assert_eq!(ClientHello::decode(&ch.encode()).ok(), Some(ch));
    }

    let rng = ring::rand::SystemRandom::new();
    let now = Instant::now();
    let id = Arc::new(ServerIdentity::from_seed(&[9; 32]).expect("seed"));
    let mut scfg = ServerConfig::with_identity(id.clone());
    scfg.psks.insert(b"fuzz".to_vec(), b"key".to_vec());
    let mut s = Session::server(Arc::new(scfg), &rng, now).expect("server");
    if s.handle_input(data, now).is_ok() {
        let _ = s.take_output();
    }
    let mut c = Session::client(Arc::new(ClientConfig::pinned(id.fingerprint())), &rng, now)
        .expect("client");
    let _ = c.take_output();
    let _ = c.handle_input(data, now);
    let mut c =
        Session::client(Arc::new(ClientConfig::psk(b"fuzz", b"key")), &rng, now).expect("client");
    let _ = c.handle_input(data, now);
});
