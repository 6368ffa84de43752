//! Memory cost of JSON values (audit H4), measured with a counting global allocator:
//! decoding validates JSON without building `serde_json::Value` trees, so a frame
//! holding one maximal `[0,0,0,…]` costs no allocation per element; the tree is built
//! only when a handler reads the value. One `#[test]` only, so no other test thread
//! allocates while a measurement runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use zs_wire::{Config, DataFrame, Decoder, Frame, Limits, Value, WireError};

/// Counts the bytes currently allocated and their high-water mark.
struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = CURRENT.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

fn shrank(n: usize) {
    CURRENT.fetch_sub(n, Relaxed);
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds
// the `GlobalAlloc` contract; the bookkeeping only touches atomics and never
// allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `alloc` are passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `alloc_zeroed` are passed on unchanged.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's guarantees for `realloc` are passed on unchanged.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Both blocks may exist at once while the data moves: count the new one first.
            grew(new_size);
            shrank(layout.size());
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the most bytes allocated at once during it,
/// above what was allocated before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = CURRENT.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed).saturating_sub(base))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// `[0,0,…,0]` padded with trailing spaces to exactly `len` bytes (valid JSON).
fn zeros_array(len: usize) -> Vec<u8> {
    let n = (len - 1) / 2;
    let mut t = Vec::with_capacity(len);
    t.push(b'[');
    for i in 0..n {
        t.extend_from_slice(if i + 1 < n { b"0," } else { b"0]" });
    }
    t.resize(len, b' ');
    t
}

/// DataFrame bytes holding one JSON value with the given text.
fn json_df(text: &[u8]) -> Vec<u8> {
    let mut df = vec![0x01, 0x10];
    put_varint(&mut df, text.len() as u64);
    df.extend_from_slice(text);
    df
}

/// A Stream frame `{ id: 1, cmd: "j", data: <df bytes> }`, encoded (and compressed
/// when `config` says so) by the encoder itself.
fn stream_frame(df: &[u8], config: &Config) -> Bytes {
    let data = DataFrame::decode(&Bytes::copy_from_slice(df), &relaxed()).expect("valid df");
    Frame::Stream {
        id: 1,
        cmd: "j".into(),
        data,
    }
    .to_bytes(config)
    .expect("encodes")
}

/// Limits that let the test build frames above the default JSON limit.
fn relaxed() -> Limits {
    Limits {
        max_json: usize::MAX,
        ..Limits::default()
    }
}

#[test]
fn json_values_cost_no_allocation_per_element_until_read() {
    let limits = Limits::default();
    assert_eq!(limits.max_json, 1 << 20, "documented default");
    let text = zeros_array(limits.max_json);
    let elements = (text.len() - 1) / 2;

    // 1. A plain frame with one maximal JSON array: decoding allocates nothing
    //    proportional to its size, let alone to its 524 287 elements.
    let config = Config::default();
    let wire = stream_frame(&json_df(&text), &config);
    let mut buf = BytesMut::from(&wire[..]);
    let mut dec = Decoder::new(config);
    let (frame, peak) = peak_during(|| dec.decode(&mut buf));
    let frame = frame.expect("valid").expect("whole frame");
    assert!(
        peak < 2 * wire.len() && peak < 64 << 10,
        "decoding a {} byte JSON frame allocated {peak} bytes at peak",
        wire.len()
    );
    let Frame::Stream { data, .. } = frame else {
        panic!("kind")
    };

    // Control: the tree is built when a handler reads the value, and that does
    // cost per element (so the counter does see such allocations).
    let (json, peak) = peak_during(|| data.reader().read_json().expect("json"));
    assert_eq!(json.as_array().map(Vec::len), Some(elements));
    assert!(
        peak > 8 * text.len(),
        "the lazy parse builds the tree ({peak} bytes at peak)"
    );
    drop(json);

    // 2. Nested: building the outer values does not parse the nested JSON either.
    let mut nested = vec![0x01, 0x0f];
    nested.extend_from_slice(&json_df(&text));
    let df = DataFrame::decode(&Bytes::from(nested), &limits).expect("valid");
    let (len, peak) = peak_during(|| match df.get(0) {
        Some(Value::Frame(inner)) => inner.len(),
        _ => panic!("nested frame"),
    });
    assert_eq!(len, 1);
    assert!(peak < 64 << 10, "built the outer values: {peak} bytes");

    // 3. The same frame compressed (about 4 KB on the wire), with compression on:
    //    only the decompressed body is allocated, once.
    let config = Config::with_compression(0);
    let wire = stream_frame(&json_df(&text), &config);
    assert!(wire.len() < 16 << 10, "compressed to {} bytes", wire.len());
    let raw = text.len() + 16;
    let mut buf = BytesMut::from(&wire[..]);
    let mut dec = Decoder::new(config);
    let (frame, peak) = peak_during(|| dec.decode(&mut buf));
    assert!(matches!(frame, Ok(Some(Frame::Stream { .. }))));
    assert!(
        peak < 2 * raw,
        "decoding a compressed {raw} byte JSON frame allocated {peak} bytes at peak"
    );
    drop(frame);

    // 4. The audit's bomb: a JSON array of about 8 M elements in a 16 MiB frame,
    //    compressed to about 66 KB. Refused by `max_json`; the only allocation is
    //    the decompressed body (checked against `max_frame` first).
    let big = zeros_array(limits.max_frame - 64);
    let wire = stream_frame(&json_df(&big), &config);
    drop(big);
    assert!(wire.len() < 100 << 10, "compressed to {} bytes", wire.len());
    let mut buf = BytesMut::from(&wire[..]);
    let (got, peak) = peak_during(|| dec.decode(&mut buf));
    assert_eq!(
        got,
        Err(WireError::JsonTooLarge {
            len: (limits.max_frame - 64) as u64,
            max: limits.max_json
        })
    );
    assert!(
        peak < 2 * limits.max_frame,
        "a refused bomb allocated {peak} bytes at peak"
    );
    assert!(buf.is_empty(), "the refused frame was consumed");
}
