//! Temporary profiling loop (removed before hand-off).
use bytes::{Bytes, BytesMut};
use std::hint::black_box;
use std::time::Instant;
use zs_wire::{Config, DataFrame, Decoder, Frame, Limits, Text};

fn main() {
    let what = std::env::args().nth(1).unwrap_or_default();
    if what == "sizes" {
        sizes();
        return;
    }
    if what == "micro" {
        micro();
        return;
    }
    let config = Config::default();
    let console = Frame::Console {
        id: 1000,
        cmd: Text::from("echo"),
        text: Text::from("x".repeat(60).as_str()),
    };
    let one = console.to_bytes(&config).unwrap();
    let mut batch = BytesMut::new();
    for _ in 0..1024 {
        batch.extend_from_slice(&one);
    }
    let batch = batch.freeze();
    let df = DataFrame::new()
        .with(48_213u32)
        .with(1_700_000_000_123i64)
        .with(1234.5678f64)
        .with(true)
        .with("alice.example")
        .with("Shanghai")
        .with(Bytes::from((0u8..16).collect::<Vec<_>>()))
        .with(-321i16)
        .with(7u8)
        .with(0.75f32);
    let dfb = df.to_bytes();
    let limits = Limits::default();
    let mut dec = Decoder::new(config);
    let mut rx = BytesMut::with_capacity(batch.len());
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed().as_secs_f64() < 3.0 {
        for _ in 0..1024 {
            match what.as_str() {
                "console" => {
                    if rx.is_empty() {
                        rx.extend_from_slice(&batch);
                    }
                    black_box(dec.decode(&mut rx).unwrap().unwrap());
                }
                "split" => {
                    if rx.is_empty() {
                        rx.extend_from_slice(&batch);
                    }
                    let mut b = rx.split_to(one.len()).freeze();
                    bytes::Buf::advance(&mut b, 3);
                    black_box(b);
                }
                "copy" => {
                    if rx.is_empty() {
                        rx.extend_from_slice(&batch);
                    }
                    let b = Bytes::copy_from_slice(&rx[3..one.len()]);
                    bytes::Buf::advance(&mut rx, one.len());
                    black_box(b);
                }
                "df" => {
                    let d = DataFrame::decode(black_box(&dfb), &limits).unwrap();
                    let mut r = d.reader();
                    black_box(r.read_u32().unwrap());
                    black_box(r.read_i64().unwrap());
                    black_box(r.read_f64().unwrap());
                    black_box(r.read_bool().unwrap());
                    black_box(r.read_str().unwrap());
                    black_box(r.read_str().unwrap());
                    black_box(r.read_slice().unwrap());
                    black_box(r.read_i16().unwrap());
                    black_box(r.read_u8().unwrap());
                    black_box(r.read_f32().unwrap());
                }
                _ => {
                    black_box(DataFrame::decode(black_box(&dfb), &limits).unwrap());
                }
            }
            n += 1;
        }
    }
    println!("{what}: {:.1} ns/op", t.elapsed().as_nanos() as f64 / n as f64);
}

#[allow(dead_code)]
pub fn micro() {
    let b = Bytes::from(vec![7u8; 4096]);
    let _c = b.clone();
    for (name, f) in [
        ("clone+drop shared", &(|| drop(black_box(b.slice(3..7)))) as &dyn Fn()),
        ("copy_from_slice 4 +drop", &|| drop(black_box(Bytes::copy_from_slice(&b[3..7])))),
        ("copy_from_slice 60 +drop", &|| drop(black_box(Bytes::copy_from_slice(&b[3..63])))),
        ("vec 60 +drop", &|| drop(black_box(b[3..63].to_vec()))),
        ("utf8 60", &|| drop(black_box(std::str::from_utf8(black_box(&b[3..63]))))),
    ] {
        let t = Instant::now();
        for _ in 0..10_000_000 {
            f();
        }
        println!("{name}: {:.1} ns", t.elapsed().as_nanos() as f64 / 1e7);
    }
}

/// sizes
pub fn sizes() {
    println!(
        "Text {} Frame {} Value {} DataFrame {} Res {} WireError {}",
        std::mem::size_of::<Text>(),
        std::mem::size_of::<Frame>(),
        std::mem::size_of::<zs_wire::Value>(),
        std::mem::size_of::<DataFrame>(),
        std::mem::size_of::<Result<Option<Frame>, zs_wire::WireError>>(),
        std::mem::size_of::<zs_wire::WireError>()
    );
}
