//! List-append histories and a serializability cycle checker (after Elle, Kingsbury
//! and Alvaro, VLDB 2020), plus export in the JSON form elle-cli reads.
//!
//! Each transaction appends unique values to lists and reads whole lists. Because
//! every appended value is unique, each read names the exact version it saw, and the
//! longest read of a key gives that key's version order. From that the checker
//! derives dependency edges between committed transactions:
//!
//! - `ww`: T1 appended the element just before T2's element on the same key;
//! - `wr`: T2 read a list whose last element T1 appended;
//! - `rw`: T1 read a list, and T2 appended the next element after it.
//!
//! and reports, as Adya defines them: **G0** (a cycle of `ww` edges), **G1a**
//! (a read saw a value of a failed transaction), **G1b** (a read saw a value that
//! was not the writer's last append to that key), **G1c** (a cycle of `ww`/`wr`),
//! **G2** (a cycle that needs an `rw` edge), and **incompatible orders** (two reads
//! of a key that are not prefixes of one another).
//!
//! ```
//! use zs_tx::history::{check, Mop, Op, OpType};
//! // T0 appends 1 to key 0 and reads [1]; T1 reads [1] then appends 2.
//! let h = vec![
//!     Op { process: 0, typ: OpType::Ok, mops: vec![Mop::Append(0, 1), Mop::Read(0, Some(vec![1]))] },
//!     Op { process: 1, typ: OpType::Ok, mops: vec![Mop::Read(0, Some(vec![1])), Mop::Append(0, 2)] },
//! ];
//! assert!(check(&h).is_empty());
//! ```

use std::collections::{BTreeMap, HashMap};

/// A micro-operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mop {
    /// Append a value (unique in the history) to the list at a key.
    Append(u64, u64),
    /// Read the list at a key (`None` when the read did not complete).
    Read(u64, Option<Vec<u64>>),
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpType {
    /// Committed.
    Ok,
    /// Known not to have committed.
    Fail,
    /// Unknown (for example, the client timed out).
    Info,
}

/// A completed transaction of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The client that ran it.
    pub process: u64,
    /// Its outcome.
    pub typ: OpType,
    /// What it did, in order (reads of committed transactions as observed).
    pub mops: Vec<Mop>,
}

/// Dependency kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dep {
    /// Write-write.
    WW,
    /// Write-read.
    WR,
    /// Read-write (anti-dependency).
    RW,
}

/// An anomaly found in a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anomaly {
    /// A cycle of write-write dependencies (indices into the history).
    G0(Vec<usize>),
    /// A committed read saw a value appended by a failed transaction.
    G1a {
        /// The reading transaction.
        reader: usize,
        /// The value.
        value: u64,
    },
    /// A committed read saw an intermediate state of another transaction.
    G1b {
        /// The reading transaction.
        reader: usize,
        /// The value.
        value: u64,
    },
    /// A cycle of write-write and write-read dependencies.
    G1c(Vec<usize>),
    /// A cycle that needs an anti-dependency.
    G2(Vec<usize>),
    /// Two reads of a key that are not prefixes of one another.
    IncompatibleOrder {
        /// The key.
        key: u64,
    },
    /// A committed append is missing from the final read of its key
    /// ([`check_complete`]): it was overwritten (a lost update).
    LostAppend {
        /// The key.
        key: u64,
        /// The value.
        value: u64,
    },
    /// A read saw a value nobody appended.
    UnknownValue {
        /// The reading transaction.
        reader: usize,
        /// The value.
        value: u64,
    },
}

/// Checks `history` and returns every anomaly found (empty: serializable).
pub fn check(history: &[Op]) -> Vec<Anomaly> {
    let mut out = Vec::new();
    // who appended each value, and whether it was that writer's last append to the key
    let mut writer: HashMap<u64, (usize, u64, bool)> = HashMap::new();
    for (i, op) in history.iter().enumerate() {
        let mut last: HashMap<u64, u64> = HashMap::new();
        for m in &op.mops {
            if let Mop::Append(k, v) = m {
                last.insert(*k, *v);
            }
        }
        for m in &op.mops {
            if let Mop::Append(k, v) = m {
                writer.insert(*v, (i, *k, last.get(k) == Some(v)));
            }
        }
    }
    // version order per key: the longest committed read (all others must be prefixes)
    let mut order: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut bad_keys = Vec::new();
    for (i, op) in history.iter().enumerate() {
        if op.typ != OpType::Ok {
            continue;
        }
        for m in &op.mops {
            let Mop::Read(k, Some(list)) = m else {
                continue;
            };
            for v in list {
                match writer.get(v) {
                    None => out.push(Anomaly::UnknownValue {
                        reader: i,
                        value: *v,
                    }),
                    Some(&(w, _, _)) if history[w].typ == OpType::Fail => out.push(Anomaly::G1a {
                        reader: i,
                        value: *v,
                    }),
                    _ => {}
                }
            }
            if let Some(&v) = list.last() {
                if let Some(&(w, _, last)) = writer.get(&v) {
                    if w != i && !last {
                        out.push(Anomaly::G1b {
                            reader: i,
                            value: v,
                        });
                    }
                }
            }
            let cur = order.entry(*k).or_default();
            let (short, long) = if cur.len() <= list.len() {
                (&cur[..], &list[..])
            } else {
                (&list[..], &cur[..])
            };
            if long[..short.len()] != *short {
                bad_keys.push(*k);
            } else if list.len() > cur.len() {
                *cur = list.clone();
            }
        }
    }
    bad_keys.sort_unstable();
    bad_keys.dedup();
    for key in bad_keys {
        out.push(Anomaly::IncompatibleOrder { key });
    }
    // edges between committed transactions
    let n = history.len();
    let mut edges: Vec<Vec<(usize, Dep)>> = vec![Vec::new(); n];
    let committed = |i: usize| history[i].typ == OpType::Ok;
    let mut add = |a: usize, b: usize, d: Dep| {
        if a != b && committed(a) && committed(b) {
            edges[a].push((b, d));
        }
    };
    for list in order.values() {
        for w in list.windows(2) {
            if let (Some(&(a, _, _)), Some(&(b, _, _))) = (writer.get(&w[0]), writer.get(&w[1])) {
                add(a, b, Dep::WW);
            }
        }
    }
    for (i, op) in history.iter().enumerate() {
        if op.typ != OpType::Ok {
            continue;
        }
        for m in &op.mops {
            let Mop::Read(k, Some(list)) = m else {
                continue;
            };
            // wr: the writer of the last element read
            if let Some(&(w, _, _)) = list.last().and_then(|v| writer.get(v)) {
                add(w, i, Dep::WR);
            }
            // rw: the writer of the next element in the version order
            if let Some(full) = order.get(k) {
                if full.len() > list.len() && full[..list.len()] == list[..] {
                    if let Some(&(w, _, _)) = writer.get(&full[list.len()]) {
                        add(i, w, Dep::RW);
                    }
                }
            }
        }
    }
    // cycles, by increasingly permissive edge sets
    let mut reported: Vec<Vec<usize>> = Vec::new();
    for (allowed, make) in [
        (&[Dep::WW][..], Anomaly::G0 as fn(Vec<usize>) -> Anomaly),
        (&[Dep::WW, Dep::WR][..], Anomaly::G1c),
        (&[Dep::WW, Dep::WR, Dep::RW][..], Anomaly::G2),
    ] {
        for scc in sccs(&edges, allowed) {
            if reported.iter().any(|r| scc.iter().all(|x| r.contains(x))) {
                continue;
            }
            reported.push(scc.clone());
            out.push(make(scc));
        }
    }
    out
}

/// [`check`], for a history whose last operation read its keys after every other
/// operation had completed: additionally, every committed append to a key it read
/// must be in that read ([`Anomaly::LostAppend`] otherwise).
pub fn check_complete(history: &[Op]) -> Vec<Anomaly> {
    let mut out = check(history);
    let Some((last, rest)) = history.split_last() else {
        return out;
    };
    let finals: HashMap<u64, &Vec<u64>> = last
        .mops
        .iter()
        .filter_map(|m| match m {
            Mop::Read(k, Some(l)) => Some((*k, l)),
            _ => None,
        })
        .collect();
    for op in rest.iter().filter(|o| o.typ == OpType::Ok) {
        for m in &op.mops {
            if let Mop::Append(k, v) = m {
                if finals.get(k).is_some_and(|l| !l.contains(v)) {
                    out.push(Anomaly::LostAppend { key: *k, value: *v });
                }
            }
        }
    }
    out
}

/// Strongly connected components with more than one member (Tarjan, iterative).
fn sccs(edges: &[Vec<(usize, Dep)>], allowed: &[Dep]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on = vec![false; n];
    let mut stack = Vec::new();
    let mut next = 0;
    let mut out = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut work: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some(&mut (v, ref mut ei)) = work.last_mut() {
            if *ei == 0 && index[v] == usize::MAX {
                index[v] = next;
                low[v] = next;
                next += 1;
                stack.push(v);
                on[v] = true;
            }
            let succ = edges[v]
                .iter()
                .skip(*ei)
                .find(|e| allowed.contains(&e.1))
                .map(|e| e.0);
            // advance past the edge we are about to follow (or to the end)
            let pos = edges[v]
                .iter()
                .skip(*ei)
                .position(|e| allowed.contains(&e.1))
                .map(|p| *ei + p + 1)
                .unwrap_or(edges[v].len());
            *ei = pos;
            match succ {
                Some(w) if index[w] == usize::MAX => work.push((w, 0)),
                Some(w) => {
                    if on[w] {
                        low[v] = low[v].min(index[w]);
                    }
                }
                None => {
                    work.pop();
                    if let Some(&(p, _)) = work.last() {
                        low[p] = low[p].min(low[v]);
                    }
                    if low[v] == index[v] {
                        let mut comp = Vec::new();
                        loop {
                            let w = stack.pop().expect("on stack");
                            on[w] = false;
                            comp.push(w);
                            if w == v {
                                break;
                            }
                        }
                        if comp.len() > 1 {
                            comp.sort_unstable();
                            out.push(comp);
                        }
                    }
                }
            }
        }
    }
    out
}

/// The history as elle-cli's JSON (`elle-cli --model list-append --format json`): one
/// `invoke` and one completion event per transaction, with `f: "txn"` and values as
/// `["append", k, v]` / `["r", k, [..]]` (reads are `null` in the invocation).
pub fn to_elle_json(history: &[Op]) -> String {
    fn mops(m: &[Mop], invoke: bool) -> String {
        let parts: Vec<String> = m
            .iter()
            .map(|m| match m {
                Mop::Append(k, v) => format!("[\"append\",{k},{v}]"),
                Mop::Read(k, Some(l)) if !invoke => format!(
                    "[\"r\",{k},[{}]]",
                    l.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                Mop::Read(k, _) => format!("[\"r\",{k},null]"),
            })
            .collect();
        format!("[{}]", parts.join(","))
    }
    let mut events = Vec::with_capacity(history.len() * 2);
    for (i, op) in history.iter().enumerate() {
        let typ = match op.typ {
            OpType::Ok => "ok",
            OpType::Fail => "fail",
            OpType::Info => "info",
        };
        events.push(format!(
            "{{\"index\":{},\"time\":{},\"type\":\"invoke\",\"process\":{},\"f\":\"txn\",\"value\":{}}}",
            2 * i,
            2 * i,
            op.process,
            mops(&op.mops, true)
        ));
        events.push(format!(
            "{{\"index\":{},\"time\":{},\"type\":\"{typ}\",\"process\":{},\"f\":\"txn\",\"value\":{}}}",
            2 * i + 1,
            2 * i + 1,
            op.process,
            mops(&op.mops, false)
        ));
    }
    format!("[{}]", events.join(",\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(p: u64, mops: Vec<Mop>) -> Op {
        Op {
            process: p,
            typ: OpType::Ok,
            mops,
        }
    }
    use Mop::{Append as A, Read as R};

    #[test]
    fn serial_history_is_clean() {
        let h = vec![
            ok(0, vec![A(1, 1), A(2, 1)]),
            ok(1, vec![R(1, Some(vec![1])), A(1, 2)]),
            ok(2, vec![R(1, Some(vec![1, 2])), R(2, Some(vec![1]))]),
        ];
        assert_eq!(check(&h), vec![]);
    }

    #[test]
    fn finds_g0_write_cycle() {
        // T0 before T1 on key 1, T1 before T0 on key 2
        let h = vec![
            ok(0, vec![A(1, 10), A(2, 21)]),
            ok(1, vec![A(1, 11), A(2, 20)]),
            ok(2, vec![R(1, Some(vec![10, 11])), R(2, Some(vec![20, 21]))]),
        ];
        let a = check(&h);
        assert!(a.contains(&Anomaly::G0(vec![0, 1])), "{a:?}");
    }

    #[test]
    fn finds_g1c_circular_information_flow() {
        // each reads the other's append
        let h = vec![
            ok(0, vec![A(1, 1), R(2, Some(vec![2]))]),
            ok(1, vec![A(2, 2), R(1, Some(vec![1]))]),
        ];
        let a = check(&h);
        assert!(a.contains(&Anomaly::G1c(vec![0, 1])), "{a:?}");
    }

    #[test]
    fn finds_g2_write_skew_and_lost_update() {
        // write skew: both read empty lists, each appends to the key the other read
        let skew = vec![
            ok(0, vec![R(1, Some(vec![])), A(2, 2)]),
            ok(1, vec![R(2, Some(vec![])), A(1, 1)]),
            ok(2, vec![R(1, Some(vec![1])), R(2, Some(vec![2]))]),
        ];
        assert!(check(&skew)
            .iter()
            .any(|x| matches!(x, Anomaly::G2(c) if c == &vec![0, 1])));
        // lost update: both read [] and append; the final list holds both
        let lost = vec![
            ok(0, vec![R(1, Some(vec![])), A(1, 1)]),
            ok(1, vec![R(1, Some(vec![])), A(1, 2)]),
            ok(2, vec![R(1, Some(vec![1, 2]))]),
        ];
        assert!(
            check(&lost).iter().any(|x| matches!(x, Anomaly::G2(_))),
            "{:?}",
            check(&lost)
        );
    }

    #[test]
    fn finds_g1a_g1b_and_bad_orders() {
        let h = vec![
            Op {
                process: 0,
                typ: OpType::Fail,
                mops: vec![A(1, 1)],
            },
            ok(1, vec![R(1, Some(vec![1]))]),
            ok(2, vec![A(2, 5), A(2, 6)]),
            ok(3, vec![R(2, Some(vec![5]))]),
            ok(4, vec![R(3, Some(vec![9]))]),
            ok(5, vec![A(4, 7)]),
            ok(6, vec![A(4, 8)]),
            ok(7, vec![R(4, Some(vec![7, 8]))]),
            ok(8, vec![R(4, Some(vec![8, 7]))]),
        ];
        let a = check(&h);
        assert!(
            a.contains(&Anomaly::G1a {
                reader: 1,
                value: 1
            }),
            "{a:?}"
        );
        assert!(
            a.contains(&Anomaly::G1b {
                reader: 3,
                value: 5
            }),
            "{a:?}"
        );
        assert!(
            a.contains(&Anomaly::UnknownValue {
                reader: 4,
                value: 9
            }),
            "{a:?}"
        );
        assert!(a.contains(&Anomaly::IncompatibleOrder { key: 4 }), "{a:?}");
    }

    #[test]
    fn finds_lost_appends_against_a_final_read() {
        let h = vec![
            ok(0, vec![R(1, Some(vec![])), A(1, 1)]),
            ok(1, vec![R(1, Some(vec![])), A(1, 2)]),
            ok(2, vec![R(1, Some(vec![2]))]),
        ];
        assert_eq!(
            check_complete(&h),
            vec![Anomaly::LostAppend { key: 1, value: 1 }]
        );
        let fine = vec![ok(0, vec![A(1, 1)]), ok(1, vec![R(1, Some(vec![1]))])];
        assert_eq!(check_complete(&fine), vec![]);
    }

    #[test]
    fn elle_json_shape() {
        let h = vec![ok(3, vec![A(1, 2), R(1, Some(vec![2]))])];
        let j = to_elle_json(&h);
        assert_eq!(
            j,
            "[{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":3,\"f\":\"txn\",\"value\":[[\"append\",1,2],[\"r\",1,null]]},\n\
             {\"index\":1,\"time\":1,\"type\":\"ok\",\"process\":3,\"f\":\"txn\",\"value\":[[\"append\",1,2],[\"r\",1,[2]]]}]"
        );
    }
}
