//! # zs-expr (being written)
