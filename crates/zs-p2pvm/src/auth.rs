//! Tunnel authentication settings: [`Auth`] and the pre-shared [`Token`].

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Error;

/// A pre-shared tunnel token (the key of the PROOF's HMAC-SHA256).
///
/// At least [`Token::MIN_LEN`] (16) bytes: a PROOF can be computed by anyone who
/// completes the HELLO exchange, so a short or low-entropy token (a password) can be
/// recovered by an offline dictionary search. Use random bytes, e.g. 32 from the OS
/// generator. The bytes are redacted in `Debug` and zeroed when the token is dropped
/// (every clone holds its own copy, zeroed with it).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Token(Vec<u8>);

impl Token {
    /// Shortest token accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A token from its bytes (copied); [`Error::Config`] if shorter than
    /// [`Token::MIN_LEN`].
    pub fn new(bytes: &[u8]) -> Result<Token, Error> {
        if bytes.len() < Token::MIN_LEN {
            return Err(Error::Config(format!(
                "a tunnel token needs at least {} bytes (got {})",
                Token::MIN_LEN,
                bytes.len()
            )));
        }
        Ok(Token(bytes.to_vec()))
    }

    /// The secret bytes (never logged, never sent).
    pub(crate) fn secret(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Tunnel authentication. There is no default: [`MuxConfig::auth`](crate::MuxConfig::auth)
/// must name one of these explicitly, else [`Mux::new`](crate::Mux::new) refuses the
/// configuration.
#[derive(Clone)]
pub enum Auth {
    /// No authentication at this layer (both sides must say so). Only sound when
    /// something below authenticates the peer: a Part 2 secure session with a pinned
    /// server key or a pre-shared key, or a trusted link.
    None,
    /// A pre-shared token proven by challenge-response: PROOF = HMAC-SHA256(token,
    /// label, role, both HELLOs and, inside a secure session, its channel binding).
    /// The token itself never goes on the wire. Over a plain link this is access
    /// control only: it does not protect the integrity or confidentiality of what
    /// follows (an on-path attacker can relay the handshake and then alter frames).
    Token(Token),
}

impl Auth {
    /// `Auth::Token` from the token's bytes; [`Error::Config`] if shorter than
    /// [`Token::MIN_LEN`].
    pub fn token(bytes: &[u8]) -> Result<Auth, Error> {
        Token::new(bytes).map(Auth::Token)
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}
