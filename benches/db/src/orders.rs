//! The orders in which the bench's sides take turns (shared by the suite and `examples/commit_ab.rs`).

/// Every order of `0..k`, one after another such that over a whole cycle each side
/// follows every other side equally often (a side whose flush leaves the shared disk
/// busy slows whichever side comes next: with a fixed cyclic order, the same side
/// always paid for it).
pub fn permutations(k: usize) -> Vec<Vec<usize>> {
    fn go(prefix: &mut Vec<usize>, k: usize, out: &mut Vec<Vec<usize>>) {
        if prefix.len() == k {
            out.push(prefix.clone());
            return;
        }
        for s in 0..k {
            if !prefix.contains(&s) {
                prefix.push(s);
                go(prefix, k, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    go(&mut Vec::new(), k, &mut out);
    out
}
