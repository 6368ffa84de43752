//! # zs-wire (being written)
pub struct DataFrame;
