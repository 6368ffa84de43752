//! # zs-bench-harness: how every `cargo xtask bench` suite measures
//!
//! The machines are small and shared, so a figure only means something next to a
//! baseline measured in the same run. A [`Suite`] runs its cases **interleaved**
//! (A B A B …) for a number of rounds, keeps every sample, and reports the median,
//! min and max of each case; ratios are computed from medians so that a ratio
//! above 1.0 always means "we are ahead" (see `shared/BENCH.md`).
//!
//! Shared baselines live in [`raw`]: the hand-written mio/epoll echo, a blocking
//! ping-pong, a checksumming raw TCP sink, and process helpers (RSS, fd limit),
//! so every suite measures against the same code.
//!
//! Output contract: a readable table (with a progress bar while it runs), then,
//! as the **last line** of standard output, one JSON object:
//! `{"suite":"wire","rounds":5,"results":[{"name":…,"metric":…,"median":…,"min":…,"max":…}],"ratios":{…}}`.
//!
//! ```
//! use zs_bench_harness::{Better, Suite};
//! let mut suite = Suite::new("demo", 3, true);
//! let mut acc = 0u64;
//! suite.case("ours", "ops_per_s", Better::Higher, move || {
//!     let t = std::time::Instant::now();
//!     for i in 0..1000u64 { acc = acc.wrapping_add(std::hint::black_box(i)); }
//!     1000.0 / t.elapsed().as_secs_f64().max(1e-9)
//! });
//! suite.case("theirs", "ops_per_s", Better::Higher, || 1.0e6);
//! suite.run();
//! suite.ratio("ours_vs_theirs", "ours", "theirs");
//! let json = suite.json();
//! assert!(json.contains("\"suite\":\"demo\""));
//! ```
#![forbid(unsafe_code)]

pub mod raw;

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

/// Which direction of a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    /// Throughput-like metrics (msgs/s, GB/s).
    Higher,
    /// Cost-like metrics (ns per op, bytes per connection, seconds).
    Lower,
}

/// Command-line options every suite binary accepts.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--quick`: finish in under 60 s with fewer rounds and smaller data.
    pub quick: bool,
    /// `--rounds N`: override the number of interleaved rounds.
    pub rounds: Option<usize>,
    /// `--quiet`: no progress bar (for logs).
    pub quiet: bool,
}

impl Options {
    /// Parses `std::env::args()`; unknown arguments are an error message and exit 2.
    pub fn from_env() -> Options {
        let mut opts = Options {
            quick: false,
            rounds: None,
            quiet: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => opts.quick = true,
                "--quiet" => opts.quiet = true,
                "--rounds" => {
                    let n = args.next().and_then(|v| v.parse().ok()).filter(|&n| n > 0);
                    match n {
                        Some(n) => opts.rounds = Some(n),
                        None => {
                            eprintln!("--rounds needs a positive whole number");
                            std::process::exit(2);
                        }
                    }
                }
                other => {
                    eprintln!(
                        "unknown argument {other:?} (accepted: --quick, --rounds N, --quiet)"
                    );
                    std::process::exit(2);
                }
            }
        }
        opts
    }

    /// The number of rounds: `--rounds`, else `quick_rounds` or `full_rounds`.
    pub fn rounds_or(&self, quick_rounds: usize, full_rounds: usize) -> usize {
        self.rounds.unwrap_or(if self.quick {
            quick_rounds
        } else {
            full_rounds
        })
    }
}

type Sampler = Box<dyn FnMut() -> f64>;

struct Case {
    name: String,
    metric: String,
    better: Better,
    sampler: Sampler,
    samples: Vec<f64>,
}

/// Summary statistics of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Case name, e.g. `zs-decode-64B`.
    pub name: String,
    /// Metric name, e.g. `ns_per_frame`.
    pub metric: String,
    /// Direction of the metric.
    pub better: Better,
    /// Median over rounds.
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

/// One benchmark suite: cases measured interleaved, then a table and a JSON line.
pub struct Suite {
    name: String,
    rounds: usize,
    quiet: bool,
    cases: Vec<Case>,
    done: Vec<Summary>,
    ratios: Vec<(String, f64)>,
    notes: Vec<String>,
}

/// Median of a slice (mean of the two middle values for even lengths); NaN when empty.
pub fn median(samples: &[f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Suite {
    /// A suite named `name` (the `suite` field of the JSON line) with `rounds` rounds.
    pub fn new(name: &str, rounds: usize, quiet: bool) -> Suite {
        Suite {
            name: name.to_string(),
            rounds: rounds.max(1),
            quiet,
            cases: Vec::new(),
            done: Vec::new(),
            ratios: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A suite configured from [`Options`] with the given default round counts.
    pub fn from_options(
        name: &str,
        opts: &Options,
        quick_rounds: usize,
        full_rounds: usize,
    ) -> Suite {
        Suite::new(name, opts.rounds_or(quick_rounds, full_rounds), opts.quiet)
    }

    /// Number of rounds each case runs.
    pub fn rounds(&self) -> usize {
        self.rounds
    }

    /// Adds a case. `sampler` runs one measurement and returns its value in `metric` units.
    pub fn case(
        &mut self,
        name: &str,
        metric: &str,
        better: Better,
        sampler: impl FnMut() -> f64 + 'static,
    ) {
        self.cases.push(Case {
            name: name.to_string(),
            metric: metric.to_string(),
            better,
            sampler: Box::new(sampler),
            samples: Vec::new(),
        });
    }

    /// [`Suite::case`], unless environment variable `only_var` holds a
    /// comma-separated list of case names without `name` (a profiling aid:
    /// `ZS_FILES_ONLY=zs-download perf record … zs-bench-files --quick`).
    pub fn case_selected(
        &mut self,
        only_var: &str,
        name: &str,
        metric: &str,
        better: Better,
        sampler: impl FnMut() -> f64 + 'static,
    ) {
        if let Ok(only) = std::env::var(only_var) {
            if !only.is_empty() && !only.split(',').any(|o| o == name) {
                return;
            }
        }
        self.case(name, metric, better, sampler);
    }

    /// Runs every pending case for the configured rounds, interleaved: round 1 runs
    /// A, B, C…, round 2 runs them again, and so on. Results are kept for the table.
    pub fn run(&mut self) {
        let total = (self.cases.len() * self.rounds) as u64;
        let bar = if self.quiet || total == 0 {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_prefix(self.name.clone());
            b
        };
        for _ in 0..self.rounds {
            for case in &mut self.cases {
                bar.set_message(case.name.clone());
                let v = (case.sampler)();
                case.samples.push(v);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        for case in self.cases.drain(..) {
            let min = case.samples.iter().copied().fold(f64::INFINITY, f64::min);
            let max = case
                .samples
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            self.done.push(Summary {
                median: median(&case.samples),
                min,
                max,
                name: case.name,
                metric: case.metric,
                better: case.better,
            });
        }
    }

    /// Summary of a finished case by name.
    pub fn summary(&self, name: &str) -> Option<&Summary> {
        self.done.iter().find(|s| s.name == name)
    }

    /// Records ratio `key` between finished cases `ours` and `theirs`, oriented so that
    /// above 1.0 means ours is ahead (ours/theirs for higher-is-better, theirs/ours
    /// otherwise). Returns the ratio, or `None` (and records nothing) if a case is missing.
    pub fn ratio(&mut self, key: &str, ours: &str, theirs: &str) -> Option<f64> {
        let a = self.summary(ours)?;
        let b = self.summary(theirs)?;
        let r = match a.better {
            Better::Higher => a.median / b.median,
            Better::Lower => b.median / a.median,
        };
        self.ratios.push((key.to_string(), r));
        Some(r)
    }

    /// Adds a free-text note printed under the table (e.g. thread placement).
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// The table as text.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let w = self
            .done
            .iter()
            .map(|s| s.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let m = self
            .done
            .iter()
            .map(|s| s.metric.len())
            .max()
            .unwrap_or(6)
            .max(6);
        out.push_str(&format!(
            "suite {} ({} rounds, interleaved)\n{:<w$}  {:<m$}  {:>14}  {:>14}  {:>14}\n",
            self.name, self.rounds, "case", "metric", "median", "min", "max"
        ));
        for s in &self.done {
            out.push_str(&format!(
                "{:<w$}  {:<m$}  {:>14}  {:>14}  {:>14}\n",
                s.name,
                s.metric,
                fmt_num(s.median),
                fmt_num(s.min),
                fmt_num(s.max)
            ));
        }
        if !self.ratios.is_empty() {
            out.push_str("ratios (above 1.0 = zserver ahead)\n");
            for (k, v) in &self.ratios {
                out.push_str(&format!("  {k:<30} {v:.3}\n"));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }

    /// The JSON line of the output contract.
    pub fn json(&self) -> String {
        let results: Vec<Value> = self
            .done
            .iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "metric": s.metric,
                    "median": finite(s.median),
                    "min": finite(s.min),
                    "max": finite(s.max),
                })
            })
            .collect();
        let mut ratios = Map::new();
        for (k, v) in &self.ratios {
            ratios.insert(k.clone(), finite(*v));
        }
        json!({"suite": self.name, "rounds": self.rounds, "results": results, "ratios": ratios})
            .to_string()
    }

    /// Prints the table, then the JSON line last.
    pub fn finish(self) {
        print!("{}", self.table());
        println!("{}", self.json());
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Runs `f` repeatedly until at least `min_time` has passed (and at least once),
/// returning `(iterations, elapsed)`. Use it inside a sampler to turn a fast
/// operation into a stable per-op figure.
pub fn time_loop(min_time: Duration, mut f: impl FnMut()) -> (u64, Duration) {
    let start = Instant::now();
    let mut iters = 0u64;
    let mut batch = 1u64;
    loop {
        for _ in 0..batch {
            f();
        }
        iters += batch;
        let el = start.elapsed();
        if el >= min_time {
            return (iters, el);
        }
        batch = batch.saturating_mul(2).min(1 << 20);
    }
}

/// Nanoseconds per call of `f`, measured with [`time_loop`] over `min_time`.
pub fn ns_per_op(min_time: Duration, f: impl FnMut()) -> f64 {
    let (n, el) = time_loop(min_time, f);
    el.as_nanos() as f64 / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn interleaves_and_orients_ratios() {
        use std::cell::RefCell;
        use std::rc::Rc;
        let order = Rc::new(RefCell::new(Vec::new()));
        let mut s = Suite::new("t", 3, true);
        let o1 = order.clone();
        s.case("a", "ns", Better::Lower, move || {
            o1.borrow_mut().push('a');
            10.0
        });
        let o2 = order.clone();
        s.case("b", "ns", Better::Lower, move || {
            o2.borrow_mut().push('b');
            20.0
        });
        s.run();
        assert_eq!(order.borrow().iter().collect::<String>(), "ababab");
        // lower is better: theirs/ours = 20/10
        assert_eq!(s.ratio("a_vs_b", "a", "b"), Some(2.0));
        assert_eq!(s.ratio("x", "a", "missing"), None);
        let j: Value = serde_json::from_str(&s.json()).unwrap();
        assert_eq!(j["suite"], "t");
        assert_eq!(j["rounds"], 3);
        assert_eq!(j["ratios"]["a_vs_b"], 2.0);
        assert_eq!(j["results"][1]["median"], 20.0);
    }

    #[test]
    fn table_lists_every_case_and_json_is_last() {
        let mut s = Suite::new("t", 1, true);
        s.case("alpha", "msgs_per_s", Better::Higher, || 1.0e6);
        s.run();
        let t = s.table();
        assert!(t.contains("alpha") && t.contains("1.000M"));
    }
}
