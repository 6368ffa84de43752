//! Handshake messages: encoding and total decoding (bounded, errors not panics).
//! Byte layouts are specified in `docs/PROTOCOL.md`, Part 2.

use crate::error::{Error, Result};

/// Protocol version byte carried in both hellos.
pub const VERSION: u8 = 1;
/// Largest handshake (or alert) record body accepted.
pub const MAX_HANDSHAKE_LEN: usize = 1024;
/// Longest pre-shared key identity.
pub const MAX_PSK_ID_LEN: usize = 64;
/// Most suites a client may offer.
pub const MAX_OFFERED_SUITES: usize = 32;
/// Message type of ClientHello.
pub const CLIENT_HELLO: u8 = 0x01;
/// Message type of ServerHello.
pub const SERVER_HELLO: u8 = 0x02;
/// Message type of ClientFinished.
pub const CLIENT_FINISHED: u8 = 0x03;
/// Context string the server's Ed25519 signature covers, before the transcript hash.
pub const SIGNATURE_CONTEXT: &[u8] = b"zserver/1 server signature";

/// How the server is authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Static Ed25519 server key, pinned by the client (wire `1`).
    ServerKey = 1,
    /// Pre-shared key proved by both sides (wire `2`).
    Psk = 2,
}

impl AuthMode {
    fn from_u8(b: u8) -> Option<AuthMode> {
        match b {
            1 => Some(AuthMode::ServerKey),
            2 => Some(AuthMode::Psk),
            _ => None,
        }
    }

    /// Name used in errors.
    pub fn name(self) -> &'static str {
        match self {
            AuthMode::ServerKey => "server key",
            AuthMode::Psk => "pre-shared key",
        }
    }
}

/// The client's first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// Protocol version.
    pub version: u8,
    /// Ephemeral X25519 public key.
    pub public: [u8; 32],
    /// Requested authentication mode.
    pub auth: AuthMode,
    /// PSK identity (empty in server-key mode).
    pub psk_id: Vec<u8>,
    /// Offered suite wire ids, client preference first (unknown ids allowed).
    pub suites: Vec<u16>,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// Protocol version.
    pub version: u8,
    /// Ephemeral X25519 public key.
    pub public: [u8; 32],
    /// Chosen suite wire id.
    pub suite: u16,
    /// Authentication mode (echo of the client's).
    pub auth: AuthMode,
    /// Static Ed25519 public key (server-key mode).
    pub server_key: Option<[u8; 32]>,
    /// Ed25519 signature over `SIGNATURE_CONTEXT || H1` (server-key mode).
    pub signature: Option<[u8; 64]>,
    /// HMAC-SHA256(server_finished_key, H1).
    pub finished: [u8; 32],
}

struct Rd<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(Error::Malformed(self.what));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn end(&self) -> Result<()> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(Error::Malformed(self.what))
        }
    }
}

impl ClientHello {
    /// Encodes the message (type byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(37 + self.psk_id.len() + 2 * self.suites.len());
        v.push(CLIENT_HELLO);
        v.push(self.version);
        v.extend_from_slice(&self.public);
        v.push(self.auth as u8);
        v.push(self.psk_id.len() as u8);
        v.extend_from_slice(&self.psk_id);
        v.push(self.suites.len() as u8);
        for s in &self.suites {
            v.extend_from_slice(&s.to_le_bytes());
        }
        v
    }

    /// Decodes a message (type byte first); rejects trailing bytes and out-of-range counts.
    pub fn decode(b: &[u8]) -> Result<ClientHello> {
        let mut r = Rd {
            b,
            what: "ClientHello",
        };
        if r.u8()? != CLIENT_HELLO {
            return Err(Error::Malformed("ClientHello type"));
        }
        let version = r.u8()?;
        let public = r.arr::<32>()?;
        let auth = AuthMode::from_u8(r.u8()?).ok_or(Error::Malformed("ClientHello auth mode"))?;
        let n = r.u8()? as usize;
        if n > MAX_PSK_ID_LEN || (auth == AuthMode::ServerKey && n != 0) {
            return Err(Error::Malformed("ClientHello psk identity"));
        }
        let psk_id = r.take(n)?.to_vec();
        let k = r.u8()? as usize;
        if k == 0 || k > MAX_OFFERED_SUITES {
            return Err(Error::Malformed("ClientHello suite count"));
        }
        let suites = r
            .take(2 * k)?
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        r.end()?;
        Ok(ClientHello {
            version,
            public,
            auth,
            psk_id,
            suites,
        })
    }
}

impl ServerHello {
    /// Length of the part covered by H1 (everything before the signature).
    pub fn core_len(auth: AuthMode) -> usize {
        match auth {
            AuthMode::ServerKey => 37 + 32,
            AuthMode::Psk => 37,
        }
    }

    /// Encodes the core (the part H1 covers).
    pub fn encode_core(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(165);
        v.push(SERVER_HELLO);
        v.push(self.version);
        v.extend_from_slice(&self.public);
        v.extend_from_slice(&self.suite.to_le_bytes());
        v.push(self.auth as u8);
        if let Some(k) = &self.server_key {
            v.extend_from_slice(k);
        }
        v
    }

    /// Encodes the whole message.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.encode_core();
        if let Some(s) = &self.signature {
            v.extend_from_slice(s);
        }
        v.extend_from_slice(&self.finished);
        v
    }

    /// Decodes a whole message.
    pub fn decode(b: &[u8]) -> Result<ServerHello> {
        let mut r = Rd {
            b,
            what: "ServerHello",
        };
        if r.u8()? != SERVER_HELLO {
            return Err(Error::Malformed("ServerHello type"));
        }
        let version = r.u8()?;
        let public = r.arr::<32>()?;
        let s = r.arr::<2>()?;
        let auth = AuthMode::from_u8(r.u8()?).ok_or(Error::Malformed("ServerHello auth mode"))?;
        let (server_key, signature) = match auth {
            AuthMode::ServerKey => (Some(r.arr::<32>()?), Some(r.arr::<64>()?)),
            AuthMode::Psk => (None, None),
        };
        let finished = r.arr::<32>()?;
        r.end()?;
        Ok(ServerHello {
            version,
            public,
            suite: u16::from_le_bytes(s),
            auth,
            server_key,
            signature,
            finished,
        })
    }
}

/// Decodes a ClientFinished message: its 32-byte MAC.
pub fn decode_client_finished(b: &[u8]) -> Result<[u8; 32]> {
    let mut r = Rd {
        b,
        what: "ClientFinished",
    };
    if r.u8()? != CLIENT_FINISHED {
        return Err(Error::Malformed("ClientFinished type"));
    }
    let m = r.arr::<32>()?;
    r.end()?;
    Ok(m)
}

/// Alert codes (body of an `Alert` record: one byte).
pub mod alert {
    /// Any other handshake failure.
    pub const HANDSHAKE_FAILURE: u8 = 1;
    /// No cipher suite in common.
    pub const NO_COMMON_SUITE: u8 = 2;
    /// PSK identity unknown to the server. Reserved: no longer sent (an unknown
    /// identity is answered like a wrong key, see [`PSK_MISMATCH`]), still understood.
    pub const UNKNOWN_PSK_ID: u8 = 3;
    /// PSK proof did not verify.
    pub const PSK_MISMATCH: u8 = 4;
    /// Authentication mode not configured on the server.
    pub const AUTH_MODE: u8 = 5;
    /// Malformed or unexpected message.
    pub const DECODE: u8 = 6;
    /// The client rejected the server's identity (key not pinned, bad signature).
    pub const BAD_SERVER_IDENTITY: u8 = 7;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn client_hello_round_trip(public in any::<[u8; 32]>(), psk in proptest::collection::vec(any::<u8>(), 0..=64),
                                   suites in proptest::collection::vec(any::<u16>(), 1..=32)) {
            let auth = if psk.is_empty() { AuthMode::ServerKey } else { AuthMode::Psk };
            let ch = ClientHello { version: VERSION, public, auth, psk_id: psk, suites };
            prop_assert_eq!(ClientHello::decode(&ch.encode()).unwrap(), ch);
        }

        #[test]
        fn decoders_are_total(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ClientHello::decode(&b);
            let _ = ServerHello::decode(&b);
            let _ = decode_client_finished(&b);
        }
    }

    #[test]
    fn server_hello_round_trip_and_trailing_bytes() {
        let sh = ServerHello {
            version: 1,
            public: [1; 32],
            suite: 0x0105,
            auth: AuthMode::ServerKey,
            server_key: Some([2; 32]),
            signature: Some([3; 64]),
            finished: [4; 32],
        };
        let mut e = sh.encode();
        assert_eq!(e.len(), 165);
        assert_eq!(ServerHello::decode(&e).unwrap(), sh);
        e.push(0);
        assert!(ServerHello::decode(&e).is_err());
    }
}
