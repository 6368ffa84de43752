//! `cargo xtask bench expr`: parse+compile and compiled-eval cost of zs-expr next to
//! fasteval and evalexpr on the same expressions, measured interleaved in one run.
//!
//! Expressions: `x * 2 + 1` (a variable), `max(abs(x - 10), min(x, 3)) * 2` (nested calls),
//! `name = 'bob'` (a string comparison; fasteval has no strings, so only evalexpr is
//! compared there). Every engine's answer is checked before timing.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use evalexpr::{ContextWithMutableVariables, DefaultNumericTypes, HashMapContext};
use fasteval::{Compiler, Evaler};
use zs_bench_harness::{Better, Options, Suite};
use zs_expr::{Engine, Value};

const X: f64 = 3.5;

/// (label, ours, fasteval (None: unsupported), evalexpr, expected value)
const EXPRS: [(&str, &str, Option<&str>, &str, f64); 3] = [
    ("arith", "x * 2 + 1", Some("x * 2 + 1"), "x * 2 + 1", 8.0),
    (
        "nested",
        "max(abs(x - 10), min(x, 3)) * 2",
        Some("max(abs(x - 10), min(x, 3)) * 2"),
        "max(math::abs(x - 10), min(x, 3)) * 2",
        13.0,
    ),
    ("string", "name = 'bob'", None, "name == \"bob\"", 1.0),
];

/// One batch of calls lasts about this long: well under a scheduler time slice, so
/// that most batches run without another process taking the CPU in the middle.
const BATCH: Duration = Duration::from_micros(50);

/// Nanoseconds per call of `f`, robust on a shared machine: the batch size is
/// calibrated to about [`BATCH`], batches run until `min_time` has passed, and the
/// lower quartile of the batches' ns/call is returned. A batch that another process
/// interrupted only gets slower, so the lower quartile is what the code costs when it
/// has the CPU; the same estimator on every side keeps the ratios fair.
fn ns_per_op(min_time: Duration, mut f: impl FnMut()) -> f64 {
    // calibrate (also warms caches and the allocator)
    let mut n = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        if t.elapsed() >= BATCH || n >= 1 << 24 {
            break;
        }
        n *= 2;
    }
    let mut per_op = Vec::new();
    let start = Instant::now();
    while per_op.len() < 16 || start.elapsed() < min_time {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        per_op.push(t.elapsed().as_nanos() as f64 / n as f64);
    }
    per_op.sort_by(|a, b| a.total_cmp(b));
    per_op[per_op.len() / 4]
}

fn fasteval_ns(name: &str, _args: Vec<f64>) -> Option<f64> {
    match name {
        "x" => Some(X),
        _ => None,
    }
}

struct Ours {
    progs: Vec<zs_expr::Program>,
    vars: Vec<Vec<Value>>,
}

fn ours() -> Ours {
    let engine = Engine::new();
    let mut progs = Vec::new();
    let mut vars = Vec::new();
    for (label, text, _, _, want) in EXPRS {
        let p = engine.compile(text).expect("ours compiles");
        let v: Vec<Value> = p
            .var_names()
            .iter()
            .map(|n| match n.as_str() {
                "x" => Value::Float(X),
                _ => Value::from("bob"),
            })
            .collect();
        let got = p.eval(&v[..]).expect("ours evaluates");
        let got = match got {
            Value::Bool(b) => f64::from(u8::from(b)),
            Value::Float(f) => f,
            Value::Int(i) => i as f64,
            other => panic!("{label}: unexpected {other:?}"),
        };
        assert_eq!(got, want, "ours: {label}");
        progs.push(p);
        vars.push(v);
    }
    Ours { progs, vars }
}

fn evalexpr_ctx() -> HashMapContext<DefaultNumericTypes> {
    let mut ctx = HashMapContext::<DefaultNumericTypes>::new();
    ctx.set_value("x".into(), evalexpr::Value::Float(X))
        .expect("set x");
    ctx.set_value("name".into(), evalexpr::Value::String("bob".into()))
        .expect("set name");
    ctx
}

fn main() {
    let opts = Options::from_env();
    let min_time = if opts.quick {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(100)
    };
    let mut suite = Suite::from_options("expr", &opts, 5, 11);

    // Sanity: every engine gives the expected answers before anything is timed.
    let _ = ours();
    let ctx = evalexpr_ctx();
    for (label, _, fe, ee, want) in EXPRS {
        let node =
            evalexpr::build_operator_tree::<DefaultNumericTypes>(ee).expect("evalexpr parses");
        let got = match node.eval_with_context(&ctx).expect("evalexpr evaluates") {
            evalexpr::Value::Boolean(b) => f64::from(u8::from(b)),
            evalexpr::Value::Float(f) => f,
            evalexpr::Value::Int(i) => i as f64,
            other => panic!("evalexpr {label}: {other:?}"),
        };
        assert_eq!(got, want, "evalexpr: {label}");
        if let Some(fe) = fe {
            let mut slab = fasteval::Slab::new();
            let c = fasteval::Parser::new()
                .parse(fe, &mut slab.ps)
                .expect("fasteval parses")
                .from(&slab.ps)
                .compile(&slab.ps, &mut slab.cs);
            let got = c.eval(&slab, &mut fasteval_ns).expect("fasteval evaluates");
            assert_eq!(got, want, "fasteval: {label}");
        }
    }

    // --- parse + compile ---
    for (i, (label, text, fe, ee, _)) in EXPRS.into_iter().enumerate() {
        // like fasteval's reused slab: one program whose memory every compile reuses
        let engine = Engine::new();
        let mut p = engine.compile("0").expect("compiles");
        suite.case(
            &format!("zs-compile-{label}"),
            "ns_per_op",
            Better::Lower,
            move || {
                ns_per_op(min_time, || {
                    black_box(engine.compile_into(black_box(text), &mut p).is_ok());
                })
            },
        );
        // a new self-contained Program each time (dropped after)
        let engine = Engine::new();
        suite.case(
            &format!("zs-compile-fresh-{label}"),
            "ns_per_op",
            Better::Lower,
            move || {
                ns_per_op(min_time, || {
                    black_box(engine.compile(black_box(text)).ok());
                })
            },
        );
        if let Some(fe) = fe {
            let mut slab = fasteval::Slab::new();
            let parser = fasteval::Parser::new();
            suite.case(
                &format!("fasteval-compile-{label}"),
                "ns_per_op",
                Better::Lower,
                move || {
                    ns_per_op(min_time, || {
                        // `parse` clears the parse slab; clear the compile slab too, so
                        // fasteval reuses its memory instead of growing it every time.
                        slab.cs.clear();
                        let c = parser
                            .parse(black_box(fe), &mut slab.ps)
                            .map(|e| e.from(&slab.ps).compile(&slab.ps, &mut slab.cs));
                        black_box(c.is_ok());
                    })
                },
            );
        }
        if let Some(fe) = fe {
            // fasteval's self-contained compiled expression: a compiled `Instruction`
            // refers into its slab, so a new one per expression needs a new slab
            // (`Slab::new()`, its documented constructor), dropped after with it
            let parser = fasteval::Parser::new();
            suite.case(
                &format!("fasteval-compile-fresh-{label}"),
                "ns_per_op",
                Better::Lower,
                move || {
                    ns_per_op(min_time, || {
                        let mut slab = fasteval::Slab::new();
                        let c = parser
                            .parse(black_box(fe), &mut slab.ps)
                            .map(|e| e.from(&slab.ps).compile(&slab.ps, &mut slab.cs));
                        black_box((c.is_ok(), &slab));
                    })
                },
            );
        }
        suite.case(
            &format!("evalexpr-compile-{label}"),
            "ns_per_op",
            Better::Lower,
            move || {
                ns_per_op(min_time, || {
                    black_box(
                        evalexpr::build_operator_tree::<DefaultNumericTypes>(black_box(ee)).ok(),
                    );
                })
            },
        );
        let _ = i;
    }
    let engine = Engine::new();
    let mut p = engine.compile("0").expect("compiles");
    suite.case(
        "zs-compile-numeric",
        "ns_per_op",
        Better::Lower,
        move || {
            ns_per_op(min_time, || {
                black_box(engine.compile_into(black_box(EXPRS[0].1), &mut p).is_ok());
                black_box(engine.compile_into(black_box(EXPRS[1].1), &mut p).is_ok());
            })
        },
    );
    {
        let mut slab = fasteval::Slab::new();
        let parser = fasteval::Parser::new();
        suite.case(
            "fasteval-compile-numeric",
            "ns_per_op",
            Better::Lower,
            move || {
                ns_per_op(min_time, || {
                    for fe in [EXPRS[0].2, EXPRS[1].2].into_iter().flatten() {
                        slab.cs.clear();
                        let c = parser
                            .parse(black_box(fe), &mut slab.ps)
                            .map(|e| e.from(&slab.ps).compile(&slab.ps, &mut slab.cs));
                        black_box(c.is_ok());
                    }
                })
            },
        );
    }

    // --- compiled eval ---
    for (i, (label, _, fe, ee, _)) in EXPRS.into_iter().enumerate() {
        let o = ours();
        let numeric = fe.is_some();
        suite.case(
            &format!("zs-eval-{label}"),
            "ns_per_op",
            Better::Lower,
            move || {
                let (p, v) = (&o.progs[i], &o.vars[i][..]);
                ns_per_op(min_time, || {
                    // Numbers come back as f64 (like fasteval); the string case as a Value.
                    if numeric {
                        black_box(p.eval_f64(black_box(v)).ok());
                    } else {
                        black_box(p.eval_bool(black_box(v)).ok());
                    }
                })
            },
        );
        if let Some(fe) = fe {
            let mut slab = fasteval::Slab::new();
            let c = fasteval::Parser::new()
                .parse(fe, &mut slab.ps)
                .expect("parse")
                .from(&slab.ps)
                .compile(&slab.ps, &mut slab.cs);
            suite.case(
                &format!("fasteval-eval-{label}"),
                "ns_per_op",
                Better::Lower,
                move || {
                    ns_per_op(min_time, || {
                        black_box(c.eval(&slab, &mut fasteval_ns).ok());
                    })
                },
            );
        }
        let node = evalexpr::build_operator_tree::<DefaultNumericTypes>(ee).expect("parse");
        let ctx = evalexpr_ctx();
        suite.case(
            &format!("evalexpr-eval-{label}"),
            "ns_per_op",
            Better::Lower,
            move || {
                ns_per_op(min_time, || {
                    if numeric {
                        black_box(node.eval_number_with_context(black_box(&ctx)).ok());
                    } else {
                        black_box(node.eval_boolean_with_context(black_box(&ctx)).ok());
                    }
                })
            },
        );
    }
    {
        let o = ours();
        suite.case("zs-eval-numeric", "ns_per_op", Better::Lower, move || {
            ns_per_op(min_time, || {
                black_box(o.progs[0].eval_f64(black_box(&o.vars[0][..])).ok());
                black_box(o.progs[1].eval_f64(black_box(&o.vars[1][..])).ok());
            })
        });
        let mut slab0 = fasteval::Slab::new();
        let c0 = fasteval::Parser::new()
            .parse(EXPRS[0].1, &mut slab0.ps)
            .expect("parse")
            .from(&slab0.ps)
            .compile(&slab0.ps, &mut slab0.cs);
        let mut slab1 = fasteval::Slab::new();
        let c1 = fasteval::Parser::new()
            .parse(EXPRS[1].1, &mut slab1.ps)
            .expect("parse")
            .from(&slab1.ps)
            .compile(&slab1.ps, &mut slab1.cs);
        suite.case(
            "fasteval-eval-numeric",
            "ns_per_op",
            Better::Lower,
            move || {
                ns_per_op(min_time, || {
                    black_box(c0.eval(&slab0, &mut fasteval_ns).ok());
                    black_box(c1.eval(&slab1, &mut fasteval_ns).ok());
                })
            },
        );
        let o = ours();
        suite.case("zs-eval-all", "ns_per_op", Better::Lower, move || {
            ns_per_op(min_time, || {
                black_box(o.progs[0].eval_f64(black_box(&o.vars[0][..])).ok());
                black_box(o.progs[1].eval_f64(black_box(&o.vars[1][..])).ok());
                black_box(o.progs[2].eval_bool(black_box(&o.vars[2][..])).ok());
            })
        });
        let nodes: Vec<_> = EXPRS
            .iter()
            .map(|e| evalexpr::build_operator_tree::<DefaultNumericTypes>(e.3).expect("parse"))
            .collect();
        let ctx = evalexpr_ctx();
        suite.case("evalexpr-eval-all", "ns_per_op", Better::Lower, move || {
            ns_per_op(min_time, || {
                black_box(nodes[0].eval_number_with_context(black_box(&ctx)).ok());
                black_box(nodes[1].eval_number_with_context(black_box(&ctx)).ok());
                black_box(nodes[2].eval_boolean_with_context(black_box(&ctx)).ok());
            })
        });
    }

    suite.run();
    for (label, _, fe, _, _) in EXPRS {
        if fe.is_some() {
            suite.ratio(
                &format!("eval_vs_fasteval_{label}"),
                &format!("zs-eval-{label}"),
                &format!("fasteval-eval-{label}"),
            );
            suite.ratio(
                &format!("compile_vs_fasteval_{label}"),
                &format!("zs-compile-{label}"),
                &format!("fasteval-compile-{label}"),
            );
            suite.ratio(
                &format!("compile_fresh_vs_fasteval_{label}"),
                &format!("zs-compile-fresh-{label}"),
                &format!("fasteval-compile-fresh-{label}"),
            );
            suite.ratio(
                &format!("compile_fresh_vs_fasteval_reused_{label}"),
                &format!("zs-compile-fresh-{label}"),
                &format!("fasteval-compile-{label}"),
            );
        }
        suite.ratio(
            &format!("eval_vs_evalexpr_{label}"),
            &format!("zs-eval-{label}"),
            &format!("evalexpr-eval-{label}"),
        );
        suite.ratio(
            &format!("compile_vs_evalexpr_{label}"),
            &format!("zs-compile-{label}"),
            &format!("evalexpr-compile-{label}"),
        );
    }
    suite.ratio(
        "eval_vs_fasteval",
        "zs-eval-numeric",
        "fasteval-eval-numeric",
    );
    suite.ratio("eval_vs_evalexpr", "zs-eval-all", "evalexpr-eval-all");
    suite.ratio(
        "compile_vs_fasteval",
        "zs-compile-numeric",
        "fasteval-compile-numeric",
    );
    suite.note("eval_vs_fasteval / compile_vs_fasteval: arith + nested (fasteval has no strings); eval_vs_evalexpr: all three");
    suite.note("variables: ours by slot (&[Value]); fasteval a closure namespace; evalexpr a HashMapContext");
    suite.note("timing: each sample runs ~50 us batches for the sample's time and reports the lower quartile of the batches' ns/op (preemption only slows a batch), the same on every side");
    suite.note("compile: ours (zs-compile-*) parses and compiles into one reused Program (Engine::compile_into: no allocation once warm), fasteval into one reused Slab (cleared each time, no allocation once warm); zs-compile-fresh-* builds a new self-contained Program each time (Engine::compile, dropped after) and fasteval-compile-fresh-* a new self-contained compiled expression (a new Slab::new(), parse, compile, dropped after), ratios compile_fresh_vs_fasteval_*; compile_fresh_vs_fasteval_reused_* pairs our fresh Program with fasteval's reused slab (more work on our side)");
    suite.note("results as typed scalars on every side: numeric cases ours eval_f64, fasteval f64, evalexpr eval_number; string case ours eval_bool, evalexpr eval_boolean");
    suite.finish();
}
