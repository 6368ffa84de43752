//! The seam the framework holds: `Arc<dyn SecurityProvider>` makes sessions,
//! each a `Box<dyn SecureSession>`; zs-core plugs in our AEAD sessions, TLS,
//! or (feature `fuzzing`) the NullCipher suite without knowing which.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ring::rand::SystemRandom;

use crate::error::{Error, Result};
use crate::session::{ClientConfig, Event, ServerConfig, Session};

/// A secure byte stream, sans-IO. Implemented by [`Session`] and [`crate::tls::TlsSession`].
pub trait SecureSession: Send {
    /// Feeds bytes received from the transport.
    fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<()>;
    /// Appends bytes to send on the transport to `out`.
    fn write_output(&mut self, out: &mut Vec<u8>);
    /// The bytes to send on the transport, taken. A session that keeps a
    /// reusable output buffer splits them off it (no copy; its memory comes
    /// back once the transport dropped them). The default collects
    /// [`Self::write_output`] into a fresh buffer.
    fn take_output_bytes(&mut self) -> Bytes {
        let mut out = Vec::new();
        self.write_output(&mut out);
        Bytes::from(out)
    }
    /// Asks for Data records at most `wire` bytes long on the wire (header,
    /// plaintext, tag), so a receiver reading in chunks of that size finds
    /// whole records in full reads (see `Session::set_record_wire_size`).
    /// The default ignores it (a TLS session keeps its own record sizes).
    fn set_record_wire_size(&mut self, _wire: usize) {}
    /// Next event.
    fn poll_event(&mut self) -> Option<Event>;
    /// Queues application data.
    fn send(&mut self, data: &[u8], now: Instant) -> Result<()>;
    /// True while handshaking.
    fn is_handshaking(&self) -> bool;
    /// Next deadline for [`Self::handle_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// Drives time-based work.
    fn handle_timeout(&mut self, now: Instant) -> Result<()>;
    /// Replaces keys now.
    fn rekey(&mut self, now: Instant) -> Result<()>;
    /// Orderly close.
    fn close(&mut self) -> Result<()>;
    /// The transport ended; an error if that truncated the stream.
    fn handle_eof(&mut self) -> Result<()>;
    /// Feeds bytes received from the transport; application data may be
    /// handed to `on_data` directly (in order, instead of [`Event::Data`],
    /// saving a copy). The default feeds [`Self::handle_input`], so the data
    /// arrives as events: callers must handle both.
    fn handle_input_with(
        &mut self,
        data: &[u8],
        now: Instant,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        let _ = on_data;
        self.handle_input(data, now)
    }
    /// Like [`Self::handle_input_with`], but the session may decrypt complete
    /// records where they lie in `data` (which is then overwritten), saving
    /// another copy. The default copies through [`Self::handle_input_with`].
    fn handle_input_in_place(
        &mut self,
        data: &mut [u8],
        now: Instant,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        self.handle_input_with(data, now, on_data)
    }
    /// Like [`Self::handle_input_in_place`], but the session may leave a
    /// trailing partial record to the caller: returns how many bytes of `data`
    /// it took; the caller gives the rest again, followed by the next bytes
    /// (see [`Session::handle_input_leaving_partial`]). The default takes
    /// everything through [`Self::handle_input_in_place`].
    fn handle_input_leaving_partial(
        &mut self,
        data: &mut [u8],
        now: Instant,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize> {
        self.handle_input_in_place(data, now, on_data)?;
        Ok(data.len())
    }
    /// Releases the capacity of internal buffers that are empty, so an idle
    /// session keeps little memory. The default does nothing.
    fn shrink(&mut self) {}
    /// Drops what the session can make again from what it keeps, such as the
    /// expanded cipher keys and an empty reusable output buffer (the keys are
    /// made again from the traffic secrets by the next
    /// record), so a connection that went idle holds little memory. Costs that
    /// setup again on the next record: call it after a quiet period, not per
    /// read. The default does nothing.
    fn release_keys(&mut self) {}
    /// A secret 32-byte value equal on both ends of this session and unique to
    /// it, once the handshake completed (see [`Session::channel_binding`]).
    /// Higher layers bind proofs to the channel with it (zs-core's StableIO
    /// resume proof). `None` (the default) when the layer has none.
    fn channel_binding(&self) -> Option<[u8; 32]> {
        None
    }
    /// The fingerprint of the static server key this session authenticates
    /// with, once established (see [`Session::server_key`]). `None` (the
    /// default) when the layer has none.
    fn server_key(&self) -> Option<[u8; 32]> {
        None
    }
}

/// Makes sessions for one side or both. Object safe; the framework holds `Arc<dyn SecurityProvider>`.
pub trait SecurityProvider: Send + Sync {
    /// Short name for logs (`"zs-aead"`, `"tls13"`, ...).
    fn name(&self) -> &str;
    /// A new client-side session (its first bytes may already be in the output).
    fn new_client(&self, now: Instant) -> Result<Box<dyn SecureSession>>;
    /// A new server-side session.
    fn new_server(&self, now: Instant) -> Result<Box<dyn SecureSession>>;
}

impl SecureSession for Session {
    fn handle_input(&mut self, data: &[u8], now: Instant) -> Result<()> {
        Session::handle_input(self, data, now)
    }
    fn set_record_wire_size(&mut self, wire: usize) {
        Session::set_record_wire_size(self, wire)
    }
    fn write_output(&mut self, out: &mut Vec<u8>) {
        Session::write_output(self, out)
    }
    fn take_output_bytes(&mut self) -> Bytes {
        Session::take_output_bytes(self)
    }
    fn poll_event(&mut self) -> Option<Event> {
        Session::poll_event(self)
    }
    fn send(&mut self, data: &[u8], now: Instant) -> Result<()> {
        Session::send(self, data, now)
    }
    fn is_handshaking(&self) -> bool {
        Session::is_handshaking(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Session::poll_timeout(self)
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<()> {
        Session::handle_timeout(self, now)
    }
    fn rekey(&mut self, now: Instant) -> Result<()> {
        Session::rekey(self, now)
    }
    fn close(&mut self) -> Result<()> {
        Session::close(self)
    }
    fn handle_eof(&mut self) -> Result<()> {
        Session::handle_eof(self)
    }
    fn handle_input_with(
        &mut self,
        data: &[u8],
        now: Instant,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        Session::handle_input_with(self, data, now, on_data)
    }
    fn handle_input_in_place(
        &mut self,
        data: &mut [u8],
        now: Instant,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<()> {
        Session::handle_input_in_place(self, data, now, on_data)
    }
    fn handle_input_leaving_partial(
        &mut self,
        data: &mut [u8],
        now: Instant,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<usize> {
        Session::handle_input_leaving_partial(self, data, now, on_data)
    }
    fn shrink(&mut self) {
        Session::shrink(self)
    }
    fn release_keys(&mut self) {
        Session::release_keys(self)
    }
    fn channel_binding(&self) -> Option<[u8; 32]> {
        Session::channel_binding(self)
    }
    fn server_key(&self) -> Option<[u8; 32]> {
        Session::server_key(self).map(|f| f.0)
    }
}

/// Provider of our own sessions (X25519 handshake + AEAD or CTR/HMAC records),
/// with the operating system's random generator.
pub struct ZsSecurity {
    client: Option<Arc<ClientConfig>>,
    server: Option<Arc<ServerConfig>>,
    rng: SystemRandom,
}

impl ZsSecurity {
    /// A provider; give the configuration of each side it must serve.
    pub fn new(client: Option<Arc<ClientConfig>>, server: Option<Arc<ServerConfig>>) -> ZsSecurity {
        ZsSecurity {
            client,
            server,
            rng: SystemRandom::new(),
        }
    }

    /// A provider whose sessions use only the NullCipher suite (no protection):
    /// for fuzzing, so fuzzers reach post-handshake states. The pre-shared
    /// key is SHA3-256(`psk`), so any `psk` meets the minimum key length.
    #[cfg(feature = "fuzzing")]
    pub fn null_cipher(psk: &[u8]) -> ZsSecurity {
        use crate::session::{Selection, SuitePolicy};
        use crate::suite::SuiteId;
        let key = zeroize::Zeroizing::new(crate::hash::sha3_256(psk));
        let mut c = ClientConfig::psk(b"fuzz", &key[..]).expect("32-byte key");
        c.suites = vec![SuiteId::Null];
        let mut s = ServerConfig::with_psk(b"fuzz", &key[..]).expect("32-byte key");
        s.policy = SuitePolicy {
            allowed: vec![SuiteId::Null],
            selection: Selection::ServerPreference,
        };
        ZsSecurity::new(Some(Arc::new(c)), Some(Arc::new(s)))
    }
}

impl SecurityProvider for ZsSecurity {
    fn name(&self) -> &str {
        "zs-aead"
    }
    fn new_client(&self, now: Instant) -> Result<Box<dyn SecureSession>> {
        let c = self
            .client
            .clone()
            .ok_or_else(|| Error::Config("no client configuration".into()))?;
        Ok(Box::new(Session::client(c, &self.rng, now)?))
    }
    fn new_server(&self, now: Instant) -> Result<Box<dyn SecureSession>> {
        let s = self
            .server
            .clone()
            .ok_or_else(|| Error::Config("no server configuration".into()))?;
        Ok(Box::new(Session::server(s, &self.rng, now)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn SecurityProvider, _: &dyn SecureSession) {}

    #[test]
    fn provider_pair_talks() {
        let p: Arc<dyn SecurityProvider> = Arc::new(ZsSecurity::new(
            Some(Arc::new(ClientConfig::psk(b"id", &[7; 32]).unwrap())),
            Some(Arc::new(ServerConfig::with_psk(b"id", &[7; 32]).unwrap())),
        ));
        let now = Instant::now();
        let mut c = p.new_client(now).unwrap();
        let mut s = p.new_server(now).unwrap();
        c.send(b"early", now).unwrap();
        for _ in 0..3 {
            let mut b = Vec::new();
            c.write_output(&mut b);
            s.handle_input(&b, now).unwrap();
            let mut b = Vec::new();
            s.write_output(&mut b);
            c.handle_input(&b, now).unwrap();
        }
        assert!(!c.is_handshaking() && !s.is_handshaking());
        let evs: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
        assert!(evs.contains(&Event::Data(b"early".to_vec())), "{evs:?}");
    }
}
