//! `cargo bench -p zs-expr`: criterion micro-benchmarks of compiling and evaluating,
//! for a contributor comparing two versions of a hot path
//! (`cargo bench -p zs-expr -- --save-baseline before`, change,
//! `cargo bench -p zs-expr -- --baseline before`). The ratios against fasteval and
//! evalexpr stay in `cargo xtask bench expr` (benches/expr). On a shared machine
//! wall-clock differences of a few percent drown in noise; the callgrind recipe in
//! `benches/expr/examples/compile_loop.rs` counts instructions instead.

// criterion_group! defines an undocumented pub fn
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use zs_expr::{Engine, Value};

const TEXTS: [(&str, &str); 4] = [
    ("arith", "x * 2 + 1"),
    ("nested", "max(abs(x - 10), min(x, 3)) * 2"),
    ("string", "name = 'bob' and x > 3"),
    (
        "calls",
        "IntToStr(Round(x * 100)) + ' of ' + UpperCase(name)",
    ),
];

fn vars_for(p: &zs_expr::Program) -> Vec<Value> {
    p.var_names()
        .iter()
        .map(|n| match n.as_str() {
            "x" => Value::Float(3.5),
            _ => Value::from("bob"),
        })
        .collect()
}

fn compile(c: &mut Criterion) {
    let engine = Engine::new();
    let mut g = c.benchmark_group("compile");
    for (label, text) in TEXTS {
        g.bench_function(format!("fresh/{label}"), |b| {
            b.iter(|| black_box(engine.compile(black_box(text)).is_ok()))
        });
        let mut p = engine.compile("0").expect("compiles");
        g.bench_function(format!("into/{label}"), |b| {
            b.iter(|| black_box(engine.compile_into(black_box(text), &mut p).is_ok()))
        });
    }
    g.finish();
}

fn eval(c: &mut Criterion) {
    let engine = Engine::new();
    let mut g = c.benchmark_group("eval");
    for (label, text) in TEXTS {
        let p = engine.compile(text).expect("compiles");
        let v = vars_for(&p);
        assert!(p.eval(&v[..]).is_ok(), "{label} evaluates");
        g.bench_function(label, |b| {
            b.iter(|| black_box(p.eval(black_box(&v[..])).is_ok()))
        });
    }
    g.finish();
}

fn quick() -> Criterion {
    Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = quick();
    targets = compile, eval
}
criterion_main!(benches);
