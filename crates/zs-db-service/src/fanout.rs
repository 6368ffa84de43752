//! Fan-out: one query sent to several servers in parallel, the results merged
//! into one stream in key (id) order, or by the spec's sort expression, with a
//! global limit; a server that fails or misses its deadline is dropped and the
//! result flagged partial.

use std::collections::VecDeque;
use std::time::Duration;

use zs_db::Record;

use crate::client::{DbClient, Error, RemoteQuery};
use crate::filter::{compile_expr, ExprFilter, SortKey};
use crate::proto::QuerySpec;

/// The order of the merged stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOrder {
    /// By record id (the ordered key), ascending; descending if the spec says
    /// `reverse`. Ties (the same id on two servers) go by server index. When the
    /// spec has a [`QuerySpec::sort`] expression, the merge is by that key
    /// instead (highest first with `reverse`), then by id, then by server index:
    /// each server sends its first `limit` records in that order and the merge
    /// takes the first `limit` of all.
    Key,
}

/// Settings of a fan-out.
#[derive(Debug, Clone, Copy)]
pub struct FanOutConfig {
    /// Most records in the merged stream (0 = no limit).
    pub limit: u64,
    /// A server that has not sent its next batch within this long is dropped
    /// (the result is then partial). Default 5 s.
    pub server_deadline: Duration,
    /// Merge order.
    pub order: MergeOrder,
}

impl Default for FanOutConfig {
    fn default() -> Self {
        FanOutConfig {
            limit: 0,
            server_deadline: Duration::from_secs(5),
            order: MergeOrder::Key,
        }
    }
}

/// Why a server's results are missing from a fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFailure {
    /// Index of the server in the list given to [`fan_out`].
    pub server: usize,
    /// What happened.
    pub reason: String,
}

struct Src {
    q: Option<RemoteQuery>,
    /// Records with their sort key (when the merge is by an expression).
    buf: VecDeque<(Option<SortKey>, Record)>,
}

/// A merged result stream: iterate it for `(server index, record)`.
pub struct FanOut {
    srcs: Vec<Src>,
    reverse: bool,
    sort: Option<ExprFilter>,
    limit: u64,
    emitted: u64,
    deadline: Duration,
    failures: Vec<ServerFailure>,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut")
            .field("servers", &self.srcs.len())
            .field("emitted", &self.emitted)
            .field("failures", &self.failures)
            .finish()
    }
}

/// Starts `spec` on every client in parallel and returns the merged stream.
/// With a [`QuerySpec::sort`] expression the merge is by that key (see
/// [`MergeOrder::Key`]); a sort expression that does not compile fails every
/// server (the result is empty and partial).
pub fn fan_out(clients: &[DbClient], spec: &QuerySpec, cfg: FanOutConfig) -> FanOut {
    let mut spec = spec.clone();
    if cfg.limit > 0 && (spec.limit == 0 || spec.limit > cfg.limit) {
        spec.limit = cfg.limit; // no server needs to send more than the global limit
    }
    let sort = if spec.sort.is_empty() {
        None
    } else {
        match compile_expr(&spec.sort, &spec.params) {
            Ok(f) => Some(f),
            Err(m) => {
                let failures = (0..clients.len())
                    .map(|server| ServerFailure {
                        server,
                        reason: format!("sort key: {m}"),
                    })
                    .collect();
                return FanOut {
                    srcs: Vec::new(),
                    reverse: spec.reverse,
                    sort: None,
                    limit: cfg.limit,
                    emitted: 0,
                    deadline: cfg.server_deadline,
                    failures,
                };
            }
        }
    };
    let started: Vec<Result<RemoteQuery, Error>> = std::thread::scope(|s| {
        let hs: Vec<_> = clients
            .iter()
            .map(|c| {
                let spec = spec.clone();
                s.spawn(move || c.query(spec))
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::QueryFailed("query start panicked".into())))
            })
            .collect()
    });
    let mut failures = Vec::new();
    let srcs = started
        .into_iter()
        .enumerate()
        .map(|(i, r)| match r {
            Ok(q) => Src {
                q: Some(q),
                buf: VecDeque::new(),
            },
            Err(e) => {
                failures.push(ServerFailure {
                    server: i,
                    reason: e.to_string(),
                });
                Src {
                    q: None,
                    buf: VecDeque::new(),
                }
            }
        })
        .collect();
    FanOut {
        srcs,
        reverse: spec.reverse,
        sort,
        limit: cfg.limit,
        emitted: 0,
        deadline: cfg.server_deadline,
        failures,
    }
}

impl FanOut {
    /// True if some server's results are missing (see [`FanOut::failures`]).
    pub fn partial(&self) -> bool {
        !self.failures.is_empty()
    }

    /// The servers dropped so far and why.
    pub fn failures(&self) -> &[ServerFailure] {
        &self.failures
    }

    /// Refills the buffer of source `i` if it is empty and its query runs.
    fn fill(&mut self, i: usize) {
        while self.srcs[i].buf.is_empty() {
            let Some(q) = self.srcs[i].q.as_mut() else {
                return;
            };
            match q.next_batch_timeout(Some(self.deadline)) {
                Some(Ok(b)) => {
                    let sort = &self.sort;
                    self.srcs[i].buf.extend(
                        b.into_iter()
                            .map(|r| (sort.as_ref().map(|f| f.sort_key(&r.as_ref())), r)),
                    )
                }
                None => {
                    self.srcs[i].q = None;
                    return;
                }
                Some(Err(e)) => {
                    let reason = match e {
                        Error::TimedOut => {
                            format!("no results within the deadline of {:?}", self.deadline)
                        }
                        e => e.to_string(),
                    };
                    self.failures.push(ServerFailure { server: i, reason });
                    self.srcs[i].q = None; // dropping it stops the query
                    return;
                }
            }
        }
    }

    /// Collects the rest of the stream.
    pub fn collect_all(mut self) -> (Vec<(usize, Record)>, Vec<ServerFailure>) {
        let mut out = Vec::new();
        for x in &mut self {
            out.push(x);
        }
        (out, self.failures)
    }
}

impl FanOut {
    /// Whether `a` comes strictly before `b` in the merged order (ties keep
    /// the lower server index first, as the scan goes by index).
    fn before(&self, a: &(Option<SortKey>, Record), b: &(Option<SortKey>, Record)) -> bool {
        use std::cmp::Ordering;
        let by_key = match (&a.0, &b.0) {
            (Some(x), Some(y)) => {
                let c = x.cmp(y);
                if self.reverse {
                    c.reverse()
                } else {
                    c
                }
            }
            _ => Ordering::Equal,
        };
        let by_id = if self.sort.is_none() && self.reverse {
            b.1.id.cmp(&a.1.id)
        } else {
            a.1.id.cmp(&b.1.id)
        };
        by_key.then(by_id) == Ordering::Less
    }
}

impl Iterator for FanOut {
    type Item = (usize, Record);
    fn next(&mut self) -> Option<(usize, Record)> {
        if self.limit > 0 && self.emitted >= self.limit {
            for s in &mut self.srcs {
                s.q = None;
            }
            return None;
        }
        for i in 0..self.srcs.len() {
            self.fill(i);
        }
        let mut best: Option<usize> = None;
        for (i, s) in self.srcs.iter().enumerate() {
            let Some(cand) = s.buf.front() else { continue };
            let better = match best.and_then(|b| self.srcs[b].buf.front()) {
                None => true,
                Some(cur) => self.before(cand, cur),
            };
            if better {
                best = Some(i);
            }
        }
        let i = best?;
        let (_, rec) = self.srcs[i].buf.pop_front()?;
        self.emitted += 1;
        Some((i, rec))
    }
}
