//! The statistics clock: one clock read per event-loop turn.
//!
//! Command statistics (latency from dispatch to answer) need a time stamp per
//! call; reading the system clock twice per call cost about 7 % of a pipelined
//! call's CPU (issue 5's profile). The clock is zs-io's loop-turn clock
//! ([`zs_io::clock`]): the readiness reactor installs its turn's time, and
//! zs-core installs one per batch of input ([`Turn`], for backends that
//! install none); [`now`] returns it on that thread, and the system clock
//! anywhere else (worker pools, delayed answers from other threads).
//! Consequence: an answer given within the same turn as its request (a plain
//! handler) is recorded with the latency resolution of one turn: 0 µs.

pub(crate) use zs_io::clock::{now, Turn};
