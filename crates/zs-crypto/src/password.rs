//! Password storage for user accounts: Argon2id, PHC string format
//! (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`), constant-time verify;
//! and [`derive_psk`], which turns a password into a session pre-shared key
//! when no random key can be distributed.

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{Error, Result};
use crate::session::{PskKey, MIN_PSK_LEN};

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// OWASP's Argon2id baseline: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        PasswordParams {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

fn hasher(p: &PasswordParams) -> Result<Argon2<'static>> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, None)
        .map_err(|e| Error::PasswordHash(e.to_string()))?;
    Ok(Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// Hashes `password` with a fresh random 16-byte salt; returns the PHC string.
pub fn hash_password(password: &str, params: &PasswordParams) -> Result<String> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| Error::Rng)?;
    hash_password_with_salt(password, &salt, params)
}

/// Hashes with a given salt (8..=64 bytes). Use [`hash_password`] unless you need determinism.
pub fn hash_password_with_salt(
    password: &str,
    salt: &[u8],
    params: &PasswordParams,
) -> Result<String> {
    let h = hasher(params)?
        .hash_password_with_salt(password.as_bytes(), salt)
        .map_err(|e| Error::PasswordHash(e.to_string()))?;
    Ok(h.to_string())
}

/// Derives a [`MIN_PSK_LEN`]-byte pre-shared key from `password` with
/// Argon2id (`salt`: 8..=64 bytes, e.g. the PSK identity padded with a
/// deployment-wide constant; both sides must use the same salt and params).
///
/// This is a fallback: PSK mode lets any peer that names a valid identity
/// test password guesses offline, and Argon2id only makes each guess
/// expensive. Prefer a random key ([`PskKey::generate`]).
pub fn derive_psk(password: &str, salt: &[u8], params: &PasswordParams) -> Result<PskKey> {
    let mut out = zeroize::Zeroizing::new([0u8; MIN_PSK_LEN]);
    hasher(params)?
        .hash_password_into(password.as_bytes(), salt, &mut out[..])
        .map_err(|e| Error::PasswordHash(e.to_string()))?;
    PskKey::new(&out[..])
}

/// Checks `password` against a PHC string made by [`hash_password`]. The
/// parameters come from the string; the final comparison is constant time.
/// `Ok(false)` for a wrong password, `Err` for a malformed string.
pub fn verify_password(password: &str, phc: &str) -> Result<bool> {
    let parsed = argon2::PasswordHash::new(phc).map_err(|e| Error::PasswordHash(e.to_string()))?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
        Err(e) => Err(Error::PasswordHash(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: PasswordParams = PasswordParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse", &CHEAP).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=256,t=1,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h).unwrap());
        assert!(!verify_password("correct horsf", &h).unwrap());
        assert!(verify_password("x", "not a phc string").is_err());
        // fresh salt each time
        assert_ne!(h, hash_password("correct horse", &CHEAP).unwrap());
    }

    #[test]
    fn derived_psk_is_deterministic_and_full_length() {
        let a = derive_psk("pw", b"saltsalt", &CHEAP).unwrap();
        let b = derive_psk("pw", b"saltsalt", &CHEAP).unwrap();
        let c = derive_psk("pw", b"saltsal2", &CHEAP).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.expose_secret().len(), MIN_PSK_LEN);
        assert!(derive_psk("pw", b"short", &CHEAP).is_err());
    }

    #[test]
    fn deterministic_with_salt() {
        let a = hash_password_with_salt("pw", b"saltsalt", &CHEAP).unwrap();
        let b = hash_password_with_salt("pw", b"saltsalt", &CHEAP).unwrap();
        assert_eq!(a, b);
    }
}
