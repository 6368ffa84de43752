//! # zs-p2pvm: virtual connections over one physical connection
//!
//! Status: **not built yet** (p2pVM issue). This crate will be a sans-IO
//! multiplexer: many virtual connections, addressed by virtual address and port,
//! over one byte stream, with per-stream credit windows that auto-tune and a
//! session-wide memory budget (the original p2pVM had no flow control).
//!
//! Until then the crate exports nothing.
#![forbid(unsafe_code)]
