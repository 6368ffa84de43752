//! The numeric fast path of the compiled evaluator.
//!
//! Most filters and formulas only touch ints, floats and bools. This evaluator works on a
//! 16-byte [`F`] returned in registers instead of the general value type, and gives up
//! (`None`) at the first thing it does not handle exactly like the general evaluator:
//! a string, an unsigned integer, an overflow, an error, a call outside the pure numeric
//! built-ins. It runs nothing with side effects, so after giving up the general evaluator
//! simply starts again and produces the result or the error. Results are identical by
//! construction and checked by the `compiled and interpreted agree` property test.

use std::cmp::Ordering;

use crate::builtins::Builtin;
use crate::parser::{BinOp, UnOp};
use crate::program::{Node, Program};
use crate::value::{Scalar, Value, ValueRef, Vars};

/// The tag of [`F`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum T {
    I,
    F,
    B,
}

/// A fast-path value: a tag and 64 bits (an `i64`, the bits of an `f64`, or 0/1). Two
/// scalars, so it travels in registers; an enum with a payload would go through memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct F {
    t: T,
    bits: u64,
}

/// The matchable view of an [`F`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum FV {
    I(i64),
    F(f64),
    B(bool),
}

impl F {
    #[inline(always)]
    #[allow(non_snake_case)]
    pub fn I(i: i64) -> F {
        F {
            t: T::I,
            bits: i as u64,
        }
    }
    #[inline(always)]
    #[allow(non_snake_case)]
    pub fn F(x: f64) -> F {
        F {
            t: T::F,
            bits: x.to_bits(),
        }
    }
    #[inline(always)]
    #[allow(non_snake_case)]
    pub fn B(b: bool) -> F {
        F {
            t: T::B,
            bits: u64::from(b),
        }
    }
    #[inline(always)]
    pub fn v(self) -> FV {
        match self.t {
            T::I => FV::I(self.bits as i64),
            T::F => FV::F(f64::from_bits(self.bits)),
            T::B => FV::B(self.bits != 0),
        }
    }
    pub fn of(v: &Value) -> Option<F> {
        match *v {
            Value::Int(i) => Some(F::I(i)),
            Value::Float(x) => Some(F::F(x)),
            Value::Bool(b) => Some(F::B(b)),
            _ => None,
        }
    }
    #[inline]
    pub fn value(self) -> Value {
        match self.v() {
            FV::I(i) => Value::Int(i),
            FV::F(x) => Value::Float(x),
            FV::B(b) => Value::Bool(b),
        }
    }
    pub fn as_ref(self) -> ValueRef<'static> {
        match self.v() {
            FV::I(i) => ValueRef::Int(i),
            FV::F(x) => ValueRef::Float(x),
            FV::B(b) => ValueRef::Bool(b),
        }
    }
    #[inline]
    fn num(self) -> Option<f64> {
        match self.v() {
            FV::I(i) => Some(i as f64),
            FV::F(x) => Some(x),
            FV::B(_) => None,
        }
    }
}

/// Exact order of an integer and a float (same answers as `ops::cmp_int_float`, without
/// 128-bit arithmetic).
#[inline]
fn cmp_i64_f64(i: i64, x: f64) -> Option<Ordering> {
    if x.is_nan() {
        return None;
    }
    if x >= TWO63 {
        return Some(Ordering::Less);
    }
    if x < -TWO63 {
        return Some(Ordering::Greater);
    }
    let t = x as i64; // truncation toward zero; exact in this range
    match i.cmp(&t) {
        Ordering::Equal => (t as f64).partial_cmp(&x),
        o => Some(o),
    }
}

#[inline]
fn cmp(a: F, b: F) -> Option<Option<Ordering>> {
    Some(match (a.v(), b.v()) {
        (FV::I(x), FV::I(y)) => Some(x.cmp(&y)),
        (FV::F(x), FV::F(y)) => x.partial_cmp(&y),
        (FV::I(x), FV::F(y)) => cmp_i64_f64(x, y),
        (FV::F(x), FV::I(y)) => cmp_i64_f64(y, x).map(Ordering::reverse),
        (FV::B(x), FV::B(y)) => Some(x.cmp(&y)),
        _ => return None,
    })
}

#[inline]
pub(crate) fn binary(op: BinOp, a: F, b: F) -> Option<F> {
    use FV::{B, I};
    let (va, vb) = (a.v(), b.v());
    Some(match op {
        BinOp::Add | BinOp::Sub | BinOp::Mul => match (va, vb) {
            (I(x), I(y)) => F::I(match op {
                BinOp::Add => x.checked_add(y)?,
                BinOp::Sub => x.checked_sub(y)?,
                _ => x.checked_mul(y)?,
            }),
            _ => {
                let (x, y) = (a.num()?, b.num()?);
                F::F(match op {
                    BinOp::Add => x + y,
                    BinOp::Sub => x - y,
                    _ => x * y,
                })
            }
        },
        BinOp::FDiv => {
            let (x, y) = (a.num()?, b.num()?);
            if y == 0.0 {
                return None;
            }
            F::F(x / y)
        }
        BinOp::IDiv => match (va, vb) {
            (I(x), I(y)) => F::I(x.checked_div(y)?),
            _ => return None,
        },
        BinOp::Mod => match (va, vb) {
            (I(x), I(y)) => F::I(x.checked_rem(y)?),
            _ => {
                let (x, y) = (a.num()?, b.num()?);
                if y == 0.0 {
                    return None;
                }
                F::F(x % y)
            }
        },
        BinOp::Pow => match (va, vb) {
            (I(x), I(e)) if e >= 0 => F::I(x.checked_pow(u32::try_from(e).ok()?)?),
            _ => F::F(a.num()?.powf(b.num()?)),
        },
        BinOp::Shl | BinOp::Shr => match (va, vb) {
            (I(x), I(s)) if (0..=63).contains(&s) => {
                if op == BinOp::Shl {
                    F::I(i64::try_from(i128::from(x) << s).ok()?)
                } else {
                    F::I(x >> s)
                }
            }
            _ => return None,
        },
        BinOp::And | BinOp::Or | BinOp::Xor => match (va, vb) {
            (B(x), B(y)) => F::B(match op {
                BinOp::And => x && y,
                BinOp::Or => x || y,
                _ => x ^ y,
            }),
            (I(x), I(y)) => F::I(match op {
                BinOp::And => x & y,
                BinOp::Or => x | y,
                _ => x ^ y,
            }),
            _ => return None,
        },
        BinOp::Eq | BinOp::Ne => {
            let eq = match cmp(a, b) {
                Some(o) => o == Some(Ordering::Equal),
                None => false, // bool with number: unequal, never an error
            };
            F::B(eq == (op == BinOp::Eq))
        }
        BinOp::Lt => F::B(cmp(a, b)? == Some(Ordering::Less)),
        BinOp::Gt => F::B(cmp(a, b)? == Some(Ordering::Greater)),
        BinOp::Le => F::B(matches!(cmp(a, b)?, Some(Ordering::Less | Ordering::Equal))),
        BinOp::Ge => F::B(matches!(
            cmp(a, b)?,
            Some(Ordering::Greater | Ordering::Equal)
        )),
    })
}

#[inline]
fn truthy(c: F) -> bool {
    match c.v() {
        FV::B(b) => b,
        FV::I(i) => i != 0,
        FV::F(x) => x != 0.0,
    }
}

fn to_int(x: f64) -> Option<F> {
    if !x.is_finite() || !(-TWO63..TWO63).contains(&x) {
        return None;
    }
    Some(F::I(x as i64))
}

/// Two-argument calls without a slice (the common `min`/`max`/`power`).
#[inline]
fn call2(b: Builtin, x: F, y: F) -> Option<F> {
    match b {
        Builtin::Min | Builtin::Max => {
            let want = if b == Builtin::Min {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            let o = cmp(y, x)?;
            if matches!(x.v(), FV::F(v) if v.is_nan()) || matches!(y.v(), FV::F(v) if v.is_nan()) {
                return Some(F::F(f64::NAN));
            }
            Some(if o == Some(want) { y } else { x })
        }
        Builtin::Power => binary(BinOp::Pow, x, y),
        _ => call(b, &[x, y]),
    }
}

fn call(b: Builtin, a: &[F]) -> Option<F> {
    let x = || a[0].num();
    Some(match (b, a.len()) {
        (Builtin::Abs, 1) => match a[0].v() {
            FV::I(i) => F::I(i.checked_abs()?),
            FV::F(v) => F::F(v.abs()),
            FV::B(_) => return None,
        },
        (Builtin::Sqrt, 1) => {
            let v = x()?;
            if v < 0.0 {
                return None;
            }
            F::F(v.sqrt())
        }
        (Builtin::Sin, 1) => F::F(x()?.sin()),
        (Builtin::Cos, 1) => F::F(x()?.cos()),
        (Builtin::Tan, 1) => F::F(x()?.tan()),
        (Builtin::ArcTan, 1) => F::F(x()?.atan()),
        (Builtin::Exp, 1) => F::F(x()?.exp()),
        (Builtin::Ln, 1) => {
            let v = x()?;
            if v <= 0.0 {
                return None;
            }
            F::F(v.ln())
        }
        (Builtin::Power, 2) => binary(BinOp::Pow, a[0], a[1])?,
        (Builtin::Round | Builtin::Trunc, 1) => match a[0].v() {
            FV::I(i) => F::I(i),
            FV::F(v) => to_int(if b == Builtin::Round {
                v.round_ties_even()
            } else {
                v.trunc()
            })?,
            FV::B(_) => return None,
        },
        (Builtin::Int, 1) => match a[0].v() {
            FV::I(i) => F::I(i),
            FV::F(v) => to_int(v.trunc())?,
            FV::B(v) => F::I(i64::from(v)),
        },
        (Builtin::Frac, 1) => {
            let v = x()?;
            F::F(v - v.trunc())
        }
        (Builtin::Float, 1) => match a[0].v() {
            FV::B(v) => F::F(if v { 1.0 } else { 0.0 }),
            _ => F::F(a[0].num()?),
        },
        (Builtin::Min | Builtin::Max, n) if n >= 1 => {
            let want = if b == Builtin::Min {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            let mut best = 0;
            for i in 1..n {
                if cmp(a[i], a[best])? == Some(want) {
                    best = i;
                }
            }
            if a.iter().any(|v| matches!(v.v(), FV::F(x) if x.is_nan())) {
                return Some(F::F(f64::NAN));
            }
            a[best]
        }
        (Builtin::Clamp, 3) => {
            if cmp(a[1], a[2])? == Some(Ordering::Greater) {
                return None;
            }
            if cmp(a[0], a[1])? == Some(Ordering::Less) {
                a[1]
            } else if cmp(a[0], a[2])? == Some(Ordering::Greater) {
                a[2]
            } else {
                a[0]
            }
        }
        _ => return None,
    })
}

const INLINE: usize = 8;
/// Largest program evaluated straight-line by [`Program::fast_flat`].
pub(crate) const FLAT: usize = 16;
/// 2^63 as a float (exact).
const TWO63: f64 = (1u64 << 63) as f64;

impl Program {
    /// Whether the fast path can possibly apply (no strings, vectors or calls it lacks).
    /// Whether the fast path can possibly apply: no strings, vectors or calls it lacks, and
    /// a worst-case evaluation no longer than the step limit (so it needs no step counting;
    /// a loaded program may share subtrees, which this bound accounts for).
    ///
    /// `shared`: nodes may be reachable from several parents (a loaded program); a
    /// compiled program is a tree, where each node is evaluated at most once, so its
    /// worst case is its node count.
    pub(crate) fn numeric_candidate(&self, shared: bool) -> bool {
        let kinds_ok = self.nodes.iter().all(|n| match n {
            Node::Const(k) => F::of(&self.consts[*k as usize]).is_some(),
            Node::BinK(_, _, k) | Node::VarK(_, _, k) => F::of(&self.consts[*k as usize]).is_some(),
            Node::Call(b, _, n) => *n as usize <= INLINE && call_supported(*b),
            Node::User(..) | Node::List(..) => false,
            _ => true,
        });
        if !kinds_ok || self.nodes.is_empty() {
            return false;
        }
        if !shared {
            return self.nodes.len() as u64 <= self.max_steps;
        }
        // Worst-case evaluation size of each node's tree (on the stack for small programs).
        let mut small = [0u64; 32];
        let mut big = Vec::new();
        let size: &mut [u64] = if self.nodes.len() <= small.len() {
            &mut small[..self.nodes.len()]
        } else {
            big.resize(self.nodes.len(), 0);
            &mut big
        };
        for (i, n) in self.nodes.iter().enumerate() {
            let (done, _) = size.split_at(i);
            let sum = |ids: &[u32]| {
                ids.iter().fold(1u64, |t, &c| {
                    t.saturating_add(done.get(c as usize).copied().unwrap_or(u64::MAX))
                })
            };
            let args = |st: u32, k: u32| {
                self.args
                    .get(st as usize..(st as usize).saturating_add(k as usize))
                    .unwrap_or(&[])
            };
            let total = match *n {
                Node::Const(_) | Node::Var(_) | Node::VarK(..) => 1,
                Node::Unary(_, a) | Node::BinK(_, a, _) => sum(&[a]),
                Node::Bin(_, a, b) | Node::And(a, b) | Node::Or(a, b) => sum(&[a, b]),
                Node::If(c, a, b) => sum(&[c, a, b]),
                Node::Call(_, st, k) | Node::User(_, st, k) | Node::List(st, k) => sum(args(st, k)),
            };
            size[i] = total;
        }
        size.last().is_some_and(|&t| t <= self.max_steps)
    }

    #[inline]
    fn fvar<X: Vars + ?Sized>(&self, slot: u32, vars: &X) -> Option<F> {
        Some(
            match vars.get_scalar(slot as usize, self.names().get(slot as usize))? {
                Scalar::Int(i) => F::I(i),
                Scalar::Float(x) => F::F(x),
                Scalar::Bool(b) => F::B(b),
            },
        )
    }

    /// Leaves (constants, variables) inline; anything else recurses.
    #[inline(always)]
    fn child<X: Vars + ?Sized>(&self, i: u32, vars: &X) -> Option<F> {
        match self.nodes.get(i as usize)? {
            Node::Const(k) => F::of(&self.consts[*k as usize]),
            Node::Var(s) => self.fvar(*s, vars),
            _ => self.fast(i, vars),
        }
    }

    /// Straight-line evaluation of a small program: nodes in order (children come first)
    /// into a register file, no recursion. Both sides of `IfThen`/`and`/`or` are computed,
    /// so an untaken side that the fast path cannot do makes this give up even where the
    /// lazy evaluators would not; the caller then uses them.
    #[inline]
    pub(crate) fn fast_flat<X: Vars + ?Sized>(&self, vars: &X) -> Option<F> {
        match self.nodes.len() {
            0..=4 => self.fast_flat_n::<4, X>(vars),
            5..=8 => self.fast_flat_n::<8, X>(vars),
            _ => self.fast_flat_n::<FLAT, X>(vars),
        }
    }

    #[inline]
    fn fast_flat_n<const N: usize, X: Vars + ?Sized>(&self, vars: &X) -> Option<F> {
        let mut r = [F::I(0); N];
        let nodes = self.nodes.get(..N.min(self.nodes.len()))?;
        if nodes.len() != self.nodes.len() {
            return None;
        }
        for (i, node) in nodes.iter().enumerate() {
            let g = |j: u32| r.get(j as usize).copied();
            let v = match *node {
                Node::Const(k) => F::of(&self.consts[k as usize])?,
                Node::Var(s) => self.fvar(s, vars)?,
                Node::VarK(op, s, k) => {
                    binary(op, self.fvar(s, vars)?, F::of(&self.consts[k as usize])?)?
                }
                Node::BinK(op, a, k) => binary(op, g(a)?, F::of(&self.consts[k as usize])?)?,
                Node::Bin(op, a, b) => binary(op, g(a)?, g(b)?)?,
                Node::Unary(op, a) => {
                    let x = g(a)?;
                    match (op, x.v()) {
                        (UnOp::Neg, FV::I(v)) => F::I(v.checked_neg()?),
                        (UnOp::Neg, FV::F(v)) => F::F(-v),
                        (UnOp::Plus, FV::I(_) | FV::F(_)) => x,
                        (UnOp::Not, FV::B(v)) => F::B(!v),
                        (UnOp::Not, FV::I(v)) => F::I(!v),
                        _ => return None,
                    }
                }
                Node::And(a, b) | Node::Or(a, b) => {
                    let is_or = matches!(node, Node::Or(..));
                    let l = g(a)?;
                    match l.v() {
                        FV::B(x) if x == is_or => l,
                        _ => binary(if is_or { BinOp::Or } else { BinOp::And }, l, g(b)?)?,
                    }
                }
                Node::If(c, a, b) => {
                    if truthy(g(c)?) {
                        g(a)?
                    } else {
                        g(b)?
                    }
                }
                Node::Call(b, st, n) => {
                    let ids = self
                        .args
                        .get(st as usize..(st as usize).checked_add(n as usize)?)?;
                    match *ids {
                        [a] => call(b, &[g(a)?])?,
                        [a, c] => call2(b, g(a)?, g(c)?)?,
                        [a, c, d] => call(b, &[g(a)?, g(c)?, g(d)?])?,
                        _ => return None,
                    }
                }
                Node::User(..) | Node::List(..) => return None,
            };
            r[i] = v;
        }
        r.get(nodes.len().checked_sub(1)?).copied()
    }

    #[inline(never)]
    fn fast_call<X: Vars + ?Sized>(&self, b: Builtin, start: u32, n: u32, vars: &X) -> Option<F> {
        let ids = self
            .args
            .get(start as usize..(start as usize).checked_add(n as usize)?)?;
        match *ids {
            [a] => {
                let a = self.child(a, vars)?;
                call(b, &[a])
            }
            [a, c] => {
                let a = self.child(a, vars)?;
                let c = self.child(c, vars)?;
                call2(b, a, c)
            }
            [a, c, d] => {
                let a = self.child(a, vars)?;
                let c = self.child(c, vars)?;
                let d = self.child(d, vars)?;
                call(b, &[a, c, d])
            }
            _ => {
                let mut buf = [F::I(0); INLINE];
                if ids.len() > INLINE {
                    return None;
                }
                for (slot, &id) in buf.iter_mut().zip(ids) {
                    *slot = self.child(id, vars)?;
                }
                call(b, &buf[..ids.len()])
            }
        }
    }

    pub(crate) fn fast<X: Vars + ?Sized>(&self, i: u32, vars: &X) -> Option<F> {
        match self.nodes[i as usize] {
            Node::Const(k) => F::of(&self.consts[k as usize]),
            Node::Var(s) => self.fvar(s, vars),
            Node::VarK(op, s, k) => {
                binary(op, self.fvar(s, vars)?, F::of(&self.consts[k as usize])?)
            }
            Node::BinK(op, a, k) => {
                binary(op, self.child(a, vars)?, F::of(&self.consts[k as usize])?)
            }
            Node::Bin(op, a, b) => {
                let l = self.child(a, vars)?;
                binary(op, l, self.child(b, vars)?)
            }
            Node::Unary(op, a) => {
                let x = self.child(a, vars)?;
                match (op, x.v()) {
                    (UnOp::Neg, FV::I(v)) => Some(F::I(v.checked_neg()?)),
                    (UnOp::Neg, FV::F(v)) => Some(F::F(-v)),
                    (UnOp::Plus, FV::I(_) | FV::F(_)) => Some(x),
                    (UnOp::Not, FV::B(v)) => Some(F::B(!v)),
                    (UnOp::Not, FV::I(v)) => Some(F::I(!v)),
                    _ => None,
                }
            }
            Node::And(a, b) | Node::Or(a, b) => {
                let is_or = matches!(self.nodes[i as usize], Node::Or(..));
                let l = self.child(a, vars)?;
                if let FV::B(x) = l.v() {
                    if x == is_or {
                        return Some(l);
                    }
                }
                let r = self.child(b, vars)?;
                binary(if is_or { BinOp::Or } else { BinOp::And }, l, r)
            }
            Node::If(c, a, b) => {
                let c = truthy(self.child(c, vars)?);
                self.child(if c { a } else { b }, vars)
            }
            Node::Call(b, start, n) => self.fast_call(b, start, n, vars),
            Node::User(..) | Node::List(..) => None,
        }
    }
}

fn call_supported(b: Builtin) -> bool {
    matches!(
        b,
        Builtin::Abs
            | Builtin::Sqrt
            | Builtin::Sin
            | Builtin::Cos
            | Builtin::Tan
            | Builtin::ArcTan
            | Builtin::Exp
            | Builtin::Ln
            | Builtin::Power
            | Builtin::Round
            | Builtin::Trunc
            | Builtin::Int
            | Builtin::Frac
            | Builtin::Float
            | Builtin::Min
            | Builtin::Max
            | Builtin::Clamp
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::cmp_int_float;

    #[test]
    fn int_float_order_matches_the_general_one() {
        let ints = [
            i64::MIN,
            i64::MIN + 1,
            -(1 << 53) - 1,
            -3,
            -2,
            0,
            2,
            3,
            (1 << 53) + 1,
            i64::MAX,
        ];
        let floats = [
            f64::NEG_INFINITY,
            -9.3e18,
            -TWO63,
            -2.5,
            -2.0,
            -0.0,
            0.5,
            2.0,
            2.5,
            9007199254740992.0,
            TWO63,
            1e300,
            f64::INFINITY,
            f64::NAN,
        ];
        for i in ints {
            for x in floats {
                assert_eq!(
                    cmp_i64_f64(i, x),
                    cmp_int_float(i128::from(i), x),
                    "{i} vs {x}"
                );
            }
        }
    }
}
