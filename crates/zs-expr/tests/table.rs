//! The table of expressions and expected values or errors: every item of the issue, under
//! both precedence modes and both lexical styles. Every row is checked three ways: compiled,
//! interpreted (reference tree walker), and compiled -> saved -> loaded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use zs_expr::{Arity, Engine, Error, Precedence, Resolution, Style, Value};

/// Engine configuration of a row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum M {
    /// default: both styles, standard precedence
    D,
    /// seed precedence (both styles)
    S,
    /// Pascal style, standard precedence
    P,
    /// C style, standard precedence
    C,
    /// Pascal style, seed precedence (the seed's own default)
    PS,
}

#[derive(Debug, Clone, PartialEq)]
enum Want {
    V(Value),
    /// error class: syntax, unknown, type, arith, function, limit
    E(&'static str),
}

fn i(v: i64) -> Want {
    Want::V(Value::Int(v))
}
fn u(v: u64) -> Want {
    Want::V(Value::UInt(v))
}
fn f(v: f64) -> Want {
    Want::V(Value::Float(v))
}
fn b(v: bool) -> Want {
    Want::V(Value::Bool(v))
}
fn s(v: &str) -> Want {
    Want::V(Value::from(v))
}
fn vec(v: Vec<Value>) -> Want {
    Want::V(Value::Vec(v))
}
const NULL: Want = Want::V(Value::Null);
fn e(kind: &'static str) -> Want {
    Want::E(kind)
}

fn class(e: &Error) -> &'static str {
    match e {
        Error::Syntax { .. } => "syntax",
        Error::UnknownName { .. } => "unknown",
        Error::Type { .. } => "type",
        Error::Arithmetic { .. } => "arith",
        Error::Function { .. } => "function",
        Error::Limit { .. } => "limit",
        Error::Load { .. } => "load",
        _ => "other",
    }
}

fn engine(m: M, calls: Arc<AtomicUsize>) -> Engine {
    let (style, prec) = match m {
        M::D => (Style::Both, Precedence::Standard),
        M::S => (Style::Both, Precedence::Seed),
        M::P => (Style::Pascal, Precedence::Standard),
        M::C => (Style::C, Precedence::Standard),
        M::PS => (Style::Pascal, Precedence::Seed),
    };
    let mut e = Engine::new().with_style(style).with_precedence(prec);
    // The seed's RegOp examples.
    e.register("myAddFunction", Arity::Exact(2), |a| {
        Ok(Value::Float((a.f64(0)? + a.f64(1)?) * 0.5))
    });
    e.register("myStringFunction", Arity::Exact(2), |a| {
        Ok(Value::from(format!(
            "length is {}",
            (a.string(0)? + &a.string(1)?).chars().count()
        )))
    });
    e.register_pure("sum", Arity::AtLeast(0), |a| {
        let mut t = 0i64;
        for k in 0..a.len() {
            t += a.i64(k)?;
        }
        Ok(Value::Int(t))
    });
    e.register("fail", Arity::Range(0, 1), |_| Err("disk on fire".into()));
    e.register("tick", Arity::Exact(0), move |_| {
        Ok(Value::Int(calls.fetch_add(1, Ordering::SeqCst) as i64 + 1))
    });
    e.set_const("answer", 42);
    e.on_unknown_name(|name| match name {
        "K_LIMIT" => Some(Resolution::Const(Value::Int(100))),
        "double_x" => Some(Resolution::Macro("x * 2".into())),
        "nested_macro" => Some(Resolution::Macro("double_x + 1".into())),
        "loop_a" => Some(Resolution::Macro("loop_b + 1".into())),
        "loop_b" => Some(Resolution::Macro("loop_a + 1".into())),
        "bad_macro" => Some(Resolution::Macro("1 +".into())),
        _ => None,
    });
    e
}

fn vars() -> HashMap<String, Value> {
    let mut v = HashMap::new();
    v.insert("x".into(), Value::Int(4));
    v.insert("y".into(), Value::Float(2.5));
    v.insert("name".into(), Value::from("bob"));
    v.insert("s".into(), Value::from("123"));
    v.insert("flag".into(), Value::Bool(true));
    v.insert("big".into(), Value::UInt(u64::MAX));
    v.insert("nothing".into(), Value::Null);
    v.insert(
        "list".into(),
        Value::Vec(vec![Value::Int(3), Value::Int(9), Value::Int(1)]),
    );
    v.insert("X".into(), Value::Int(-1));
    v
}

/// The seed example's own approximation of pi.
const SEED_PI: f64 = 314.0 / 100.0;

#[rustfmt::skip]
fn table() -> Vec<(&'static str, M, Want)> {
    use M::*;
    vec![
        // ---- numbers ----
        ("42", D, i(42)),
        ("1.5", D, f(1.5)),
        ("1.0e-2", D, f(0.01)),
        ("9.99E-5", D, f(9.99e-5)),
        ("2e3", D, f(2000.0)),
        ("$FF", P, i(255)),
        ("$ff + 1", D, i(256)),
        ("0xFF", C, i(255)),
        ("0x10 + $10", D, i(32)),
        ("$FF", C, e("syntax")),
        ("0xFF", P, e("syntax")),
        ("18446744073709551615", D, u(u64::MAX)),
        ("18446744073709551616", D, e("syntax")),
        ("1e", D, e("syntax")),
        ("12abc", D, e("syntax")),
        // ---- strings, Pascal style ----
        ("'abc'", P, s("abc")),
        ("'it''s'", P, s("it's")),
        ("'a'#13#10'b'", P, s("a\r\nb")),
        ("#65#66", P, s("AB")),
        ("#$41", P, s("A")),
        ("'x'#$263A", D, s("x\u{263A}")),
        ("'abc", P, e("syntax")),
        ("#", P, e("syntax")),
        ("\"abc\"", P, e("syntax")),
        // ---- strings, C style ----
        ("\"abc\"", C, s("abc")),
        ("\"a\\n\\t\\\"q\\\"\"", C, s("a\n\t\"q\"")),
        ("\"\\x41\\u0042\\u{43}\"", C, s("ABC")),
        ("'a\\'b'", C, s("a'b")),
        ("\"bad \\q\"", C, e("syntax")),
        ("\"open", C, e("syntax")),
        // default accepts both
        ("'a' + \"b\" + #67", D, s("abC")),
        // ---- comments ----
        ("1 + { pascal } 2", P, i(3)),
        ("1 + (* pascal *) 2", P, i(3)),
        ("1 + 2 // line", P, i(3)),
        ("1 + /* c */ 2", C, i(3)),
        ("1 + 2 # hash comment", C, i(3)),
        ("1 + 2 // line", C, i(3)),
        ("1 + { x } (* y *) /* z */ 2 # w", D, i(3)),
        ("1 + { pascal } 2", C, e("syntax")),
        ("1 + /* c */ 2", P, e("syntax")),
        ("1 + { never closed", P, e("syntax")),
        ("1 + /* never closed", C, e("syntax")),
        // the seed's example
        ("1000+{ 这里是备注 } myAddFunction(1+1/2*3/3.14*9999, 599+2+2*100 shl 3)", PS, f(1000.0 + ((1.0 + 1.0 / 2.0 * 3.0 / SEED_PI * 9999.0) + 2201.0) * 0.5)),
        ("myStringFunction('abc', '123')", P, s("length is 6")),
        ("myStringFunction(\"abc\", \"123\")", C, s("length is 6")),
        // ---- arithmetic ----
        ("1 + 2 * 3", D, i(7)),
        ("(1 + 2) * 3", D, i(9)),
        ("7 / 2", D, f(3.5)),
        ("8 / 2", D, f(4.0)),
        ("7 div 2", D, i(3)),
        ("-7 div 2", D, i(-3)),
        ("7 mod 3", D, i(1)),
        ("-7 mod 3", D, i(-1)),
        ("7 % 3", D, i(1)),
        ("7.5 mod 2", D, f(1.5)),
        ("7.5 div 2", D, e("type")),
        ("1 / 0", D, e("arith")),
        ("1 div 0", D, e("arith")),
        ("1 mod 0", D, e("arith")),
        ("2 ^ 10", D, i(1024)),
        ("2 ^ -1", D, f(0.5)),
        ("2.0 ^ 0.5", D, f(2f64.sqrt())),
        ("2 ^ 64", D, e("arith")),
        ("2 ^ 63", D, u(1 << 63)),
        ("1 shl 4", D, i(16)),
        ("1 << 4", D, i(16)),
        ("256 shr 4", D, i(16)),
        ("256 >> 4", D, i(16)),
        ("-16 shr 2", D, i(-4)),
        ("1 shl 63", D, u(1 << 63)),
        ("1 shl 64", D, e("arith")),
        ("3 shl 63", D, e("arith")),
        ("1.5 shl 1", D, e("type")),
        ("-x", D, i(-4)),
        ("+x", D, i(4)),
        ("- -3", D, i(3)),
        ("-(1 + 2)", D, i(-3)),
        // ---- integers: i64, u64, no silent overflow ----
        ("9223372036854775807 + 1", D, u(9_223_372_036_854_775_808)),
        ("-9223372036854775808", D, i(i64::MIN)),
        ("-9223372036854775808 - 1", D, e("arith")),
        ("big", D, u(u64::MAX)),
        ("big + 1", D, e("arith")),
        ("big - 1", D, u(u64::MAX - 1)),
        ("big * 2", D, e("arith")),
        ("big div 2", D, i(i64::MAX)),
        ("9223372036854775807 * 9223372036854775807", D, e("arith")),
        ("float(big) * 2", D, f(u64::MAX as f64 * 2.0)),
        ("abs(-9223372036854775808)", D, u(1 << 63)),
        ("-big", D, e("arith")),
        // ---- mixed types ----
        ("1 + 2.5", D, f(3.5)),
        ("'123' + 1", D, i(124)),
        ("1 + '123'", D, i(124)),
        ("'1.5' * 2", D, f(3.0)),
        ("'$FF' * 1", D, i(255)),
        ("s * 2", D, i(246)),
        ("'abc' + 1", D, e("type")),
        ("'a' + 'b'", D, s("ab")),
        ("'n=' + str(5)", D, s("n=5")),
        ("true + 1", D, e("type")),
        ("nothing + 1", D, e("type")),
        ("null", D, NULL),
        ("nil = null", D, b(true)),
        ("nothing = null", D, b(true)),
        ("nothing = 0", D, b(false)),
        // ---- logic, bitwise ----
        ("true and false", D, b(false)),
        ("true & true", D, b(true)),
        ("true && false", D, b(false)),
        ("false or true", D, b(true)),
        ("false | false", D, b(false)),
        ("false || true", D, b(true)),
        ("true xor true", D, b(false)),
        ("not true", D, b(false)),
        ("!false", D, b(true)),
        ("not 0", D, i(-1)),
        ("12 and 10", D, i(8)),
        ("12 or 3", D, i(15)),
        ("12 xor 10", D, i(6)),
        ("12 & 10", D, i(8)),
        ("true and 1", D, e("type")),
        ("'a' or 'b'", D, e("type")),
        // short circuit: the right side is never evaluated
        ("false and (1 / 0 > 0)", D, b(false)),
        ("true or fail()", D, b(true)),
        ("flag or fail()", D, b(true)),
        ("not flag and fail()", D, b(false)),
        // ---- comparisons (every spelling) ----
        ("1 = 1", D, b(true)),
        ("1 == 1", D, b(true)),
        ("1 <> 2", D, b(true)),
        ("1 >< 2", D, b(true)),
        ("1 != 1", D, b(false)),
        ("1 < 2", D, b(true)),
        ("2 > 1", D, b(true)),
        ("2 <= 2", D, b(true)),
        ("2 =< 1", D, b(false)),
        ("2 >= 3", D, b(false)),
        ("3 => 3", D, b(true)),
        ("1 = 1.0", D, b(true)),
        ("'abc' < 'abd'", D, b(true)),
        ("'b' > 'abc'", D, b(true)),
        ("'10' = 10", D, b(true)),
        ("'10' < 9", D, b(false)),
        ("'x' = 10", D, b(false)),
        ("'x' < 10", D, e("type")),
        ("true = 1", D, b(false)),
        ("false < true", D, b(true)),
        ("null < 1", D, e("type")),
        ("9007199254740993 = 9007199254740992.0", D, b(false)),
        ("name = 'bob'", D, b(true)),
        ("name == \"bob\"", D, b(true)),
        ("name <> 'bob'", D, b(false)),
        ("x > 3 and name = 'bob'", D, b(true)),
        ("x > 3 and name = 'bob'", S, b(true)),
        // ---- precedence: standard vs seed ----
        ("2 * 3 ^ 2", D, i(18)),
        ("2 * 3 ^ 2", S, i(36)),
        ("2 ^ 3 ^ 2", D, i(512)),
        ("2 ^ 3 ^ 2", S, i(64)),
        ("-2 ^ 2", D, i(-4)),
        ("-2 ^ 2", S, i(4)),
        ("1 + 2 shl 3", D, i(24)),
        ("1 + 2 shl 3", S, i(17)),
        ("true or false and false", D, b(true)),
        ("true or false and false", S, b(false)),
        ("false and false or true", D, b(true)),
        ("false and false or true", S, b(false)),
        ("1 < 2 = true", D, b(true)),
        ("1 = 1 and 2 = 2", D, b(true)),
        ("1 = 1 and 2 = 2", S, b(true)),
        ("1 = 1 or 2 = 3", S, b(true)),
        ("1 or 2 = 3", D, e("type")),
        ("1 or 2 = 3", S, e("type")),
        ("6 / 2 * 3", D, f(9.0)),
        ("6 / 2 * 3", S, f(9.0)),
        ("10 - 2 - 3", S, i(5)),
        ("2 * 3 mod 4", D, i(2)),
        ("true xor false and false", D, b(true)),
        ("true xor false and false", S, b(false)),
        ("(1 + 2) * 3 ^ 2", PS, i(81)),
        ("(1 + 2) * 3 ^ 2", P, i(27)),
        // ---- vectors ----
        ("1, 2, 3", D, vec(vec![Value::Int(1), Value::Int(2), Value::Int(3)])),
        ("(1, 'a'), 2", D, vec(vec![Value::Vec(vec![Value::Int(1), Value::from("a")]), Value::Int(2)])),
        ("length((1, 2, 3))", D, i(3)),
        ("max(list)", D, i(9)),
        ("min(list)", D, i(1)),
        ("list = (3, 9, 1)", D, b(true)),
        ("(1, 2) + 1", D, e("type")),
        ("1,", D, e("syntax")),
        // ---- names ----
        ("x", D, i(4)),
        ("X", D, i(-1)),
        ("answer", D, i(42)),
        ("ANSWER + 1", D, i(43)),
        ("PI > 3.14", D, b(true)),
        ("TRUE", D, b(true)),
        ("K_LIMIT - 1", D, i(99)),
        ("double_x + 1", D, i(9)),
        ("nested_macro", D, i(9)),
        ("loop_a", D, e("limit")),
        ("bad_macro", D, e("syntax")),
        ("nosuchvar + 1", D, e("unknown")),
        ("nosuchfn(1)", D, e("unknown")),
        ("MYADDFUNCTION(2, 4)", D, f(3.0)),
        ("myAddFunction(1)", D, e("type")),
        ("sum()", D, i(0)),
        ("sum(1, 2, 3, 4, 5, 6)", D, i(21)),
        ("sum(1, 'x')", D, e("function")),
        ("fail()", D, e("function")),
        ("abs()", D, e("type")),
        ("clamp(1, 2)", D, e("type")),
        // ---- IfThen evaluates only the branch taken ----
        ("IfThen(x > 3, 'big', fail())", D, s("big")),
        ("IfThen(x > 5, fail(), 'small')", D, s("small")),
        ("ifthen(1, 2, 3)", D, i(2)),
        ("IfThen(0.0, 2, 3)", D, i(3)),
        ("IfThen('yes', 2, 3)", D, e("type")),
        ("IfThen(true, 1 / 0, 0)", D, e("arith")),
        ("IfThen(false, 1 / 0, 7)", D, i(7)),
        // ---- math built-ins ----
        ("abs(-3)", D, i(3)),
        ("abs(-2.5)", D, f(2.5)),
        ("sqrt(16)", D, f(4.0)),
        ("sqrt(-1)", D, e("arith")),
        ("sin(0)", D, f(0.0)),
        ("cos(0)", D, f(1.0)),
        ("tan(0)", D, f(0.0)),
        ("arctan(1) * 4 = pi", D, b(true)),
        ("exp(0)", D, f(1.0)),
        ("ln(exp(2))", D, f(2.0)),
        ("ln(0)", D, e("arith")),
        ("power(2, 8)", D, i(256)),
        ("power(2.0, 3)", D, f(8.0)),
        ("round(2.5)", D, i(2)),
        ("round(3.5)", D, i(4)),
        ("round(-2.7)", D, i(-3)),
        ("trunc(-2.7)", D, i(-2)),
        ("int(2.9)", D, i(2)),
        ("frac(2.75)", D, f(0.75)),
        ("min(3, 1.5, 2)", D, f(1.5)),
        ("max(3, 1.5, 2)", D, i(3)),
        ("max('a', 'c', 'b')", D, s("c")),
        ("max(1, 'a')", D, e("type")),
        ("clamp(15, 0, 10)", D, i(10)),
        ("clamp(-5, 0, 10)", D, i(0)),
        ("clamp(5, 0, 10)", D, i(5)),
        ("clamp(5, 10, 0)", D, e("type")),
        ("trunc(1e300)", D, e("arith")),
        // ---- casts ----
        ("int('42')", D, i(42)),
        ("int('4.7')", D, i(4)),
        ("int(true)", D, i(1)),
        ("int('abc')", D, e("type")),
        ("float(3)", D, f(3.0)),
        ("float('2.5')", D, f(2.5)),
        ("bool(1)", D, b(true)),
        ("bool('false')", D, b(false)),
        ("bool('maybe')", D, e("type")),
        ("str(1.5)", D, s("1.5")),
        ("str(2.0)", D, s("2.0")),
        ("str(true)", D, s("true")),
        ("str(x) + str(y)", D, s("42.5")),
        // ---- string built-ins ----
        ("length('héllo')", D, i(5)),
        ("len(name)", D, i(3)),
        ("upper('abc')", D, s("ABC")),
        ("lower('ABC')", D, s("abc")),
        ("pos('lo', 'hello')", D, i(4)),
        ("pos('z', 'hello')", D, i(0)),
        ("copy('hello', 2, 3)", D, s("ell")),
        ("copy('hello', 0, 2)", D, s("he")),
        ("copy('hello', 4, 99)", D, s("lo")),
        ("substr('hello', 1, 3)", D, s("ell")),
        ("substr('hello', 3)", D, s("lo")),
        ("replace('a-b-c', '-', '+')", D, s("a+b+c")),
        ("replace('abc', '', 'x')", D, e("type")),
        ("trim('  hi  ')", D, s("hi")),
        ("wildcard('b*', name)", D, b(true)),
        ("wildcard('?o?', name)", D, b(true)),
        ("wildcard('a*', name)", D, b(false)),
        ("length(nothing)", D, e("type")),
        // ---- random ----
        ("random() >= 0 and random() < 1", D, b(true)),
        ("random(10) >= 0 and random(10) < 10", D, b(true)),
        ("random(0)", D, e("type")),
        // ---- syntax errors ----
        ("", D, e("syntax")),
        ("   ", D, e("syntax")),
        ("1 +", D, e("syntax")),
        ("(1 + 2", D, e("syntax")),
        ("1 + 2)", D, e("syntax")),
        ("()", D, e("syntax")),
        ("1 2", D, e("syntax")),
        ("* 3", D, e("syntax")),
        ("f(1,", D, e("syntax")),
        ("f(1 2)", D, e("syntax")),
        ("1 not 2", D, e("syntax")),
        ("a @ b", D, e("syntax")),
    ]
}

fn run(eng: &Engine, text: &str, how: &str) -> Result<Value, Error> {
    let vars = vars();
    match how {
        "compiled" => eng.compile(text).and_then(|p| p.eval(&vars)),
        "interpreted" => eng.interpret(text, &vars),
        _ => eng
            .compile(text)
            .and_then(|p| eng.load(&p.save()))
            .and_then(|p| p.eval(&vars)),
    }
}

#[test]
fn every_row_compiled_interpreted_and_reloaded() {
    let mut failures = Vec::new();
    let rows = table();
    for (text, m, want) in &rows {
        let eng = engine(*m, Arc::new(AtomicUsize::new(0)));
        for how in ["compiled", "interpreted", "reloaded"] {
            let got = run(&eng, text, how);
            let ok = match (&got, want) {
                (Ok(v), Want::V(w)) => match (v, w) {
                    (Value::Float(a), Value::Float(b)) => (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                    _ => v == w,
                },
                (Err(e), Want::E(k)) => class(e) == *k,
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{text:?} [{m:?}, {how}]: got {got:?}, want {want:?}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn errors_carry_positions_and_actionable_messages() {
    let eng = engine(M::D, Arc::new(AtomicUsize::new(0)));
    let vars = vars();
    let cases: [(&str, usize, &str); 6] = [
        ("1 + (2 * 3", 10, "expected `)`"),
        ("x + nosuch", 4, "not bound"),
        ("1 + 'abc' * 2", 4, "not a number"),
        ("10 / (x - 4)", 0, "division by zero"),
        ("1 +\n  @", 6, "unexpected character"),
        ("length(1, 2)", 0, "takes 1 arguments"),
    ];
    for (text, offset, needle) in cases {
        let err = eng.compile(text).and_then(|p| p.eval(&vars)).unwrap_err();
        let pos = err.pos().expect("has a position");
        assert_eq!(pos.offset, offset, "{text}: {err}");
        assert!(err.to_string().contains(needle), "{text}: {err}");
    }
    let err = eng.compile("1 +\n  @").unwrap_err();
    assert_eq!((err.pos().unwrap().line, err.pos().unwrap().column), (2, 3));
    assert!(
        err.render("1 +\n  @").ends_with("  @\n    ^"),
        "{}",
        err.render("1 +\n  @")
    );
}

#[test]
fn if_then_and_short_circuit_do_not_call_the_other_side() {
    let calls = Arc::new(AtomicUsize::new(0));
    let eng = engine(M::D, calls.clone());
    let vars = vars();
    let p = eng
        .compile("IfThen(x > 3, 1, tick()) + IfThen(x < 3, tick(), 2)")
        .unwrap();
    for _ in 0..5 {
        assert_eq!(p.eval(&vars).unwrap(), Value::Int(3));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // Impure functions are not folded: tick() runs once per evaluation.
    let p = eng.compile("tick()").unwrap();
    assert_eq!(p.eval(&vars).unwrap(), Value::Int(1));
    assert_eq!(p.eval(&vars).unwrap(), Value::Int(2));
}

#[test]
fn constant_folding_and_slots() {
    let eng = engine(M::D, Arc::new(AtomicUsize::new(0)));
    let p = eng
        .compile("(1 + 2) * 3 + length('abc') + sum(1, 2)")
        .unwrap();
    assert!(p.is_constant());
    assert_eq!(p.eval(&zs_expr::NoVars).unwrap(), Value::Int(15));
    // A folding error is left for run time (and only raised if reached).
    let p = eng.compile("IfThen(x > 0, 1, 1 / 0)").unwrap();
    assert!(!p.is_constant());
    let p = eng
        .compile("age > 30 and name = 'bob' and age < 99")
        .unwrap();
    assert_eq!(p.var_names(), ["age", "name"]);
    assert_eq!(p.slot("name"), Some(1));
    let rec = [Value::Int(31), Value::from("bob")];
    assert!(p.eval_bool(&rec[..]).unwrap());
    let rec = [Value::Int(31)];
    assert!(matches!(
        p.eval_bool(&rec[..]),
        Err(Error::UnknownName { .. })
    ));
}

#[test]
fn limits_are_enforced() {
    use zs_expr::Limits;
    let eng = Engine::new().with_limits(Limits {
        max_len: 50,
        max_depth: 10,
        max_steps: 20,
        max_string: 16,
        ..Limits::default()
    });
    let long = "1+".repeat(30) + "1";
    assert!(matches!(eng.compile(&long), Err(Error::Limit { .. })));
    assert!(matches!(
        eng.compile("((((((((((((1))))))))))))"),
        Err(Error::Limit { .. })
    ));
    assert!(matches!(
        eng.compile("-------------1"),
        Err(Error::Limit { .. })
    ));
    let vars: HashMap<String, Value> = [("x".to_string(), Value::Int(1))].into_iter().collect();
    let p = eng.compile("x+x+x+x+x+x+x").unwrap();
    assert_eq!(p.eval(&vars).unwrap(), Value::Int(7));
    let p = eng
        .compile("min(x,x,x,x,x,x,x,x,x,x,x,x,x,x,x,x,x,x,x,x,x,x)")
        .unwrap();
    assert!(matches!(p.eval(&vars), Err(Error::Limit { .. })));
    let s: HashMap<String, Value> = [("s".to_string(), Value::from("0123456789"))]
        .into_iter()
        .collect();
    assert!(matches!(eng.eval("s + s", &s), Err(Error::Limit { .. })));
    assert!(matches!(
        eng.eval("replace(s, '1', s)", &s),
        Err(Error::Limit { .. })
    ));
}

#[test]
fn cache_is_bounded_and_keyed_by_text() {
    let eng = Engine::new();
    eng.set_cache_capacity(3);
    let a = eng.compile_cached("1 + 1").unwrap();
    let a2 = eng.compile_cached("1 + 1").unwrap();
    assert!(Arc::ptr_eq(&a, &a2));
    for t in ["2", "3", "4", "5"] {
        eng.compile_cached(t).unwrap();
    }
    assert_eq!(eng.cache_len(), 3);
    let a3 = eng.compile_cached("1 + 1").unwrap();
    assert!(!Arc::ptr_eq(&a, &a3), "evicted entry recompiled");
    assert!(eng.compile_cached("1 +").is_err());
    assert_eq!(eng.cache_len(), 3);
}

#[test]
fn templates() {
    let eng = Engine::new();
    let vars = vars();
    let out = eng
        .expand_template(
            "Hello <name>, x*2 = <x * 2>!",
            &zs_expr::Delimiters::default(),
            &vars,
        )
        .unwrap();
    assert_eq!(out, "Hello bob, x*2 = 8!");
    let html = eng
        .expand_template(
            "<b><?= upper(name) ?></b><?= IfThen(x > 3, ' big', '') ?>",
            &zs_expr::Delimiters::new("<?=", "?>"),
            &vars,
        )
        .unwrap();
    assert_eq!(html, "<b>BOB</b> big");
    let err = eng
        .expand_template("ok <1 +> end", &zs_expr::Delimiters::default(), &vars)
        .unwrap_err();
    assert!(matches!(err, Error::Syntax { .. }));
    assert_eq!(err.pos().unwrap().offset, 7, "{err}");
    let err = eng
        .expand_template("unclosed <x", &zs_expr::Delimiters::default(), &vars)
        .unwrap_err();
    assert_eq!(err.pos().unwrap().offset, 9);
}

#[test]
fn save_load_rejects_damage() {
    let eng = engine(M::D, Arc::new(AtomicUsize::new(0)));
    let p = eng
        .compile("myAddFunction(x, 2) + IfThen(name = 'bob', 1, 2) + length((1, 'a'))")
        .unwrap();
    let blob = p.save();
    let vars = vars();
    assert_eq!(
        eng.load(&blob).unwrap().eval(&vars).unwrap(),
        p.eval(&vars).unwrap()
    );
    // Every single-bit flip and every truncation is an error, never a panic.
    for i in 0..blob.len() {
        let mut bad = blob.clone();
        bad[i] ^= 0x10;
        assert!(eng.load(&bad).is_err(), "flip at {i}");
        assert!(eng.load(&blob[..i]).is_err(), "truncated to {i}");
    }
    // A newer version is refused with a clear message.
    let mut v2 = blob.clone();
    v2[4] = 2;
    assert!(eng.load(&v2).unwrap_err().to_string().contains("version"));
    // An engine without the function cannot load it.
    let plain = Engine::new();
    assert!(plain
        .load(&blob)
        .unwrap_err()
        .to_string()
        .contains("myAddFunction"));
}
