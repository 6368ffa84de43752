//! # zserver: the facade
//!
//! One dependency that brings the zserver crates you enable, under short names.
//! Each sub-crate is behind a cargo feature of the same name; `default` is small
//! (the wire codec only) and `full` enables every finished crate. Builders that
//! assemble a server from trait objects (`Box<dyn Backend>`, a security provider,
//! a store) come with the framework issue; today the facade re-exports what exists.
//!
//! ```
//! use zserver::wire;
//! // The facade re-exports the crates by module name.
//! let _ = core::any::type_name::<wire::DataFrame>();
//! ```
#![forbid(unsafe_code)]

/// Framing and value codec (`zs-wire`).
#[cfg(feature = "wire")]
pub use zs_wire as wire;
