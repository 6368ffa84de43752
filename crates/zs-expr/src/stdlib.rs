//! The seed's system functions (`SystemOpRunTime` in `Z.OpCode.pas`) beyond the math core,
//! and the string helpers Pascal users expect (`IntToStr`, `StrToInt`, `Trim*`, …).
//!
//! Arity is checked by the caller ([`crate::builtins::call`]).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::RwLock;

use crate::builtins::{check_len, s, wildcard, Builtin};
use crate::error::OpErr;
use crate::ops::{self, N};
use crate::value::{Value, V};

/// Where `Print` / `DoStatus` / `Status` send their line.
pub(crate) use crate::PrintHook;

static PRINT_HOOK: RwLock<Option<PrintHook>> = RwLock::new(None);

pub(crate) fn set_print_hook(hook: Option<PrintHook>) {
    let mut g = PRINT_HOOK.write().unwrap_or_else(|p| p.into_inner());
    *g = hook;
}

fn print_line(line: &str) {
    let hook = PRINT_HOOK.read().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(h) = hook {
        h(line);
    }
}

/// A value as an ordinal for the Pascal typecasts: integers exactly, bools 0/1, floats
/// rounded half to even (Delphi's Variant conversion), numeric strings parsed.
fn ordinal(v: &V<'_>, name: &str) -> Result<i128, OpErr> {
    let n = match v {
        V::Int(i) => return Ok(i128::from(*i)),
        V::UInt(u) => return Ok(i128::from(*u)),
        V::Bool(b) => return Ok(i128::from(*b)),
        other => ops::num_arg(other).map_err(|e| OpErr::ty(format!("{name}: {}", e.msg)))?,
    };
    match n {
        N::I(i) => Ok(i),
        N::F(x) => {
            let r = x.round_ties_even();
            // 2^64 in magnitude: beyond that no 64-bit type holds it, wrapped or not.
            if !r.is_finite() || r.abs() >= 18_446_744_073_709_551_616.0 {
                Err(OpErr::arith(format!(
                    "{name}: {x:?} does not fit a 64-bit integer"
                )))
            } else {
                Ok(r as i128)
            }
        }
    }
}

fn shift_arg(v: &V<'_>, name: &str) -> Result<i64, OpErr> {
    ops::to_i64(v).map_err(|e| OpErr::ty(format!("{name}: shift: {}", e.msg)))
}

fn text_of<'b>(v: &'b V<'_>, name: &str) -> Result<Cow<'b, str>, OpErr> {
    ops::text(v, name)
}

fn count_arg(v: &V<'_>, name: &str, what: &str) -> Result<i64, OpErr> {
    ops::to_i64(v).map_err(|e| OpErr::ty(format!("{name}: {what}: {}", e.msg)))
}

/// Strict integer text: optional sign, decimal digits or `$`/`0x` hex, surrounding spaces.
fn parse_int(t: &str) -> Option<i64> {
    match ops::parse_num(t)? {
        N::I(i) if !t.contains(['.', 'e', 'E']) || is_hex(t) => i64::try_from(i).ok(),
        _ => None,
    }
}

fn is_hex(t: &str) -> bool {
    let t = t.trim().trim_start_matches(['-', '+']);
    t.starts_with('$') || t.starts_with("0x") || t.starts_with("0X")
}

fn parse_float(t: &str) -> Option<f64> {
    match ops::parse_num(t)? {
        N::I(i) => Some(i as f64),
        N::F(x) if x.is_finite() => Some(x),
        N::F(_) => None,
    }
}

/// Delphi's `FloatToStr`: general format, 15 significant digits, `E` notation below 1e-5
/// or from 1e15 on, `NAN` / `INF` / `-INF`.
pub(crate) fn float_to_str(x: f64) -> String {
    if x.is_nan() {
        return "NAN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "INF".into() } else { "-INF".into() };
    }
    if x == 0.0 {
        return "0".into();
    }
    let sci = format!("{:.14e}", x); // d.dddddddddddddde<exp>
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if !(-5..15).contains(&exp) {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "E{exp}");
    } else if exp < 0 {
        out.push_str("0.");
        for _ in 0..(-exp - 1) {
            out.push('0');
        }
        out.push_str(digits);
    } else {
        let int_len = exp as usize + 1;
        if digits.len() <= int_len {
            out.push_str(digits);
            for _ in digits.len()..int_len {
                out.push('0');
            }
        } else {
            out.push_str(&digits[..int_len]);
            out.push('.');
            out.push_str(&digits[int_len..]);
        }
    }
    out
}

/// The seed's `umlMultipleMatch(pattern, text)`: `;`-separated alternatives, `*` and `?`
/// wildcards, case-insensitive; an empty pattern or `*` matches everything, otherwise an
/// empty text matches nothing.
fn multiple_match(pattern: &str, text: &str) -> bool {
    if pattern.is_empty() || pattern == "*" {
        return true;
    }
    if text.is_empty() {
        return false;
    }
    let t = text.to_uppercase();
    pattern
        .split(';')
        .any(|alt| alt.is_empty() || alt == "*" || wildcard(&alt.to_uppercase(), &t))
}

fn number_value(v: &V<'_>, name: &str) -> Result<Value, OpErr> {
    match v {
        V::Int(i) => Ok(Value::Int(*i)),
        V::UInt(u) => Ok(Value::UInt(*u)),
        V::Float(x) => Ok(Value::Float(*x)),
        other => match ops::num_arg(other).map_err(|e| OpErr::ty(format!("{name}: {}", e.msg)))? {
            N::I(i) => Ok(ops::int_v(i, name)?.into_value()),
            N::F(x) => Ok(Value::Float(x)),
        },
    }
}

/// Vec2/3/4 and RColor: a vector of `n` numbers, missing ones taken from `default`.
fn vector<'a>(args: &[V<'_>], default: &[f64], name: &str) -> Result<V<'a>, OpErr> {
    let mut out = Vec::with_capacity(default.len());
    for (i, d) in default.iter().enumerate() {
        out.push(match args.get(i) {
            Some(a) => number_value(a, name)?,
            None => Value::Float(*d),
        });
    }
    Ok(V::Vec(Cow::Owned(out)))
}

fn plain_text(v: &V<'_>, out: &mut String) {
    match v {
        V::Str(t) => out.push_str(t),
        V::Null => {}
        other => {
            let _ = write!(out, "{}", other.as_ref());
        }
    }
}

fn lower(t: &str) -> String {
    t.to_lowercase()
}

fn char_count(t: &str) -> i64 {
    t.chars().count() as i64
}

/// Byte offset of the `n`-th char (clamped to the end).
fn char_offset(t: &str, n: usize) -> usize {
    t.char_indices().nth(n).map_or(t.len(), |(b, _)| b)
}

/// Replaces `from` in `t` (`only_word`: only where not glued to a letter, digit or `_`;
/// `ignore_case`: ASCII/Unicode lower-case match).
fn replace_str(
    t: &str,
    from: &str,
    to: &str,
    only_word: bool,
    ignore_case: bool,
    max_str: usize,
) -> Result<String, OpErr> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let from_chars: Vec<char> = from.chars().collect();
    let mut out = String::new();
    let mut i = 0usize; // byte index into t
    let bytes_len = t.len();
    while i < bytes_len {
        let rest = &t[i..];
        let hit_len = if ignore_case {
            let mut it = rest.char_indices();
            let mut ok = true;
            let mut end = 0;
            for fc in &from_chars {
                match it.next() {
                    Some((b, c)) if c.to_lowercase().eq(fc.to_lowercase()) => {
                        end = b + c.len_utf8();
                    }
                    _ => {
                        ok = false;
                        break;
                    }
                }
            }
            ok.then_some(end)
        } else {
            rest.starts_with(from).then_some(from.len())
        };
        let hit_len = hit_len.filter(|&n| {
            !only_word
                || (!t[..i].chars().next_back().is_some_and(is_word)
                    && !t[i + n..].chars().next().is_some_and(is_word))
        });
        match hit_len {
            Some(n) => {
                out.push_str(to);
                i += n;
            }
            None => {
                let c = rest.chars().next().unwrap_or('\0');
                out.push(c);
                i += c.len_utf8().max(1);
            }
        }
        check_len(out.len(), max_str)?;
    }
    Ok(out)
}

fn bool_arg(v: &V<'_>, name: &str) -> Result<bool, OpErr> {
    ops::truthy(v, name)
}

pub(crate) fn call<'a>(b: Builtin, args: &mut [V<'a>], max_str: usize) -> Result<V<'a>, OpErr> {
    let name = b.names()[0];
    Ok(match b {
        Builtin::Sqr => match ops::num(&args[0], "sqr")? {
            N::I(i) => ops::int_v(i.checked_mul(i).unwrap_or(i128::MAX), "sqr")?,
            N::F(x) => V::Float(x * x),
        },
        Builtin::Deg => {
            let x = ops::to_f64(&args[0])?;
            let mut r = x - (x / 360.0).trunc() * 360.0;
            if r > 180.0 {
                r -= 360.0;
            } else if r < -180.0 {
                r += 360.0;
            }
            V::Float(r)
        }
        Builtin::Pi => V::Float(std::f64::consts::PI),
        Builtin::True => V::Bool(true),
        Builtin::False => V::Bool(false),
        Builtin::Nop => V::Int(0),
        Builtin::Byte => V::Int(i64::from(ordinal(&args[0], name)? as u8)),
        Builtin::Word => V::Int(i64::from(ordinal(&args[0], name)? as u16)),
        Builtin::Cardinal => V::Int(i64::from(ordinal(&args[0], name)? as u32)),
        Builtin::UInt64 => ops::int_v(i128::from(ordinal(&args[0], name)? as u64), name)?,
        Builtin::ShortInt => V::Int(i64::from(ordinal(&args[0], name)? as i8)),
        Builtin::SmallInt => V::Int(i64::from(ordinal(&args[0], name)? as i16)),
        Builtin::Integer => V::Int(i64::from(ordinal(&args[0], name)? as i32)),
        Builtin::Int64 => V::Int(ordinal(&args[0], name)? as i64),
        Builtin::Single => match &args[0] {
            V::Bool(v) => V::Float(if *v { 1.0 } else { 0.0 }),
            other => V::Float(f64::from(ops::to_f64(other)? as f32)),
        },
        Builtin::Rol8 | Builtin::Ror8 => {
            let x = ordinal(&args[0], name)? as u8;
            let n = shift_arg(&args[1], name)?.rem_euclid(8) as u32;
            V::Int(i64::from(if b == Builtin::Rol8 {
                x.rotate_left(n)
            } else {
                x.rotate_right(n)
            }))
        }
        Builtin::Rol16 | Builtin::Ror16 => {
            let x = ordinal(&args[0], name)? as u16;
            let n = shift_arg(&args[1], name)?.rem_euclid(16) as u32;
            V::Int(i64::from(if b == Builtin::Rol16 {
                x.rotate_left(n)
            } else {
                x.rotate_right(n)
            }))
        }
        Builtin::Rol32 | Builtin::Ror32 => {
            let x = ordinal(&args[0], name)? as u32;
            let n = shift_arg(&args[1], name)?.rem_euclid(32) as u32;
            V::Int(i64::from(if b == Builtin::Rol32 {
                x.rotate_left(n)
            } else {
                x.rotate_right(n)
            }))
        }
        Builtin::Rol64 | Builtin::Ror64 => {
            let x = ordinal(&args[0], name)? as u64;
            let n = shift_arg(&args[1], name)?.rem_euclid(64) as u32;
            let r = if b == Builtin::Rol64 {
                x.rotate_left(n)
            } else {
                x.rotate_right(n)
            };
            ops::int_v(i128::from(r), name)?
        }
        Builtin::Endian16 => V::Int(i64::from((ordinal(&args[0], name)? as i16).swap_bytes())),
        Builtin::Endian32 => V::Int(i64::from((ordinal(&args[0], name)? as i32).swap_bytes())),
        Builtin::Endian64 => V::Int((ordinal(&args[0], name)? as i64).swap_bytes()),
        Builtin::EndianU16 => V::Int(i64::from((ordinal(&args[0], name)? as u16).swap_bytes())),
        Builtin::EndianU32 => V::Int(i64::from((ordinal(&args[0], name)? as u32).swap_bytes())),
        Builtin::EndianU64 => {
            ops::int_v(i128::from((ordinal(&args[0], name)? as u64).swap_bytes()), name)?
        }
        Builtin::Sar16 | Builtin::Sar32 | Builtin::Sar64 => {
            let x = ordinal(&args[0], name)?;
            let n = shift_arg(&args[1], name)?;
            if n < 0 {
                return Err(OpErr::ty(format!("{name}: shift must be >= 0, got {n}")));
            }
            // A shift of the width or more leaves only sign bits (no wrap-around).
            V::Int(match b {
                Builtin::Sar16 => i64::from((x as i16) >> n.min(15)),
                Builtin::Sar32 => i64::from((x as i32) >> n.min(31)),
                _ => (x as i64) >> n.min(63),
            })
        }
        Builtin::Vec2 => vector(args, &[0.0; 2], name)?,
        Builtin::Vec3 => vector(args, &[0.0; 3], name)?,
        Builtin::Vec4 => vector(args, &[0.0; 4], name)?,
        Builtin::RColor => vector(args, &[0.0, 0.0, 0.0, 1.0], name)?,
        Builtin::MultipleMatch => {
            let p = text_of(&args[0], name)?;
            let mut all = true;
            for t in &args[1..] {
                all &= multiple_match(&p, &text_of(t, name)?);
            }
            V::Bool(all)
        }
        Builtin::Print => {
            let mut line = String::new();
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                plain_text(a, &mut line);
                check_len(line.len(), max_str)?;
            }
            print_line(&line);
            s(line)
        }
        Builtin::IntToStr => match &args[0] {
            V::Int(i) => s(i.to_string()),
            V::UInt(u) => s(u.to_string()),
            other => match ops::num_arg(other)
                .map_err(|e| OpErr::ty(format!("IntToStr: {}", e.msg)))?
            {
                N::I(i) => s(i.to_string()),
                N::F(x) => {
                    return Err(OpErr::ty(format!(
                        "IntToStr needs an integer, got float {x:?}; use FloatToStr(x) or IntToStr(Round(x))"
                    )))
                }
            },
        },
        Builtin::FloatToStr => s(float_to_str(ops::to_f64(&args[0])?)),
        Builtin::StrToInt => {
            let t = text_of(&args[0], name)?;
            match parse_int(&t) {
                Some(i) => V::Int(i),
                None => {
                    return Err(OpErr::ty(format!(
                        "StrToInt: '{}' is not a valid integer",
                        t.chars().take(40).collect::<String>()
                    )))
                }
            }
        }
        Builtin::StrToIntDef => {
            let t = text_of(&args[0], name)?;
            match parse_int(&t) {
                Some(i) => V::Int(i),
                None => V::Int(count_arg(&args[1], name, "default")?),
            }
        }
        Builtin::StrToFloat => {
            let t = text_of(&args[0], name)?;
            match parse_float(&t) {
                Some(x) => V::Float(x),
                None => {
                    return Err(OpErr::ty(format!(
                        "StrToFloat: '{}' is not a valid floating point value",
                        t.chars().take(40).collect::<String>()
                    )))
                }
            }
        }
        Builtin::StrToFloatDef => {
            let t = text_of(&args[0], name)?;
            match parse_float(&t) {
                Some(x) => V::Float(x),
                None => V::Float(ops::to_f64(&args[1])?),
            }
        }
        Builtin::BoolToStr => {
            let v = bool_arg(&args[0], "BoolToStr's argument")?;
            let words = match args.get(1) {
                Some(u) => bool_arg(u, "BoolToStr's UseBoolStrs")?,
                None => false,
            };
            // Delphi: BoolToStr(True) = '-1'; with UseBoolStrs 'True' / 'False'.
            V::Str(Cow::Borrowed(match (v, words) {
                (true, false) => "-1",
                (false, false) => "0",
                (true, true) => "True",
                (false, true) => "False",
            }))
        }
        Builtin::StrToBool => {
            let t = text_of(&args[0], name)?;
            let w = t.trim();
            if w.eq_ignore_ascii_case("true") {
                V::Bool(true)
            } else if w.eq_ignore_ascii_case("false") {
                V::Bool(false)
            } else {
                match parse_float(w) {
                    Some(x) => V::Bool(x != 0.0),
                    None => {
                        return Err(OpErr::ty(format!(
                            "StrToBool: '{}' is not a valid boolean value",
                            t.chars().take(40).collect::<String>()
                        )))
                    }
                }
            }
        }
        Builtin::IntToHex => {
            let x = match ops::num_arg(&args[0])
                .map_err(|e| OpErr::ty(format!("IntToHex: {}", e.msg)))?
            {
                N::I(i) => i,
                N::F(x) => {
                    return Err(OpErr::ty(format!(
                        "IntToHex needs an integer, got float {x:?}"
                    )))
                }
            };
            let digits = match args.get(1) {
                Some(d) => count_arg(d, name, "digits")?.max(0),
                None => 1,
            };
            check_len(usize::try_from(digits).unwrap_or(usize::MAX), max_str)?;
            // Negative values print as their 64-bit two's complement, like Delphi's Int64.
            let h = format!("{:X}", x as u64);
            let pad = (digits as usize).saturating_sub(h.len());
            s("0".repeat(pad) + &h)
        }
        Builtin::TrimLeft => match std::mem::take(&mut args[0]) {
            V::Str(Cow::Borrowed(t)) => V::Str(Cow::Borrowed(t.trim_start())),
            other => s(text_of(&other, name)?.trim_start().to_string()),
        },
        Builtin::TrimRight => match std::mem::take(&mut args[0]) {
            V::Str(Cow::Borrowed(t)) => V::Str(Cow::Borrowed(t.trim_end())),
            other => s(text_of(&other, name)?.trim_end().to_string()),
        },
        Builtin::LeftStr | Builtin::RightStr => {
            let t = text_of(&args[0], name)?;
            let n = count_arg(&args[1], name, "count")?.max(0);
            let len = char_count(&t);
            let n = n.min(len) as usize;
            let r = if b == Builtin::LeftStr {
                &t[..char_offset(&t, n)]
            } else {
                &t[char_offset(&t, len as usize - n)..]
            };
            s(r.to_string())
        }
        Builtin::SameText => {
            V::Bool(lower(&text_of(&args[0], name)?) == lower(&text_of(&args[1], name)?))
        }
        Builtin::CompareText | Builtin::CompareStr => {
            let (x, y) = (text_of(&args[0], name)?, text_of(&args[1], name)?);
            let o = if b == Builtin::CompareText {
                lower(&x).cmp(&lower(&y))
            } else {
                x.cmp(&y)
            };
            V::Int(o as i64)
        }
        Builtin::QuotedStr => {
            let t = text_of(&args[0], name)?;
            let q = t.matches('\'').count();
            check_len(t.len().saturating_add(q).saturating_add(2), max_str)?;
            s(format!("'{}'", t.replace('\'', "''")))
        }
        Builtin::Chr => {
            let n = count_arg(&args[0], name, "code")?;
            match u32::try_from(n).ok().and_then(char::from_u32) {
                Some(c) => s(c.to_string()),
                None => {
                    return Err(OpErr::ty(format!(
                        "Chr: {n} is not a Unicode scalar value (0..=0x10FFFF, no surrogates)"
                    )))
                }
            }
        }
        Builtin::Ord => match &args[0] {
            V::Bool(v) => V::Int(i64::from(*v)),
            V::Int(_) | V::UInt(_) => std::mem::take(&mut args[0]),
            V::Str(t) => {
                let mut it = t.chars();
                match (it.next(), it.next()) {
                    (Some(c), None) => V::Int(i64::from(u32::from(c))),
                    _ => {
                        return Err(OpErr::ty(format!(
                            "Ord needs one character, got {} characters",
                            char_count(t)
                        )))
                    }
                }
            }
            other => {
                return Err(OpErr::ty(format!(
                    "Ord needs a character, an integer or a bool, got {}",
                    other.type_name()
                )))
            }
        },
        Builtin::StringOfChar | Builtin::DupeString => {
            let unit: Cow<'_, str> = match (&args[0], b) {
                (V::Int(code), Builtin::StringOfChar) => {
                    match u32::try_from(*code).ok().and_then(char::from_u32) {
                        Some(c) => Cow::Owned(c.to_string()),
                        None => return Err(OpErr::ty(format!("StringOfChar: bad code {code}"))),
                    }
                }
                (v, _) => text_of(v, name)?,
            };
            if b == Builtin::StringOfChar && unit.chars().count() != 1 {
                return Err(OpErr::ty("StringOfChar needs one character"));
            }
            let n = count_arg(&args[1], name, "count")?.max(0);
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            check_len(unit.len().saturating_mul(n), max_str)?;
            s(unit.repeat(n))
        }
        Builtin::ReverseString => s(text_of(&args[0], name)?.chars().rev().collect()),
        Builtin::ContainsText | Builtin::ContainsStr => {
            // Delphi: ContainsText(AText, ASubText).
            let (t, sub) = (text_of(&args[0], name)?, text_of(&args[1], name)?);
            V::Bool(if b == Builtin::ContainsText {
                lower(&t).contains(&lower(&sub))
            } else {
                t.contains(sub.as_ref())
            })
        }
        Builtin::StartsText | Builtin::StartsStr | Builtin::EndsText | Builtin::EndsStr => {
            // Delphi: StartsText(ASubText, AText) — the sub-text comes first.
            let (sub, t) = (text_of(&args[0], name)?, text_of(&args[1], name)?);
            let (sub, t) = if matches!(b, Builtin::StartsText | Builtin::EndsText) {
                (Cow::Owned(lower(&sub)), Cow::Owned(lower(&t)))
            } else {
                (sub, t)
            };
            V::Bool(if matches!(b, Builtin::StartsText | Builtin::StartsStr) {
                t.starts_with(sub.as_ref())
            } else {
                t.ends_with(sub.as_ref())
            })
        }
        Builtin::ReplaceStr => {
            let t = text_of(&args[0], name)?;
            let from = text_of(&args[1], name)?;
            let to = text_of(&args[2], name)?;
            let only_word = match args.get(3) {
                Some(v) => bool_arg(v, "ReplaceStr's OnlyWord")?,
                None => false,
            };
            let ignore_case = match args.get(4) {
                Some(v) => bool_arg(v, "ReplaceStr's IgnoreCase")?,
                None => false,
            };
            if from.is_empty() {
                s(t.into_owned())
            } else {
                s(replace_str(&t, &from, &to, only_word, ignore_case, max_str)?)
            }
        }
        Builtin::Delete => {
            // Functional Delete(s, index, count): s without `count` chars from 1-based `index`.
            let t = text_of(&args[0], name)?;
            let index = count_arg(&args[1], name, "index")?;
            let count = count_arg(&args[2], name, "count")?.max(0);
            let len = char_count(&t);
            if index < 1 || index > len || count == 0 {
                s(t.into_owned())
            } else {
                let a = char_offset(&t, (index - 1) as usize);
                let z = char_offset(&t, (index - 1).saturating_add(count).min(len) as usize);
                s(format!("{}{}", &t[..a], &t[z..]))
            }
        }
        Builtin::Insert => {
            // Functional Insert(sub, s, index): `sub` inserted before 1-based `index`.
            let sub = text_of(&args[0], name)?;
            let t = text_of(&args[1], name)?;
            let index = count_arg(&args[2], name, "index")?;
            check_len(t.len().saturating_add(sub.len()), max_str)?;
            let len = char_count(&t);
            let at = char_offset(&t, (index.clamp(1, len + 1) - 1) as usize);
            s(format!("{}{}{}", &t[..at], sub, &t[at..]))
        }
        other => {
            return Err(OpErr::ty(format!(
                "internal: built-in {} has no implementation",
                other.name()
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_to_str_matches_delphi_general_format() {
        for (x, want) in [
            (3.5, "3.5"),
            (0.1 + 0.2, "0.3"),
            (1e20, "1E20"),
            (1.5e-7, "1.5E-7"),
            (0.0001, "0.0001"),
            (123456789012345.0, "123456789012345"),
            (1e15, "1E15"),
            (-2.25, "-2.25"),
            (100.0, "100"),
            (0.0, "0"),
            (f64::NAN, "NAN"),
            (f64::NEG_INFINITY, "-INF"),
        ] {
            assert_eq!(float_to_str(x), want, "{x:?}");
        }
    }

    #[test]
    fn multiple_match_follows_the_seed() {
        assert!(multiple_match("*.TXT", "a.txt"));
        assert!(multiple_match("*.doc;*.txt", "a.txt"));
        assert!(!multiple_match("*.doc;*.pdf", "a.txt"));
        assert!(multiple_match("", ""));
        assert!(!multiple_match("a*", ""));
    }

    #[test]
    fn replace_str_modes() {
        let r = |t, f, to, w, i| replace_str(t, f, to, w, i, 1000).unwrap();
        assert_eq!(
            r("cat catalog Cat", "cat", "dog", false, false),
            "dog dogalog Cat"
        );
        assert_eq!(
            r("cat catalog Cat", "cat", "dog", true, false),
            "dog catalog Cat"
        );
        assert_eq!(
            r("cat catalog Cat", "cat", "dog", true, true),
            "dog catalog dog"
        );
        assert_eq!(r("ÄäÄ", "ä", "x", false, true), "xxx");
        assert!(replace_str("aaaa", "a", "bbbb", false, false, 10).is_err());
    }
}
