//! Loading arbitrary bytes as a compiled expression: an error or a program that evaluates
//! within its limits, never a panic. Half the inputs are valid blobs with a few bytes
//! changed and the checksum fixed up, so the checks behind the checksum get exercised.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_expr::{Arity, Engine, Limits, Value};

fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

const SOURCES: &[&str] = &[
    "x * 2 + 1",
    "max(abs(x - 10), min(x, 3)) * 2",
    "name = 'bob' and IfThen(x > 1, f(x, 2), 0)",
    "(1, 'a', (2.5, null)), length(name), copy(name, 1, 2)",
    "x shl 3 or 5 xor not 1",
];

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_depth: 64,
        max_steps: 10_000,
        max_string: 4096,
        ..Limits::default()
    };
    let mut engine = Engine::new().with_limits(limits);
    engine.register("f", Arity::Range(1, 3), |a| Ok(Value::Int(a.len() as i64)));
    let vars: Vec<(&str, Value)> = vec![("x", Value::Int(7)), ("name", Value::from("bob"))];
    let blob: Vec<u8> = match data.split_first() {
        Some((&sel, edits)) if sel & 1 == 1 => {
            let src = SOURCES[(sel as usize >> 1) % SOURCES.len()];
            let mut blob = engine.compile(src).expect("seed source compiles").save();
            // edits: (position, value) pairs, then re-seal the checksum
            let body = blob.len() - 4;
            for pair in edits.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % body;
                blob[at] = pair[2];
            }
            let crc = crc32(&blob[..body]);
            blob[body..].copy_from_slice(&crc.to_le_bytes());
            blob
        }
        _ => data.to_vec(),
    };
    if let Ok(p) = engine.load(&blob) {
        let _ = p.eval(&vars[..]);
        let _ = p.eval_bool(&vars[..]);
        let _ = p.var_names();
        let again = p.save();
        let q = engine.load(&again).expect("re-saved program loads");
        assert_eq!(q.save(), again);
    }
});
