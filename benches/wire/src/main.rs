//! `cargo xtask bench wire`: the zs-wire codec side by side with postcard, rkyv and
//! memcpy on equivalent data, interleaved in one run (see `shared/BENCH.md`).
//!
//! Cases (all `ns_per_op`, lower is better). Every decode case ends with the data
//! accessible as Rust values, as postcard's `from_bytes` leaves it:
//! - 64-byte console request (`cmd` "echo" + 60 bytes of text, id ≥ 128): zs frame
//!   encode and decode (through `Decoder` over a `BytesMut` holding a batch of frames,
//!   then `cmd` and `text` read as `&str`; and read in place with
//!   `Decoder::decode_ref`, the borrowed form) vs postcard on
//!   `struct { id: u64, cmd: String, text: String }` (owned, and borrowed `&str` as
//!   the zero-allocation extreme).
//! - DataFrame of 10 mixed values (u32, i64, f64, bool, 2 strings, 16 bytes, i16,
//!   u8, f32): decode + read every value with the typed reader (strings as `&str`,
//!   bytes as `&[u8]` borrowed from the decoded DataFrame; and as owned `Text` /
//!   `Bytes`), decode alone (validated, values not read: the "lazy" figure), decode
//!   for index access (`DataFrameView::decode`: one pass validates and records
//!   where each value starts, then a strict typed getter reads field 9 in place;
//!   `df10_decode_index_zs_vs_postcard`, and against postcard's borrowed decode
//!   `df10_decode_index_vs_postcard_borrowed`), the same view reading all ten
//!   fields by index (`df10_view_read_all_vs_postcard[_borrowed]`), decode into a
//!   vector of `Value`s (`DataFrame::decode_indexed`: one pass validates and builds
//!   all values, then `get(9)`; `df10_decode_values_vs_postcard`, the index case
//!   before session 12), the lazy decode followed by a first index access (two
//!   passes; `df10_lazy_index_vs_postcard`),
//!   the same ten `Value`s made from Rust values without any decoding and
//!   dropped (`df10_build_values_vs_postcard`: what the vector of values alone
//!   costs, the floor under the values decode),
//!   and encode+decode, vs postcard (serde struct
//!   with owned fields, and with borrowed fields) and rkyv (validated access, and
//!   full deserialize).
//! - A 1 MiB bytes value in a stream response: decode (`Frame::decode`) and encode vs
//!   a 1 MiB memcpy, postcard (`serde_bytes`) and rkyv.
//!
//! Headline ratios: `zs_vs_postcard` (10-value DataFrame decode + reading every
//! value, vs postcard's owned decode), `frame_vs_postcard` (64-byte console frame
//! decode, vs postcard's owned decode), `lazy_vs_postcard` (decode without reading).
//! Borrowed against borrowed: `console_decode_zs_vs_postcard_borrowed` (zs
//! `decode_ref` vs postcard into `&str` fields); the owned `Frame` against
//! postcard's borrowed decode is `console_decode_owned_vs_postcard_borrowed`.
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use zs_bench_harness::{Better, Options, Suite};
use zs_wire::{Config, DataFrame, DataFrameView, Decoder, Encoder, Frame, Limits, Text};

#[derive(Serialize, Deserialize)]
struct ConsoleMsg {
    id: u64,
    cmd: String,
    text: String,
}

#[derive(Serialize, Deserialize)]
struct ConsoleMsgRef<'a> {
    id: u64,
    cmd: &'a str,
    text: &'a str,
}

#[derive(Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Mixed {
    id: u32,
    ts: i64,
    price: f64,
    active: bool,
    name: String,
    city: String,
    #[serde(with = "serde_bytes")]
    blob: Vec<u8>,
    delta: i16,
    level: u8,
    ratio: f32,
}

#[derive(Deserialize)]
#[allow(dead_code)] // the fields are read through `black_box` of the whole value
struct MixedRef<'a> {
    id: u32,
    ts: i64,
    price: f64,
    active: bool,
    name: &'a str,
    city: &'a str,
    #[serde(borrow, with = "serde_bytes")]
    blob: &'a [u8],
    delta: i16,
    level: u8,
    ratio: f32,
}

#[derive(Serialize, Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Large {
    id: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

fn mixed() -> Mixed {
    Mixed {
        id: 48_213,
        ts: 1_700_000_000_123,
        price: 1234.5678,
        active: true,
        name: "alice.example".into(),
        city: "Shanghai".into(),
        blob: (0u8..16).collect(),
        delta: -321,
        level: 7,
        ratio: 0.75,
    }
}

fn mixed_df(m: &Mixed) -> DataFrame {
    DataFrame::with_capacity(10)
        .with(m.id)
        .with(m.ts)
        .with(m.price)
        .with(m.active)
        .with(Text::from(m.name.as_str()))
        .with(Text::from(m.city.as_str()))
        .with(Bytes::from(m.blob.clone()))
        .with(m.delta)
        .with(m.level)
        .with(m.ratio)
}

/// Measures `op` in batches of `batch` calls, with an untimed `setup` before each
/// batch, until `min` of timed work has accumulated. Returns ns per call. `state` is
/// shared by both closures.
fn per_op_with<S>(
    min: Duration,
    batch: usize,
    state: &mut S,
    mut setup: impl FnMut(&mut S),
    mut op: impl FnMut(&mut S),
) -> f64 {
    let mut timed = Duration::ZERO;
    let mut ops = 0u64;
    while timed < min {
        setup(state);
        let t = Instant::now();
        for _ in 0..batch {
            op(state);
        }
        timed += t.elapsed();
        ops += batch as u64;
    }
    timed.as_nanos() as f64 / ops as f64
}

/// [`per_op_with`] without shared state or setup.
fn per_op(min: Duration, batch: usize, mut op: impl FnMut()) -> f64 {
    per_op_with(min, batch, &mut (), |_| {}, |_| op())
}

const NS: &str = "ns_per_op";

/// Adds a case, unless `ZS_WIRE_ONLY` is set and does not name it (a
/// profiling aid: `ZS_WIRE_ONLY=zs-df10-decode-index valgrind --tool=callgrind
/// zs-bench-wire --quick --rounds 1` counts the instructions of one case).
fn case(
    suite: &mut Suite,
    name: &str,
    metric: &str,
    better: Better,
    sampler: impl FnMut() -> f64 + 'static,
) {
    suite.case_selected("ZS_WIRE_ONLY", name, metric, better, sampler);
}

fn main() {
    let opts = Options::from_env();
    let mut suite = Suite::from_options("wire", &opts, 9, 15);
    let min = if opts.quick {
        Duration::from_millis(40)
    } else {
        Duration::from_millis(200)
    };
    let config = Config::default();
    let limits = Limits::default();

    // ---- 64-byte console request -------------------------------------------------
    const BATCH: usize = 1024;
    let text: String = "x".repeat(60);
    let console = Frame::Console {
        id: 1000,
        cmd: Text::from("echo"),
        text: Text::from(text.as_str()),
    };
    let one = console.to_bytes(&config).expect("encodes");
    let mut wire_batch = BytesMut::new();
    for _ in 0..BATCH {
        wire_batch.extend_from_slice(&one);
    }
    let wire_batch = wire_batch.freeze();
    let pc_msg = ConsoleMsg {
        id: 1000,
        cmd: "echo".into(),
        text: text.clone(),
    };
    let pc_one = postcard::to_allocvec(&pc_msg).expect("postcard");
    let pc_batch: Vec<u8> = pc_one
        .iter()
        .copied()
        .cycle()
        .take(pc_one.len() * BATCH)
        .collect();
    suite.note(format!(
        "64-byte console request: zs frame {} bytes, postcard {} bytes (postcard has no framing, version or kind)",
        one.len(),
        pc_one.len()
    ));

    {
        let f = console.clone();
        let mut enc = Encoder::new(config);
        let mut out = BytesMut::with_capacity(one.len() * BATCH);
        case(
            &mut suite,
            "zs-console-encode",
            NS,
            Better::Lower,
            move || {
                per_op_with(
                    min,
                    BATCH,
                    &mut out,
                    |o| o.clear(),
                    |o| enc.encode(black_box(&f), o).expect("encodes"),
                )
            },
        );
        let msg = ConsoleMsg {
            id: 1000,
            cmd: "echo".into(),
            text: text.clone(),
        };
        let mut out = vec![0u8; 256];
        case(
            &mut suite,
            "postcard-console-encode",
            NS,
            Better::Lower,
            move || {
                per_op(min, BATCH, || {
                    black_box(
                        postcard::to_slice(black_box(&msg), &mut out)
                            .expect("postcard")
                            .len(),
                    );
                })
            },
        );
    }
    {
        let mut state = (
            Decoder::new(config),
            BytesMut::with_capacity(wire_batch.len()),
        );
        let src = wire_batch.clone();
        case(
            &mut suite,
            "zs-console-decode",
            NS,
            Better::Lower,
            move || {
                // A read buffer holding a batch of received frames; decode them all.
                per_op_with(
                    min,
                    BATCH,
                    &mut state,
                    |(_, rx)| {
                        rx.clear();
                        rx.extend_from_slice(&src);
                    },
                    |(dec, rx)| {
                        let f = dec.decode(rx).expect("valid").expect("whole");
                        let Frame::Console { id, cmd, text } = &f else {
                            unreachable!("a console frame")
                        };
                        black_box((*id, cmd.as_str(), text.as_str()));
                        black_box(&f);
                    },
                )
            },
        );
        let mut state = (
            Decoder::new(config),
            BytesMut::with_capacity(wire_batch.len()),
            0usize,
        );
        let src = wire_batch.clone();
        case(
            &mut suite,
            "zs-console-decode-ref",
            NS,
            Better::Lower,
            move || {
                // The same batch read in place (`Decoder::decode_ref`: id, name and
                // text parsed and validated, borrowed from the buffer), then the
                // buffer advanced past the frames read, as postcard's borrowed decode.
                per_op_with(
                    min,
                    BATCH,
                    &mut state,
                    |(_, rx, pos)| {
                        let _ = rx.split_to(*pos);
                        rx.clear();
                        rx.extend_from_slice(&src);
                        *pos = 0;
                    },
                    |(dec, rx, pos)| {
                        let f = dec.decode_ref(&rx[*pos..]).expect("valid").expect("whole");
                        *pos += f.len();
                        black_box((f.id(), f.name(), f.text()));
                    },
                )
            },
        );
        let src = pc_batch.clone();
        case(
            &mut suite,
            "postcard-console-decode",
            NS,
            Better::Lower,
            move || {
                per_op_with(
                    min,
                    BATCH,
                    &mut 0usize,
                    |pos| *pos = 0,
                    |pos| {
                        let (m, rest) = postcard::take_from_bytes::<ConsoleMsg>(&src[*pos..])
                            .expect("postcard");
                        *pos = src.len() - rest.len();
                        black_box((m.id, m.cmd.as_str(), m.text.as_str()));
                        black_box(m);
                    },
                )
            },
        );
        let src = pc_batch.clone();
        case(
            &mut suite,
            "postcard-borrowed-console-decode",
            NS,
            Better::Lower,
            move || {
                per_op_with(
                    min,
                    BATCH,
                    &mut 0usize,
                    |pos| *pos = 0,
                    |pos| {
                        let (m, rest) =
                            postcard::take_from_bytes::<ConsoleMsgRef<'_>>(&src[*pos..])
                                .expect("postcard");
                        *pos = src.len() - rest.len();
                        black_box((m.id, m.cmd, m.text));
                    },
                )
            },
        );
    }

    // ---- DataFrame of 10 mixed values ---------------------------------------------
    let m = mixed();
    let df = mixed_df(&m);
    let df_bytes = df.to_bytes();
    let pc_bytes = postcard::to_allocvec(&m).expect("postcard");
    let rk_bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&m).expect("rkyv");
    suite.note(format!(
        "10-value DataFrame: zs {} bytes (self-describing), postcard {} bytes, rkyv {} bytes",
        df_bytes.len(),
        pc_bytes.len(),
        rk_bytes.len()
    ));
    {
        let b = df_bytes.clone();
        case(&mut suite, "zs-df10-decode", NS, Better::Lower, move || {
            per_op(min, BATCH, || {
                black_box(DataFrame::decode(black_box(&b), &limits).expect("valid"));
            })
        });
        let b = df_bytes.clone();
        case(
            &mut suite,
            "zs-df10-decode-read",
            NS,
            Better::Lower,
            move || {
                // Decode, then read every value out as its Rust type (what postcard's
                // decode yields): strings and bytes borrowed from the decoded DataFrame,
                // which owns its bytes like postcard's struct owns its fields.
                per_op(min, BATCH, || {
                    let d = DataFrame::decode(black_box(&b), &limits).expect("valid");
                    let mut r = d.reader();
                    black_box(r.read_u32().expect("u32"));
                    black_box(r.read_i64().expect("i64"));
                    black_box(r.read_f64().expect("f64"));
                    black_box(r.read_bool().expect("bool"));
                    black_box(r.read_str().expect("str"));
                    black_box(r.read_str().expect("str"));
                    black_box(r.read_slice().expect("bytes"));
                    black_box(r.read_i16().expect("i16"));
                    black_box(r.read_u8().expect("u8"));
                    black_box(r.read_f32().expect("f32"));
                })
            },
        );
        let b = df_bytes.clone();
        case(
            &mut suite,
            "zs-df10-decode-read-owned",
            NS,
            Better::Lower,
            move || {
                // The same, strings and bytes taken out as owned `Text` / `Bytes` values
                // that outlive the DataFrame.
                per_op(min, BATCH, || {
                    let d = DataFrame::decode(black_box(&b), &limits).expect("valid");
                    let mut r = d.reader();
                    black_box(r.read_u32().expect("u32"));
                    black_box(r.read_i64().expect("i64"));
                    black_box(r.read_f64().expect("f64"));
                    black_box(r.read_bool().expect("bool"));
                    black_box(r.read_text().expect("str"));
                    black_box(r.read_text().expect("str"));
                    black_box(r.read_bytes().expect("bytes"));
                    black_box(r.read_i16().expect("i16"));
                    black_box(r.read_u8().expect("u8"));
                    black_box(r.read_f32().expect("f32"));
                })
            },
        );
        let b = df_bytes.clone();
        case(
            &mut suite,
            "zs-df10-decode-index",
            NS,
            Better::Lower,
            move || {
                // Decode for index access (`DataFrameView::decode`: one pass
                // validates every byte as `DataFrame::decode` does and records
                // where each value starts), then random access: field 9 read in
                // place by a strict typed getter.
                per_op(min, BATCH, || {
                    let v = DataFrameView::decode(black_box(&b), &limits).expect("valid");
                    black_box(v.get_f32(black_box(9)).expect("f32"));
                })
            },
        );
        let b = df_bytes.clone();
        case(
            &mut suite,
            "zs-df10-view-read-all",
            NS,
            Better::Lower,
            move || {
                // The same view, then every field read by index as its Rust type
                // (strings and bytes borrowed), in reverse order.
                per_op(min, BATCH, || {
                    let v = DataFrameView::decode(black_box(&b), &limits).expect("valid");
                    black_box(v.get_f32(9).expect("f32"));
                    black_box(v.get_u8(8).expect("u8"));
                    black_box(v.get_i16(7).expect("i16"));
                    black_box(v.get_bytes(6).expect("bytes"));
                    black_box(v.get_str(5).expect("str"));
                    black_box(v.get_str(4).expect("str"));
                    black_box(v.get_bool(3).expect("bool"));
                    black_box(v.get_f64(2).expect("f64"));
                    black_box(v.get_i64(1).expect("i64"));
                    black_box(v.get_u32(0).expect("u32"));
                })
            },
        );
        let b = df_bytes.clone();
        case(
            &mut suite,
            "zs-df10-decode-values",
            NS,
            Better::Lower,
            move || {
                // Decode into a vector of values (`DataFrame::decode_indexed`: one
                // pass validates and builds every `Value`), then random access:
                // the index case up to session 11.
                per_op(min, BATCH, || {
                    let d = DataFrame::decode_indexed(black_box(&b), &limits).expect("valid");
                    black_box(d.get(9));
                })
            },
        );
        let b = df_bytes.clone();
        case(
            &mut suite,
            "zs-df10-lazy-index",
            NS,
            Better::Lower,
            move || {
                // The lazy decode (validate now), then a first index access, which
                // builds the values in a second pass over the validated bytes.
                per_op(min, BATCH, || {
                    let d = DataFrame::decode(black_box(&b), &limits).expect("valid");
                    black_box(d.get(9));
                })
            },
        );
        let (name, city) = (m.name.clone(), m.city.clone());
        let blob = Bytes::from(m.blob.clone());
        case(
            &mut suite,
            "zs-df10-build-values",
            NS,
            Better::Lower,
            move || {
                // No decoding: the same ten `Value`s made from Rust values
                // (texts copied inline, the bytes a reference-counted slice, as
                // a decode makes them), collected into a vector and dropped.
                // What the vector of values alone costs: the floor under
                // `zs-df10-decode-values`.
                per_op(min, BATCH, || {
                    let v: Vec<zs_wire::Value> = (0..black_box(10usize))
                        .map(|i| match i {
                            0 => zs_wire::Value::U32(48_213),
                            1 => zs_wire::Value::I64(1_700_000_000_123),
                            2 => zs_wire::Value::F64(1234.5678),
                            3 => zs_wire::Value::Bool(true),
                            4 => zs_wire::Value::Str(Text::from(black_box(name.as_str()))),
                            5 => zs_wire::Value::Str(Text::from(black_box(city.as_str()))),
                            6 => zs_wire::Value::Bytes(black_box(&blob).clone()),
                            7 => zs_wire::Value::I16(-321),
                            8 => zs_wire::Value::U8(7),
                            _ => zs_wire::Value::F32(0.75),
                        })
                        .collect();
                    black_box(&v);
                })
            },
        );
        let b = pc_bytes.clone();
        case(
            &mut suite,
            "postcard-df10-decode",
            NS,
            Better::Lower,
            move || {
                per_op(min, BATCH, || {
                    black_box(postcard::from_bytes::<Mixed>(black_box(&b)).expect("valid"));
                })
            },
        );
        let b = pc_bytes.clone();
        case(
            &mut suite,
            "postcard-borrowed-df10-decode",
            NS,
            Better::Lower,
            move || {
                per_op(min, BATCH, || {
                    black_box(postcard::from_bytes::<MixedRef<'_>>(black_box(&b)).expect("valid"));
                })
            },
        );
        let b = rk_bytes.clone();
        case(
            &mut suite,
            "rkyv-df10-access",
            NS,
            Better::Lower,
            move || {
                per_op(min, BATCH, || {
                    black_box(
                        rkyv::access::<ArchivedMixed, rkyv::rancor::Error>(black_box(&b))
                            .expect("valid"),
                    );
                })
            },
        );
        let b = rk_bytes.clone();
        case(
            &mut suite,
            "rkyv-df10-deserialize",
            NS,
            Better::Lower,
            move || {
                per_op(min, BATCH, || {
                    let a = rkyv::access::<ArchivedMixed, rkyv::rancor::Error>(black_box(&b))
                        .expect("valid");
                    black_box(rkyv::deserialize::<Mixed, rkyv::rancor::Error>(a).expect("valid"));
                })
            },
        );
        let d = df.clone();
        let mut out = BytesMut::with_capacity(256);
        case(
            &mut suite,
            "zs-df10-roundtrip",
            NS,
            Better::Lower,
            move || {
                per_op(min, BATCH, || {
                    out.clear();
                    black_box(&d).encode(&mut out);
                    let b = out.split().freeze();
                    black_box(DataFrame::decode(&b, &limits).expect("valid"));
                })
            },
        );
        let mm = mixed();
        let mut out = vec![0u8; 256];
        case(
            &mut suite,
            "postcard-df10-roundtrip",
            NS,
            Better::Lower,
            move || {
                per_op(min, BATCH, || {
                    let n = postcard::to_slice(black_box(&mm), &mut out)
                        .expect("postcard")
                        .len();
                    black_box(postcard::from_bytes::<Mixed>(&out[..n]).expect("valid"));
                })
            },
        );
        let mm = mixed();
        case(
            &mut suite,
            "rkyv-df10-roundtrip",
            NS,
            Better::Lower,
            move || {
                per_op(min, BATCH, || {
                    let b = rkyv::to_bytes::<rkyv::rancor::Error>(black_box(&mm)).expect("rkyv");
                    let a = rkyv::access::<ArchivedMixed, rkyv::rancor::Error>(&b).expect("valid");
                    black_box(rkyv::deserialize::<Mixed, rkyv::rancor::Error>(a).expect("valid"));
                })
            },
        );
    }

    // ---- 1 MiB bytes value --------------------------------------------------------
    const MIB: usize = 1 << 20;
    let big: Vec<u8> = (0..MIB).map(|i| (i * 31 % 251) as u8).collect();
    let big_frame = Frame::StreamResponse {
        id: 1,
        data: DataFrame::new().with(Bytes::from(big.clone())),
    };
    let big_wire = big_frame.to_bytes(&config).expect("encodes");
    let large = Large {
        id: 1,
        data: big.clone(),
    };
    let pc_large = postcard::to_allocvec(&large).expect("postcard");
    let rk_large = rkyv::to_bytes::<rkyv::rancor::Error>(&large).expect("rkyv");
    {
        let w = big_wire.clone();
        case(&mut suite, "zs-1MiB-decode", NS, Better::Lower, move || {
            per_op(min, 16, || {
                black_box(Frame::decode(black_box(&w), &config).expect("valid"));
            })
        });
        let src = big.clone();
        let mut dst = vec![0u8; MIB];
        case(&mut suite, "memcpy-1MiB", NS, Better::Lower, move || {
            per_op(min, 16, || {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
        let f = big_frame.clone();
        let mut enc = Encoder::new(config);
        let mut out = BytesMut::with_capacity(MIB + 64);
        case(&mut suite, "zs-1MiB-encode", NS, Better::Lower, move || {
            per_op(min, 16, || {
                out.clear();
                enc.encode(black_box(&f), &mut out).expect("encodes");
                black_box(&out);
            })
        });
        let b = pc_large.clone();
        case(
            &mut suite,
            "postcard-1MiB-decode",
            NS,
            Better::Lower,
            move || {
                per_op(min, 16, || {
                    black_box(postcard::from_bytes::<Large>(black_box(&b)).expect("valid"));
                })
            },
        );
        let b = rk_large.clone();
        case(
            &mut suite,
            "rkyv-1MiB-access",
            NS,
            Better::Lower,
            move || {
                per_op(min, 16, || {
                    black_box(
                        rkyv::access::<ArchivedLarge, rkyv::rancor::Error>(black_box(&b))
                            .expect("valid"),
                    );
                })
            },
        );
    }

    suite.run();
    suite.ratio(
        "zs_vs_postcard",
        "zs-df10-decode-read",
        "postcard-df10-decode",
    );
    suite.ratio(
        "frame_vs_postcard",
        "zs-console-decode",
        "postcard-console-decode",
    );
    suite.ratio("lazy_vs_postcard", "zs-df10-decode", "postcard-df10-decode");
    suite.ratio(
        "df10_read_owned_vs_postcard",
        "zs-df10-decode-read-owned",
        "postcard-df10-decode",
    );
    suite.ratio(
        "df10_read_vs_postcard_borrowed",
        "zs-df10-decode-read",
        "postcard-borrowed-df10-decode",
    );
    suite.ratio(
        "df10_decode_index_zs_vs_postcard",
        "zs-df10-decode-index",
        "postcard-df10-decode",
    );
    suite.ratio(
        "df10_decode_index_vs_postcard_borrowed",
        "zs-df10-decode-index",
        "postcard-borrowed-df10-decode",
    );
    suite.ratio(
        "df10_view_read_all_vs_postcard",
        "zs-df10-view-read-all",
        "postcard-df10-decode",
    );
    suite.ratio(
        "df10_view_read_all_vs_postcard_borrowed",
        "zs-df10-view-read-all",
        "postcard-borrowed-df10-decode",
    );
    suite.ratio(
        "df10_decode_values_vs_postcard",
        "zs-df10-decode-values",
        "postcard-df10-decode",
    );
    suite.ratio(
        "df10_build_values_vs_postcard",
        "zs-df10-build-values",
        "postcard-df10-decode",
    );
    suite.ratio(
        "df10_lazy_index_vs_postcard",
        "zs-df10-lazy-index",
        "postcard-df10-decode",
    );
    suite.ratio(
        "console_decode_zs_vs_postcard_borrowed",
        "zs-console-decode-ref",
        "postcard-borrowed-console-decode",
    );
    suite.ratio(
        "console_decode_owned_vs_postcard_borrowed",
        "zs-console-decode",
        "postcard-borrowed-console-decode",
    );
    suite.ratio(
        "console_encode_zs_vs_postcard",
        "zs-console-encode",
        "postcard-console-encode",
    );
    suite.ratio(
        "df10_roundtrip_zs_vs_postcard",
        "zs-df10-roundtrip",
        "postcard-df10-roundtrip",
    );
    suite.ratio(
        "df10_decode_zs_vs_rkyv_access",
        "zs-df10-decode",
        "rkyv-df10-access",
    );
    suite.ratio(
        "df10_decode_read_zs_vs_rkyv_deserialize",
        "zs-df10-decode-read",
        "rkyv-df10-deserialize",
    );
    suite.ratio(
        "df10_roundtrip_zs_vs_rkyv",
        "zs-df10-roundtrip",
        "rkyv-df10-roundtrip",
    );
    suite.ratio("large_vs_memcpy", "zs-1MiB-decode", "memcpy-1MiB");
    suite.ratio("large_encode_vs_memcpy", "zs-1MiB-encode", "memcpy-1MiB");
    suite.ratio(
        "large_decode_zs_vs_postcard",
        "zs-1MiB-decode",
        "postcard-1MiB-decode",
    );
    suite.ratio(
        "large_decode_zs_vs_rkyv_access",
        "zs-1MiB-decode",
        "rkyv-1MiB-access",
    );
    suite.note("large_vs_memcpy > 1 means decoding the 1 MiB value costs less than copying it once: it is not copied");
    suite.finish();
}
