//! # zs-io: the transport seam
//!
//! Status: **not built yet** (transports issue). This crate will hold the
//! object-safe traits through which the framework runs on any backend (listen,
//! connect, accept, byte delivery, queued sends with back-pressure, close,
//! timers, shutdown) and a `testkit` feature with the conformance suite every
//! backend must pass.
//!
//! Until then the crate exports nothing.
#![forbid(unsafe_code)]
