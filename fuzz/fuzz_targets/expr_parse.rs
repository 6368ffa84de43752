//! Parser + compiler + evaluator on arbitrary text under tight limits: never a panic, and
//! the compiled evaluator agrees with the reference interpreter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zs_expr::{Engine, Limits, Precedence, Resolution, Style, Value};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let style = match mode % 3 {
        0 => Style::Both,
        1 => Style::Pascal,
        _ => Style::C,
    };
    let prec = if mode & 4 == 0 {
        Precedence::Standard
    } else {
        Precedence::Seed
    };
    let limits = Limits {
        max_len: 4096,
        max_depth: 64,
        max_steps: 10_000,
        max_string: 4096,
        ..Limits::default()
    };
    let mut engine = Engine::new()
        .with_style(style)
        .with_precedence(prec)
        .with_limits(limits);
    // Macros (expanded in place by the resolver): nested, recursive, broken, deep.
    engine.on_unknown_name(|name| match name {
        "m1" => Some(Resolution::Macro("x + 1".into())),
        "m2" => Some(Resolution::Macro("m1 * m1, IntToStr(m1)".into())),
        "mloop" => Some(Resolution::Macro("mloop + 1".into())),
        "mbad" => Some(Resolution::Macro("1 +".into())),
        "mdeep" => Some(Resolution::Macro(
            "((((((((((((((((x))))))))))))))) + m2".into(),
        )),
        "k" => Some(Resolution::Const(Value::from("K"))),
        _ => None,
    });
    let vars: Vec<(&str, Value)> = vec![
        ("x", Value::Int(3)),
        ("y", Value::Float(-1.5)),
        ("s", Value::from("12")),
        ("b", Value::Bool(true)),
        ("u", Value::UInt(u64::MAX)),
    ];
    let compiled = engine.compile(text);
    let interpreted = engine.interpret(text, &vars[..]);
    if let Ok(p) = compiled {
        let a = p.eval(&vars[..]);
        // Step limits count folded nodes differently; compare only when neither hit one.
        let limited =
            |r: &Result<Value, zs_expr::Error>| matches!(r, Err(zs_expr::Error::Limit { .. }));
        let random = text.to_ascii_lowercase().contains("random");
        if !limited(&a) && !limited(&interpreted) && !random {
            match (&a, &interpreted) {
                (Ok(x), Ok(y)) => assert!(same(x, y), "{text:?}: {x:?} vs {y:?}"),
                (Err(x), Err(y)) => assert_eq!(
                    std::mem::discriminant(x),
                    std::mem::discriminant(y),
                    "{text:?}: {x} vs {y}"
                ),
                _ => panic!("{text:?}: compiled {a:?} vs interpreted {interpreted:?}"),
            }
        }
        let _ = p.eval_bool(&vars[..]);
        let _ = p.eval_f64(&vars[..]);
        let q = engine.load(&p.save()).expect("own blob loads");
        if !random {
            let b = q.eval(&vars[..]);
            match (&a, &b) {
                (Ok(x), Ok(y)) => assert!(same(x, y)),
                (Err(_), Err(_)) => {}
                _ => panic!("{text:?}: reload changed the result"),
            }
        }
    } else {
        assert!(
            interpreted.is_err(),
            "{text:?}: compile failed but interpret succeeded"
        );
    }
});

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(p), Value::Float(q)) => {
            p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan())
        }
        (Value::Vec(p), Value::Vec(q)) => {
            p.len() == q.len() && p.iter().zip(q).all(|(x, y)| same(x, y))
        }
        _ => a == b,
    }
}
