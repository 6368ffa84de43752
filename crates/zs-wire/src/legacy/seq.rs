//! The sequence layer: records on the byte stream below the command frames.
//!
//! | type | record | after the type byte |
//! |---|---|---|
//! | `01` | quiet packet | u16 size, u32 seq, MD5(payload), payload: not acknowledged |
//! | `02` | packet | the same; acknowledged with `03` |
//! | `03` | ack | u32 seq |
//! | `04` | keepalive | u16 len, len bytes: answered with `05` and the same bytes |
//! | `05` | keepalive echo | u16 len, len bytes |
//! | `06` | resend request | u32 seq |
//!
//! Integers are little-endian. Sequence numbers count from 0 per direction.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use md5::{Digest, Md5};

use super::{LegacyError, LegacyLimits};

/// Record type: quiet packet (not acknowledged).
pub const QUIET_PACKET: u8 = 0x01;
/// Record type: packet.
pub const PACKET: u8 = 0x02;
/// Record type: ack.
pub const ACK: u8 = 0x03;
/// Record type: keepalive.
pub const KEEPALIVE: u8 = 0x04;
/// Record type: keepalive echo.
pub const KEEPALIVE_ECHO: u8 = 0x05;
/// Record type: resend request.
pub const RESEND: u8 = 0x06;
/// Bytes of a packet header after the type byte: size, seq, MD5.
pub const PACKET_HEAD: usize = 22;
/// The originals' packet MTU (ZNet 1536; ZServer4D 1024): payloads are cut into
/// `MTU - 23` bytes.
pub const ZNET_MTU: usize = 1536;

/// MD5 of `data`, as the sequence layer carries it.
pub fn md5(data: &[u8]) -> [u8; 16] {
    let d = Md5::digest(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d);
    out
}

/// What one [`SeqLayer::receive`] call saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeqStats {
    /// Packets delivered in order.
    pub delivered: u32,
    /// Duplicate packets dropped.
    pub duplicates: u32,
    /// Acks received.
    pub acks: u32,
    /// Keepalives answered.
    pub keepalives: u32,
    /// Resend requests answered.
    pub resends: u32,
}

/// One connection's sequence-layer state (both directions). Sans-IO: bytes in,
/// bytes out.
#[derive(Debug)]
pub struct SeqLayer {
    limits: LegacyLimits,
    send_seq: u32,
    recv_seq: u32,
    fragment: usize,
    /// Sent packets not yet acknowledged, oldest first: (seq, payload).
    history: VecDeque<(u32, Bytes)>,
    history_bytes: usize,
}

impl SeqLayer {
    /// A fresh connection: both sequence numbers at 0, ZNet's MTU.
    pub fn new(limits: LegacyLimits) -> SeqLayer {
        SeqLayer::with_mtu(limits, ZNET_MTU)
    }

    /// With another MTU (ZServer4D uses 1024); the payload per packet is
    /// `max(mtu, 1024) - 23` bytes, as in the originals.
    pub fn with_mtu(limits: LegacyLimits, mtu: usize) -> SeqLayer {
        SeqLayer {
            limits,
            send_seq: 0,
            recv_seq: 0,
            fragment: mtu.clamp(1024, 65535) - (PACKET_HEAD + 1),
            history: VecDeque::new(),
            history_bytes: 0,
        }
    }

    /// The next sequence number this side sends.
    pub fn send_seq(&self) -> u32 {
        self.send_seq
    }

    /// The next sequence number expected from the peer.
    pub fn recv_seq(&self) -> u32 {
        self.recv_seq
    }

    /// Bytes sent and not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.history_bytes
    }

    /// Cuts `data` (one or more whole command frames) into packets, appends them to
    /// `out` and keeps them until acknowledged. Fails when the peer has left more
    /// than [`LegacyLimits::max_unacked`] bytes unacknowledged.
    pub fn send(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), LegacyError> {
        if data.is_empty() {
            return Ok(());
        }
        if self.history_bytes + data.len() > self.limits.max_unacked {
            return Err(LegacyError::Unacked(self.history_bytes + data.len()));
        }
        let all = Bytes::copy_from_slice(data);
        out.reserve(data.len() + data.len().div_ceil(self.fragment) * (PACKET_HEAD + 1));
        let mut at = 0;
        while at < all.len() {
            let end = (at + self.fragment).min(all.len());
            let piece = all.slice(at..end);
            write_packet(out, self.send_seq, &piece);
            self.history_bytes += piece.len();
            self.history.push_back((self.send_seq, piece));
            self.send_seq = self.send_seq.wrapping_add(1);
            at = end;
        }
        Ok(())
    }

    /// Appends a keepalive record (empty body) to `out`.
    pub fn keepalive(out: &mut BytesMut) {
        out.put_u8(KEEPALIVE);
        out.put_u16_le(0);
    }

    /// Parses the complete records at the front of `src` (a partial record stays),
    /// appends the payloads of in-order packets to `deliver` and what must be sent
    /// back (acks, keepalive echoes, resent packets) to `reply`.
    ///
    /// Errors (the connection must be closed): an unknown record type, a packet
    /// whose MD5 does not match (an all-zero MD5 is accepted, as the originals
    /// do), a packet ahead of the expected one (TCP neither loses nor reorders).
    /// Duplicates (a resent packet we already have) are acknowledged and dropped.
    pub fn receive(
        &mut self,
        src: &mut BytesMut,
        deliver: &mut BytesMut,
        reply: &mut BytesMut,
    ) -> Result<SeqStats, LegacyError> {
        let mut st = SeqStats::default();
        while let Some(&t) = src.first() {
            match t {
                QUIET_PACKET | PACKET => {
                    if src.len() < 1 + PACKET_HEAD {
                        break;
                    }
                    let size = u16::from_le_bytes([src[1], src[2]]) as usize;
                    if src.len() < 1 + PACKET_HEAD + size {
                        break;
                    }
                    let seq = u32::from_le_bytes([src[3], src[4], src[5], src[6]]);
                    let mut sum = [0u8; 16];
                    sum.copy_from_slice(&src[7..23]);
                    src.advance(1 + PACKET_HEAD);
                    let payload = src.split_to(size);
                    if sum != [0u8; 16] && sum != md5(&payload) {
                        return Err(LegacyError::BadPacketMd5 { seq });
                    }
                    if t == PACKET {
                        reply.put_u8(ACK);
                        reply.put_u32_le(seq);
                    }
                    if seq == self.recv_seq {
                        deliver.extend_from_slice(&payload);
                        self.recv_seq = self.recv_seq.wrapping_add(1);
                        st.delivered += 1;
                    } else if (self.recv_seq.wrapping_sub(seq) as i32) > 0 {
                        st.duplicates += 1;
                    } else {
                        return Err(LegacyError::SequenceGap {
                            expected: self.recv_seq,
                            got: seq,
                        });
                    }
                }
                ACK | RESEND => {
                    if src.len() < 5 {
                        break;
                    }
                    let seq = u32::from_le_bytes([src[1], src[2], src[3], src[4]]);
                    src.advance(5);
                    if t == ACK {
                        st.acks += 1;
                        self.acked(seq);
                    } else if let Some((_, p)) = self.history.iter().find(|(s, _)| *s == seq) {
                        st.resends += 1;
                        write_packet(reply, seq, p);
                    }
                }
                KEEPALIVE | KEEPALIVE_ECHO => {
                    if src.len() < 3 {
                        break;
                    }
                    let len = u16::from_le_bytes([src[1], src[2]]) as usize;
                    if src.len() < 3 + len {
                        break;
                    }
                    let rec = src.split_to(3 + len);
                    if t == KEEPALIVE {
                        st.keepalives += 1;
                        reply.put_u8(KEEPALIVE_ECHO);
                        reply.extend_from_slice(&rec[1..]);
                    }
                }
                other => return Err(LegacyError::UnknownRecord(other)),
            }
        }
        Ok(st)
    }

    fn acked(&mut self, seq: u32) {
        // Acks arrive in order on TCP: usually the front entry.
        if let Some(i) = self.history.iter().position(|(s, _)| *s == seq) {
            if let Some((_, p)) = self.history.remove(i) {
                self.history_bytes -= p.len();
            }
        }
    }
}

fn write_packet(out: &mut BytesMut, seq: u32, payload: &[u8]) {
    out.put_u8(PACKET);
    out.put_u16_le(payload.len() as u16);
    out.put_u32_le(seq);
    out.put_slice(&md5(payload));
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_acks_duplicates_and_keepalive() {
        let mut a = SeqLayer::new(LegacyLimits::default());
        let mut b = SeqLayer::new(LegacyLimits::default());
        let data: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        let mut wire = BytesMut::new();
        a.send(&data, &mut wire).unwrap();
        assert_eq!(a.send_seq(), 3); // 1513 + 1513 + 974
        assert_eq!(a.unacked_bytes(), 4000);
        let copy = wire.clone();
        let (mut got, mut reply) = (BytesMut::new(), BytesMut::new());
        let mut src = copy.clone();
        let st = b.receive(&mut src, &mut got, &mut reply).unwrap();
        assert_eq!((st.delivered, src.len()), (3, 0));
        assert_eq!(&got[..], &data[..]);
        // The same packets again are duplicates: acked, dropped.
        let mut src = copy.clone();
        let mut got2 = BytesMut::new();
        let st = b.receive(&mut src, &mut got2, &mut reply).unwrap();
        assert_eq!((st.duplicates, got2.len()), (3, 0));
        // The acks free a's history.
        let mut acks = reply.split();
        let mut none = BytesMut::new();
        let st = a.receive(&mut acks, &mut none, &mut reply).unwrap();
        assert_eq!(st.acks, 6);
        assert_eq!(a.unacked_bytes(), 0);
        // Keepalive is echoed with its bytes.
        let mut ka = BytesMut::from(&[KEEPALIVE, 2, 0, 7, 9][..]);
        reply.clear();
        b.receive(&mut ka, &mut none, &mut reply).unwrap();
        assert_eq!(&reply[..], &[KEEPALIVE_ECHO, 2, 0, 7, 9]);
    }

    #[test]
    fn partial_records_wait_byte_by_byte() {
        let mut a = SeqLayer::new(LegacyLimits::default());
        let mut b = SeqLayer::new(LegacyLimits::default());
        let mut wire = BytesMut::new();
        a.send(b"hello world", &mut wire).unwrap();
        SeqLayer::keepalive(&mut wire);
        let (mut src, mut got, mut reply) = (BytesMut::new(), BytesMut::new(), BytesMut::new());
        for byte in wire.iter() {
            src.put_u8(*byte);
            b.receive(&mut src, &mut got, &mut reply).unwrap();
        }
        assert_eq!(&got[..], b"hello world");
        assert!(src.is_empty());
        assert_eq!(&reply[..], &[ACK, 0, 0, 0, 0, KEEPALIVE_ECHO, 0, 0]);
    }

    #[test]
    fn bad_md5_gap_unknown_record_and_unacked_are_errors() {
        let mut a = SeqLayer::new(LegacyLimits::default());
        let mut wire = BytesMut::new();
        a.send(b"payload", &mut wire).unwrap();
        let mut bad = wire.clone();
        bad[10] ^= 1; // inside the MD5
        let mut b = SeqLayer::new(LegacyLimits::default());
        let (mut got, mut reply) = (BytesMut::new(), BytesMut::new());
        assert_eq!(
            b.receive(&mut bad, &mut got, &mut reply),
            Err(LegacyError::BadPacketMd5 { seq: 0 })
        );
        // Packet 1 before packet 0.
        let mut second = BytesMut::new();
        a.send(b"two", &mut second).unwrap();
        let mut b = SeqLayer::new(LegacyLimits::default());
        assert_eq!(
            b.receive(&mut second, &mut got, &mut reply),
            Err(LegacyError::SequenceGap {
                expected: 0,
                got: 1
            })
        );
        let mut junk = BytesMut::from(&[0x42u8, 0, 0][..]);
        assert_eq!(
            b.receive(&mut junk, &mut got, &mut reply),
            Err(LegacyError::UnknownRecord(0x42))
        );
        let mut small = SeqLayer::new(LegacyLimits {
            max_unacked: 100,
            ..LegacyLimits::default()
        });
        small.send(&[0u8; 60], &mut BytesMut::new()).unwrap();
        assert_eq!(
            small.send(&[0u8; 60], &mut BytesMut::new()),
            Err(LegacyError::Unacked(120))
        );
    }

    #[test]
    fn resend_request_rewrites_the_packet() {
        let mut a = SeqLayer::new(LegacyLimits::default());
        let mut wire = BytesMut::new();
        a.send(b"again", &mut wire).unwrap();
        let mut req = BytesMut::from(&[RESEND, 0, 0, 0, 0][..]);
        let (mut got, mut reply) = (BytesMut::new(), BytesMut::new());
        let st = a.receive(&mut req, &mut got, &mut reply).unwrap();
        assert_eq!(st.resends, 1);
        assert_eq!(reply, wire);
    }
}
