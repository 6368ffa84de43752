//! One frame to many connections from one thread (a push to a group, a
//! broadcast).

pub use zs_io::defer_wakes;
use zs_wire::Frame;

use crate::registry::Peer;

/// Sends `frame` to each of `peers` and returns how many took it (a closed
/// connection, or one whose output budget is spent, does not).
///
/// Each peer's frame is encoded, sealed and sent as [`Peer::send_frame`] does;
/// what differs is the event loops: the wake-ups those sends cause (the
/// security layer arms a connection's key-idle timer with its first record
/// after an idle spell: a kick to the connection's loop) are deferred to the
/// end, one per loop instead of one per peer ([`zs_io::defer_wakes`]). On a
/// 1,000-member group whose members were idle, the server's loop had 1,000
/// wake-ups per message (session 13, push).
pub fn send_to_each(peers: &[Peer], frame: &Frame) -> usize {
    zs_io::defer_wakes(|| {
        peers
            .iter()
            .filter(|p| p.send_frame(frame.clone()).is_ok())
            .count()
    })
}
