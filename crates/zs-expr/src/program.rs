//! The compiled form: a flat array of nodes (children before parents, root last) with
//! constants in a pool, variables as slots, functions resolved to ids; and its evaluator.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::builtins::{self, Builtin};
use crate::error::{Error, OpErr, Pos};
use crate::fast::{F, FV};
use crate::interp::{self, Ctx};
use crate::ops;
use crate::parser::{BinOp, UnOp};
use crate::resolve::{Ir, IrKind, IrTree, Names, Resolved, Scratch};
use crate::typed::{Ty, Typed};
use crate::value::{Binding, NoVars, Value, ValueRef, Vars, V};
use crate::UserFn;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Node {
    /// `consts[k]`
    Const(u32),
    /// variable slot
    Var(u32),
    Unary(UnOp, u32),
    Bin(BinOp, u32, u32),
    /// `node op consts[k]`
    BinK(BinOp, u32, u32),
    /// `var op consts[k]`
    VarK(BinOp, u32, u32),
    And(u32, u32),
    Or(u32, u32),
    If(u32, u32, u32),
    /// built-in over `args[start..start+n]`
    Call(Builtin, u32, u32),
    /// user function `fns[f]` over `args[start..start+n]`
    User(u32, u32, u32),
    List(u32, u32),
}

/// Span table of a [`Program`]: inline up to 16 entries (a variable or two and a
/// handful of nodes), so a small program's spans cost no allocation of their own.
pub(crate) type Spans = SmallVec<[(u32, u32); 16]>;
/// Argument lists of a [`Program`] (node ids), inline up to 8.
pub(crate) type Args = SmallVec<[u32; 8]>;
/// Constants of a [`Program`], inline up to 4.
pub(crate) type Consts = SmallVec<[Value; 4]>;

/// A compiled expression: compile once with [`Engine::compile`](crate::Engine::compile),
/// evaluate many times (also from several threads), save with [`Program::save`].
///
/// Its memory is a handful of allocations: the text, the nodes, one table of spans
/// (variable names first, as ranges of the text, then each node's source span), and
/// where present constants, argument lists and the tag-free numeric form.
#[derive(Clone)]
pub struct Program {
    /// The source, followed by variable names that are not in it (from macros).
    pub(crate) text: String,
    pub(crate) src_len: u32,
    pub(crate) nodes: Vec<Node>,
    /// `nvars` name ranges of `text`, then one source span per node.
    pub(crate) spans: Spans,
    pub(crate) nvars: u32,
    pub(crate) args: Args,
    pub(crate) consts: Consts,
    pub(crate) fns: Vec<Arc<UserFn>>,
    pub(crate) max_steps: u64,
    pub(crate) max_str: usize,
    /// Whether to try the numeric fast path first (derived, not saved).
    pub(crate) numeric: bool,
    /// The tag-free numeric form, when type inference allows it (derived, not saved).
    pub(crate) typed: Typed,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program")
            .field("source", &self.source())
            .field("nodes", &self.nodes.len())
            .field("vars", &self.var_names())
            .finish()
    }
}

struct Builder<'p> {
    p: &'p mut Program,
    fold_steps: u64,
}

/// Folds constant subtrees (using the interpreter, so folding cannot change a result) in
/// place in the arena, and flattens the tree into nodes.
pub(crate) fn compile(
    source: &str,
    s: &mut Scratch,
    resolved: Resolved,
    max_steps: u64,
    max_str: usize,
) -> Program {
    let n = s.tree.nodes.len();
    let mut p = Program {
        // sized once: the source and the names macros added (no growth on push)
        text: String::with_capacity(source.len() + s.extra.len()),
        src_len: 0,
        nodes: Vec::with_capacity(n),
        spans: SmallVec::with_capacity(s.vars.len() + n),
        nvars: 0,
        args: SmallVec::with_capacity(s.tree.items.len()),
        consts: SmallVec::new(),
        fns: Vec::new(),
        max_steps,
        max_str,
        numeric: false,
        typed: Typed::default(),
    };
    compile_into(source, s, resolved, max_steps, max_str, &mut p);
    p
}

/// [`compile`] into an existing program, whose memory is reused: a warm recompile
/// allocates nothing unless the new program needs more room than the old one had.
pub(crate) fn compile_into(
    source: &str,
    s: &mut Scratch,
    resolved: Resolved,
    max_steps: u64,
    max_str: usize,
    p: &mut Program,
) {
    let Resolved { root, fns } = resolved;
    let tree = &mut s.tree;
    p.text.clear();
    p.text.push_str(source);
    p.text.push_str(&s.extra);
    p.src_len = source.len() as u32;
    p.nodes.clear();
    p.spans.clear();
    p.spans.extend_from_slice(&s.vars);
    p.nvars = s.vars.len() as u32;
    p.args.clear();
    p.consts.clear();
    p.fns = fns;
    p.max_steps = max_steps;
    p.max_str = max_str;
    p.numeric = false;
    let mut b = Builder {
        p,
        fold_steps: max_steps,
    };
    let root = b.fold(tree, root);
    b.emit(tree, root);
    b.p.finish(false);
}

#[inline]
fn is_const(tree: &IrTree, id: u32) -> bool {
    matches!(tree.node(id).kind, IrKind::Const(_))
}

impl Builder<'_> {
    fn try_eval(&mut self, tree: &IrTree, id: u32) -> Option<Value> {
        let cx = Ctx {
            vars: &NoVars,
            names: self.p.names(),
            fns: &self.p.fns,
            src: self.p.source(),
            max_str: self.p.max_str,
            max_steps: self.p.max_steps,
        };
        interp::eval(tree, id, &cx, &mut self.fold_steps)
            .ok()
            .map(V::into_value)
    }

    /// Folds the list `tree.items[s..s + n]` in place; true when every item is constant.
    fn fold_list(&mut self, tree: &mut IrTree, s: u32, n: u32) -> bool {
        let mut all = true;
        for k in s..s + n {
            let old = tree.items[k as usize];
            let id = self.fold(tree, old);
            if id != old {
                tree.items[k as usize] = id;
            }
            all &= is_const(tree, id);
        }
        all
    }

    /// Folds node `id` in place; returns the node standing for it afterwards (another
    /// node when `IfThen` with a constant condition picks its branch).
    fn fold(&mut self, tree: &mut IrTree, id: u32) -> u32 {
        let foldable = match tree.node(id).kind {
            IrKind::Const(_) | IrKind::Var(_) => return id,
            IrKind::Unary(op, a0) => {
                let a = self.fold(tree, a0);
                if a != a0 {
                    tree.nodes[id as usize].kind = IrKind::Unary(op, a);
                }
                is_const(tree, a)
            }
            IrKind::Binary(op, a0, b0) => {
                let a = self.fold(tree, a0);
                // Short-circuit with a constant bool on the left: the right side never runs.
                if let (BinOp::And | BinOp::Or, IrKind::Const(Value::Bool(x))) =
                    (op, &tree.node(a).kind)
                {
                    if *x == (op == BinOp::Or) {
                        tree.nodes[id as usize].kind = IrKind::Const(Value::Bool(*x));
                        return id;
                    }
                }
                let b = self.fold(tree, b0);
                if (a, b) != (a0, b0) {
                    tree.nodes[id as usize].kind = IrKind::Binary(op, a, b);
                }
                is_const(tree, a) && is_const(tree, b)
            }
            IrKind::Builtin(Builtin::IfThen, s, 3) => {
                let c = self.fold(tree, tree.items[s as usize]);
                tree.items[s as usize] = c;
                if let IrKind::Const(v) = &tree.node(c).kind {
                    if let Ok(t) = ops::truthy(&V::borrow(v), "") {
                        let branch = tree.items[s as usize + if t { 1 } else { 2 }];
                        return self.fold(tree, branch);
                    }
                }
                self.fold_list(tree, s + 1, 2);
                // Never folded as a whole: the condition is not constant.
                false
            }
            IrKind::Builtin(b, s, n) => self.fold_list(tree, s, n) && b.pure(),
            IrKind::User(f, s, n) => self.fold_list(tree, s, n) && self.p.fns[f as usize].pure,
            IrKind::List(s, n) => self.fold_list(tree, s, n),
        };
        if foldable {
            if let Some(v) = self.try_eval(tree, id) {
                tree.nodes[id as usize].kind = IrKind::Const(v);
            }
        }
        id
    }

    fn push(&mut self, n: Node, ir: &Ir) -> u32 {
        self.p.nodes.push(n);
        self.p.spans.push((ir.start, ir.end));
        (self.p.nodes.len() - 1) as u32
    }

    fn konst(&mut self, v: &Value) -> u32 {
        self.p.consts.push(v.clone());
        (self.p.consts.len() - 1) as u32
    }

    fn emit_args(&mut self, tree: &IrTree, s: u32, n: u32) -> (u32, u32) {
        // Reserve the range first: the arguments' own argument lists go after it.
        let start = self.p.args.len();
        self.p.args.resize(start + n as usize, 0);
        for k in 0..n as usize {
            let id = self.emit(tree, tree.items[s as usize + k]);
            self.p.args[start + k] = id;
        }
        (start as u32, n)
    }

    fn emit(&mut self, tree: &IrTree, id: u32) -> u32 {
        let ir = tree.node(id);
        let node = match ir.kind {
            IrKind::Const(ref v) => Node::Const(self.konst(v)),
            IrKind::Var(s) => Node::Var(s),
            IrKind::Unary(op, a) => Node::Unary(op, self.emit(tree, a)),
            IrKind::Binary(op @ (BinOp::And | BinOp::Or), a, b) => {
                let (a, b) = (self.emit(tree, a), self.emit(tree, b));
                if op == BinOp::And {
                    Node::And(a, b)
                } else {
                    Node::Or(a, b)
                }
            }
            IrKind::Binary(op, a, b) => match (&tree.node(a).kind, &tree.node(b).kind) {
                (IrKind::Var(s), IrKind::Const(k)) => Node::VarK(op, *s, self.konst(k)),
                (_, IrKind::Const(k)) => {
                    let a = self.emit(tree, a);
                    Node::BinK(op, a, self.konst(k))
                }
                _ => {
                    let (a, b) = (self.emit(tree, a), self.emit(tree, b));
                    Node::Bin(op, a, b)
                }
            },
            IrKind::Builtin(Builtin::IfThen, s, 3) => {
                let args = tree.list(s, 3);
                let (c, a, b) = (
                    self.emit(tree, args[0]),
                    self.emit(tree, args[1]),
                    self.emit(tree, args[2]),
                );
                Node::If(c, a, b)
            }
            IrKind::Builtin(b, s, n) => {
                let (s, n) = self.emit_args(tree, s, n);
                Node::Call(b, s, n)
            }
            IrKind::User(f, s, n) => {
                let (s, n) = self.emit_args(tree, s, n);
                Node::User(f, s, n)
            }
            IrKind::List(s, n) => {
                let (s, n) = self.emit_args(tree, s, n);
                Node::List(s, n)
            }
        };
        self.push(node, ir)
    }
}

const INLINE_ARGS: usize = 4;

impl Program {
    /// Computes the derived fast-path data.
    /// `shared`: see [`Program::numeric_candidate`] (true for a loaded program).
    pub(crate) fn finish(&mut self, shared: bool) {
        self.numeric = self.numeric_candidate(shared);
        self.typed.clear();
        if self.numeric {
            self.typed
                .translate_into(&self.nodes, &self.args, &self.consts);
        }
    }

    /// The tag-free form's result as a fast value, when its type is known statically.
    #[inline(always)]
    fn try_typed_value<X: Vars + ?Sized>(&self, vars: &X) -> Option<F> {
        match self.typed.ty()? {
            Ty::F => Some(F::F(self.typed.run(vars, self.names())?)),
            Ty::I => Some(F::I(self.typed.run(vars, self.names())? as i64)),
            Ty::B => Some(F::B(self.typed.run(vars, self.names())? != 0.0)),
            Ty::N => None,
        }
    }

    #[inline]
    fn try_fast<X: Vars + ?Sized>(&self, vars: &X) -> Option<F> {
        if self.numeric {
            if self.nodes.len() <= crate::fast::FLAT {
                if let Some(v) = self.fast_flat(vars) {
                    return Some(v);
                }
            }
            self.fast((self.nodes.len() - 1) as u32, vars)
        } else {
            None
        }
    }

    /// The variable names.
    #[inline]
    pub(crate) fn names(&self) -> Names<'_> {
        Names {
            head: &self.text,
            tail: "",
            ranges: self.spans.get(..self.nvars as usize).unwrap_or(&[]),
        }
    }

    /// Source span of node `i`.
    #[inline]
    pub(crate) fn span(&self, i: u32) -> (u32, u32) {
        self.spans
            .get(self.nvars as usize + i as usize)
            .copied()
            .unwrap_or((0, 0))
    }

    fn pos(&self, i: u32) -> Pos {
        let (s, e) = self.span(i);
        Pos::of(self.source(), s as usize, e as usize)
    }

    #[cold]
    fn err(&self, i: u32, e: OpErr) -> Box<Error> {
        Box::new(e.at(self.pos(i)))
    }

    #[inline]
    fn var<'a, X: Vars + ?Sized>(
        &'a self,
        i: u32,
        slot: u32,
        vars: &'a X,
    ) -> Result<V<'a>, Box<Error>> {
        let name = self.names().get(slot as usize);
        match vars.get(slot as usize, name) {
            Some(r) => Ok(V::from_ref(r)),
            None => {
                let (s, e) = self.span(i);
                Err(interp::unbound(self.source(), s, e, name))
            }
        }
    }

    fn ev<'a, X: Vars + ?Sized>(
        &'a self,
        i: u32,
        vars: &'a X,
        steps: &mut u64,
    ) -> Result<V<'a>, Box<Error>> {
        if *steps == 0 {
            let (s, e) = self.span(i);
            return Err(interp::steps_error(self.source(), s, e, self.max_steps));
        }
        *steps -= 1;
        match self.nodes[i as usize] {
            Node::Const(k) => Ok(V::borrow(&self.consts[k as usize])),
            Node::Var(slot) => self.var(i, slot, vars),
            Node::VarK(op, slot, k) => {
                let l = self.var(i, slot, vars)?;
                ops::binary(op, l, V::borrow(&self.consts[k as usize]), self.max_str)
                    .map_err(|e| self.err(i, e))
            }
            Node::BinK(op, a, k) => {
                let l = self.ev(a, vars, steps)?;
                ops::binary(op, l, V::borrow(&self.consts[k as usize]), self.max_str)
                    .map_err(|e| self.err(i, e))
            }
            Node::Bin(op, a, b) => {
                let l = self.ev(a, vars, steps)?;
                let r = self.ev(b, vars, steps)?;
                ops::binary(op, l, r, self.max_str).map_err(|e| self.err(i, e))
            }
            Node::Unary(op, a) => {
                let v = self.ev(a, vars, steps)?;
                ops::unary(op, v).map_err(|e| self.err(i, e))
            }
            Node::And(a, b) | Node::Or(a, b) => {
                let is_or = matches!(self.nodes[i as usize], Node::Or(..));
                let l = self.ev(a, vars, steps)?;
                if let V::Bool(x) = l {
                    if x == is_or {
                        return Ok(V::Bool(x));
                    }
                }
                let r = self.ev(b, vars, steps)?;
                let op = if is_or { BinOp::Or } else { BinOp::And };
                ops::binary(op, l, r, self.max_str).map_err(|e| self.err(i, e))
            }
            Node::If(c, a, b) => {
                let cv = self.ev(c, vars, steps)?;
                let t = ops::truthy(&cv, "IfThen's condition").map_err(|e| self.err(i, e))?;
                self.ev(if t { a } else { b }, vars, steps)
            }
            Node::Call(b, start, n) => {
                let ids = &self.args[start as usize..(start + n) as usize];
                if ids.len() <= INLINE_ARGS {
                    let mut buf: [V<'a>; INLINE_ARGS] = Default::default();
                    for (slot, &id) in buf.iter_mut().zip(ids) {
                        *slot = self.ev(id, vars, steps)?;
                    }
                    builtins::call(b, &mut buf[..ids.len()], self.max_str)
                        .map_err(|e| self.err(i, e))
                } else {
                    let mut buf = Vec::with_capacity(ids.len());
                    for &id in ids {
                        buf.push(self.ev(id, vars, steps)?);
                    }
                    builtins::call(b, &mut buf, self.max_str).map_err(|e| self.err(i, e))
                }
            }
            Node::User(f, start, n) => {
                let ids = &self.args[start as usize..(start + n) as usize];
                let mut buf = Vec::with_capacity(ids.len());
                for &id in ids {
                    buf.push(self.ev(id, vars, steps)?);
                }
                interp::call_user(&self.fns[f as usize], &buf, || self.pos(i))
            }
            Node::List(start, n) => {
                let ids = &self.args[start as usize..(start + n) as usize];
                let mut buf = Vec::with_capacity(ids.len());
                for &id in ids {
                    buf.push(self.ev(id, vars, steps)?);
                }
                Ok(builtins::make_list(buf))
            }
        }
    }

    #[inline]
    fn run<'a, X: Vars + ?Sized>(&'a self, vars: &'a X) -> Result<V<'a>, Error> {
        let mut steps = self.max_steps;
        self.ev((self.nodes.len() - 1) as u32, vars, &mut steps)
            .map_err(|e| *e)
    }

    /// Evaluates with `vars` (see [`Vars`]): by slot (`&[Value]` in [`var_names`](Self::var_names)
    /// order), by name (`HashMap<String, Value>`), or your own implementation.
    #[inline]
    pub fn eval<X: Vars + ?Sized>(&self, vars: &X) -> Result<Value, Error> {
        if let Some(f) = self.try_typed_value(vars) {
            return Ok(f.value());
        }
        if let Some(f) = self.try_fast(vars) {
            return Ok(f.value());
        }
        self.eval_slow(vars)
    }

    #[inline(never)]
    fn eval_slow<X: Vars + ?Sized>(&self, vars: &X) -> Result<Value, Error> {
        self.run(vars).map(V::into_value)
    }

    /// Evaluates and hands the result to `f` as a borrowed view (no copy of strings that
    /// come from constants or variables).
    pub fn eval_with<X: Vars + ?Sized, R>(
        &self,
        vars: &X,
        f: impl FnOnce(ValueRef<'_>) -> R,
    ) -> Result<R, Error> {
        if let Some(v) = self.try_typed_value(vars) {
            return Ok(f(v.as_ref()));
        }
        if let Some(v) = self.try_fast(vars) {
            return Ok(f(v.as_ref()));
        }
        let v = self.run(vars)?;
        Ok(f(v.as_ref()))
    }

    /// Evaluates as a condition (a filter): bools, or numbers where non-zero is true.
    #[inline]
    pub fn eval_bool<X: Vars + ?Sized>(&self, vars: &X) -> Result<bool, Error> {
        // Bools are 0.0 / 1.0; numbers are true when non-zero (NaN included), as below.
        if self.typed.ty().is_some() {
            if let Some(v) = self.typed.run(vars, self.names()) {
                return Ok(v != 0.0);
            }
        }
        match self.try_fast(vars).map(F::v) {
            Some(FV::B(b)) => return Ok(b),
            Some(FV::I(i)) => return Ok(i != 0),
            Some(FV::F(x)) => return Ok(x != 0.0),
            None => {}
        }
        let v = self.run(vars)?;
        ops::truthy(&v, "the expression's result")
            .map_err(|e| e.at(self.pos((self.nodes.len() - 1) as u32)))
    }

    /// Evaluates to a float (ints and numeric strings convert).
    #[inline]
    pub fn eval_f64<X: Vars + ?Sized>(&self, vars: &X) -> Result<f64, Error> {
        if matches!(self.typed.ty(), Some(Ty::F | Ty::I | Ty::N)) {
            if let Some(v) = self.typed.run(vars, self.names()) {
                return Ok(v);
            }
        }
        match self.try_fast(vars).map(F::v) {
            Some(FV::I(i)) => return Ok(i as f64),
            Some(FV::F(x)) => return Ok(x),
            _ => {}
        }
        let v = self.run(vars)?;
        ops::to_f64(&v).map_err(|e| e.at(self.pos((self.nodes.len() - 1) as u32)))
    }

    /// The variables the expression reads, in slot order (first appearance).
    /// (The names live in the program's text; this copies them out.)
    pub fn var_names(&self) -> Vec<String> {
        self.names().iter().map(String::from).collect()
    }

    /// Number of variables the expression reads (slots `0..var_count()`).
    pub fn var_count(&self) -> usize {
        self.nvars as usize
    }

    /// Resolves the program's variables against a record layout (`fields[i]` is the name of
    /// field `i`), once; then evaluate each record with `binding.record(&values)`.
    ///
    /// ```
    /// use zs_expr::{Engine, Value};
    /// let p = Engine::new().compile("age > 30 and name = 'bob'")?;
    /// let binding = p.bind(&["id", "name", "age"]);
    /// assert!(binding.missing().is_empty());
    /// let rows = [
    ///     [Value::Int(1), Value::from("bob"), Value::Int(42)],
    ///     [Value::Int(2), Value::from("eve"), Value::Int(42)],
    /// ];
    /// let hits: Vec<i64> = rows
    ///     .iter()
    ///     .filter(|r| p.eval_bool(&binding.record(&r[..])).unwrap_or(false))
    ///     .map(|r| if let Value::Int(id) = r[0] { id } else { 0 })
    ///     .collect();
    /// assert_eq!(hits, [1]);
    /// # Ok::<(), zs_expr::Error>(())
    /// ```
    pub fn bind(&self, fields: &[&str]) -> Binding {
        let names = self.names();
        let field_of_slot: Vec<Option<usize>> = names
            .iter()
            .map(|v| fields.iter().position(|f| *f == v))
            .collect();
        let missing = names
            .iter()
            .zip(&field_of_slot)
            .filter(|(_, f)| f.is_none())
            .map(|(v, _)| v.to_string())
            .collect();
        Binding {
            field_of_slot,
            missing,
        }
    }

    /// Slot of variable `name`, if the expression reads it.
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.names().position(name)
    }

    /// The source text it was compiled from.
    pub fn source(&self) -> &str {
        self.text.get(..self.src_len as usize).unwrap_or("")
    }

    /// Number of nodes after constant folding (1 for a fully constant expression).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// True when folding reduced the whole expression to one constant.
    pub fn is_constant(&self) -> bool {
        matches!(self.nodes.as_slice(), [Node::Const(_)])
    }

    /// Names of the registered functions the expression calls (needed again at load time).
    pub fn function_names(&self) -> impl Iterator<Item = &str> {
        self.fns.iter().map(|f| f.name.as_str())
    }
}
