//! The pass-through session: frames over a connection that already carries
//! plaintext because the security layer sits *under* it (a
//! `zs_secure::SecureBackend`, issue 13 part 2, step 1 of the move).
//!
//! [`Session`](crate::Session) still talks to a [`SecureSession`]; over a
//! secure backend that is this one. It adds no bytes: input is handed on as it
//! came (no copy of its own), output is the session's frames. The
//! "handshake" completes at once with what the layer reported on the
//! connection ([`zs_io::Connection::security_info`]): the suite and PSK
//! identity for `Event::Established`, the channel binding for the StableIO
//! resume proof.

use std::collections::VecDeque;
use std::time::Instant;

use zs_crypto::{Event, SecureSession, SuiteId};
use zs_io::SecurityInfo;

/// What a connection's security layer reported, as zs-core's session needs it.
pub(crate) struct Verified {
    suite: SuiteId,
    psk_identity: Option<Vec<u8>>,
    channel_binding: Option<[u8; 32]>,
    server_key: Option<[u8; 32]>,
}

impl Verified {
    /// From the connection's [`SecurityInfo`]; an error names why a link
    /// without one (or with a suite this build does not know) is refused.
    pub(crate) fn from_info(info: Option<&SecurityInfo>) -> Result<Verified, String> {
        let Some(info) = info else {
            return Err("the connection has no security layer (start_plain / connect_plain need a secure backend such as zs_secure::SecureBackend)".into());
        };
        let suite = suite_by_name(&info.suite)
            .ok_or_else(|| format!("unknown cipher suite {:?}", info.suite))?;
        Ok(Verified {
            suite,
            psk_identity: info.psk_identity.clone(),
            channel_binding: info.channel_binding,
            server_key: info.server_key,
        })
    }
}

/// The suite called `name` ([`SuiteId::name`]), zs1 and TLS 1.3 suites.
fn suite_by_name(name: &str) -> Option<SuiteId> {
    SuiteId::ALL
        .into_iter()
        .chain([
            SuiteId::Tls13Aes128GcmSha256,
            SuiteId::Tls13Aes256GcmSha384,
            SuiteId::Tls13ChaCha20Poly1305Sha256,
        ])
        .find(|s| s.name() == name)
}

/// A [`SecureSession`] that adds nothing (see the module docs).
pub(crate) struct Passthrough {
    verified: Verified,
    announced: bool,
    out: Vec<u8>,
    /// Input given through [`SecureSession::handle_input`] (no callback):
    /// handed on as [`Event::Data`].
    data: VecDeque<Vec<u8>>,
}

impl Passthrough {
    pub(crate) fn new(verified: Verified) -> Passthrough {
        Passthrough {
            verified,
            announced: false,
            out: Vec::new(),
            data: VecDeque::new(),
        }
    }
}

impl SecureSession for Passthrough {
    fn handle_input(&mut self, data: &[u8], _: Instant) -> zs_crypto::Result<()> {
        if !data.is_empty() {
            self.data.push_back(data.to_vec());
        }
        Ok(())
    }

    fn handle_input_with(
        &mut self,
        data: &[u8],
        _: Instant,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> zs_crypto::Result<()> {
        if !data.is_empty() {
            on_data(data);
        }
        Ok(())
    }

    fn handle_input_in_place(
        &mut self,
        data: &mut [u8],
        now: Instant,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> zs_crypto::Result<()> {
        self.handle_input_with(data, now, on_data)
    }

    fn write_output(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            // The caller's empty buffer (with its capacity) becomes ours: the
            // frames move out without a copy and the two buffers alternate.
            std::mem::swap(out, &mut self.out);
        } else {
            out.append(&mut self.out);
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        if !self.announced {
            self.announced = true;
            return Some(Event::HandshakeComplete {
                suite: self.verified.suite,
                psk_identity: self.verified.psk_identity.clone(),
            });
        }
        self.data.pop_front().map(Event::Data)
    }

    fn send(&mut self, data: &[u8], _: Instant) -> zs_crypto::Result<()> {
        self.out.extend_from_slice(data);
        Ok(())
    }

    fn is_handshaking(&self) -> bool {
        !self.announced
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None // rekeying is the layer's
    }

    fn handle_timeout(&mut self, _: Instant) -> zs_crypto::Result<()> {
        Ok(())
    }

    fn rekey(&mut self, _: Instant) -> zs_crypto::Result<()> {
        Ok(())
    }

    fn close(&mut self) -> zs_crypto::Result<()> {
        Ok(()) // the layer sends its close record when the connection closes
    }

    fn handle_eof(&mut self) -> zs_crypto::Result<()> {
        Ok(())
    }

    fn shrink(&mut self) {
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        if self.data.is_empty() {
            self.data = VecDeque::new();
        }
    }

    fn channel_binding(&self) -> Option<[u8; 32]> {
        self.verified.channel_binding
    }

    fn server_key(&self) -> Option<[u8; 32]> {
        self.verified.server_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(suite: &str) -> SecurityInfo {
        SecurityInfo::new("test", suite, Some(b"alice".to_vec()), Some([3; 32]))
            .with_channel_binding(Some([9; 32]))
    }

    #[test]
    fn refuses_links_without_security_or_with_unknown_suites() {
        assert!(Verified::from_info(None).is_err());
        assert!(Verified::from_info(Some(&info("ROT13"))).is_err());
        for s in SuiteId::ALL {
            assert_eq!(Verified::from_info(Some(&info(s.name()))).unwrap().suite, s);
        }
    }

    #[test]
    fn passes_bytes_through_and_reports_the_layer() {
        let mut p = Passthrough::new(Verified::from_info(Some(&info("AES-256-GCM"))).unwrap());
        assert!(p.is_handshaking());
        match p.poll_event() {
            Some(Event::HandshakeComplete {
                suite,
                psk_identity,
            }) => {
                assert_eq!(suite, SuiteId::Aes256Gcm);
                assert_eq!(psk_identity.as_deref(), Some(&b"alice"[..]));
            }
            other => panic!("{other:?}"),
        }
        assert!(!p.is_handshaking());
        assert_eq!(p.channel_binding(), Some([9; 32]));
        assert_eq!(p.server_key(), Some([3; 32]));
        let mut got = Vec::new();
        p.handle_input_in_place(&mut b"abc".to_vec(), Instant::now(), &mut |d| {
            got.extend_from_slice(d)
        })
        .unwrap();
        assert_eq!(got, b"abc");
        p.handle_input(b"de", Instant::now()).unwrap();
        assert!(matches!(p.poll_event(), Some(Event::Data(d)) if d == b"de"));
        p.send(b"xy", Instant::now()).unwrap();
        p.send(b"z", Instant::now()).unwrap();
        let mut out = Vec::new();
        p.write_output(&mut out);
        assert_eq!(out, b"xyz");
        p.send(b"1", Instant::now()).unwrap();
        p.write_output(&mut out);
        assert_eq!(out, b"xyz1");
    }
}
