//! Built-in functions: math, casts, strings, `IfThen`, `random`.

use std::borrow::Cow;
use std::cell::Cell;

use crate::error::OpErr;
use crate::ops::{self, N};

use crate::value::{Value, V};

macro_rules! builtins {
    ($( $id:ident = $code:literal, [$($name:literal),+], $min:literal, $max:expr, $pure:literal; )*) => {
        /// A built-in function (its id is stable: it is part of the saved format).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum Builtin { $( $id ),* }

        impl Builtin {
            pub const ALL: &'static [Builtin] = &[ $( Builtin::$id ),* ];
            pub fn code(self) -> u8 { match self { $( Builtin::$id => $code ),* } }
            pub fn from_code(c: u8) -> Option<Builtin> { match c { $( $code => Some(Builtin::$id), )* _ => None } }
            pub fn names(self) -> &'static [&'static str] { match self { $( Builtin::$id => &[$($name),+] ),* } }
            /// (minimum, maximum) number of arguments; `usize::MAX` means variadic.
            pub fn arity(self) -> (usize, usize) { match self { $( Builtin::$id => ($min, $max) ),* } }
            /// Whether calls with constant arguments may be folded at compile time.
            pub fn pure(self) -> bool { match self { $( Builtin::$id => $pure ),* } }
            /// Lookup of a lower-case name or alias.
            fn lookup_lower(name: &str) -> Option<Builtin> {
                match name { $( $($name)|+ => Some(Builtin::$id), )* _ => None }
            }
        }
    };
}

const ANY: usize = usize::MAX;

builtins! {
    Abs = 1, ["abs"], 1, 1, true;
    Sqrt = 2, ["sqrt"], 1, 1, true;
    Sin = 3, ["sin"], 1, 1, true;
    Cos = 4, ["cos"], 1, 1, true;
    Tan = 5, ["tan"], 1, 1, true;
    ArcTan = 6, ["arctan", "atan"], 1, 1, true;
    Exp = 7, ["exp"], 1, 1, true;
    Ln = 8, ["ln"], 1, 1, true;
    Power = 9, ["power", "pow"], 2, 2, true;
    Round = 10, ["round"], 1, 1, true;
    Trunc = 11, ["trunc"], 1, 1, true;
    Int = 12, ["int"], 1, 1, true;
    Frac = 13, ["frac"], 1, 1, true;
    Min = 14, ["min"], 1, ANY, true;
    Max = 15, ["max"], 1, ANY, true;
    Clamp = 16, ["clamp"], 3, 3, true;
    Float = 17, ["float", "double", "extended", "real"], 1, 1, true;
    Bool = 18, ["bool", "boolean"], 1, 1, true;
    Str = 19, ["str", "string", "text"], 1, ANY, true;
    Length = 20, ["length", "len"], 1, 1, true;
    Upper = 21, ["upper", "uppercase"], 1, 1, true;
    Lower = 22, ["lower", "lowercase"], 1, 1, true;
    Pos = 23, ["pos"], 2, 2, true;
    Copy = 24, ["copy"], 3, 3, true;
    Substr = 25, ["substr"], 2, 3, true;
    Replace = 26, ["replace"], 3, 3, true;
    Trim = 27, ["trim"], 1, 1, true;
    Wildcard = 28, ["wildcard"], 2, 2, true;
    IfThen = 29, ["ifthen", "if"], 3, 3, true;
    Random = 30, ["random"], 0, 1, false;
    // --- the seed's SystemOpRunTime (Z.OpCode.pas) and the Pascal string helpers ---
    Sqr = 31, ["sqr"], 1, 1, true;
    Deg = 32, ["deg"], 1, 1, true;
    Pi = 33, ["pi"], 0, 0, true;
    True = 34, ["true"], 0, 0, true;
    False = 35, ["false"], 0, 0, true;
    RandomFloat = 36, ["randomfloat", "randomf"], 0, 0, false;
    Nop = 37, ["nop"], 0, ANY, true;
    Byte = 38, ["byte", "uint8"], 1, 1, true;
    Word = 39, ["word", "uint16"], 1, 1, true;
    Cardinal = 40, ["cardinal", "longword", "uint32"], 1, 1, true;
    UInt64 = 41, ["uint64"], 1, 1, true;
    ShortInt = 42, ["shortint", "int8"], 1, 1, true;
    SmallInt = 43, ["smallint", "int16"], 1, 1, true;
    Integer = 44, ["integer", "longint", "int32"], 1, 1, true;
    Int64 = 45, ["int64"], 1, 1, true;
    Single = 46, ["single"], 1, 1, true;
    Rol8 = 47, ["rol8"], 2, 2, true;
    Rol16 = 48, ["rol16"], 2, 2, true;
    Rol32 = 49, ["rol32"], 2, 2, true;
    Rol64 = 50, ["rol64"], 2, 2, true;
    Ror8 = 51, ["ror8"], 2, 2, true;
    Ror16 = 52, ["ror16"], 2, 2, true;
    Ror32 = 53, ["ror32"], 2, 2, true;
    Ror64 = 54, ["ror64"], 2, 2, true;
    Endian16 = 55, ["endian16"], 1, 1, true;
    Endian32 = 56, ["endian32"], 1, 1, true;
    Endian64 = 57, ["endian64"], 1, 1, true;
    EndianU16 = 58, ["endianu16"], 1, 1, true;
    EndianU32 = 59, ["endianu32"], 1, 1, true;
    EndianU64 = 60, ["endianu64"], 1, 1, true;
    Sar16 = 61, ["sar16"], 2, 2, true;
    Sar32 = 62, ["sar32"], 2, 2, true;
    Sar64 = 63, ["sar64"], 2, 2, true;
    Vec2 = 64, ["vec2"], 0, 2, true;
    Vec3 = 65, ["vec3"], 0, 3, true;
    Vec4 = 66, ["vec4"], 0, 4, true;
    RColor = 67, ["rcolor"], 0, 4, true;
    MultipleMatch = 68, ["multiplematch", "multiple"], 2, ANY, true;
    Print = 69, ["print", "dostatus", "status"], 0, ANY, false;
    IntToStr = 70, ["inttostr"], 1, 1, true;
    FloatToStr = 71, ["floattostr"], 1, 1, true;
    StrToInt = 72, ["strtoint", "strtoint64"], 1, 1, true;
    StrToIntDef = 73, ["strtointdef", "strtoint64def"], 2, 2, true;
    StrToFloat = 74, ["strtofloat"], 1, 1, true;
    StrToFloatDef = 75, ["strtofloatdef"], 2, 2, true;
    BoolToStr = 76, ["booltostr"], 1, 2, true;
    StrToBool = 77, ["strtobool"], 1, 1, true;
    IntToHex = 78, ["inttohex"], 1, 2, true;
    TrimLeft = 79, ["trimleft"], 1, 1, true;
    TrimRight = 80, ["trimright"], 1, 1, true;
    LeftStr = 81, ["leftstr"], 2, 2, true;
    RightStr = 82, ["rightstr"], 2, 2, true;
    SameText = 83, ["sametext"], 2, 2, true;
    CompareText = 84, ["comparetext"], 2, 2, true;
    CompareStr = 85, ["comparestr"], 2, 2, true;
    QuotedStr = 86, ["quotedstr"], 1, 1, true;
    Chr = 87, ["chr"], 1, 1, true;
    Ord = 88, ["ord"], 1, 1, true;
    StringOfChar = 89, ["stringofchar"], 2, 2, true;
    DupeString = 90, ["dupestring", "replicatestr"], 2, 2, true;
    ReverseString = 91, ["reversestring", "reversestr"], 1, 1, true;
    ContainsText = 92, ["containstext"], 2, 2, true;
    StartsText = 93, ["startstext"], 2, 2, true;
    EndsText = 94, ["endstext"], 2, 2, true;
    ContainsStr = 95, ["containsstr"], 2, 2, true;
    StartsStr = 96, ["startsstr"], 2, 2, true;
    EndsStr = 97, ["endsstr"], 2, 2, true;
    ReplaceStr = 98, ["replacestr"], 3, 5, true;
    Delete = 99, ["delete"], 3, 3, true;
    Insert = 100, ["insert"], 3, 3, true;
}

impl Builtin {
    /// Case-insensitive lookup by name or alias.
    pub fn lookup(name: &str) -> Option<Builtin> {
        // Every name is lower-case ASCII and at most 16 bytes: lower-case into a buffer
        // (names written in lower case, the common case, are matched as they are).
        if !name.bytes().any(|c| c.is_ascii_uppercase()) {
            return Builtin::lookup_lower(name);
        }
        let mut buf = [0u8; 16];
        let lower = buf.get_mut(..name.len())?;
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        Builtin::lookup_lower(std::str::from_utf8(lower).ok()?)
    }
    pub fn name(self) -> &'static str {
        self.names()[0]
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9E37_79B9_7F4A_7C15);
        h.finish() | 1
    });
}

/// xorshift64*: fast, good enough for `random()` (not for cryptography).
fn next_random() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Seeds this thread's `random` / `RandomFloat` generator (see [`crate::seed_random`]).
pub(crate) fn seed_random(seed: u64) {
    // splitmix64 so that every seed (0 included) gives a non-zero, well-mixed state.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    RNG.with(|c| c.set(z | 1));
}

fn math1<'a>(a: &V<'_>, name: &str, f: fn(f64) -> f64) -> Result<V<'a>, OpErr> {
    let x = ops::to_f64(a).map_err(|e| OpErr::ty(format!("{name}: {}", e.msg)))?;
    Ok(V::Float(f(x)))
}

pub(crate) fn s<'a>(x: String) -> V<'a> {
    V::Str(Cow::Owned(x))
}

pub(crate) fn check_len(n: usize, max_str: usize) -> Result<(), OpErr> {
    if n > max_str {
        Err(OpErr::limit(format!(
            "string would be {n} bytes, over the limit of {max_str} (Limits::max_string)"
        )))
    } else {
        Ok(())
    }
}

/// `*` any run of characters, `?` exactly one; case-sensitive; linear-time backtracking.
pub(crate) fn wildcard(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

fn pick<'a>(args: &mut [V<'a>], want: std::cmp::Ordering, name: &str) -> Result<V<'a>, OpErr> {
    if args.len() == 1 {
        if let V::Vec(items) = &args[0] {
            if items.is_empty() {
                return Err(OpErr::ty(format!("{name} of an empty vector")));
            }
            let mut best = 0;
            for i in 1..items.len() {
                if ops::order(&V::borrow(&items[i]), &V::borrow(&items[best]), name)? == Some(want)
                {
                    best = i;
                }
            }
            return Ok(V::from_value(items[best].clone()));
        }
    }
    let mut best = 0;
    for i in 1..args.len() {
        if ops::order(&args[i], &args[best], name)? == Some(want) {
            best = i;
        }
    }
    // A NaN anywhere makes the result NaN, like IEEE min/max would not; be explicit.
    if args.iter().any(|a| matches!(a, V::Float(x) if x.is_nan())) {
        return Ok(V::Float(f64::NAN));
    }
    Ok(std::mem::take(&mut args[best]))
}

/// Calls a built-in with evaluated arguments (arity already checked at compile time,
/// checked again here so loaded programs stay safe).
pub(crate) fn call<'a>(b: Builtin, args: &mut [V<'a>], max_str: usize) -> Result<V<'a>, OpErr> {
    let (min, max) = b.arity();
    if args.len() < min || args.len() > max {
        return Err(OpErr::ty(format!(
            "{} takes {} arguments, got {}",
            b.name(),
            arity_text(b),
            args.len()
        )));
    }
    let name = b.name();
    match b {
        Builtin::Abs => match &args[0] {
            V::Int(i) => ops::int_v(i128::from(*i).abs(), "abs"),
            V::UInt(_) => Ok(std::mem::take(&mut args[0])),
            other => match ops::num(other, "abs")? {
                N::I(i) => ops::int_v(i.abs(), "abs"),
                N::F(x) => Ok(V::Float(x.abs())),
            },
        },
        Builtin::Sqrt => {
            let x = ops::to_f64(&args[0])?;
            if x < 0.0 {
                return Err(OpErr::arith(format!("sqrt of a negative number ({x:?})")));
            }
            Ok(V::Float(x.sqrt()))
        }
        Builtin::Sin => math1(&args[0], name, f64::sin),
        Builtin::Cos => math1(&args[0], name, f64::cos),
        Builtin::Tan => math1(&args[0], name, f64::tan),
        Builtin::ArcTan => math1(&args[0], name, f64::atan),
        Builtin::Exp => math1(&args[0], name, f64::exp),
        Builtin::Ln => {
            let x = ops::to_f64(&args[0])?;
            if x <= 0.0 {
                return Err(OpErr::arith(format!(
                    "ln needs a positive number, got {x:?}"
                )));
            }
            Ok(V::Float(x.ln()))
        }
        Builtin::Power => ops::pow(ops::num(&args[0], "power")?, ops::num(&args[1], "power")?),
        Builtin::Round => match ops::num(&args[0], "round")? {
            N::I(i) => ops::int_v(i, "round"),
            N::F(x) => ops::float_to_int(x.round_ties_even()),
        },
        Builtin::Trunc => match ops::num(&args[0], "trunc")? {
            N::I(i) => ops::int_v(i, "trunc"),
            N::F(x) => ops::float_to_int(x.trunc()),
        },
        Builtin::Int => match &args[0] {
            V::Bool(v) => Ok(V::Int(i64::from(*v))),
            other => match ops::num(other, "int")? {
                N::I(i) => ops::int_v(i, "int"),
                N::F(x) => ops::float_to_int(x.trunc()),
            },
        },
        Builtin::Frac => {
            let x = ops::to_f64(&args[0])?;
            Ok(V::Float(x - x.trunc()))
        }
        Builtin::Min => pick(args, std::cmp::Ordering::Less, "min"),
        Builtin::Max => pick(args, std::cmp::Ordering::Greater, "max"),
        Builtin::Clamp => {
            if ops::order(&args[1], &args[2], "clamp")? == Some(std::cmp::Ordering::Greater) {
                return Err(OpErr::ty("clamp(x, lo, hi) needs lo <= hi"));
            }
            if ops::order(&args[0], &args[1], "clamp")? == Some(std::cmp::Ordering::Less) {
                Ok(std::mem::take(&mut args[1]))
            } else if ops::order(&args[0], &args[2], "clamp")? == Some(std::cmp::Ordering::Greater)
            {
                Ok(std::mem::take(&mut args[2]))
            } else {
                Ok(std::mem::take(&mut args[0]))
            }
        }
        Builtin::Float => match &args[0] {
            V::Bool(v) => Ok(V::Float(if *v { 1.0 } else { 0.0 })),
            other => Ok(V::Float(ops::to_f64(other)?)),
        },
        Builtin::Bool => match &args[0] {
            V::Str(t) => match t.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(V::Bool(true)),
                "false" | "0" | "no" | "" => Ok(V::Bool(false)),
                _ => Err(OpErr::ty(format!(
                    "bool: '{t}' is not true/false/yes/no/1/0"
                ))),
            },
            other => ops::truthy(other, "bool's argument").map(V::Bool),
        },
        Builtin::Str if args.len() == 1 => match std::mem::take(&mut args[0]) {
            V::Str(t) => Ok(V::Str(t)),
            other => {
                let t = other.as_ref().to_string();
                check_len(t.len(), max_str)?;
                Ok(s(t))
            }
        },
        Builtin::Str => {
            // The seed's Str(a, b, …) joins the text of every argument.
            let mut out = String::new();
            for a in args.iter() {
                use std::fmt::Write;
                match a {
                    V::Str(t) => out.push_str(t),
                    other => {
                        let _ = write!(out, "{}", other.as_ref());
                    }
                }
                check_len(out.len(), max_str)?;
            }
            Ok(s(out))
        }
        Builtin::Length => match &args[0] {
            V::Vec(v) => Ok(V::Int(v.len() as i64)),
            other => Ok(V::Int(ops::text(other, name)?.chars().count() as i64)),
        },
        Builtin::Upper | Builtin::Lower => {
            let t = ops::text(&args[0], name)?;
            let r = if b == Builtin::Upper {
                t.to_uppercase()
            } else {
                t.to_lowercase()
            };
            check_len(r.len(), max_str)?;
            Ok(s(r))
        }
        Builtin::Pos => {
            let sub = ops::text(&args[0], name)?;
            let t = ops::text(&args[1], name)?;
            Ok(V::Int(match t.find(sub.as_ref()) {
                Some(byte) if !sub.is_empty() => t[..byte].chars().count() as i64 + 1,
                _ => 0,
            }))
        }
        Builtin::Copy | Builtin::Substr => {
            let t = ops::text(&args[0], name)?;
            let start = ops::to_i64(&args[1])
                .map_err(|e| OpErr::ty(format!("{name}: start: {}", e.msg)))?;
            let count = match args.get(2) {
                Some(c) => {
                    ops::to_i64(c).map_err(|e| OpErr::ty(format!("{name}: count: {}", e.msg)))?
                }
                None => i64::MAX,
            };
            // copy is 1-based (Pascal Copy); substr is 0-based (C++ substr).
            let skip = if b == Builtin::Copy {
                start.max(1) - 1
            } else {
                start.max(0)
            };
            let r: String = t
                .chars()
                .skip(usize::try_from(skip).unwrap_or(usize::MAX))
                .take(usize::try_from(count.max(0)).unwrap_or(usize::MAX))
                .collect();
            Ok(s(r))
        }
        Builtin::Replace => {
            let t = ops::text(&args[0], name)?;
            let from = ops::text(&args[1], name)?;
            let to = ops::text(&args[2], name)?;
            if from.is_empty() {
                return Err(OpErr::ty(
                    "replace(text, from, to) needs a non-empty `from`",
                ));
            }
            let hits = t.matches(from.as_ref()).count();
            let len = (t.len() - hits * from.len()).saturating_add(hits.saturating_mul(to.len()));
            check_len(len, max_str)?;
            Ok(s(t.replace(from.as_ref(), to.as_ref())))
        }
        Builtin::Trim => match std::mem::take(&mut args[0]) {
            V::Str(Cow::Borrowed(t)) => Ok(V::Str(Cow::Borrowed(t.trim()))),
            other => Ok(s(ops::text(&other, name)?.trim().to_string())),
        },
        Builtin::Wildcard => {
            let p = ops::text(&args[0], name)?;
            let t = ops::text(&args[1], name)?;
            Ok(V::Bool(wildcard(&p, &t)))
        }
        Builtin::IfThen => {
            let c = ops::truthy(&args[0], "IfThen's condition")?;
            Ok(std::mem::take(&mut args[if c { 1 } else { 2 }]))
        }
        Builtin::Random => {
            let r = next_random();
            match args.first() {
                None => Ok(V::Float((r >> 11) as f64 / (1u64 << 53) as f64)),
                Some(n) => {
                    let n = ops::to_i64(n)?;
                    if n <= 0 {
                        return Err(OpErr::ty(format!("random(n) needs n > 0, got {n}")));
                    }
                    Ok(V::Int((r % n as u64) as i64))
                }
            }
        }
        Builtin::RandomFloat => Ok(V::Float((next_random() >> 11) as f64 / (1u64 << 53) as f64)),
        other => crate::stdlib::call(other, args, max_str),
    }
}

pub(crate) fn arity_text(b: Builtin) -> String {
    match b.arity() {
        (a, c) if a == c => format!("{a}"),
        (a, ANY) => format!("at least {a}"),
        (a, c) => format!("{a} to {c}"),
    }
}

/// Turns an evaluated list into a vector value.
pub(crate) fn make_list<'a>(items: Vec<V<'a>>) -> V<'a> {
    V::Vec(Cow::Owned(
        items.into_iter().map(V::into_value).collect::<Vec<Value>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_every_name_in_any_case() {
        for &b in Builtin::ALL {
            for n in b.names() {
                assert!(
                    n.len() <= 16 && n.bytes().all(|c| !c.is_ascii_uppercase()),
                    "{n}"
                );
                assert_eq!(Builtin::lookup(n), Some(b));
                assert_eq!(Builtin::lookup(&n.to_ascii_uppercase()), Some(b));
            }
        }
        assert_eq!(Builtin::lookup("IfThen"), Some(Builtin::IfThen));
        assert_eq!(Builtin::lookup("nosuchfunction"), None);
        assert_eq!(Builtin::lookup("averyveryverylongname"), None);
        assert_eq!(Builtin::lookup(""), None);
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard("a*c", "abbbc"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "abbc"));
        assert!(wildcard("*", ""));
        assert!(wildcard("*.txt", "x.txt"));
        assert!(!wildcard("*.txt", "x.txd"));
    }

    #[test]
    fn codes_are_unique_and_round_trip() {
        for b in Builtin::ALL {
            assert_eq!(Builtin::from_code(b.code()), Some(*b));
            for n in b.names() {
                assert_eq!(Builtin::lookup(n), Some(*b));
            }
        }
    }
}
