//! # zs-io-kqueue: the BSD and macOS transport backend
//!
//! Status: **not built yet** (transports issue). This crate will implement the
//! `zs-io` seam with `kqueue`/`kevent`, sharing the event-loop logic with the epoll
//! backend so that only the poller differs.
//!
//! Until then the crate exports nothing.
#![forbid(unsafe_code)]
