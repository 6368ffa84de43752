//! # zs-crypto (being written)
