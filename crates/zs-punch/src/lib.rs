//! zs-punch (docs to come)
#![forbid(unsafe_code)]

#[cfg(feature = "netlab")]
pub mod netlab;
pub mod peer;
pub mod punch;
pub mod quic;
pub mod rendezvous;
pub mod stun;
