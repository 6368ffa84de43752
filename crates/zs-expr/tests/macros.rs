//! Macros are expanded in place in the resolved tree: same results as writing the text
//! out, errors at the macro's name, and depth and size bounded after expansion.

use zs_expr::{Engine, Error, Limits, NoVars, Resolution, Value};

fn engine(limits: Limits) -> Engine {
    let mut e = Engine::new().with_limits(limits);
    let deep = format!("{}x{}", "(".repeat(20), ")".repeat(20));
    let chain = format!("{}1{}", "abs(".repeat(20), ")".repeat(20));
    let wide = ["x"; 200].join(" + ");
    e.on_unknown_name(move |name| match name {
        "two" => Some(Resolution::Macro("1 + 1".into())),
        "four" => Some(Resolution::Macro("two * two".into())),
        "greet" => Some(Resolution::Macro("'hi ' + IntToStr(four)".into())),
        "deep" => Some(Resolution::Macro(deep.clone())),
        "chain" => Some(Resolution::Macro(chain.clone())),
        "chain2" => Some(Resolution::Macro(format!(
            "{}chain{}",
            "abs(".repeat(20),
            ")".repeat(20)
        ))),
        "wide" => Some(Resolution::Macro(wide.clone())),
        "wider" => Some(Resolution::Macro(["wide"; 11].join(" + "))),
        "broken" => Some(Resolution::Macro("1 +".into())),
        "badcall" => Some(Resolution::Macro("nosuchfn(1)".into())),
        _ => None,
    });
    e
}

fn both(e: &Engine, text: &str) -> (Result<Value, Error>, Result<Value, Error>) {
    let vars = [("x", Value::Int(3))];
    (
        e.compile(text).and_then(|p| p.eval(&vars[..])),
        e.interpret(text, &vars[..]),
    )
}

#[test]
fn expansion_matches_the_written_out_text() {
    let e = engine(Limits::default());
    for (with, without) in [
        ("four * x", "((1 + 1) * (1 + 1)) * x"),
        ("greet", "'hi ' + IntToStr(4)"),
        ("deep + two", "x + 2"),
        ("max(four, x, two)", "max(4, 3, 2)"),
        ("chain2", "1"),
    ] {
        let (c, i) = both(&e, with);
        let (c2, _) = both(&e, without);
        assert_eq!(c.as_ref().unwrap(), c2.as_ref().unwrap(), "{with}");
        assert_eq!(i.unwrap(), c2.unwrap(), "{with}");
    }
    // Constant macros are folded like written-out constants.
    let p = e.compile("four * x").unwrap();
    assert_eq!(p.var_names(), ["x"]);
}

#[test]
fn errors_inside_macros_point_at_the_name() {
    let e = engine(Limits::default());
    let text = "1 + broken";
    let err = e.compile(text).unwrap_err();
    assert!(matches!(err, Error::Syntax { .. }), "{err:?}");
    assert_eq!(err.pos().unwrap().column, 5);
    let err = e.compile("2 * badcall").unwrap_err();
    assert!(matches!(err, Error::UnknownName { .. }), "{err:?}");
    assert_eq!(err.pos().unwrap().column, 5);
}

#[test]
fn depth_is_checked_after_expansion() {
    let limits = Limits {
        max_depth: 30,
        ..Limits::default()
    };
    let e = engine(limits);
    // Each macro alone fits (21 levels); nested, the tree is 41 levels deep.
    assert!(both(&e, "chain").0.is_ok());
    for r in [both(&e, "chain2").0, both(&e, "chain2").1] {
        assert!(matches!(r, Err(Error::Limit { .. })), "{r:?}");
    }
}

#[test]
fn expansion_size_is_bounded() {
    let limits = Limits {
        max_len: 1000,
        // deep enough for `wide` (a chain of 200): this test is about node counts
        max_depth: 256,
        ..Limits::default()
    };
    let e = engine(limits);
    // One `wide` is 399 nodes (under 800 bytes); eleven of them pass the limit of 4 nodes
    // per byte of max_len (4000).
    assert!(both(&e, "wide").0.is_ok());
    let err = e.compile("wider").unwrap_err();
    assert!(matches!(err, Error::Limit { .. }), "{err:?}");
    assert!(err.to_string().contains("too many nodes"), "{err}");
    // A warm thread compiles the next text normally after a failed one.
    assert_eq!(both(&e, "two + x").0.unwrap(), Value::Int(5));
    assert_eq!(e.eval("IntToStr(6*7)", &NoVars).unwrap(), Value::from("42"));
}
