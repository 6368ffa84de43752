//! The client side of push watches, shared by the in-process registry and
//! [`Remote`](crate::Remote): a bounded channel fed by the registry's pushes,
//! acknowledgements as items are consumed (so the registry never sends more
//! than the window ahead of the reader), and a fresh subscription from the
//! last revision whenever the link carrying the watch is lost or the registry
//! dropped it.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::embedded::PushSink;
use crate::proto::Push;
use crate::{Error, Result, Revision, Watch, WatchItem};

/// Where a [`PushWatch`] subscribes.
pub(crate) trait WatchLink: Send + Sync {
    /// Opens a watch whose pushes go to `sink`; answers its id and window.
    fn subscribe(
        &self,
        kind: Option<&str>,
        from: Option<Revision>,
        window: u32,
        sink: Arc<ChannelSink>,
    ) -> Result<(u64, u32)>;
    /// `n` more pushes of `wid` were consumed.
    fn ack(&self, wid: u64, n: u32);
    /// Ends `wid`.
    fn unsubscribe(&self, wid: u64);
    /// Whether the link that carries `wid` is still up.
    fn alive(&self, wid: u64) -> bool;
}

/// A bounded channel as a push sink: a push that does not fit (the sender
/// ignored the window) closes it, and the watch subscribes again.
pub(crate) struct ChannelSink {
    tx: SyncSender<Push>,
}

impl ChannelSink {
    pub(crate) fn new(window: u32) -> (Arc<ChannelSink>, Receiver<Push>) {
        // one extra slot: the `Dropped` notice may come on top of a full window
        let (tx, rx) = std::sync::mpsc::sync_channel(window as usize + 1);
        (Arc::new(ChannelSink { tx }), rx)
    }
}

impl PushSink for ChannelSink {
    fn push(&self, push: Push) -> bool {
        match self.tx.try_send(push) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                tracing::warn!("registry watch: push beyond the window refused");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
    fn is_open(&self) -> bool {
        // a receiver that is gone shows on the next push
        true
    }
}

/// A watch fed by pushes.
pub(crate) struct PushWatch {
    link: Arc<dyn WatchLink>,
    kind: Option<String>,
    window: u32,
    rev: Option<Revision>,
    sub: Option<(u64, Receiver<Push>, u32)>, // id, pushes, window applied
    consumed: u32,
    pending: VecDeque<WatchItem>,
}

impl PushWatch {
    pub(crate) fn new(
        link: Arc<dyn WatchLink>,
        kind: Option<String>,
        from: Option<Revision>,
        window: u32,
    ) -> PushWatch {
        PushWatch {
            link,
            kind,
            window: window.max(1),
            rev: from,
            sub: None,
            consumed: 0,
            pending: VecDeque::new(),
        }
    }

    fn close_sub(&mut self) {
        if let Some((wid, _, _)) = self.sub.take() {
            self.link.unsubscribe(wid);
        }
        self.consumed = 0;
    }

    /// Takes one push in.
    fn take(&mut self, p: Push) {
        match p {
            Push::Events {
                revision, events, ..
            } => {
                let after = self.rev.unwrap_or(0);
                self.pending.extend(
                    events
                        .into_iter()
                        .filter(|e| e.revision > after)
                        .map(WatchItem::Change),
                );
                self.rev = Some(revision.max(after));
            }
            Push::Snapshot {
                resync, snapshot, ..
            } => {
                self.rev = Some(snapshot.revision);
                self.pending
                    .push_back(WatchItem::Snapshot { snapshot, resync });
            }
            Push::Dropped { reason, .. } => {
                tracing::info!("registry watch dropped by the registry ({reason}); reopening");
                self.close_sub();
                return;
            }
        }
        self.consumed += 1;
    }
}

impl Watch for PushWatch {
    fn next(&mut self, timeout: Duration) -> Result<Option<WatchItem>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.pop_front() {
                return Ok(Some(i));
            }
            let left = end.saturating_duration_since(Instant::now());
            if self.sub.is_none() {
                let (sink, rx) = ChannelSink::new(self.window);
                match self
                    .link
                    .subscribe(self.kind.as_deref(), self.rev, self.window, sink)
                {
                    Ok((wid, window)) => self.sub = Some((wid, rx, window)),
                    Err(Error::Unavailable(e)) => {
                        tracing::debug!("watch: {e}; retrying");
                        std::thread::sleep(Duration::from_millis(50).min(left));
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some((wid, rx, _)) = &self.sub {
                let wid = *wid;
                match rx.recv_timeout(left.min(Duration::from_millis(250))) {
                    Ok(p) => {
                        self.take(p);
                        // everything already received is consumed now too
                        while let Some(Ok(p)) = self.sub.as_ref().map(|s| s.1.try_recv()) {
                            self.take(p);
                        }
                        // one ack for what this drain took in (the reader
                        // has it now); a reader that stops calling `next`
                        // stops acking, and the registry stops at the window
                        if self.consumed > 0 && self.sub.is_some() {
                            self.link.ack(wid, self.consumed);
                        }
                        self.consumed = 0;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        if !self.link.alive(wid) {
                            tracing::debug!("watch: link lost; resuming from {:?}", self.rev);
                            self.close_sub();
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => self.close_sub(),
                }
            }
            if self.pending.is_empty() && Instant::now() >= end {
                return Ok(None);
            }
        }
    }

    fn revision(&self) -> Revision {
        self.rev.unwrap_or(0)
    }
}

impl Drop for PushWatch {
    fn drop(&mut self) {
        self.close_sub();
    }
}
