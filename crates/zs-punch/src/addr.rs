//! The socket-address codec of the direct-path wire (PROTOCOL Parts 13 and 14):
//! `family:u8` (4 or 6), the IP bytes (4 or 16), `port:u16le`. It is zserver's one
//! address codec, [`zs_wire::addr`] (PROTOCOL "Socket addresses"), re-exported here
//! so the rendezvous, XNat and visitor messages keep their paths.

pub use zs_wire::addr::{decode, len, put, take, AddrError};
