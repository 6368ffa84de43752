//! # zs-io-tokio: the portable transport backend
//!
//! Status: **not built yet** (transports issue). This crate will implement the
//! `zs-io` seam on tokio, as the portable default backend and the bridge between
//! the framework and `async` user code.
//!
//! Until then the crate exports nothing.
#![forbid(unsafe_code)]
