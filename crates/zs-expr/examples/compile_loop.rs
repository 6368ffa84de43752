//! Profiling aid: compiles the bench expressions in a loop (`valgrind --tool=callgrind`).
use std::hint::black_box;
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let engine = zs_expr::Engine::new();
    for _ in 0..n {
        black_box(engine.compile(black_box("x * 2 + 1")).ok());
        black_box(
            engine
                .compile(black_box("max(abs(x - 10), min(x, 3)) * 2"))
                .ok(),
        );
    }
}
