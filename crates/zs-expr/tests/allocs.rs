//! Heap allocations per compile, counted by an instrumented global allocator: a
//! small fresh `Program` costs three (its text, its nodes, its typed code; spans,
//! argument lists and constants are stored inline), a recompile into a reused one
//! none, and a program whose tables spill past the inline room still evaluates right.
//! One test function only: the counter is process-wide, and parallel tests would add
//! their allocations to it.

use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use zs_expr::{Engine, Value};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations made by `f` (the fewest over five runs, so a stray
/// allocation of the test harness's own threads does not count).
fn allocs<T>(mut f: impl FnMut() -> T) -> (usize, T) {
    let mut best = usize::MAX;
    let mut out = None;
    for _ in 0..5 {
        let before = GLOBAL.stats();
        let r = f();
        let after = GLOBAL.stats();
        let n =
            (after.allocations + after.reallocations) - (before.allocations + before.reallocations);
        best = best.min(n);
        out = Some(r);
    }
    (best, out.expect("ran"))
}

#[test]
fn compile_allocations() {
    let engine = Engine::new();
    let x = [Value::Float(3.0)];
    // warm the per-thread parse scratch
    engine.compile("max(abs(x - 10), min(x, 3)) * 2").unwrap();

    let (n, p) = allocs(|| engine.compile("x * 2 + 1").unwrap());
    assert_eq!(n, 3, "fresh `x * 2 + 1`");
    assert_eq!(p.eval_f64(&x[..]).unwrap(), 7.0);

    let (n, p) = allocs(|| engine.compile("max(abs(x - 10), min(x, 3)) * 2").unwrap());
    assert_eq!(n, 3, "fresh nested");
    assert_eq!(p.eval_f64(&x[..]).unwrap(), 14.0);

    let mut reused = engine.compile("max(abs(x - 10), min(x, 3)) * 2").unwrap();
    let (n, ()) = allocs(|| engine.compile_into("x * 2 + 1", &mut reused).unwrap());
    assert_eq!(n, 0, "recompile into a reused program");
    assert_eq!(reused.eval_f64(&x[..]).unwrap(), 7.0);

    // past the inline room: 20 constants, 20 arguments, 40+ spans, strings
    let big = format!(
        "max({}) + length('{}')",
        (1..=20)
            .map(|k| format!("x * {k}.5"))
            .collect::<Vec<_>>()
            .join(", "),
        "ab"
    );
    let p = engine.compile(&big).unwrap();
    assert_eq!(p.eval_f64(&x[..]).unwrap(), 3.0 * 20.5 + 2.0);
    let mut q = engine.compile("1").unwrap();
    engine.compile_into(&big, &mut q).unwrap();
    assert_eq!(q.eval_f64(&x[..]).unwrap(), 3.0 * 20.5 + 2.0);
    assert_eq!(q.save(), p.save());
    let loaded = engine.load(&p.save()).unwrap();
    assert_eq!(loaded.eval_f64(&x[..]).unwrap(), 3.0 * 20.5 + 2.0);
}
