//! Property tests: the compiled evaluator (folding, fast path, specialised nodes) agrees
//! with the reference interpreter on random expressions, in both precedence modes; saving
//! and loading a compiled expression changes nothing; slot and name contexts agree.

use std::collections::HashMap;

use proptest::prelude::*;
use zs_expr::{Engine, Error, Precedence, Value};

fn leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (-20i64..20).prop_map(|v| v.to_string()),
        1 => prop_oneof![Just("0.5"), Just("2.25"), Just("1e3"), Just("0.0"), Just("9223372036854775807"), Just("$FF"), Just("0x10")]
            .prop_map(String::from),
        1 => prop_oneof![Just("true"), Just("false"), Just("null")].prop_map(String::from),
        1 => prop_oneof![Just("'abc'"), Just("'12'"), Just("\"x\\ty\""), Just("'a'#66"), Just("''")].prop_map(String::from),
        3 => prop_oneof![Just("x"), Just("x"), Just("y"), Just("y"), Just("flag"), Just("s"), Just("name"), Just("flag"), Just("n"), Just("big"), Just("neg")]
            .prop_map(String::from),
    ]
}

const BIN: &[&str] = &[
    "+", "-", "*", "/", "div", "mod", "%", "^", "shl", "shr", "<<", ">>", "and", "&&", "or", "||",
    "xor", "=", "==", "<>", "!=", "<", ">", "<=", ">=", "=<", "=>",
];
const UN: &[&str] = &["-", "+", "not "];
const F1: &[&str] = &[
    "abs", "sqrt", "sin", "cos", "exp", "ln", "round", "trunc", "int", "frac", "float", "bool",
    "str", "length", "upper", "lower", "trim", "arctan",
];
const F2: &[&str] = &["power", "pos", "wildcard", "min", "max", "substr"];
const F3: &[&str] = &["clamp", "copy", "replace", "IfThen", "min", "max"];

fn expr() -> impl Strategy<Value = String> {
    leaf().prop_recursive(5, 48, 3, |inner| {
        prop_oneof![
            3 => (inner.clone(), prop::sample::select(BIN), inner.clone()).prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            1 => (inner.clone(), prop::sample::select(BIN), inner.clone()).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => (prop::sample::select(UN), inner.clone()).prop_map(|(op, a)| format!("{op}{a}")),
            1 => (prop::sample::select(F1), inner.clone()).prop_map(|(f, a)| format!("{f}({a})")),
            1 => (prop::sample::select(F2), inner.clone(), inner.clone()).prop_map(|(f, a, b)| format!("{f}({a}, {b})")),
            1 => (prop::sample::select(F3), inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(f, a, b, c)| format!("{f}({a}, {b}, {c})")),
            1 => (inner.clone(), inner).prop_map(|(a, b)| format!("({a}, {b})")),
        ]
    })
}

/// Numeric-only expressions: they exercise the compiled fast path much more often.
fn num_expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (-9i64..9).prop_map(|v| v.to_string()),
        prop_oneof![
            Just("0.5"),
            Just("2.5"),
            Just("-0.0"),
            Just("1e18"),
            Just("9223372036854775807"),
            Just("x"),
            Just("y"),
            Just("flag")
        ]
        .prop_map(String::from),
    ];
    const OPS: &[&str] = &[
        "+", "-", "*", "/", "div", "mod", "^", "shl", "shr", "<", ">=", "=", "<>", "and", "or",
        "xor",
    ];
    leaf.prop_recursive(6, 40, 3, |inner| {
        prop_oneof![
            4 => (inner.clone(), prop::sample::select(OPS), inner.clone()).prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            1 => inner.clone().prop_map(|a| format!("-{a}")),
            1 => inner.clone().prop_map(|a| format!("not {a}")),
            1 => (prop::sample::select(&["abs", "round", "trunc", "int", "float", "sqrt", "ln", "frac"][..]), inner.clone())
                .prop_map(|(f, a)| format!("{f}({a})")),
            1 => (prop::sample::select(&["min", "max", "power"][..]), inner.clone(), inner.clone())
                .prop_map(|(f, a, b)| format!("{f}({a}, {b})")),
            1 => (prop::sample::select(&["clamp", "IfThen", "max"][..]), inner.clone(), inner.clone(), inner)
                .prop_map(|(f, a, b, c)| format!("{f}({a}, {b}, {c})")),
        ]
    })
}

/// Integers around the limits of exact `f64` integers and of `i64`.
const EDGE_INTS: [i64; 8] = [
    0,
    (1 << 53) - 1,
    1 << 53,
    -(1 << 53) + 1,
    -(1 << 53),
    (1 << 52) + 1,
    i64::MAX,
    i64::MIN,
];

/// Floats that tell signs of zero, NaN, infinities and huge values apart.
const EDGE_FLOATS: [f64; 9] = [
    -0.0,
    0.0,
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    9007199254740992.0,
    -9007199254740991.0,
    1e300,
    -2.5,
];

fn vars(x: i64, y: f64) -> HashMap<String, Value> {
    let mut v = HashMap::new();
    v.insert("x".into(), Value::Int(x));
    v.insert("y".into(), Value::Float(y));
    v.insert("s".into(), Value::from("42"));
    v.insert("name".into(), Value::from("bob"));
    v.insert("flag".into(), Value::Bool(x > 0));
    v.insert("n".into(), Value::Null);
    v.insert("big".into(), Value::UInt(u64::MAX - 7));
    v.insert("neg".into(), Value::Int(i64::MIN));
    v
}

fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(p), Value::Float(q)) => {
            p.to_bits() == q.to_bits() || (p.is_nan() && q.is_nan())
        }
        (Value::Vec(p), Value::Vec(q)) => {
            p.len() == q.len() && p.iter().zip(q).all(|(x, y)| same_value(x, y))
        }
        _ => a == b,
    }
}

fn same(a: &Result<Value, Error>, b: &Result<Value, Error>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => same_value(x, y),
        (Err(x), Err(y)) => {
            std::mem::discriminant(x) == std::mem::discriminant(y) && x.pos() == y.pos()
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn compiled_and_interpreted_agree(text in expr(), x in -5i64..5, y in -3.0f64..3.0, seed in any::<bool>()) {
        let prec = if seed { Precedence::Seed } else { Precedence::Standard };
        let eng = Engine::new().with_precedence(prec);
        let vars = vars(x, y);
        let interpreted = eng.interpret(&text, &vars);
        let compiled = eng.compile(&text).and_then(|p| p.eval(&vars));
        prop_assert!(same(&compiled, &interpreted), "{text}\ncompiled:    {compiled:?}\ninterpreted: {interpreted:?}");
        if let Ok(p) = eng.compile(&text) {
            // The typed entry points agree with eval.
            if let Ok(v) = &compiled {
                match v {
                    Value::Bool(b) => prop_assert_eq!(p.eval_bool(&vars).ok(), Some(*b)),
                    Value::Float(f) if !f.is_nan() => prop_assert_eq!(p.eval_f64(&vars).ok(), Some(*f)),
                    Value::Int(i) => prop_assert_eq!(p.eval_f64(&vars).ok(), Some(*i as f64)),
                    _ => {}
                }
            }
            // By slot and by name agree.
            let by_slot: Vec<Value> = p.var_names().iter().map(|n| vars[n].clone()).collect();
            let slotted = p.eval(&by_slot[..]);
            prop_assert!(same(&slotted, &compiled), "{text}: slot {slotted:?} name {compiled:?}");
        }
    }

    #[test]
    fn numeric_compiled_and_interpreted_agree(text in num_expr(), x in -4i64..4, y in -3.0f64..3.0, seed in any::<bool>()) {
        let prec = if seed { Precedence::Seed } else { Precedence::Standard };
        let eng = Engine::new().with_precedence(prec);
        let vars = vars(x, y);
        let interpreted = eng.interpret(&text, &vars);
        let p = eng.compile(&text).expect("numeric expressions compile");
        let compiled = p.eval(&vars);
        prop_assert!(same(&compiled, &interpreted), "{text}\ncompiled:    {compiled:?}\ninterpreted: {interpreted:?}");
        let by_slot: Vec<Value> = p.var_names().iter().map(|n| vars[n].clone()).collect();
        let slotted = p.eval(&by_slot[..]);
        prop_assert!(same(&slotted, &compiled), "{text}: slot {slotted:?} name {compiled:?}");
    }

    #[test]
    fn typed_entry_points_agree(
        text in num_expr(),
        x in prop_oneof![-4i64..4, prop::sample::select(&EDGE_INTS[..])].prop_map(Value::Int),
        y in prop_oneof![
            (-3.0f64..3.0).prop_map(Value::Float),
            prop::sample::select(&EDGE_FLOATS[..]).prop_map(Value::Float),
            (-4i64..4).prop_map(Value::Int),
        ],
        flag in any::<bool>(),
    ) {
        // Variables by slot as ints and floats of every kind (-0.0, NaN, infinities, the
        // 2^53 boundary): the tag-free numeric form must give the general evaluator's
        // answer through eval, eval_f64 and eval_bool.
        let eng = Engine::new();
        let p = eng.compile(&text).expect("numeric expressions compile");
        let mut named = HashMap::new();
        named.insert("x".to_string(), x);
        named.insert("y".to_string(), y);
        named.insert("flag".to_string(), Value::Bool(flag));
        let slots: Vec<Value> = p.var_names().iter().map(|n| named[n].clone()).collect();
        let interpreted = eng.interpret(&text, &named);
        let compiled = p.eval(&slots[..]);
        prop_assert!(same(&compiled, &interpreted), "{text}\ncompiled:    {compiled:?}\ninterpreted: {interpreted:?}");
        let as_f64 = p.eval_f64(&slots[..]);
        let as_bool = p.eval_bool(&slots[..]);
        match &interpreted {
            Ok(Value::Int(i)) => {
                prop_assert_eq!(as_f64.ok().map(f64::to_bits), Some((*i as f64).to_bits()), "{}", text);
                prop_assert_eq!(as_bool.ok(), Some(*i != 0), "{}", text);
            }
            Ok(Value::Float(f)) => {
                let got = as_f64.ok();
                prop_assert!(got.is_some_and(|g| g.to_bits() == f.to_bits() || (g.is_nan() && f.is_nan())), "{text}: {got:?} vs {f}");
                prop_assert_eq!(as_bool.ok(), Some(*f != 0.0), "{}", text);
            }
            Ok(Value::Bool(b)) => prop_assert_eq!(as_bool.ok(), Some(*b), "{}", text),
            Ok(_) => {}
            Err(_) => {
                prop_assert!(as_f64.is_err(), "{text}: eval_f64 {as_f64:?}, interpreted {interpreted:?}");
                prop_assert!(as_bool.is_err(), "{text}: eval_bool {as_bool:?}, interpreted {interpreted:?}");
            }
        }
    }

    #[test]
    fn save_load_round_trip(text in expr(), x in -5i64..5, y in -3.0f64..3.0) {
        let eng = Engine::new();
        if let Ok(p) = eng.compile(&text) {
            let blob = p.save();
            let q = eng.load(&blob).expect("a saved program loads");
            prop_assert_eq!(q.save(), blob, "save(load(blob)) == blob");
            let vars = vars(x, y);
            let (a, b) = (p.eval(&vars), q.eval(&vars));
            prop_assert!(same(&a, &b), "{text}: {a:?} vs {b:?}");
            prop_assert_eq!(p.var_names(), q.var_names());
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,60}") {
        let eng = Engine::new();
        let _ = eng.compile(&text).and_then(|p| p.eval(&vars(1, 1.0)));
        let _ = Engine::new().with_style(zs_expr::Style::Pascal).interpret(&text, &vars(1, 1.0));
    }
}
