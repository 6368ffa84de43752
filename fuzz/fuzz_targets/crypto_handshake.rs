//! Handshake messages: decoders on raw bytes, and arbitrary bytes fed to a
//! server awaiting ClientHello and to clients (pinned key, PSK) awaiting ServerHello.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use zs_crypto::handshake::{decode_client_finished, ClientHello, ServerHello};
use zs_crypto::session::{ClientConfig, ServerConfig, ServerIdentity};
use zs_crypto::{SecurityProvider, ZsSecurity};

fuzz_target!(|data: &[u8]| {
    let _ = ClientHello::decode(data);
    let _ = ServerHello::decode(data);
    let _ = decode_client_finished(data);
    if let Ok(ch) = ClientHello::decode(data) {
        assert_eq!(ClientHello::decode(&ch.encode()).ok(), Some(ch));
    }

    let now = Instant::now();
    let id = Arc::new(ServerIdentity::from_seed(&[9; 32]).expect("seed"));
    let mut scfg = ServerConfig::with_identity(id.clone());
    scfg.add_psk(b"fuzz", &[7; 32]).expect("psk");
    let pinned = ZsSecurity::new(
        Some(Arc::new(ClientConfig::pinned(id.fingerprint()))),
        Some(Arc::new(scfg)),
    );
    let psk = ZsSecurity::new(
        Some(Arc::new(ClientConfig::psk(b"fuzz", &[7; 32]).expect("psk"))),
        None,
    );

    let mut s = pinned.new_server(now).expect("server");
    let _ = s.handle_input(data, now);
    let mut out = Vec::new();
    s.write_output(&mut out);
    for p in [&pinned, &psk] {
        let mut c = p.new_client(now).expect("client");
        let _ = c.handle_input(data, now);
        c.write_output(&mut out);
        while c.poll_event().is_some() {}
    }
});
