//! # zs-xnat: NAT traversal
//!
//! Status: **not built yet** (XNAT issue). This crate will hold a public relay
//! server and an intranet agent that dials out, with named port mappings, token
//! authentication and an encrypted tunnel.
//!
//! Until then the crate exports nothing.
#![forbid(unsafe_code)]
