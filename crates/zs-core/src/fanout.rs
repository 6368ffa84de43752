//! One frame to many connections (a push to a group, a broadcast).

pub use zs_io::defer_wakes;
use zs_wire::Frame;

use crate::registry::Peer;

/// Peers per sending thread at least: below this, [`send_to_each`] sends from
/// the calling thread alone (a thread costs tens of microseconds; a push to
/// an idle peer about 15, session 13).
pub const PEERS_PER_THREAD: usize = 256;

/// Most sending threads of one [`send_to_each`] call (the caller's included).
const MAX_THREADS: usize = 4;

/// Sends `frame` to each of `peers` and returns how many took it (a closed
/// connection, or one whose output budget is spent, does not).
///
/// Each peer's frame is encoded, sealed and sent as [`Peer::send_frame`] does.
/// What differs:
/// - the event loops' wake-ups those sends cause (the security layer arms a
///   connection's key-idle timer with its first record after an idle spell:
///   a kick to the connection's loop) are deferred to the end, one per loop
///   instead of one per peer ([`zs_io::defer_wakes`]);
/// - with 256 peers (`PEERS_PER_THREAD`) or more per core, the peers are split
///   over scoped threads (one per core, at most 4, the caller being one) that
///   send their shares at once: each push is a seal and a `send` system call
///   on its own connection, so they run in parallel.
///
/// On a 1,000-member group whose members were idle, the server's loop had
/// 1,000 wake-ups per message and one thread sealed and sent all 1,000
/// (session 13, push).
pub fn send_to_each(peers: &[Peer], frame: &Frame) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (peers.len() / PEERS_PER_THREAD).clamp(1, cores.min(MAX_THREADS));
    send_split(peers, frame, threads)
}

/// [`send_to_each`] over exactly `threads` senders (the caller's included).
fn send_split(peers: &[Peer], frame: &Frame, threads: usize) -> usize {
    let send = |share: &[Peer]| {
        defer_wakes(|| {
            share
                .iter()
                .filter(|p| p.send_frame(frame.clone()).is_ok())
                .count()
        })
    };
    if threads <= 1 || peers.len() < 2 {
        return send(peers);
    }
    let per = peers.len().div_ceil(threads);
    let mut shares = peers.chunks(per);
    let mine = shares.next().unwrap_or_default();
    std::thread::scope(|s| {
        let others: Vec<_> = shares
            .map(|share| {
                let t = std::thread::Builder::new()
                    .name("zs-fanout".into())
                    .spawn_scoped(s, move || send(share));
                (share, t)
            })
            .collect();
        let mut n = send(mine);
        for (share, t) in others {
            n += match t {
                Ok(h) => h.join().unwrap_or(0),
                // No thread to be had: this one sends that share too.
                Err(_) => send(share),
            };
        }
        n
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use zs_wire::{DataFrame, Text};

    use super::*;
    use crate::registry::Outbox;
    use crate::Result;

    /// The threads frames were sent from.
    type Threads = Arc<Mutex<std::collections::HashSet<std::thread::ThreadId>>>;

    /// Counts the frames sent to it and the threads they came from.
    struct Counter {
        frames: AtomicUsize,
        open: AtomicBool,
        threads: Threads,
    }

    impl Outbox for Counter {
        fn send_frame(&self, frame: Frame) -> Result<()> {
            assert!(matches!(frame, Frame::DirectStream { .. }));
            if !self.open.load(Ordering::SeqCst) {
                return Err(crate::Error::ConnectionLost("closed".into()));
            }
            self.threads
                .lock()
                .unwrap()
                .insert(std::thread::current().id());
            self.frames.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn is_open(&self) -> bool {
            self.open.load(Ordering::SeqCst)
        }
        fn close(&self, _reason: &str) {}
    }

    fn peers(n: usize) -> (Vec<Peer>, Vec<Arc<Counter>>, Threads) {
        let threads = Arc::default();
        let outs: Vec<Arc<Counter>> = (0..n)
            .map(|i| {
                Arc::new(Counter {
                    frames: AtomicUsize::new(0),
                    open: AtomicBool::new(i % 7 != 3),
                    threads: Arc::clone(&threads),
                })
            })
            .collect();
        let peers = outs
            .iter()
            .enumerate()
            .map(|(i, o)| Peer::new(i as u64, None, o.clone() as Arc<dyn Outbox>))
            .collect();
        (peers, outs, threads)
    }

    fn frame() -> Frame {
        Frame::DirectStream {
            cmd: Text::from("msg.push"),
            data: DataFrame::new().with(7u64),
        }
    }

    #[test]
    fn every_open_peer_gets_the_frame_once_whatever_the_split() {
        for (n, threads) in [
            (0, 1),
            (1, 3),
            (5, 1),
            (600, 1),
            (600, 3),
            (1001, 4),
            (10, 16),
        ] {
            let (peers, outs, used) = peers(n);
            let open = outs.iter().filter(|o| o.is_open()).count();
            assert_eq!(
                send_split(&peers, &frame(), threads),
                open,
                "{n} over {threads}"
            );
            for o in &outs {
                let want = usize::from(o.is_open());
                assert_eq!(o.frames.load(Ordering::SeqCst), want, "{n} over {threads}");
            }
            // Each share went out from a thread of its own (the caller's one).
            let shares_with_an_open_peer = if threads <= 1 || n < 2 {
                usize::from(open > 0)
            } else {
                outs.chunks(n.div_ceil(threads))
                    .filter(|c| c.iter().any(|o| o.is_open()))
                    .count()
            };
            assert_eq!(
                used.lock().unwrap().len(),
                shares_with_an_open_peer,
                "{n} over {threads}"
            );
        }
    }

    #[test]
    fn send_to_each_reaches_every_open_peer() {
        let (peers, outs, _) = peers(2_000);
        let open = outs.iter().filter(|o| o.is_open()).count();
        assert_eq!(send_to_each(&peers, &frame()), open);
        assert!(outs
            .iter()
            .all(|o| o.frames.load(Ordering::SeqCst) == usize::from(o.is_open())));
    }
}
