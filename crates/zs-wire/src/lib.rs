//! # zs-wire: zserver's framing and value codec (sans-IO)
//!
//! Every byte zserver sends over a connection (inside the encryption of `zs-crypto`)
//! is a [`Frame`] in the format specified byte by byte in `docs/PROTOCOL.md`, Part 1.
//! This crate turns frames into bytes and bytes into frames, and nothing else: it
//! owns no socket, thread or clock, so any transport, the tests and the fuzzers
//! drive it the same way.
//!
//! What it fixes compared with the ZServer4D seed:
//! - **Request ids**: every request carries an id echoed by its response, so many
//!   requests are in flight on one connection and server pushes share it (no
//!   "double tunnel" needed).
//! - **Small headers**: a version byte, a kind byte and varint lengths; a 64-byte
//!   console request (name + text) costs 5 bytes of framing with a request id
//!   below 128, 6 above (4 more with a verification token, [`Config::token`]).
//! - **Bounded, total decoding**: every length is checked against [`Limits`] before
//!   anything is allocated; malformed input is a [`WireError`], never a panic. A
//!   bad body leaves the decoder in step ([`Decoder::decode_recoverable`],
//!   [`DecodeError`]); a stalled frame pins at most 64 KiB beyond what arrived; JSON
//!   values are checked without building them (`Limits::max_json`); compressed
//!   frames are refused unless [`Config::accept_compressed`].
//! - **Zero copy**: byte, text and array values are [`bytes::Bytes`] slices of the
//!   received buffer, so a 1 MiB value is not copied when decoded; short texts
//!   (command names, up to 20 bytes) are copied inline into their [`Text`] instead,
//!   which is cheaper than sharing the buffer (no reference count). A decoded
//!   [`DataFrame`] is validated completely up front but its [`Value`]s are only
//!   built when accessed by index; its [`Reader`] reads straight from the bytes,
//!   and [`Reader::read_str`] / [`Reader::read_slice`] borrow without any copy.
//!
//! Main types: [`Frame`] (all frame kinds, including the StableIO sequence records),
//! [`Decoder`] / [`Encoder`] / [`FrameCodec`], [`Config`] / [`Limits`],
//! [`DataFrame`] / [`Value`] (typed values with lenient [`Reader`]s and a JSON form;
//! strict typed index access in place with [`DataFrameView`]),
//! [`WireError`] / [`DecodeError`].
//!
//! ```
//! use bytes::BytesMut;
//! use zs_wire::{Config, DataFrame, Frame, FrameCodec, Text};
//!
//! let mut codec = FrameCodec::new(Config::default());
//! let mut wire = BytesMut::new();
//! let request = Frame::Stream {
//!     id: 7,
//!     cmd: Text::from("login"),
//!     data: DataFrame::new().with("alice").with(1234u32),
//! };
//! codec.encode(&request, &mut wire).unwrap();
//!
//! // The receiving side: feed bytes as they arrive, take frames out.
//! let frame = codec.decode(&mut wire).unwrap().expect("a whole frame");
//! let Frame::Stream { id, cmd, data } = frame else { unreachable!() };
//! assert_eq!((id, cmd.as_str()), (7, "login"));
//! let mut r = data.reader();
//! assert_eq!(r.read_text().unwrap(), "alice");
//! assert_eq!(r.read_i64().unwrap(), 1234);
//! assert!(wire.is_empty());
//! ```
#![forbid(unsafe_code)]

pub mod addr;
mod codec;
mod config;
mod dataframe;
mod dfview;
mod error;
mod frame;
pub mod json;
pub mod legacy;
mod value;
mod varint;
mod view;

pub use codec::{Decoder, Encoder, FrameCodec};
pub use config::{Config, Limits};
pub use dataframe::{DataFrame, Reader};
pub use dfview::DataFrameView;
pub use error::{DecodeError, WireError};
pub use frame::{Frame, FrameKind, VERSION};
pub use value::{NumArray, NumKind, Number, Text, Value, Variant};
pub use view::FrameRef;

pub use bytes;
