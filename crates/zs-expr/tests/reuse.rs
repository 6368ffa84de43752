//! `Engine::compile_into`: a program recompiled in place behaves exactly like a fresh
//! compile of the same text, whatever it held before (bigger, smaller, typed or not,
//! with names from macros), and an error leaves it untouched.

use zs_expr::{Engine, Resolution, Value};

const TEXTS: &[&str] = &[
    "x * 2 + 1",
    "max(abs(x - 10), min(x, 3)) * 2",
    "name = 'bob' and x > 3",
    "IntToStr(Round(x * 100)) + ' of ' + UpperCase(name)",
    "if(x > 2, x, -x) + half",
    "1 + 2 * 3",
    "x",
    "(x, x * 2, name)",
    "hex + x",
    "x div 2 + x mod 3 shl 1",
];

fn engine() -> Engine {
    let mut e = Engine::new();
    // `half` expands to text whose name `y` is not in the source (appended to the
    // program's text); `hex` is a constant
    e.on_unknown_name(|n| match n {
        "half" => Some(Resolution::Macro("y / 2".into())),
        "hex" => Some(Resolution::Const(Value::Int(16))),
        _ => None,
    });
    e
}

fn vars(names: &[String], x: i64) -> Vec<Value> {
    names
        .iter()
        .map(|n| match n.as_str() {
            "x" => Value::Int(x),
            "y" => Value::Float(5.0),
            _ => Value::from("bob"),
        })
        .collect()
}

#[test]
fn recompiled_programs_match_fresh_ones_in_every_order() {
    let e = engine();
    let mut p = e.compile("0").unwrap();
    // forwards, backwards, and each text after every other one
    let mut order: Vec<&str> = TEXTS.to_vec();
    order.extend(TEXTS.iter().rev());
    for a in TEXTS {
        for b in TEXTS {
            order.push(a);
            order.push(b);
        }
    }
    for text in order {
        e.compile_into(text, &mut p).unwrap();
        let fresh = e.compile(text).unwrap();
        assert_eq!(p.source(), fresh.source(), "{text}");
        assert_eq!(p.var_names(), fresh.var_names(), "{text}");
        assert_eq!(p.node_count(), fresh.node_count(), "{text}");
        assert_eq!(p.save(), fresh.save(), "{text}: same saved bytes");
        for x in [-7, 0, 3, 12] {
            let v = vars(&p.var_names(), x);
            assert_eq!(
                p.eval(&v[..]).map_err(|e| e.to_string()),
                fresh.eval(&v[..]).map_err(|e| e.to_string()),
                "{text} at x = {x}"
            );
            if let Ok(f) = fresh.eval_f64(&v[..]) {
                assert_eq!(p.eval_f64(&v[..]).unwrap(), f, "{text} (f64) at x = {x}");
            }
        }
    }
}

#[test]
fn an_error_leaves_the_program_as_it_was() {
    let e = engine();
    let mut p = e.compile("x * 2 + 1").unwrap();
    for bad in ["x +", "max(1,", "", "nosuchfn(1)", "1 2"] {
        assert!(e.compile_into(bad, &mut p).is_err(), "{bad:?} is refused");
        assert_eq!(p.source(), "x * 2 + 1");
        assert_eq!(p.eval_f64(&[Value::Int(4)][..]).unwrap(), 9.0);
    }
}
