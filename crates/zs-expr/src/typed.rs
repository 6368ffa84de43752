//! The tag-free numeric form of a compiled program.
//!
//! When type inference over the compiled nodes proves that every value is a number or a
//! bool (with variables guarded at evaluation time), the program is also translated into
//! a short register bytecode over plain `f64`s: no type tag is carried or tested per node.
//! Each register's *static* type ([`Ty`]) says what the general evaluator would hold there:
//!
//! - `F`: certainly a float; `B`: certainly a bool (stored as 0.0 / 1.0);
//! - `I`: certainly an integer; `N`: an integer or a float, not known before evaluation.
//!
//! Integers are carried as `f64`, which is exact below 2^53 in magnitude. Variables are
//! admitted only as floats or as integers below that bound (otherwise the form gives up),
//! and every operation whose operands may both be integers checks that its result stays
//! below the bound (otherwise it gives up). Under that invariant, integer `+ - *`, `mod`,
//! negation, `abs`, comparisons, `min`/`max`/`clamp` give exactly the value the general
//! evaluator computes with `i64`s, and mixed integer/float operations are float operations
//! in both. Operations whose integer and float results differ (`div`, `^` between
//! possible integers, shifts, bitwise `and/or/xor/not` on integers) are not translated.
//!
//! Like the tagged fast path, the form runs nothing with side effects and gives up (`None`)
//! instead of producing an error (division by zero, `sqrt` of a negative, ...); the caller
//! then runs the next evaluator, which produces the result or the error. Both sides of
//! `IfThen`, `and`, `or` are computed, which is harmless for the same reason.

use crate::builtins::Builtin;
use crate::parser::{BinOp, UnOp};
use crate::program::Node;
use crate::resolve::Names;
use crate::value::{Scalar, Value, Vars};

/// 2^53: integers strictly below this magnitude are exact in an `f64`.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// Largest number of registers (variables and instructions) of a translated program.
const MAX_REGS: usize = 64;

/// The static type of a register (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    F,
    I,
    N,
    B,
}

impl Ty {
    fn numeric(self) -> bool {
        self != Ty::B
    }
    /// Whether the value may be an integer (so integer arithmetic may apply).
    fn maybe_int(self) -> bool {
        matches!(self, Ty::I | Ty::N)
    }
    /// The type of a value that is one of two (a branch, `min`, `max`).
    fn join(self, o: Ty) -> Option<Ty> {
        Some(match (self, o) {
            (a, b) if a == b => a,
            (Ty::B, _) | (_, Ty::B) => return None,
            _ => Ty::N,
        })
    }
    /// The type of `+ - *` and `mod` results.
    fn arith(self, o: Ty) -> Ty {
        match (self, o) {
            (Ty::F, _) | (_, Ty::F) => Ty::F,
            (Ty::I, Ty::I) => Ty::I,
            _ => Ty::N,
        }
    }
}

/// One instruction; instruction `i` writes register `i`, operands are registers written
/// before. The code starts with one `Load` per variable the program reads (run as a
/// separate loop: loaded and checked before anything is computed). `…X` variants check
/// that the result stays exact (< 2^53).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Op {
    Load(u32),
    K(f64),
    Add(u32, u32),
    AddX(u32, u32),
    Sub(u32, u32),
    SubX(u32, u32),
    Mul(u32, u32),
    MulX(u32, u32),
    AddK(u32, f64),
    AddKX(u32, f64),
    SubK(u32, f64),
    SubKX(u32, f64),
    MulK(u32, f64),
    MulKX(u32, f64),
    Div(u32, u32),
    DivK(u32, f64),
    Rem(u32, u32),
    RemX(u32, u32),
    Pow(u32, u32),
    Lt(u32, u32),
    Gt(u32, u32),
    Le(u32, u32),
    Ge(u32, u32),
    Eq(u32, u32),
    Ne(u32, u32),
    LtK(u32, f64),
    GtK(u32, f64),
    LeK(u32, f64),
    GeK(u32, f64),
    EqK(u32, f64),
    NeK(u32, f64),
    And(u32, u32),
    Or(u32, u32),
    Xor(u32, u32),
    Min(u32, u32),
    Max(u32, u32),
    Neg(u32),
    NegX(u32),
    Not(u32),
    Abs(u32),
    Sqrt(u32),
    Sin(u32),
    Cos(u32),
    Tan(u32),
    Atan(u32),
    Exp(u32),
    Ln(u32),
    Frac(u32),
    Round(u32),
    Trunc(u32),
    Sel(u32, u32, u32),
    Clamp(u32, u32, u32),
}

/// A translated program: its code and the static type of its result. Empty code means
/// the program is not translatable.
#[derive(Debug, Clone, Default)]
pub(crate) struct Typed {
    /// Number of leading `Load`s in `code`.
    loads: usize,
    code: Vec<Op>,
    root: u32,
    ty: Option<Ty>,
}

/// Check for results that may be integers: below 2^53 in magnitude (so exact), and not
/// a negative zero (an integer zero is +0.0 in a register; a float result of -0.0 here
/// could not be told from an integer 0, so that rare case gives up).
#[inline(always)]
fn x(v: f64) -> Option<f64> {
    if v.abs() < EXACT && v.to_bits() != (-0.0f64).to_bits() {
        Some(v)
    } else {
        None
    }
}

#[inline(always)]
fn b(c: bool) -> f64 {
    if c {
        1.0
    } else {
        0.0
    }
}

#[inline(always)]
fn min2(a: f64, c: f64) -> f64 {
    if a.is_nan() || c.is_nan() {
        f64::NAN
    } else if c < a {
        c
    } else {
        a
    }
}

#[inline(always)]
fn max2(a: f64, c: f64) -> f64 {
    if a.is_nan() || c.is_nan() {
        f64::NAN
    } else if c > a {
        c
    } else {
        a
    }
}

/// Rounding to an integer (`round`, `trunc`, `int`): the result must be exact.
#[inline(always)]
fn to_int(v: f64) -> Option<f64> {
    // NaN fails the comparison, so it gives up like the general evaluator's error; adding
    // +0.0 turns a -0.0 (`round(-0.2)`) into the integer 0's encoding.
    x(v + 0.0)
}

struct Tr<'p> {
    nodes: &'p [Node],
    args: &'p [u32],
    consts: &'p [Value],
    code: Vec<Op>,
    /// Per node: (register, type) of the nodes translated so far (registers are < 64).
    at: [(u8, Ty); MAX_REGS],
    /// Number of leading `Load`s in `code`.
    loads: usize,
}

impl Tr<'_> {
    fn push(&mut self, op: Op) -> Option<u32> {
        if self.code.len() >= MAX_REGS {
            return None;
        }
        self.code.push(op);
        Some((self.code.len() - 1) as u32)
    }

    fn var(&self, slot: u32) -> Option<u32> {
        self.code[..self.loads]
            .iter()
            .position(|op| matches!(*op, Op::Load(s) if s == slot))
            .map(|r| r as u32)
    }

    fn konst(&self, k: u32) -> Option<(f64, Ty)> {
        Some(match *self.consts.get(k as usize)? {
            Value::Int(i) if i.unsigned_abs() < 1 << 53 => (i as f64, Ty::I),
            Value::Float(v) => (v, Ty::F),
            Value::Bool(c) => (b(c), Ty::B),
            _ => return None,
        })
    }

    fn node(&self, id: u32, me: usize) -> Option<(u32, Ty)> {
        if id as usize >= me {
            return None;
        }
        self.at.get(id as usize).map(|&(r, t)| (u32::from(r), t))
    }

    /// `l op r` where `r` is a register or a constant.
    fn bin(&mut self, op: BinOp, l: (u32, Ty), r: Rhs) -> Option<(u32, Ty)> {
        let (a, ta) = l;
        let tb = match r {
            Rhs::R(_, t) | Rhs::K(_, t) => t,
        };
        let reg = |s: &mut Self, t: Rhs| -> Option<u32> {
            match t {
                Rhs::R(r, _) => Some(r),
                Rhs::K(v, _) => s.push(Op::K(v)),
            }
        };
        let num = ta.numeric() && tb.numeric();
        let xi = ta.maybe_int() && tb.maybe_int();
        let (op, ty) = match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul if num => {
                let o = match (op, r, xi) {
                    (BinOp::Add, Rhs::K(k, _), false) => Op::AddK(a, k),
                    (BinOp::Add, Rhs::K(k, _), true) => Op::AddKX(a, k),
                    (BinOp::Sub, Rhs::K(k, _), false) => Op::SubK(a, k),
                    (BinOp::Sub, Rhs::K(k, _), true) => Op::SubKX(a, k),
                    (BinOp::Mul, Rhs::K(k, _), false) => Op::MulK(a, k),
                    (BinOp::Mul, Rhs::K(k, _), true) => Op::MulKX(a, k),
                    (BinOp::Add, Rhs::R(c, _), false) => Op::Add(a, c),
                    (BinOp::Add, Rhs::R(c, _), true) => Op::AddX(a, c),
                    (BinOp::Sub, Rhs::R(c, _), false) => Op::Sub(a, c),
                    (BinOp::Sub, Rhs::R(c, _), true) => Op::SubX(a, c),
                    (_, Rhs::R(c, _), false) => Op::Mul(a, c),
                    (_, Rhs::R(c, _), true) => Op::MulX(a, c),
                    _ => return None,
                };
                (o, ta.arith(tb))
            }
            BinOp::FDiv if num => match r {
                Rhs::K(k, _) => (Op::DivK(a, k), Ty::F),
                Rhs::R(c, _) => (Op::Div(a, c), Ty::F),
            },
            BinOp::Mod if num => {
                let c = reg(self, r)?;
                (
                    if xi { Op::RemX(a, c) } else { Op::Rem(a, c) },
                    ta.arith(tb),
                )
            }
            // Integer `^` is checked integer power, float `^` is `powf`: only when one
            // side is certainly a float is the operation known.
            BinOp::Pow if num && !xi => (Op::Pow(a, reg(self, r)?), Ty::F),
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge
                if num || (ta == Ty::B && tb == Ty::B) =>
            {
                let o = match (op, r) {
                    (BinOp::Eq, Rhs::K(k, _)) => Op::EqK(a, k),
                    (BinOp::Ne, Rhs::K(k, _)) => Op::NeK(a, k),
                    (BinOp::Lt, Rhs::K(k, _)) => Op::LtK(a, k),
                    (BinOp::Gt, Rhs::K(k, _)) => Op::GtK(a, k),
                    (BinOp::Le, Rhs::K(k, _)) => Op::LeK(a, k),
                    (BinOp::Ge, Rhs::K(k, _)) => Op::GeK(a, k),
                    (BinOp::Eq, Rhs::R(c, _)) => Op::Eq(a, c),
                    (BinOp::Ne, Rhs::R(c, _)) => Op::Ne(a, c),
                    (BinOp::Lt, Rhs::R(c, _)) => Op::Lt(a, c),
                    (BinOp::Gt, Rhs::R(c, _)) => Op::Gt(a, c),
                    (BinOp::Le, Rhs::R(c, _)) => Op::Le(a, c),
                    (_, Rhs::R(c, _)) => Op::Ge(a, c),
                    _ => return None,
                };
                (o, Ty::B)
            }
            BinOp::And | BinOp::Or | BinOp::Xor if ta == Ty::B && tb == Ty::B => {
                let c = reg(self, r)?;
                let o = match op {
                    BinOp::And => Op::And(a, c),
                    BinOp::Or => Op::Or(a, c),
                    _ => Op::Xor(a, c),
                };
                (o, Ty::B)
            }
            _ => return None,
        };
        Some((self.push(op)?, ty))
    }

    fn call(&mut self, f: Builtin, ids: &[u32], me: usize) -> Option<(u32, Ty)> {
        let mut a = [(0u32, Ty::B); 3];
        if ids.is_empty() {
            return None;
        }
        let args_ok = match f {
            Builtin::Min | Builtin::Max => true,
            _ => ids.len() <= 3,
        };
        if !args_ok {
            return None;
        }
        for (slot, &id) in a.iter_mut().zip(ids) {
            *slot = self.node(id, me)?;
        }
        let (r, t) = a[0];
        let unary = |op: fn(u32) -> Op, ty: Ty| -> Option<(Op, Ty)> {
            (ids.len() == 1 && t.numeric()).then_some((op(r), ty))
        };
        let (op, ty) = match f {
            Builtin::Abs => unary(Op::Abs, t)?,
            Builtin::Sqrt => unary(Op::Sqrt, Ty::F)?,
            Builtin::Sin => unary(Op::Sin, Ty::F)?,
            Builtin::Cos => unary(Op::Cos, Ty::F)?,
            Builtin::Tan => unary(Op::Tan, Ty::F)?,
            Builtin::ArcTan => unary(Op::Atan, Ty::F)?,
            Builtin::Exp => unary(Op::Exp, Ty::F)?,
            Builtin::Ln => unary(Op::Ln, Ty::F)?,
            Builtin::Frac => unary(Op::Frac, Ty::F)?,
            Builtin::Round if t == Ty::I => return (ids.len() == 1).then_some((r, Ty::I)),
            Builtin::Round => unary(Op::Round, Ty::I)?,
            Builtin::Trunc | Builtin::Int if t == Ty::I || (f == Builtin::Int && t == Ty::B) => {
                return (ids.len() == 1).then_some((r, Ty::I))
            }
            Builtin::Trunc | Builtin::Int => unary(Op::Trunc, Ty::I)?,
            // `float(x)`: the number itself, a bool as 0.0 / 1.0 (already its encoding).
            Builtin::Float if ids.len() == 1 => return Some((r, Ty::F)),
            Builtin::Power if ids.len() == 2 => {
                return self.bin(BinOp::Pow, a[0], Rhs::R(a[1].0, a[1].1))
            }
            Builtin::Min | Builtin::Max => {
                if !t.numeric() {
                    return None;
                }
                let (mut acc, mut ty) = a[0];
                for &id in &ids[1..] {
                    let (c, tc) = self.node(id, me)?;
                    ty = ty.join(tc)?;
                    acc = self.push(if f == Builtin::Min {
                        Op::Min(acc, c)
                    } else {
                        Op::Max(acc, c)
                    })?;
                }
                return Some((acc, ty));
            }
            Builtin::Clamp if ids.len() == 3 => {
                let ty = t.join(a[1].1)?.join(a[2].1)?;
                (Op::Clamp(r, a[1].0, a[2].0), ty)
            }
            _ => return None,
        };
        Some((self.push(op)?, ty))
    }

    fn translate(&mut self, me: usize) -> Option<(u32, Ty)> {
        Some(match self.nodes[me] {
            Node::Const(k) => {
                let (v, t) = self.konst(k)?;
                (self.push(Op::K(v))?, t)
            }
            Node::Var(s) => (self.var(s)?, Ty::N),
            Node::VarK(op, s, k) => {
                let v = self.var(s)?;
                let (kv, kt) = self.konst(k)?;
                self.bin(op, (v, Ty::N), Rhs::K(kv, kt))?
            }
            Node::BinK(op, a, k) => {
                let l = self.node(a, me)?;
                let (kv, kt) = self.konst(k)?;
                self.bin(op, l, Rhs::K(kv, kt))?
            }
            Node::Bin(op, a, c) => {
                let l = self.node(a, me)?;
                let (r, t) = self.node(c, me)?;
                self.bin(op, l, Rhs::R(r, t))?
            }
            Node::And(a, c) | Node::Or(a, c) => {
                let op = if matches!(self.nodes[me], Node::And(..)) {
                    BinOp::And
                } else {
                    BinOp::Or
                };
                let l = self.node(a, me)?;
                let (r, t) = self.node(c, me)?;
                self.bin(op, l, Rhs::R(r, t))?
            }
            Node::Unary(op, a) => {
                let (r, t) = self.node(a, me)?;
                match (op, t) {
                    (UnOp::Plus, Ty::F | Ty::I | Ty::N) => (r, t),
                    (UnOp::Neg, Ty::F) => (self.push(Op::Neg(r))?, t),
                    (UnOp::Neg, Ty::I | Ty::N) => (self.push(Op::NegX(r))?, t),
                    (UnOp::Not, Ty::B) => (self.push(Op::Not(r))?, Ty::B),
                    _ => return None,
                }
            }
            Node::If(c, a, e) => {
                let (rc, _) = self.node(c, me)?;
                let (ra, ta) = self.node(a, me)?;
                let (re, te) = self.node(e, me)?;
                (self.push(Op::Sel(rc, ra, re))?, ta.join(te)?)
            }
            Node::Call(f, st, n) => {
                let args = self.args;
                let ids = args.get(st as usize..(st as usize).checked_add(n as usize)?)?;
                self.call(f, ids, me)?
            }
            Node::User(..) | Node::List(..) => return None,
        })
    }
}

#[derive(Clone, Copy)]
enum Rhs {
    R(u32, Ty),
    K(f64, Ty),
}

impl Typed {
    /// Empties the form (keeping its memory).
    pub(crate) fn clear(&mut self) {
        self.code.clear();
        self.loads = 0;
        self.root = 0;
        self.ty = None;
    }

    /// Translates `nodes` (children first, root last) into this form, reusing its
    /// memory; the form is empty (cleared) if anything is not translatable. The caller
    /// has already checked the evaluation-size bound.
    pub(crate) fn translate_into(&mut self, nodes: &[Node], args: &[u32], consts: &[Value]) {
        let mut code = std::mem::take(&mut self.code);
        code.clear();
        self.clear();
        if nodes.len() > MAX_REGS || nodes.is_empty() {
            self.code = code;
            return;
        }
        code.reserve(nodes.len() + 1);
        for n in nodes {
            if let Node::Var(s) | Node::VarK(_, s, _) = *n {
                if !code.iter().any(|op| matches!(*op, Op::Load(t) if t == s)) {
                    code.push(Op::Load(s));
                }
            }
        }
        if code.len() >= MAX_REGS {
            code.clear();
            self.code = code;
            return;
        }
        let mut tr = Tr {
            nodes,
            args,
            consts,
            loads: code.len(),
            code,
            at: [(0, Ty::B); MAX_REGS],
        };
        for me in 0..nodes.len() {
            match tr
                .translate(me)
                .and_then(|(r, t)| Some((u8::try_from(r).ok()?, t)))
            {
                Some(rt) => tr.at[me] = rt,
                None => {
                    tr.code.clear();
                    self.code = tr.code;
                    return;
                }
            }
        }
        match tr.at.get(nodes.len() - 1) {
            Some(&(root, ty)) => {
                self.root = u32::from(root);
                self.loads = tr.loads;
                self.code = tr.code;
                self.ty = Some(ty);
            }
            None => {
                tr.code.clear();
                self.code = tr.code;
            }
        }
    }

    /// The static type of the result, if the program was translated.
    #[inline(always)]
    pub(crate) fn ty(&self) -> Option<Ty> {
        self.ty
    }

    /// Runs the code; `None` means "use the next evaluator".
    #[inline(never)]
    pub(crate) fn run<X: Vars + ?Sized>(&self, vars: &X, names: Names<'_>) -> Option<f64> {
        match self.code.len() {
            // An untranslated program has no code: nothing to run.
            0 => None,
            1..=4 => self.run_n::<4, X>(vars, names),
            5..=8 => self.run_n::<8, X>(vars, names),
            9..=16 => self.run_n::<16, X>(vars, names),
            _ => self.run_n::<MAX_REGS, X>(vars, names),
        }
    }

    #[inline]
    fn run_n<const N: usize, X: Vars + ?Sized>(&self, vars: &X, names: Names<'_>) -> Option<f64> {
        // N is a power of two at least the number of registers, and operands refer to
        // registers written before, so masking an index never changes it; it only spares
        // bounds checks.
        let mut r = [0.0f64; N];
        let m = |i: u32| i as usize & (N - 1);
        let (loads, code) = self.code.split_at(self.loads.min(self.code.len()));
        for (i, op) in loads.iter().enumerate() {
            let Op::Load(s) = *op else { return None };
            r[i & (N - 1)] = match vars.get_scalar(s as usize, names.get(s as usize))? {
                Scalar::Float(v) => v,
                Scalar::Int(v) if v.unsigned_abs() < 1 << 53 => v as f64,
                Scalar::Int(_) | Scalar::Bool(_) => return None,
            };
        }
        let base = loads.len();
        for (i, op) in code.iter().enumerate() {
            let v = match *op {
                Op::Load(_) => return None,
                Op::K(v) => v,
                Op::Add(a, c) => r[m(a)] + r[m(c)],
                Op::AddX(a, c) => x(r[m(a)] + r[m(c)])?,
                Op::Sub(a, c) => r[m(a)] - r[m(c)],
                Op::SubX(a, c) => x(r[m(a)] - r[m(c)])?,
                Op::Mul(a, c) => r[m(a)] * r[m(c)],
                Op::MulX(a, c) => x(r[m(a)] * r[m(c)])?,
                Op::AddK(a, k) => r[m(a)] + k,
                Op::AddKX(a, k) => x(r[m(a)] + k)?,
                Op::SubK(a, k) => r[m(a)] - k,
                Op::SubKX(a, k) => x(r[m(a)] - k)?,
                Op::MulK(a, k) => r[m(a)] * k,
                Op::MulKX(a, k) => x(r[m(a)] * k)?,
                Op::Div(a, c) => {
                    let d = r[m(c)];
                    if d == 0.0 {
                        return None;
                    }
                    r[m(a)] / d
                }
                Op::DivK(a, k) => {
                    if k == 0.0 {
                        return None;
                    }
                    r[m(a)] / k
                }
                Op::Rem(a, c) => {
                    let d = r[m(c)];
                    if d == 0.0 {
                        return None;
                    }
                    r[m(a)] % d
                }
                Op::RemX(a, c) => {
                    let d = r[m(c)];
                    if d == 0.0 {
                        return None;
                    }
                    x(r[m(a)] % d)?
                }
                Op::Pow(a, c) => r[m(a)].powf(r[m(c)]),
                Op::Lt(a, c) => b(r[m(a)] < r[m(c)]),
                Op::Gt(a, c) => b(r[m(a)] > r[m(c)]),
                Op::Le(a, c) => b(r[m(a)] <= r[m(c)]),
                Op::Ge(a, c) => b(r[m(a)] >= r[m(c)]),
                Op::Eq(a, c) => b(r[m(a)] == r[m(c)]),
                Op::Ne(a, c) => b(r[m(a)] != r[m(c)]),
                Op::LtK(a, k) => b(r[m(a)] < k),
                Op::GtK(a, k) => b(r[m(a)] > k),
                Op::LeK(a, k) => b(r[m(a)] <= k),
                Op::GeK(a, k) => b(r[m(a)] >= k),
                Op::EqK(a, k) => b(r[m(a)] == k),
                Op::NeK(a, k) => b(r[m(a)] != k),
                Op::And(a, c) => b(r[m(a)] != 0.0 && r[m(c)] != 0.0),
                Op::Or(a, c) => b(r[m(a)] != 0.0 || r[m(c)] != 0.0),
                Op::Xor(a, c) => b((r[m(a)] != 0.0) != (r[m(c)] != 0.0)),
                Op::Min(a, c) => min2(r[m(a)], r[m(c)]),
                Op::Max(a, c) => max2(r[m(a)], r[m(c)]),
                Op::Neg(a) => -r[m(a)],
                Op::NegX(a) => x(-r[m(a)])?,
                Op::Not(a) => b(r[m(a)] == 0.0),
                Op::Abs(a) => r[m(a)].abs(),
                Op::Sqrt(a) => {
                    let v = r[m(a)];
                    if v < 0.0 {
                        return None;
                    }
                    v.sqrt()
                }
                Op::Sin(a) => r[m(a)].sin(),
                Op::Cos(a) => r[m(a)].cos(),
                Op::Tan(a) => r[m(a)].tan(),
                Op::Atan(a) => r[m(a)].atan(),
                Op::Exp(a) => r[m(a)].exp(),
                Op::Ln(a) => {
                    let v = r[m(a)];
                    if v <= 0.0 {
                        return None;
                    }
                    v.ln()
                }
                Op::Frac(a) => {
                    let v = r[m(a)];
                    v - v.trunc()
                }
                Op::Round(a) => to_int(r[m(a)].round_ties_even())?,
                Op::Trunc(a) => to_int(r[m(a)].trunc())?,
                Op::Sel(c, a, e) => {
                    if r[m(c)] != 0.0 {
                        r[m(a)]
                    } else {
                        r[m(e)]
                    }
                }
                Op::Clamp(a, lo, hi) => {
                    let (v, lo, hi) = (r[m(a)], r[m(lo)], r[m(hi)]);
                    if lo > hi {
                        return None;
                    }
                    if v < lo {
                        lo
                    } else if v > hi {
                        hi
                    } else {
                        v
                    }
                }
            };
            r[(base + i) & (N - 1)] = v;
        }
        Some(r[m(self.root)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, Program, Value};

    /// The same program with the tag-free form (and the tagged fast path) switched off.
    fn general(p: &Program) -> Program {
        let mut q = p.clone();
        q.typed = Typed::default();
        q.numeric = false;
        q
    }

    fn same(a: &Result<Value, crate::Error>, b: &Result<Value, crate::Error>) -> bool {
        match (a, b) {
            (Ok(Value::Float(x)), Ok(Value::Float(y))) => {
                x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
            }
            (Ok(x), Ok(y)) => x == y,
            (Err(x), Err(y)) => x.to_string() == y.to_string(),
            _ => false,
        }
    }

    fn same_f64(a: &Result<f64, crate::Error>, b: &Result<f64, crate::Error>) -> bool {
        match (a, b) {
            (Ok(x), Ok(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            (Err(x), Err(y)) => x.to_string() == y.to_string(),
            _ => false,
        }
    }

    #[test]
    fn bench_shapes_are_translated() {
        let e = Engine::new();
        for (text, ty) in [
            ("x * 2 + 1", Ty::N),
            ("max(abs(x - 10), min(x, 3)) * 2", Ty::N),
            ("x / 2 + sqrt(x)", Ty::F),
            ("x > 3 and not (x = 5)", Ty::B),
            ("round(x * 100) / 100", Ty::F),
            ("IfThen(x > 0, 1, 2) * 3", Ty::I),
        ] {
            let p = e.compile(text).unwrap();
            assert_eq!(p.typed.ty(), Some(ty), "{text}");
        }
        for text in ["x div 2", "x ^ 2", "x shl 1", "x and 1", "not x", "x + 'a'"] {
            let p = e.compile(text).unwrap();
            assert_eq!(p.typed.ty(), None, "{text}");
        }
    }

    #[test]
    fn negative_zero_and_exactness_edges() {
        let e = Engine::new();
        let cases: &[(&str, Value)] = &[
            ("x * -1", Value::Int(0)),
            ("x * -1", Value::Float(0.0)),
            ("x * 1", Value::Float(-0.0)),
            ("-x", Value::Int(0)),
            ("-x", Value::Float(0.0)),
            ("x mod 2", Value::Int(-4)),
            ("x mod 2", Value::Float(-4.0)),
            ("round(x)", Value::Float(-0.2)),
            ("trunc(x) / -1", Value::Float(-0.5)),
            ("x + 1", Value::Int((1 << 53) - 2)),
            ("x + 1", Value::Int((1 << 53) - 1)),
            ("x * 3", Value::Int(1 << 52)),
            ("x + 1", Value::Int(1 << 53)),
            ("x - 1", Value::Float(f64::NAN)),
            ("min(x, 0) / -1", Value::Int(0)),
            ("x + 0.0", Value::Int(i64::MIN)),
        ];
        for (text, x) in cases {
            let p = e.compile(text).unwrap();
            let q = general(&p);
            let v = [x.clone()];
            assert!(same(&p.eval(&v[..]), &q.eval(&v[..])), "{text} {x:?}");
            assert!(
                same_f64(&p.eval_f64(&v[..]), &q.eval_f64(&v[..])),
                "{text} {x:?}: {:?} vs {:?}",
                p.eval_f64(&v[..]),
                q.eval_f64(&v[..])
            );
        }
    }

    /// A small deterministic generator of numeric expressions over the translatable
    /// operations; every program is checked against the general evaluator on edge values.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
        fn expr(&mut self, depth: u32) -> String {
            const LEAVES: &[&str] = &[
                "x",
                "x",
                "y",
                "y",
                "flag",
                "0",
                "1",
                "-3",
                "2",
                "0.5",
                "-0.0",
                "2.5",
                "1e18",
                "9007199254740991",
                "4503599627370497",
                "true",
            ];
            const BIN: &[&str] = &[
                "+", "-", "*", "/", "mod", "^", "<", ">", "<=", ">=", "=", "<>", "and", "or", "xor",
            ];
            const F1: &[&str] = &[
                "abs", "sqrt", "sin", "exp", "ln", "frac", "round", "trunc", "int", "float", "-",
                "not ",
            ];
            const F2: &[&str] = &["min", "max", "power"];
            const F3: &[&str] = &["min", "max", "clamp", "IfThen"];
            if depth == 0 || self.next(4) == 0 {
                return LEAVES[self.next(LEAVES.len())].to_string();
            }
            match self.next(4) {
                0 | 1 => {
                    let (a, op, b) = (
                        self.expr(depth - 1),
                        BIN[self.next(BIN.len())],
                        self.expr(depth - 1),
                    );
                    format!("({a} {op} {b})")
                }
                2 => {
                    let f = F1[self.next(F1.len())];
                    let a = self.expr(depth - 1);
                    format!("{f}({a})")
                }
                _ => {
                    if self.next(2) == 0 {
                        let f = F2[self.next(F2.len())];
                        let (a, b) = (self.expr(depth - 1), self.expr(depth - 1));
                        format!("{f}({a}, {b})")
                    } else {
                        let f = F3[self.next(F3.len())];
                        let (a, b, c) = (
                            self.expr(depth - 1),
                            self.expr(depth - 1),
                            self.expr(depth - 1),
                        );
                        format!("{f}({a}, {b}, {c})")
                    }
                }
            }
        }
    }

    #[test]
    fn agrees_with_the_general_evaluator() {
        let e = Engine::new();
        let xs = [
            Value::Int(0),
            Value::Int(3),
            Value::Int(-7),
            Value::Int((1 << 53) - 1),
            Value::Int(i64::MIN),
            Value::Float(3.5),
            Value::Float(-0.0),
            Value::Float(f64::NAN),
            Value::Float(f64::INFINITY),
            Value::Float(1e300),
        ];
        let ys = [
            Value::Float(0.0),
            Value::Float(-2.5),
            Value::Int(2),
            Value::Float(9007199254740992.0),
        ];
        let mut g = Gen(7);
        let (mut total, mut translated) = (0, 0);
        for _ in 0..3000 {
            let text = g.expr(4);
            let Ok(p) = e.compile(&text) else { continue };
            total += 1;
            if p.typed.ty().is_none() {
                continue;
            }
            translated += 1;
            let q = general(&p);
            for x in &xs {
                for y in &ys {
                    for flag in [true, false] {
                        let v: Vec<Value> = p
                            .var_names()
                            .iter()
                            .map(|n| match n.as_str() {
                                "x" => x.clone(),
                                "y" => y.clone(),
                                _ => Value::Bool(flag),
                            })
                            .collect();
                        let v = &v[..];
                        assert!(
                            same(&p.eval(v), &q.eval(v)),
                            "{text} {v:?}: {:?} vs {:?}",
                            p.eval(v),
                            q.eval(v)
                        );
                        assert!(
                            same_f64(&p.eval_f64(v), &q.eval_f64(v)),
                            "{text} {v:?}: {:?} vs {:?}",
                            p.eval_f64(v),
                            q.eval_f64(v)
                        );
                        assert_eq!(
                            p.eval_bool(v).map_err(|e| e.to_string()),
                            q.eval_bool(v).map_err(|e| e.to_string()),
                            "{text} {v:?}"
                        );
                    }
                }
            }
        }
        assert!(translated * 4 > total, "{translated} of {total} translated");
    }
}
