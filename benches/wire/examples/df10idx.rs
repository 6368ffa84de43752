use bytes::Bytes;
use std::hint::black_box;
use zs_wire::{DataFrame, Limits, Text};
fn main() {
    let df = DataFrame::with_capacity(10)
        .with(7u32)
        .with(1_700_000_000i64)
        .with(3.25f64)
        .with(true)
        .with(Text::from("alice.example"))
        .with(Text::from("Shanghai"))
        .with(Bytes::from((0u8..16).collect::<Vec<u8>>()))
        .with(-3i16)
        .with(9u8)
        .with(0.5f32);
    let b = df.to_bytes();
    let limits = Limits::default();
    let n: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2_000_000);
    let t = std::time::Instant::now();
    for _ in 0..n {
        let d = DataFrame::decode(black_box(&b), &limits).expect("valid");
        black_box(d.get(9));
    }
    println!("{:.1} ns/op", t.elapsed().as_nanos() as f64 / n as f64);
}
