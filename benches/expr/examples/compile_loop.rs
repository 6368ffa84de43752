//! Profiling aid for the compile cases: `compile_loop <zs|zs-reuse|zs-eval|fasteval|fasteval-fresh> [n] [all|arith|nested]`
//! compiles the numeric bench expressions `n` times. Run it under `valgrind --tool=callgrind` to compare
//! instruction counts, which stay reproducible on a busy machine where wall-clock does not.
#![forbid(unsafe_code)]

use std::hint::black_box;

use fasteval::Compiler;

const TEXTS: [&str; 2] = ["x * 2 + 1", "max(abs(x - 10), min(x, 3)) * 2"];

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "zs".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let texts: &[&str] = match args.next().as_deref() {
        Some("arith") => &TEXTS[..1],
        Some("nested") => &TEXTS[1..],
        _ => &TEXTS,
    };
    match which.as_str() {
        "zs" => {
            let engine = zs_expr::Engine::new();
            for _ in 0..n {
                for &t in texts {
                    black_box(engine.compile(black_box(t)).ok());
                }
            }
        }
        "zs-reuse" => {
            let engine = zs_expr::Engine::new();
            let mut p = engine.compile("0").expect("compiles");
            for _ in 0..n {
                for &t in texts {
                    black_box(engine.compile_into(black_box(t), &mut p).is_ok());
                }
            }
        }
        "fasteval" => {
            let mut slab = fasteval::Slab::new();
            let parser = fasteval::Parser::new();
            for _ in 0..n {
                for &t in texts {
                    slab.cs.clear();
                    let c = parser
                        .parse(black_box(t), &mut slab.ps)
                        .map(|e| e.from(&slab.ps).compile(&slab.ps, &mut slab.cs));
                    black_box(c.is_ok());
                }
            }
        }
        "zs-eval" => {
            // evaluation, for comparing a Program layout's eval cost (`n` evals per text)
            let engine = zs_expr::Engine::new();
            let progs: Vec<_> = texts
                .iter()
                .map(|t| engine.compile(t).expect("compiles"))
                .collect();
            let vars = [zs_expr::Value::Float(7.5)];
            for _ in 0..n {
                for p in &progs {
                    black_box(p.eval_f64(black_box(&vars[..])).ok());
                }
            }
        }
        "fasteval-fresh" => {
            let parser = fasteval::Parser::new();
            for _ in 0..n {
                for &t in texts {
                    let mut slab = fasteval::Slab::new();
                    let c = parser
                        .parse(black_box(t), &mut slab.ps)
                        .map(|e| e.from(&slab.ps).compile(&slab.ps, &mut slab.cs));
                    black_box((c.is_ok(), &slab));
                }
            }
        }
        other => {
            eprintln!(
                "usage: compile_loop <zs|zs-reuse|zs-eval|fasteval|fasteval-fresh> [n] (got {other:?})"
            );
            std::process::exit(2);
        }
    }
}
