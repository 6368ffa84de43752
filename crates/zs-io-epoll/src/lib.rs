//! # zs-io-epoll: the Linux transport backend
//!
//! Status: **not built yet** (transports issue). This crate will implement the
//! [`zs-io`](../zs_io/index.html) seam on Linux with edge-triggered `epoll`: one
//! event loop per core, connections pinned to a loop, accept spread over loops with
//! `SO_REUSEPORT`, vectored writes, pooled buffers, `eventfd` wake-ups and a timer
//! wheel. It is the only kind of crate in the workspace allowed to contain `unsafe`,
//! confined to a small syscall layer where every block carries a `// SAFETY:` comment.
//!
//! Until then the crate exports nothing: it exists so the workspace layout and the
//! dependency rules in `docs/ARCHITECTURE.md` are in place from the start.
#![forbid(unsafe_code)]
