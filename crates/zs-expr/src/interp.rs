//! The reference tree-walking interpreter over the resolved IR (no folding, no
//! specialisation). The compiled evaluator must agree with it; constant folding uses it.

use std::sync::Arc;

use crate::builtins::{self, Builtin};
use crate::error::{Error, OpErr, Pos};
use crate::ops;
use crate::parser::BinOp;
use crate::resolve::{IrKind, IrTree, Names};
use crate::value::{Args, Vars, V};
use crate::UserFn;

pub(crate) struct Ctx<'a, X: Vars + ?Sized> {
    pub vars: &'a X,
    pub names: Names<'a>,
    pub fns: &'a [Arc<UserFn>],
    pub src: &'a str,
    pub max_str: usize,
    pub max_steps: u64,
}

pub(crate) fn steps_error(src: &str, start: u32, end: u32, max: u64) -> Box<Error> {
    Box::new(Error::Limit {
        pos: Pos::of(src, start as usize, end as usize),
        message: format!("evaluation took more than {max} steps (Limits::max_steps)"),
    })
}

pub(crate) fn unbound(src: &str, start: u32, end: u32, name: &str) -> Box<Error> {
    Box::new(Error::UnknownName {
        pos: Pos::of(src, start as usize, end as usize),
        message: format!("variable `{name}` is not bound; pass it in the evaluation context"),
    })
}

pub(crate) fn call_user<'a>(
    f: &UserFn,
    args: &[V<'a>],
    pos: impl FnOnce() -> Pos,
) -> Result<V<'a>, Box<Error>> {
    if !f.arity.accepts(args.len()) {
        return Err(Box::new(Error::Type {
            pos: pos(),
            message: format!("{} takes {} arguments, got {}", f.name, f.arity, args.len()),
        }));
    }
    match (f.func)(&Args { items: args }) {
        Ok(v) => Ok(V::from_value(v)),
        Err(message) => Err(Box::new(Error::Function {
            pos: pos(),
            name: f.name.clone(),
            message,
        })),
    }
}

/// Evaluates node `id` of `tree`.
pub(crate) fn eval<'a, X: Vars + ?Sized>(
    tree: &'a IrTree,
    id: u32,
    cx: &Ctx<'a, X>,
    steps: &mut u64,
) -> Result<V<'a>, Box<Error>> {
    let ir = tree.node(id);
    if *steps == 0 {
        return Err(steps_error(cx.src, ir.start, ir.end, cx.max_steps));
    }
    *steps -= 1;
    let at = |e: OpErr| Box::new(e.at(Pos::of(cx.src, ir.start as usize, ir.end as usize)));
    match &ir.kind {
        IrKind::Const(v) => Ok(V::borrow(v)),
        IrKind::Var(slot) => {
            let name = cx.names.get(*slot as usize);
            match cx.vars.get(*slot as usize, name) {
                Some(r) => Ok(V::from_ref(r)),
                None => Err(unbound(cx.src, ir.start, ir.end, name)),
            }
        }
        IrKind::Unary(op, a) => ops::unary(*op, eval(tree, *a, cx, steps)?).map_err(at),
        IrKind::Binary(op, a, b) => {
            let l = eval(tree, *a, cx, steps)?;
            if matches!(op, BinOp::And | BinOp::Or) {
                if let V::Bool(x) = l {
                    if x == (*op == BinOp::Or) {
                        return Ok(V::Bool(x));
                    }
                }
            }
            let r = eval(tree, *b, cx, steps)?;
            ops::binary(*op, l, r, cx.max_str).map_err(at)
        }
        IrKind::Builtin(Builtin::IfThen, s, 3) => {
            let args = tree.list(*s, 3);
            let c = eval(tree, args[0], cx, steps)?;
            let c = ops::truthy(&c, "IfThen's condition").map_err(at)?;
            eval(tree, args[if c { 1 } else { 2 }], cx, steps)
        }
        IrKind::Builtin(b, s, n) => {
            let args = tree.list(*s, *n);
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(tree, *a, cx, steps)?);
            }
            builtins::call(*b, &mut vals, cx.max_str).map_err(at)
        }
        IrKind::User(id, s, n) => {
            let args = tree.list(*s, *n);
            let mut vals = Vec::with_capacity(args.len());
            for a in args {
                vals.push(eval(tree, *a, cx, steps)?);
            }
            let f = &cx.fns[*id as usize];
            call_user(f, &vals, || {
                Pos::of(cx.src, ir.start as usize, ir.end as usize)
            })
        }
        IrKind::List(s, n) => {
            let items = tree.list(*s, *n);
            let mut vals = Vec::with_capacity(items.len());
            for a in items {
                vals.push(eval(tree, *a, cx, steps)?);
            }
            Ok(builtins::make_list(vals))
        }
    }
}
