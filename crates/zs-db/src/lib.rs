//! # zs-db: the embedded NoSQL store
//!
//! Status: **not built yet** (store issue). This crate will hold named databases
//! of checksummed records (DataFrame, JSON, key/value, raw bytes) with stable ids,
//! crash-safe durability modes, online compaction and a parallel filtered scan.
//!
//! Until then the crate exports nothing.
#![forbid(unsafe_code)]
