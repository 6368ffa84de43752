//! StableIO state of a [`Session`](crate::Session): numbered records, the resend
//! buffer, cumulative acks, and the resume credentials.
//!
//! Every application frame of a stable session travels as
//! `SeqData { seq, payload = the encoded frame }`. The sender keeps each record
//! until the peer's cumulative ack (`SeqAck` / `SeqKeepalive`) covers it; the
//! receiver delivers `seq == delivered + 1` only, drops `seq <= delivered`
//! (duplicates after a resume) and answers a gap with `SeqResend`. Link-level
//! frames (the `Seq*` kinds, `Keepalive`, `Echo`, and the `__@stable` /
//! `__@resume` controls) are never numbered: they belong to one TCP connection.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

/// Control command: client asks for StableIO / server answers with credentials.
pub const CTL_STABLE: &str = "__@stable";
/// Control command: client resumes a session / server confirms.
pub const CTL_RESUME: &str = "__@resume";
/// Control command: the sender ends its StableIO session in an orderly way
/// (sent before the FIN; over a security layer an EOF alone is a lost link).
pub const CTL_CLOSE: &str = "__@close";
/// Control command: checksums of a BatchStream's staged frames, sent just before
/// the batch's answer.
pub const CTL_BATCHSUM: &str = "__@batchsum";
/// Size of the resume secret.
pub const SECRET_LEN: usize = 32;

/// Where a stable session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Client: `__@stable` sent, credentials not yet received (records are
    /// transmitted: the server reads the request first).
    Negotiating,
    /// Records flow on the current link.
    Online,
    /// Client: a new link exists, the resume is not yet confirmed (records are
    /// buffered, not transmitted).
    Resuming,
    /// No link: records are buffered.
    Down,
}

/// Per-session StableIO state (its `Debug` leaves the secret out).
pub(crate) struct Stable {
    pub client: bool,
    pub phase: Phase,
    pub sid: u64,
    pub secret: [u8; SECRET_LEN],
    /// Next sequence number to assign (the first record is 1).
    pub next_seq: u64,
    /// Records sent and not yet acknowledged, in order.
    pub unacked: VecDeque<(u64, Bytes)>,
    pub unacked_bytes: usize,
    /// Highest record acknowledged by the peer.
    pub peer_acked: u64,
    /// Highest record transmitted on the current link.
    pub sent: u64,
    /// Highest record received and delivered in order.
    pub delivered: u64,
    /// The last cumulative ack we sent.
    pub acked_out: u64,
    /// Payload bytes of the records handled since that ack.
    pub in_since_ack: usize,
    /// When a delayed ack is due.
    pub ack_due: Option<Instant>,
    /// Highest sequence number we asked the peer to resend.
    pub resend_asked: u64,
    /// Highest record re-sent on the current link (each at most once).
    pub resent_to: u64,
    /// Answers waiting for room in the resend buffer (encoded frames).
    pub parked: VecDeque<Bytes>,
    pub parked_bytes: usize,
    /// The link must be dropped (the peer lets records pile up unacknowledged).
    pub link_failure: Option<String>,
}

impl std::fmt::Debug for Stable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stable")
            .field("client", &self.client)
            .field("phase", &self.phase)
            .field("sid", &self.sid)
            .field("secret", &"<redacted>")
            .field("next_seq", &self.next_seq)
            .field("unacked_bytes", &self.unacked_bytes)
            .field("delivered", &self.delivered)
            .finish()
    }
}

impl Drop for Stable {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl Stable {
    pub fn new(client: bool, phase: Phase, sid: u64, secret: [u8; SECRET_LEN]) -> Stable {
        Stable {
            client,
            phase,
            sid,
            secret,
            next_seq: 1,
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            peer_acked: 0,
            sent: 0,
            delivered: 0,
            acked_out: 0,
            in_since_ack: 0,
            ack_due: None,
            resend_asked: 0,
            resent_to: 0,
            parked: VecDeque::new(),
            parked_bytes: 0,
            link_failure: None,
        }
    }

    /// Everything handled so far is (being) acknowledged.
    pub fn mark_acked(&mut self) {
        self.acked_out = self.delivered;
        self.ack_due = None;
        self.in_since_ack = 0;
    }

    /// Whether records go out on the link now.
    pub fn transmitting(&self) -> bool {
        matches!(self.phase, Phase::Negotiating | Phase::Online)
    }

    /// The peer acknowledged every record up to `seq`: frees them. `false` if it
    /// acknowledges a record never assigned (a protocol violation).
    pub fn on_ack(&mut self, seq: u64) -> bool {
        if seq >= self.next_seq {
            return false;
        }
        if seq > self.peer_acked {
            self.peer_acked = seq;
        }
        while let Some((s, b)) = self.unacked.front() {
            if *s > seq {
                break;
            }
            self.unacked_bytes -= b.len();
            self.unacked.pop_front();
        }
        true
    }
}

/// The resume proof: HMAC-SHA256 keyed with the session's resume secret over
/// the new link's channel binding (PROTOCOL.md §3.5).
pub(crate) fn resume_proof(secret: &[u8; SECRET_LEN], binding: &[u8; 32]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, &[b"zs1 resume".as_slice(), binding].concat());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Checks a resume proof in constant time.
pub(crate) fn verify_proof(
    secret: &[u8; SECRET_LEN],
    binding: &[u8; 32],
    proof: &[u8; 32],
) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &[b"zs1 resume".as_slice(), binding].concat(), proof).is_ok()
}

/// Checksum of one staged BatchStream frame: the first 16 bytes of SHA3-256 over
/// the frame's DataFrame encoding (PROTOCOL.md Part 1, §1.6).
pub fn batch_checksum(data: &zs_wire::DataFrame) -> [u8; 16] {
    use sha3::Digest;
    let h = sha3::Sha3_256::digest(data.to_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&h[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_free_records_in_order_and_reject_the_future() {
        let mut s = Stable::new(true, Phase::Online, 1, [0; 32]);
        for i in 1..=3u64 {
            s.unacked.push_back((i, Bytes::from(vec![0; i as usize])));
            s.unacked_bytes += i as usize;
            s.next_seq += 1;
        }
        assert!(s.on_ack(2));
        assert_eq!((s.unacked.len(), s.unacked_bytes, s.peer_acked), (1, 3, 2));
        assert!(s.on_ack(1), "an old ack is harmless");
        assert_eq!(s.peer_acked, 2);
        assert!(!s.on_ack(4), "record 4 was never sent");
        let (secret, b1, b2) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let proof = resume_proof(&secret, &b1);
        assert!(verify_proof(&secret, &b1, &proof));
        assert!(!verify_proof(&secret, &b2, &proof), "bound to the channel");
        assert!(
            !verify_proof(&[9u8; 32], &b1, &proof),
            "bound to the secret"
        );
    }
}
