//! # zs-core: the framework kernel
//!
//! Status: **not built yet** (framework issue). This crate will hold the sans-IO
//! session that combines `zs-wire` framing with the `zs-crypto` record layer, the
//! command registry (console, stream, direct, BigStream, CompleteBuffer,
//! BatchStream), many requests in flight per connection, HPC worker handlers and
//! StableIO sessions that survive reconnects.
//!
//! Until then the crate exports nothing.
#![forbid(unsafe_code)]
