//! The seed's built-in vocabulary (`SystemOpRunTime` in `Z.OpCode.pas`) and the Pascal
//! string helpers: one table of inputs, outputs and errors. Every row runs compiled,
//! interpreted (reference tree walker) and compiled -> saved -> loaded, and every name is
//! also tried in upper case (names are case-insensitive, as in the seed).

use std::sync::{Arc, Mutex};

use zs_expr::{Engine, Error, NoVars, Value};

#[derive(Debug, Clone, PartialEq)]
enum Want {
    V(Value),
    /// error class: type, arith, limit, unknown
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
fn fv(v: &[f64]) -> Want {
    Want::V(Value::Vec(v.iter().map(|x| Value::Float(*x)).collect()))
}
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
        _ => "other",
    }
}

fn table() -> Vec<(&'static str, Want)> {
    vec![
        // math
        ("Sqr(7)", i(49)),
        ("Sqr(-1.5)", f(2.25)),
        ("Sqr(4294967296 * 4294967296)", e("arith")),
        ("Sqr('x')", e("type")),
        ("Deg(370)", f(10.0)),
        ("Deg(-190)", f(170.0)),
        ("Deg(180)", f(180.0)),
        ("Deg(720.5)", f(0.5)),
        ("PI()", f(std::f64::consts::PI)),
        ("pi", f(std::f64::consts::PI)),
        ("PI(1)", e("type")),
        ("True()", b(true)),
        ("False()", b(false)),
        ("Nop(1, 'x')", i(0)),
        // integer casts by Pascal type name: Pascal typecast wrap-around
        ("Byte(300)", i(44)),
        ("Byte(-1)", i(255)),
        ("Byte(2.5)", i(2)),
        ("Byte(3.5)", i(4)),
        ("Byte('$1FF')", i(255)),
        ("Byte(true)", i(1)),
        ("Byte('abc')", e("type")),
        ("Byte(1e30)", e("arith")),
        ("Word(65537)", i(1)),
        ("Cardinal(-1)", i(4294967295)),
        ("LongWord(4294967296 + 7)", i(7)),
        ("UInt64(-1)", u(u64::MAX)),
        ("ShortInt(200)", i(-56)),
        ("SmallInt(40000)", i(-25536)),
        ("Integer(2147483648)", i(-2147483648)),
        ("Int64(18446744073709551615)", i(-1)),
        ("Int64(null)", e("type")),
        // float casts
        ("Single(0.1) = 0.1", b(false)),
        ("Single(0.5)", f(0.5)),
        ("Double('2.5')", f(2.5)),
        ("Extended(1)", f(1.0)),
        ("Float(true)", f(1.0)),
        // bits
        ("ROL8($81, 1)", i(0x03)),
        ("ROR8($81, 1)", i(0xC0)),
        ("ROL8(1, 9)", i(2)),
        ("ROL8(1, -1)", i(0x80)),
        ("ROL16($8001, 4)", i(0x0018)),
        ("ROR16($0018, 4)", i(0x8001)),
        ("ROL32($80000001, 1)", i(3)),
        ("ROR32(1, 1)", i(0x8000_0000)),
        ("ROL64(1, 63)", u(1 << 63)),
        ("ROR64(1, 1)", u(1 << 63)),
        ("ROL64(3, 0)", i(3)),
        ("ROL8(1, 1.5)", e("type")),
        ("Endian16($1234)", i(0x3412)),
        ("Endian16($0080)", i(-32768)),
        ("EndianU16($0080)", i(0x8000)),
        ("Endian32($12345678)", i(0x7856_3412)),
        ("Endian32($000000FF)", i(-16777216)),
        ("EndianU32($000000FF)", i(0xFF00_0000)),
        ("Endian64(1)", i(1 << 56)),
        ("Endian64($80)", i(i64::MIN)),
        ("EndianU64($80)", u(1 << 63)),
        ("SAR16(-16, 2)", i(-4)),
        ("SAR16($8000, 15)", i(-1)),
        ("SAR16(-1, 99)", i(-1)),
        ("SAR32(-256, 4)", i(-16)),
        ("SAR32(256, 4)", i(16)),
        ("SAR64(-9223372036854775807 - 1, 63)", i(-1)),
        ("SAR64(8, 1)", i(4)),
        ("SAR32(1, -1)", e("type")),
        // random (value ranges; reproducibility is tested separately)
        ("Random(10) >= 0 and Random(10) < 10", b(true)),
        ("RandomFloat() >= 0 and RandomF() < 1", b(true)),
        ("Random(0)", e("type")),
        ("RandomFloat(1)", e("type")),
        // vectors and colours
        (
            "Vec2(1, 2.5)",
            Want::V(Value::Vec(vec![Value::Int(1), Value::Float(2.5)])),
        ),
        ("Vec2()", fv(&[0.0, 0.0])),
        ("Vec3(1.0)", fv(&[1.0, 0.0, 0.0])),
        ("Vec4(1.0, 2.0, 3.0, 4.0)", fv(&[1.0, 2.0, 3.0, 4.0])),
        ("Vec2('1.5', 2.0)", fv(&[1.5, 2.0])),
        ("Vec2('x', 1)", e("type")),
        ("Vec2(1, 2, 3)", e("type")),
        ("RColor(1.0, 0.5)", fv(&[1.0, 0.5, 0.0, 1.0])),
        ("RColor()", fv(&[0.0, 0.0, 0.0, 1.0])),
        // text conversion and matching
        ("Str(42)", s("42")),
        ("Str('a', 1, true, 2.5)", s("a1true2.5")),
        ("String(1) + Text(2)", s("12")),
        ("MultipleMatch('*.txt', 'A.TXT')", b(true)),
        ("MultipleMatch('*.doc;*.txt', 'a.txt', 'b.doc')", b(true)),
        ("Multiple('*.doc', 'a.txt')", b(false)),
        ("MultipleMatch('a?c', 'ABC', 'abd')", b(false)),
        ("MultipleMatch('*', '')", b(true)),
        ("MultipleMatch('a*', '')", b(false)),
        ("MultipleMatch('a')", e("type")),
        ("wildcard('A*', 'abc')", b(false)),
        ("Print('x', 1, 2.5)", s("x,1,2.5")),
        ("DoStatus()", s("")),
        ("Status(null, 'a')", s(",a")),
        // Pascal string helpers
        ("IntToStr(6*7)", s("42")),
        ("IntToStr(-5)", s("-5")),
        ("IntToStr(18446744073709551615)", s("18446744073709551615")),
        ("IntToStr('12')", s("12")),
        ("IntToStr(1.5)", e("type")),
        ("IntToStr('x')", e("type")),
        ("FloatToStr(3.5)", s("3.5")),
        ("FloatToStr(0.1 + 0.2)", s("0.3")),
        ("FloatToStr(1e20)", s("1E20")),
        ("FloatToStr(7)", s("7")),
        ("StrToInt('42')", i(42)),
        ("StrToInt(' -17 ')", i(-17)),
        ("StrToInt('$FF')", i(255)),
        ("StrToInt('0x10')", i(16)),
        ("StrToInt64('9223372036854775807')", i(i64::MAX)),
        ("StrToInt('9223372036854775808')", e("type")),
        ("StrToInt('1.5')", e("type")),
        ("StrToInt('1e3')", e("type")),
        ("StrToInt('abc')", e("type")),
        ("StrToIntDef('abc', -1)", i(-1)),
        ("StrToIntDef('7', -1)", i(7)),
        ("StrToFloat('2.5e1')", f(25.0)),
        ("StrToFloat('3')", f(3.0)),
        ("StrToFloat('x')", e("type")),
        ("StrToFloatDef('x', 1.5)", f(1.5)),
        ("BoolToStr(true)", s("-1")),
        ("BoolToStr(false)", s("0")),
        ("BoolToStr(1 < 2, true)", s("True")),
        ("BoolToStr(false, true)", s("False")),
        ("StrToBool('TRUE')", b(true)),
        ("StrToBool('false')", b(false)),
        ("StrToBool('0')", b(false)),
        ("StrToBool('2')", b(true)),
        ("StrToBool('maybe')", e("type")),
        ("IntToHex(255, 4)", s("00FF")),
        ("IntToHex(255)", s("FF")),
        ("IntToHex(-1, 2)", s("FFFFFFFFFFFFFFFF")),
        ("IntToHex(1.5, 2)", e("type")),
        ("IntToHex(1, 2000000000)", e("limit")),
        ("Trim('  a b  ')", s("a b")),
        ("TrimLeft('  a ')", s("a ")),
        ("TrimRight('  a ')", s("  a")),
        ("UpperCase('abc')", s("ABC")),
        ("LowerCase('ÀB')", s("àb")),
        ("Copy('hello', 2, 3)", s("ell")),
        ("Copy('hello', 0, 2)", s("he")),
        ("Copy('hello', 9, 2)", s("")),
        ("Pos('ll', 'hello')", i(3)),
        ("Pos('z', 'hello')", i(0)),
        ("Length('héllo')", i(5)),
        ("Length(1, 2)", e("type")),
        ("LeftStr('hello', 2)", s("he")),
        ("LeftStr('hé', 9)", s("hé")),
        ("RightStr('hello', 3)", s("llo")),
        ("RightStr('hello', -1)", s("")),
        ("SameText('Abc', 'aBC')", b(true)),
        ("SameText('Abc', 'abd')", b(false)),
        ("CompareText('abc', 'ABD')", i(-1)),
        ("CompareText('B', 'a')", i(1)),
        ("CompareStr('B', 'a')", i(-1)),
        ("CompareStr('a', 'a')", i(0)),
        ("QuotedStr('it''s')", s("'it''s'")),
        ("Chr(65)", s("A")),
        ("Chr(233)", s("é")),
        ("Chr(55296)", e("type")),
        ("Chr(-1)", e("type")),
        ("Ord('A')", i(65)),
        ("Ord(true)", i(1)),
        ("Ord('AB')", e("type")),
        ("StringOfChar('-', 3)", s("---")),
        ("StringOfChar(65, 2)", s("AA")),
        ("StringOfChar('ab', 2)", e("type")),
        ("StringOfChar('x', 100000000)", e("limit")),
        ("DupeString('ab', 3)", s("ababab")),
        ("ReplicateStr('ab', 0)", s("")),
        ("DupeString('ab', 9223372036854775807)", e("limit")),
        ("ReverseString('abc')", s("cba")),
        ("ContainsText('Hello', 'ELL')", b(true)),
        ("ContainsStr('Hello', 'ELL')", b(false)),
        ("StartsText('he', 'Hello')", b(true)),
        ("StartsStr('he', 'Hello')", b(false)),
        ("EndsText('LO', 'hello')", b(true)),
        ("EndsStr('lo', 'hello')", b(true)),
        ("ReplaceStr('a-b-c', '-', '+')", s("a+b+c")),
        (
            "ReplaceStr('cat catalog Cat', 'cat', 'dog', true, true)",
            s("dog catalog dog"),
        ),
        ("ReplaceStr('abc', '', 'x')", s("abc")),
        ("Delete('hello', 2, 3)", s("ho")),
        ("Delete('hello', 9, 3)", s("hello")),
        ("Insert('XY', 'hello', 3)", s("heXYllo")),
        ("Insert('!', 'hi', 99)", s("hi!")),
        // composition and unknown names
        ("IntToStr(StrToInt('20') + Length(Trim(' ab ')))", s("22")),
        ("NoSuchFunction(1)", e("unknown")),
    ]
}

fn run(eng: &Engine, text: &str, how: &str) -> Result<Value, Error> {
    match how {
        "compiled" => eng.compile(text).and_then(|p| p.eval(&NoVars)),
        "interpreted" => eng.interpret(text, &NoVars),
        _ => eng
            .compile(text)
            .and_then(|p| eng.load(&p.save()))
            .and_then(|p| p.eval(&NoVars)),
    }
}

fn matches(got: &Result<Value, Error>, want: &Want) -> bool {
    match (got, want) {
        (Ok(Value::Float(a)), Want::V(Value::Float(b))) => {
            (a - b).abs() <= 1e-12 * b.abs().max(1.0)
        }
        (Ok(v), Want::V(w)) => v == w,
        (Err(e), Want::E(k)) => class(e) == *k,
        _ => false,
    }
}

#[test]
fn seed_builtins_table_compiled_interpreted_reloaded_any_case() {
    let eng = Engine::new();
    let mut failures = Vec::new();
    let rows = table();
    for (text, want) in &rows {
        // Upper-casing the whole text also upper-cases string literals, so only names:
        // the function name before the first '('.
        let upper = match text.find('(') {
            Some(p) => format!("{}{}", text[..p].to_uppercase(), &text[p..]),
            None => text.to_string(),
        };
        for t in [text.to_string(), upper] {
            for how in ["compiled", "interpreted", "reloaded"] {
                let got = run(&eng, &t, how);
                if !matches(&got, want) {
                    failures.push(format!("{t:?} [{how}]: got {got:?}, want {want:?}"));
                }
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
fn every_builtin_name_is_in_the_table() {
    // Each built-in (by canonical name) appears in at least one table row, so nothing
    // ships untested.
    let rows = table();
    let texts: Vec<String> = rows.iter().map(|(t, _)| t.to_ascii_lowercase()).collect();
    let untested: Vec<&str> = zs_expr::builtin_names()
        .filter(|n| {
            !texts
                .iter()
                .any(|t| t.contains(&format!("{n}(")) || (*n == "pi" && t == "pi"))
        })
        .filter(|n| {
            // The math core is covered by tests/table.rs.
            ![
                "abs", "sqrt", "sin", "cos", "tan", "arctan", "exp", "ln", "power", "round",
                "trunc", "int", "frac", "min", "max", "clamp", "bool", "upper", "lower", "substr",
                "replace", "ifthen", "random",
            ]
            .contains(n)
        })
        .collect();
    assert!(untested.is_empty(), "no table row for {untested:?}");
}

#[test]
fn random_is_reproducible_with_a_seed() {
    let eng = Engine::new();
    let text = "Random(1000000), Random(1000000), RandomFloat(), Random()";
    zs_expr::seed_random(42);
    let a = eng.eval(text, &NoVars).unwrap();
    zs_expr::seed_random(42);
    let b = eng.eval(text, &NoVars).unwrap();
    zs_expr::seed_random(43);
    let c = eng.eval(text, &NoVars).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Not folded at compile time: one compiled program gives different values per call.
    let p = eng.compile("Random(1000000000)").unwrap();
    let draws: std::collections::HashSet<String> = (0..8)
        .map(|_| p.eval(&NoVars).unwrap().to_string())
        .collect();
    assert!(draws.len() > 1, "{draws:?}");
}

#[test]
fn print_goes_to_the_hook_each_evaluation() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    zs_expr::set_print_hook(Some(Arc::new(move |l: &str| {
        sink.lock().unwrap().push(l.to_string())
    })));
    let p = Engine::new().compile("DoStatus('n=', 1 + 1)").unwrap();
    assert_eq!(p.eval(&NoVars).unwrap(), Value::from("n=,2"));
    assert_eq!(p.eval(&NoVars).unwrap(), Value::from("n=,2"));
    zs_expr::set_print_hook(None);
    assert_eq!(p.eval(&NoVars).unwrap(), Value::from("n=,2"));
    // Printed per evaluation (never folded away at compile time), nothing after unhooking.
    // (Other tests of this binary may print concurrently: keep only this test's lines.)
    let mine: Vec<String> = lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("n="))
        .cloned()
        .collect();
    assert_eq!(mine, ["n=,2", "n=,2"]);
}

#[test]
fn string_builtins_respect_max_string() {
    let eng = Engine::new().with_limits(zs_expr::Limits {
        max_string: 16,
        ..Default::default()
    });
    for text in [
        "DupeString('abcd', 5)",
        "StringOfChar('x', 17)",
        "Str('0123456789', '0123456789')",
        "Print('0123456789', '0123456789')",
        "QuotedStr('0123456789abcdef')",
        "ReplaceStr('aaaaaaaa', 'a', 'bbb')",
        "Insert('0123456789', '0123456789', 1)",
        "IntToHex(1, 17)",
    ] {
        let got = eng.compile(text).and_then(|p| p.eval(&NoVars));
        assert!(matches!(got, Err(Error::Limit { .. })), "{text}: {got:?}");
    }
}
