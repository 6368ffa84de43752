//! # zs-io-iocp: the Windows transport backend
//!
//! Status: **not built yet** (transports issue). This crate will implement the
//! `zs-io` seam on Windows with I/O completion ports: `AcceptEx`/`ConnectEx`,
//! overlapped `WSARecv`/`WSASend` and a completion-port thread pool through
//! `windows-sys`. Its conformance tests will run under wine in CI.
//!
//! Until then the crate exports nothing.
#![forbid(unsafe_code)]
