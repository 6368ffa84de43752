//! Byte budgets shared by every session of one endpoint (server or client):
//! StableIO records kept for resending and BatchStream frames staged. Each
//! [`Session`](crate::Session) charges what it holds and returns it when it
//! lets go (or is dropped), so one peer, or many, cannot make the process hold
//! more than the configured totals.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Which batch commands exist: sessions stage BatchStream frames only for
/// names it accepts and answer the others `404` at the first stage.
pub type BatchFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Endpoint-wide limits and what all sessions hold now, plus the endpoint's
/// batch filter (shared, so a session pays one pointer for all of it).
pub struct Budgets {
    stable_limit: usize,
    stable: AtomicUsize,
    batch_limit: usize,
    batch: AtomicUsize,
    batch_filter: Option<BatchFilter>,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("stable", &self.stable_bytes())
            .field("stable_limit", &self.stable_limit)
            .field("batch", &self.batch_bytes())
            .field("batch_limit", &self.batch_limit)
            .field("batch_filter", &self.batch_filter.is_some())
            .finish()
    }
}

impl Budgets {
    /// Budgets of `stable_limit` bytes of StableIO records (unacknowledged or
    /// parked) and `batch_limit` bytes of staged batch frames, across sessions.
    pub fn new(stable_limit: usize, batch_limit: usize) -> Budgets {
        Budgets {
            stable_limit,
            stable: AtomicUsize::new(0),
            batch_limit,
            batch: AtomicUsize::new(0),
            batch_filter: None,
        }
    }

    /// Sessions charged to these budgets stage batches only for commands
    /// `filter` accepts.
    pub fn with_batch_filter(mut self, filter: BatchFilter) -> Budgets {
        self.batch_filter = Some(filter);
        self
    }

    /// Whether batches for `cmd` may be staged.
    pub(crate) fn batch_known(&self, cmd: &str) -> bool {
        self.batch_filter.as_ref().is_none_or(|f| f(cmd))
    }

    /// No endpoint-wide limit (each session is still bounded by its
    /// [`SessionConfig`](crate::SessionConfig)).
    pub fn unlimited() -> Budgets {
        Budgets::new(usize::MAX, usize::MAX)
    }

    /// One process-wide unlimited instance (what a session charges until
    /// [`Session::set_budgets`](crate::Session::set_budgets)).
    pub(crate) fn shared_unlimited() -> Arc<Budgets> {
        static UNLIMITED: std::sync::OnceLock<Arc<Budgets>> = std::sync::OnceLock::new();
        UNLIMITED
            .get_or_init(|| Arc::new(Budgets::unlimited()))
            .clone()
    }

    /// StableIO bytes held by all sessions now.
    pub fn stable_bytes(&self) -> usize {
        self.stable.load(Ordering::Relaxed)
    }

    /// Staged batch bytes held by all sessions now.
    pub fn batch_bytes(&self) -> usize {
        self.batch.load(Ordering::Relaxed)
    }

    /// The StableIO limit.
    pub fn stable_limit(&self) -> usize {
        self.stable_limit
    }

    /// The batch limit.
    pub fn batch_limit(&self) -> usize {
        self.batch_limit
    }
}

/// What one session holds of the [`Budgets`]; returned on drop.
#[derive(Debug)]
pub(crate) struct Charge {
    budgets: Arc<Budgets>,
    stable: usize,
    batch: usize,
}

fn adjust(a: &AtomicUsize, from: usize, to: usize) {
    if to > from {
        a.fetch_add(to - from, Ordering::Relaxed);
    } else if from > to {
        a.fetch_sub(from - to, Ordering::Relaxed);
    }
}

impl Charge {
    pub(crate) fn new(budgets: Arc<Budgets>) -> Charge {
        Charge {
            budgets,
            stable: 0,
            batch: 0,
        }
    }

    pub(crate) fn budgets(&self) -> &Arc<Budgets> {
        &self.budgets
    }

    /// Moves this session's charge to another endpoint's budgets.
    pub(crate) fn rebind(&mut self, budgets: Arc<Budgets>) {
        let (s, b) = (self.stable, self.batch);
        self.set(0, 0);
        self.budgets = budgets;
        self.set(s, b);
    }

    /// Staged batch bytes this session holds.
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// This session now holds `stable` and `batch` bytes.
    pub(crate) fn set(&mut self, stable: usize, batch: usize) {
        if stable != self.stable {
            adjust(&self.budgets.stable, self.stable, stable);
            self.stable = stable;
        }
        if batch != self.batch {
            adjust(&self.budgets.batch, self.batch, batch);
            self.batch = batch;
        }
    }

    /// Whether `extra` more StableIO bytes fit the endpoint's budget.
    pub(crate) fn stable_fits(&self, extra: usize) -> bool {
        self.budgets.stable_bytes().saturating_add(extra) <= self.budgets.stable_limit
    }

    /// Whether `extra` more staged bytes fit the endpoint's budget.
    pub(crate) fn batch_fits(&self, extra: usize) -> bool {
        self.budgets.batch_bytes().saturating_add(extra) <= self.budgets.batch_limit
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.set(0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_add_up_and_return_on_drop() {
        let b = Arc::new(Budgets::new(100, 50));
        let mut c1 = Charge::new(b.clone());
        let mut c2 = Charge::new(b.clone());
        c1.set(60, 10);
        c2.set(30, 40);
        assert_eq!((b.stable_bytes(), b.batch_bytes()), (90, 50));
        assert!(c1.stable_fits(10) && !c1.stable_fits(11));
        assert!(!c2.batch_fits(1));
        c1.set(20, 0);
        assert_eq!((b.stable_bytes(), b.batch_bytes()), (50, 40));
        drop(c2);
        assert_eq!((b.stable_bytes(), b.batch_bytes()), (20, 0));
        let other = Arc::new(Budgets::unlimited());
        c1.rebind(other.clone());
        assert_eq!((b.stable_bytes(), other.stable_bytes()), (0, 20));
        drop(c1);
        assert_eq!(other.stable_bytes(), 0);
    }
}
