//! The `__@` control commands the originals exchange.
//!
//! - `__@CipherModel` (stream): the handshake. The client sends DFE
//!   `[Integer platform]` with cipher 0 right after connecting; the server answers
//!   with the 15 values of [`CipherModel`], **the key buffer among them, in clear**.
//! - `__@Wait` (console): a barrier; the answer (the server's tick count in hex)
//!   comes after every earlier command was handled, since answers are in order.

use bytes::Bytes;

use super::dfe::{Dfe, DfeValue};
use super::LegacyError;

/// The handshake command.
pub const CIPHER_MODEL: &str = "__@CipherModel";
/// The barrier command.
pub const WAIT: &str = "__@Wait";
/// The platform id a Linux 64-bit client sends (`epLinux64`).
pub const PLATFORM_LINUX64: i32 = 8;

/// The server's answer to `__@CipherModel`, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CipherModel {
    /// Field 0, Cardinal: the connection id on the server.
    pub id: u32,
    /// Field 1, Byte: the cipher ordinal for this connection.
    pub cipher: u8,
    /// Field 2, ArrayByte: the key buffer (style byte first), in clear.
    pub key: Bytes,
    /// Field 3, ArrayByte(16): MD5 of the server's start time (its instance fingerprint).
    pub instance: [u8; 16],
    /// Field 4, Byte bool.
    pub used_parallel_encrypt: bool,
    /// Field 5, Byte bool.
    pub sync_on_result: bool,
    /// Field 6, Byte bool.
    pub sync_on_complete_buffer: bool,
    /// Field 7, Byte bool.
    pub enabled_atomic_lock_and_multi_thread: bool,
    /// Field 8, Byte bool: the client should send keepalives.
    pub timeout_keepalive: bool,
    /// Field 9, Byte bool.
    pub quiet_mode: bool,
    /// Field 10, UInt64: idle timeout in ms (0 = none).
    pub idle_timeout: u64,
    /// Field 11, Byte bool: stream payloads are zlib-compressed DFEs.
    pub send_data_compressed: bool,
    /// Field 12, Byte bool.
    pub complete_buffer_compressed: bool,
    /// Field 13, Cardinal: the largest CompleteBuffer the server takes.
    pub max_complete_buffer_size: u32,
    /// Field 14, UInt64: ZNet 1000, ZServer4D 0 (older servers stop after field 3).
    pub progress_max_delay: u64,
}

impl CipherModel {
    /// The values a ZNet server sends in its plaintext profile (as captured),
    /// with these id, cipher, key and instance.
    pub fn znet(id: u32, cipher: u8, key: Bytes, instance: [u8; 16]) -> CipherModel {
        CipherModel {
            id,
            cipher,
            key,
            instance,
            used_parallel_encrypt: false,
            sync_on_result: true,
            sync_on_complete_buffer: true,
            enabled_atomic_lock_and_multi_thread: false,
            timeout_keepalive: true,
            quiet_mode: false,
            idle_timeout: 0,
            send_data_compressed: false,
            complete_buffer_compressed: false,
            max_complete_buffer_size: 64 << 20,
            progress_max_delay: 1000,
        }
    }

    /// The answer DFE.
    pub fn to_dfe(&self) -> Dfe {
        let b = |v: bool| DfeValue::Byte(v as u8);
        Dfe(vec![
            DfeValue::Cardinal(self.id),
            DfeValue::Byte(self.cipher),
            DfeValue::ArrayByte(self.key.clone()),
            DfeValue::ArrayByte(Bytes::copy_from_slice(&self.instance)),
            b(self.used_parallel_encrypt),
            b(self.sync_on_result),
            b(self.sync_on_complete_buffer),
            b(self.enabled_atomic_lock_and_multi_thread),
            b(self.timeout_keepalive),
            b(self.quiet_mode),
            DfeValue::UInt64(self.idle_timeout),
            b(self.send_data_compressed),
            b(self.complete_buffer_compressed),
            DfeValue::Cardinal(self.max_complete_buffer_size),
            DfeValue::UInt64(self.progress_max_delay),
        ])
    }

    /// Reads an answer. Servers older than the 15-value form stop after the
    /// instance MD5; the rest then keeps the defaults of [`CipherModel::znet`]
    /// (with `progress_max_delay` 0).
    pub fn from_dfe(d: &Dfe) -> Result<CipherModel, LegacyError> {
        let v = &d.0;
        let bad = |m: &str| LegacyError::BadCipherModel(m.to_owned());
        let int = |i: usize, what: &str| -> Result<i128, LegacyError> {
            v.get(i)
                .and_then(DfeValue::as_i128)
                .ok_or_else(|| bad(&format!("value {i} ({what}) missing or not an integer")))
        };
        if v.len() < 4 {
            return Err(bad(&format!("{} values, at least 4 expected", v.len())));
        }
        let id = u32::try_from(int(0, "id")?).map_err(|_| bad("id out of range"))?;
        let cipher = u8::try_from(int(1, "cipher")?).map_err(|_| bad("cipher out of range"))?;
        let key = v[2].as_bytes().ok_or_else(|| bad("key buffer"))?.clone();
        let inst = v[3].as_bytes().ok_or_else(|| bad("instance MD5"))?;
        let instance: [u8; 16] = inst[..]
            .try_into()
            .map_err(|_| bad("instance MD5 is not 16 bytes"))?;
        let mut m = CipherModel::znet(id, cipher, key, instance);
        if v.len() < 15 {
            m.progress_max_delay = 0;
            return Ok(m);
        }
        let flag = |i: usize| -> Result<bool, LegacyError> { Ok(int(i, "flag")? != 0) };
        m.used_parallel_encrypt = flag(4)?;
        m.sync_on_result = flag(5)?;
        m.sync_on_complete_buffer = flag(6)?;
        m.enabled_atomic_lock_and_multi_thread = flag(7)?;
        m.timeout_keepalive = flag(8)?;
        m.quiet_mode = flag(9)?;
        m.idle_timeout =
            u64::try_from(int(10, "idle timeout")?).map_err(|_| bad("idle timeout"))?;
        m.send_data_compressed = flag(11)?;
        m.complete_buffer_compressed = flag(12)?;
        m.max_complete_buffer_size =
            u32::try_from(int(13, "max CompleteBuffer")?).map_err(|_| bad("max CompleteBuffer"))?;
        m.progress_max_delay =
            u64::try_from(int(14, "progress delay")?).map_err(|_| bad("progress delay"))?;
        Ok(m)
    }
}

/// The DFE a client sends with `__@CipherModel`: `[Integer platform]`.
pub fn handshake_request(platform: i32) -> Dfe {
    Dfe(vec![DfeValue::Integer(platform)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cipher_model_round_trips_and_old_servers_parse() {
        let m = CipherModel::znet(1, 0, Bytes::from_static(&[0]), [7; 16]);
        let d = m.to_dfe();
        assert_eq!(d.0.len(), 15);
        assert_eq!(CipherModel::from_dfe(&d).unwrap(), m);
        let old = Dfe(d.0[..4].to_vec());
        let o = CipherModel::from_dfe(&old).unwrap();
        assert_eq!((o.id, o.progress_max_delay), (1, 0));
        assert!(CipherModel::from_dfe(&Dfe(d.0[..3].to_vec())).is_err());
    }
}
