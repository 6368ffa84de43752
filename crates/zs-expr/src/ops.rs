//! Operator semantics shared by the compiled evaluator, the interpreter and constant folding.

use std::borrow::Cow;
use std::cmp::Ordering;

use crate::error::OpErr;
use crate::parser::{BinOp, UnOp};
use crate::value::V;

#[derive(Debug, Clone, Copy)]
pub(crate) enum N {
    I(i128),
    F(f64),
}

fn show(v: &V<'_>) -> String {
    match v {
        V::Str(s) => {
            let t: String = s.chars().take(40).collect();
            format!("string '{t}'")
        }
        V::Vec(_) => "a vector".into(),
        V::Null => "null".into(),
        other => format!("{} {}", other.type_name(), other.as_ref()),
    }
}

/// Parses a numeric string: decimal integer, float, `$FF` or `0xFF`; surrounding spaces ok.
pub(crate) fn parse_num(s: &str) -> Option<N> {
    let t = s.trim();
    let (neg, body) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let hex = body
        .strip_prefix('$')
        .or_else(|| body.strip_prefix("0x"))
        .or_else(|| body.strip_prefix("0X"));
    if let Some(h) = hex {
        let u = u64::from_str_radix(h, 16).ok()?;
        let v = i128::from(u);
        return Some(N::I(if neg { -v } else { v }));
    }
    if !body
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
    {
        return None;
    }
    if !body
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    if let Ok(u) = body.parse::<u64>() {
        let v = i128::from(u);
        return Some(N::I(if neg { -v } else { v }));
    }
    body.parse::<f64>()
        .ok()
        .map(|f| N::F(if neg { -f } else { f }))
}

#[inline]
pub(crate) fn num(v: &V<'_>, what: &str) -> Result<N, OpErr> {
    match v {
        V::Int(i) => Ok(N::I(i128::from(*i))),
        V::UInt(u) => Ok(N::I(i128::from(*u))),
        V::Float(f) => Ok(N::F(*f)),
        V::Str(s) => parse_num(s).ok_or_else(|| {
            OpErr::ty(format!(
                "{} is not a number, so it cannot be used with `{what}`; join text with str(x) or compare with '='",
                show(v)
            ))
        }),
        other => Err(OpErr::ty(format!(
            "`{what}` needs numbers, got {}; convert with int(x) or float(x)",
            show(other)
        ))),
    }
}

/// Like [`num`], for function arguments: "expected a number, got …".
pub(crate) fn num_arg(v: &V<'_>) -> Result<N, OpErr> {
    match v {
        V::Str(s) => {
            parse_num(s).ok_or_else(|| OpErr::ty(format!("expected a number, got {}", show(v))))
        }
        V::Int(_) | V::UInt(_) | V::Float(_) => num(v, ""),
        other => Err(OpErr::ty(format!(
            "expected a number, got {}; convert with int(x) or float(x)",
            show(other)
        ))),
    }
}

pub(crate) fn int_v<'a>(v: i128, what: &str) -> Result<V<'a>, OpErr> {
    if let Ok(i) = i64::try_from(v) {
        Ok(V::Int(i))
    } else if let Ok(u) = u64::try_from(v) {
        Ok(V::UInt(u))
    } else {
        Err(OpErr::arith(format!(
            "integer overflow in `{what}`: the result does not fit 64 bits; use float(x) to compute in floating point"
        )))
    }
}

fn f(n: N) -> f64 {
    match n {
        N::I(i) => i as f64,
        N::F(x) => x,
    }
}

fn need_int(n: N, what: &str) -> Result<i128, OpErr> {
    match n {
        N::I(i) => Ok(i),
        N::F(x) => Err(OpErr::ty(format!(
            "`{what}` needs integers, got float {x:?}; convert with trunc(x) or round(x)"
        ))),
    }
}

/// Every binary operator except the short-circuit path of `and`/`or` (taken by the callers
/// when the left operand is a bool).
pub(crate) fn binary<'a>(op: BinOp, a: V<'a>, b: V<'a>, max_str: usize) -> Result<V<'a>, OpErr> {
    // Fast paths for the common numeric cases.
    match (op, &a, &b) {
        (BinOp::Add, V::Int(x), V::Int(y)) => {
            if let Some(r) = x.checked_add(*y) {
                return Ok(V::Int(r));
            }
        }
        (BinOp::Sub, V::Int(x), V::Int(y)) => {
            if let Some(r) = x.checked_sub(*y) {
                return Ok(V::Int(r));
            }
        }
        (BinOp::Mul, V::Int(x), V::Int(y)) => {
            if let Some(r) = x.checked_mul(*y) {
                return Ok(V::Int(r));
            }
        }
        (BinOp::Eq, V::Str(x), V::Str(y)) => return Ok(V::Bool(x == y)),
        (BinOp::Ne, V::Str(x), V::Str(y)) => return Ok(V::Bool(x != y)),
        (BinOp::Add, V::Float(x), V::Float(y)) => return Ok(V::Float(x + y)),
        (BinOp::Sub, V::Float(x), V::Float(y)) => return Ok(V::Float(x - y)),
        (BinOp::Mul, V::Float(x), V::Float(y)) => return Ok(V::Float(x * y)),
        _ => {}
    }
    match op {
        BinOp::Eq => Ok(V::Bool(equal(&a, &b))),
        BinOp::Ne => Ok(V::Bool(!equal(&a, &b))),
        BinOp::Lt => Ok(V::Bool(order(&a, &b, "<")? == Some(Ordering::Less))),
        BinOp::Gt => Ok(V::Bool(order(&a, &b, ">")? == Some(Ordering::Greater))),
        BinOp::Le => Ok(V::Bool(matches!(
            order(&a, &b, "<=")?,
            Some(Ordering::Less | Ordering::Equal)
        ))),
        BinOp::Ge => Ok(V::Bool(matches!(
            order(&a, &b, ">=")?,
            Some(Ordering::Greater | Ordering::Equal)
        ))),
        BinOp::And | BinOp::Or | BinOp::Xor => logic(op, &a, &b),
        BinOp::Add => {
            if let (V::Str(x), V::Str(y)) = (&a, &b) {
                if x.len() + y.len() > max_str {
                    return Err(OpErr::limit(format!(
                        "string would be {} bytes, over the limit of {max_str} (Limits::max_string)",
                        x.len() + y.len()
                    )));
                }
                let mut s = String::with_capacity(x.len() + y.len());
                s.push_str(x);
                s.push_str(y);
                return Ok(V::Str(Cow::Owned(s)));
            }
            arith(op, &a, &b)
        }
        _ => arith(op, &a, &b),
    }
}

pub(crate) fn arith<'a>(op: BinOp, a: &V<'_>, b: &V<'_>) -> Result<V<'a>, OpErr> {
    let s = op.symbol();
    let (x, y) = (num(a, s)?, num(b, s)?);
    match op {
        BinOp::Add | BinOp::Sub | BinOp::Mul => match (x, y) {
            (N::I(p), N::I(q)) => {
                let r = match op {
                    BinOp::Add => p.checked_add(q),
                    BinOp::Sub => p.checked_sub(q),
                    _ => p.checked_mul(q),
                };
                match r {
                    Some(r) => int_v(r, s),
                    None => Err(OpErr::arith(format!(
                        "integer overflow in `{s}`: the result does not fit 64 bits; use float(x) to compute in floating point"
                    ))),
                }
            }
            _ => {
                let (p, q) = (f(x), f(y));
                Ok(V::Float(match op {
                    BinOp::Add => p + q,
                    BinOp::Sub => p - q,
                    _ => p * q,
                }))
            }
        },
        BinOp::FDiv => {
            let q = f(y);
            if q == 0.0 {
                return Err(OpErr::arith(
                    "division by zero in `/`; check the divisor with IfThen(d <> 0, x / d, 0)",
                ));
            }
            Ok(V::Float(f(x) / q))
        }
        BinOp::IDiv => {
            let (p, q) = (need_int(x, s)?, need_int(y, s)?);
            if q == 0 {
                return Err(OpErr::arith("division by zero in `div`"));
            }
            int_v(p / q, s)
        }
        BinOp::Mod => match (x, y) {
            (N::I(p), N::I(q)) => {
                if q == 0 {
                    return Err(OpErr::arith("division by zero in `mod`"));
                }
                int_v(p % q, s)
            }
            _ => {
                let q = f(y);
                if q == 0.0 {
                    return Err(OpErr::arith("division by zero in `mod`"));
                }
                Ok(V::Float(f(x) % q))
            }
        },
        BinOp::Pow => pow(x, y),
        BinOp::Shl | BinOp::Shr => {
            let (p, q) = (need_int(x, s)?, need_int(y, s)?);
            if !(0..=63).contains(&q) {
                return Err(OpErr::arith(format!(
                    "shift amount {q} is out of range; use 0 to 63"
                )));
            }
            if op == BinOp::Shl {
                int_v(p << q, s)
            } else {
                int_v(p >> q, s)
            }
        }
        _ => Err(OpErr::ty(format!("`{s}` is not an arithmetic operator"))),
    }
}

pub(crate) fn pow<'a>(x: N, y: N) -> Result<V<'a>, OpErr> {
    match (x, y) {
        (N::I(b), N::I(e)) if e >= 0 => {
            let r = match u32::try_from(e) {
                Ok(e) => b.checked_pow(e),
                Err(_) => match b {
                    0 | 1 => Some(b),
                    -1 => Some(if e % 2 == 0 { 1 } else { -1 }),
                    _ => None,
                },
            };
            match r {
                Some(r) => int_v(r, "^"),
                None => Err(OpErr::arith(
                    "integer overflow in `^`: the result does not fit 64 bits; use float(x) ^ y for a float result",
                )),
            }
        }
        _ => Ok(V::Float(f(x).powf(f(y)))),
    }
}

fn logic<'a>(op: BinOp, a: &V<'_>, b: &V<'_>) -> Result<V<'a>, OpErr> {
    let s = op.symbol();
    match (a, b) {
        (V::Bool(x), V::Bool(y)) => Ok(V::Bool(match op {
            BinOp::And => *x && *y,
            BinOp::Or => *x || *y,
            _ => x ^ y,
        })),
        (V::Int(_) | V::UInt(_), V::Int(_) | V::UInt(_)) => {
            let (N::I(x), N::I(y)) = (num(a, s)?, num(b, s)?) else {
                return Err(OpErr::ty("unreachable"));
            };
            int_v(
                match op {
                    BinOp::And => x & y,
                    BinOp::Or => x | y,
                    _ => x ^ y,
                },
                s,
            )
        }
        _ => Err(OpErr::ty(format!(
            "`{s}` needs two bools (logical) or two integers (bitwise), got {} and {}",
            show(a),
            show(b)
        ))),
    }
}

pub(crate) fn unary<'a>(op: UnOp, a: V<'a>) -> Result<V<'a>, OpErr> {
    match op {
        UnOp::Neg => match a {
            V::Int(i) => match i.checked_neg() {
                Some(r) => Ok(V::Int(r)),
                None => int_v(-i128::from(i), "-"),
            },
            V::Float(x) => Ok(V::Float(-x)),
            other => match num(&other, "-")? {
                N::I(i) => int_v(-i, "-"),
                N::F(x) => Ok(V::Float(-x)),
            },
        },
        UnOp::Plus => match a {
            V::Int(_) | V::UInt(_) | V::Float(_) => Ok(a),
            other => match num(&other, "+")? {
                N::I(i) => int_v(i, "+"),
                N::F(x) => Ok(V::Float(x)),
            },
        },
        UnOp::Not => match a {
            V::Bool(b) => Ok(V::Bool(!b)),
            V::Int(i) => Ok(V::Int(!i)),
            V::UInt(u) => int_v(i128::from(!u), "not"),
            other => Err(OpErr::ty(format!(
                "`not` needs a bool or an integer, got {}",
                show(&other)
            ))),
        },
    }
}

/// The condition of `IfThen` and of short-circuit `and`/`or`: bools, and numbers (non-zero is true).
pub(crate) fn truthy(v: &V<'_>, what: &str) -> Result<bool, OpErr> {
    match v {
        V::Bool(b) => Ok(*b),
        V::Int(i) => Ok(*i != 0),
        V::UInt(u) => Ok(*u != 0),
        V::Float(x) => Ok(*x != 0.0),
        other => Err(OpErr::ty(format!(
            "{what} must be a bool or a number, got {}",
            show(other)
        ))),
    }
}

fn cmp_num(x: N, y: N) -> Option<Ordering> {
    match (x, y) {
        (N::I(p), N::I(q)) => Some(p.cmp(&q)),
        (N::F(p), N::F(q)) => p.partial_cmp(&q),
        (N::I(p), N::F(q)) => cmp_int_float(p, q),
        (N::F(p), N::I(q)) => cmp_int_float(q, p).map(Ordering::reverse),
    }
}

/// Exact comparison of an integer with a float (no rounding of large integers).
pub(crate) fn cmp_int_float(i: i128, x: f64) -> Option<Ordering> {
    if x.is_nan() {
        return None;
    }
    let t = x.trunc();
    let ti = t as i128; // saturating; |i| < 2^64 so saturation keeps the order right
    match i.cmp(&ti) {
        Ordering::Equal => Some(if x > t {
            Ordering::Less
        } else if x < t {
            Ordering::Greater
        } else {
            Ordering::Equal
        }),
        o => Some(o),
    }
}

fn is_num(v: &V<'_>) -> bool {
    matches!(v, V::Int(_) | V::UInt(_) | V::Float(_))
}

/// `=`: never an error. Numbers compare by value across int and float; a string equals a
/// number when it parses to that number; vectors compare element-wise; other mixes are unequal.
pub(crate) fn equal(a: &V<'_>, b: &V<'_>) -> bool {
    match (a, b) {
        (V::Int(x), V::Int(y)) => x == y,
        (V::Str(x), V::Str(y)) => x == y,
        (V::Bool(x), V::Bool(y)) => x == y,
        (V::Null, V::Null) => true,
        (V::Vec(x), V::Vec(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(p, q)| equal(&V::borrow(p), &V::borrow(q)))
        }
        _ if is_num(a) && is_num(b)
            || is_num(a) && matches!(b, V::Str(_))
            || matches!(a, V::Str(_)) && is_num(b) =>
        {
            match (num(a, "="), num(b, "=")) {
                (Ok(x), Ok(y)) => cmp_num(x, y) == Some(Ordering::Equal),
                _ => false,
            }
        }
        _ => false,
    }
}

/// `< > <= >=`: numbers (NaN is unordered, so every comparison with it is false), strings by
/// code point, a string with a number when the string is numeric, bools (`false < true`).
pub(crate) fn order(a: &V<'_>, b: &V<'_>, what: &str) -> Result<Option<Ordering>, OpErr> {
    match (a, b) {
        (V::Int(x), V::Int(y)) => Ok(Some(x.cmp(y))),
        (V::Float(x), V::Float(y)) => Ok(x.partial_cmp(y)),
        (V::Str(x), V::Str(y)) => Ok(Some(x.as_ref().cmp(y.as_ref()))),
        (V::Bool(x), V::Bool(y)) => Ok(Some(x.cmp(y))),
        _ if (is_num(a) || matches!(a, V::Str(_))) && (is_num(b) || matches!(b, V::Str(_))) => {
            Ok(cmp_num(num(a, what)?, num(b, what)?))
        }
        _ => Err(OpErr::ty(format!(
            "cannot order {} and {} with `{what}`",
            show(a),
            show(b)
        ))),
    }
}

pub(crate) fn to_f64(v: &V<'_>) -> Result<f64, OpErr> {
    match v {
        V::Float(x) => Ok(*x),
        V::Int(i) => Ok(*i as f64),
        V::UInt(u) => Ok(*u as f64),
        other => num_arg(other).map(f),
    }
}

pub(crate) fn float_to_int<'a>(x: f64) -> Result<V<'a>, OpErr> {
    const TWO63: f64 = (1u64 << 63) as f64;
    if !x.is_finite() || !(-TWO63..2.0 * TWO63).contains(&x) {
        return Err(OpErr::arith(format!(
            "float {x:?} does not fit a 64-bit integer"
        )));
    }
    int_v(x as i128, "int")
}

pub(crate) fn to_i64(v: &V<'_>) -> Result<i64, OpErr> {
    let n = match v {
        V::Int(i) => return Ok(*i),
        other => num_arg(other)?,
    };
    let i = match n {
        N::I(i) => i,
        N::F(x) if x.fract() == 0.0 && x.is_finite() => x as i128,
        N::F(x) => return Err(OpErr::ty(format!("{x:?} is not a whole number"))),
    };
    i64::try_from(i).map_err(|_| OpErr::arith(format!("{i} does not fit a signed 64-bit integer")))
}

/// The text of a value for string functions (numbers and bools are formatted).
pub(crate) fn text<'b>(v: &'b V<'_>, what: &str) -> Result<Cow<'b, str>, OpErr> {
    match v {
        V::Str(s) => Ok(Cow::Borrowed(s.as_ref())),
        V::Null | V::Vec(_) => Err(OpErr::ty(format!("`{what}` needs text, got {}", show(v)))),
        other => Ok(Cow::Owned(other.as_ref().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_promotes_then_errors() {
        assert_eq!(
            binary(BinOp::Add, V::Int(i64::MAX), V::Int(1), 10).unwrap(),
            V::UInt(1 << 63)
        );
        assert!(binary(BinOp::Mul, V::UInt(u64::MAX), V::Int(2), 10).is_err());
        assert!(binary(BinOp::Sub, V::Int(i64::MIN), V::Int(1), 10).is_err());
        assert_eq!(
            unary(UnOp::Neg, V::UInt(1 << 63)).unwrap(),
            V::Int(i64::MIN)
        );
    }

    #[test]
    fn exact_int_float_compare() {
        let big = (1i64 << 53) + 1;
        assert!(!equal(&V::Int(big), &V::Float((1i64 << 53) as f64)));
        assert!(equal(&V::Int(3), &V::Float(3.0)));
        assert!(equal(&V::Str("12".into()), &V::Int(12)));
        assert!(!equal(&V::Str("x".into()), &V::Int(12)));
    }

    #[test]
    fn parse_numbers() {
        assert!(matches!(parse_num(" 12 "), Some(N::I(12))));
        assert!(matches!(parse_num("$ff"), Some(N::I(255))));
        assert!(matches!(parse_num("-1.5"), Some(N::F(x)) if x == -1.5));
        assert!(parse_num("inf").is_none());
        assert!(parse_num("1x").is_none());
    }
}
