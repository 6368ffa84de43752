//! Name resolution. The parser writes the tree straight into the arena ([`IrTree`]) and
//! lists the names and calls it met ([`Pending`]); this pass resolves just those nodes in
//! place: functions get ids, constants and macros are substituted, every other name
//! becomes a variable slot (numbered by first appearance).

use std::sync::Arc;

use crate::builtins::{arity_text, Builtin};
use crate::error::{Error, Pos};
use crate::parser::{BinOp, Out, Parser, Pending, UnOp};
use crate::value::Value;
use crate::{Engine, Resolution, UserFn};

/// A resolved node; children are indices into [`IrTree::nodes`], argument and item lists
/// ranges `(start, count)` of [`IrTree::items`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum IrKind {
    Const(Value),
    Var(u32),
    Unary(UnOp, u32),
    Binary(BinOp, u32, u32),
    Builtin(Builtin, u32, u32),
    User(u32, u32, u32),
    List(u32, u32),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ir {
    pub kind: IrKind,
    pub start: u32,
    pub end: u32,
    /// Height of the subtree as parsed (before macro expansion); for the depth limit.
    pub depth: u32,
}

/// The resolved tree in one arena: two allocations per text instead of one per node, and
/// constant folding rewrites nodes in place.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct IrTree {
    pub nodes: Vec<Ir>,
    pub items: Vec<u32>,
    pub root: u32,
}

impl IrTree {
    #[inline]
    pub fn node(&self, id: u32) -> &Ir {
        &self.nodes[id as usize]
    }

    #[inline]
    pub fn list(&self, start: u32, n: u32) -> &[u32] {
        &self.items[start as usize..(start + n) as usize]
    }
}

/// The variable names of a text: ranges into `head ‖ tail` (a compiled program's names
/// are all in its text; while resolving, names met inside macro text, which are not in
/// the source, are in `tail`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Names<'a> {
    pub head: &'a str,
    pub tail: &'a str,
    pub ranges: &'a [(u32, u32)],
}

impl<'a> Names<'a> {
    /// Name of slot `i` ("" for a slot out of range).
    #[inline]
    pub fn get(&self, i: usize) -> &'a str {
        let Some(&(a, b)) = self.ranges.get(i) else {
            return "";
        };
        let (a, b) = (a as usize, b as usize);
        let n = self.head.len();
        if b <= n {
            self.head.get(a..b).unwrap_or("")
        } else {
            self.tail.get(a.saturating_sub(n)..b - n).unwrap_or("")
        }
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + '_ {
        (0..self.ranges.len()).map(|i| self.get(i))
    }

    /// Slot of `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        (0..self.ranges.len()).find(|&i| self.get(i) == name)
    }
}

/// The result of resolving one source text; the tree, the variable names (`vars`,
/// `extra`) are left in the [`Scratch`].
pub(crate) struct Resolved {
    pub root: u32,
    pub fns: Vec<Arc<UserFn>>,
}

struct Resolver<'e> {
    engine: &'e Engine,
    src: &'e str,
    /// Variable names: ranges into `src ‖ extra`.
    vars: Vec<(u32, u32)>,
    /// Names met in macro text.
    extra: String,
    fns: Vec<Arc<UserFn>>,
    macros: Vec<String>,
    expanded: bool,
}

pub(crate) const MAX_NODES: usize = 1 << 20;

/// Working memory of parsing, resolving and compiling, kept per thread between
/// compilations so that a warm compile allocates nothing but the program it returns
/// (the way a reused slab does). Buffers that grew past [`KEEP_NODES`] are freed instead
/// of kept, so one huge expression does not pin its memory.
#[derive(Default)]
pub(crate) struct Scratch {
    pub tree: IrTree,
    pending: Vec<Pending>,
    stack: Vec<u32>,
    /// Variable names of the text being compiled: ranges into `src ‖ extra`.
    pub vars: Vec<(u32, u32)>,
    pub extra: String,
}

const KEEP_NODES: usize = 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

impl Scratch {
    fn clear(&mut self) {
        let big = self.tree.nodes.capacity() > KEEP_NODES
            || self.tree.items.capacity() > KEEP_NODES
            || self.pending.capacity() > KEEP_NODES
            || self.stack.capacity() > KEEP_NODES
            || self.vars.capacity() > KEEP_NODES
            || self.extra.capacity() > KEEP_NODES * 16;
        if big {
            *self = Scratch::default();
        } else {
            self.tree.nodes.clear();
            self.tree.items.clear();
            self.tree.root = 0;
            self.pending.clear();
            self.stack.clear();
            self.vars.clear();
            self.extra.clear();
        }
    }
}

/// Runs `f` with this thread's scratch memory (borrowed in place for the whole
/// compilation: nothing is moved in or out), or with fresh memory when it is in use
/// (a registered function that compiles while a compilation folds constants).
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut f = Some(f);
    let done = SCRATCH.try_with(|c| {
        let mut s = c.try_borrow_mut().ok()?;
        let f = f.take()?;
        if !s.tree.nodes.is_empty() || !s.vars.is_empty() {
            // left over by a compilation that panicked
            s.clear();
        }
        let r = f(&mut s);
        s.clear();
        Some(r)
    });
    match (done, f.take()) {
        (Ok(Some(r)), _) => r,
        (_, Some(f)) => f(&mut Scratch::default()),
        // `f` was taken only where it also produced the result
        (_, None) => unreachable!("scratch closure ran without a result"),
    }
}

/// Parses and resolves `src` into `s` (tree, variable names).
pub(crate) fn resolve(engine: &Engine, src: &str, s: &mut Scratch) -> Result<Resolved, Error> {
    let limits = engine.limits();
    if src.len() > limits.max_len {
        return Err(Error::Limit {
            pos: Pos::of(src, limits.max_len, src.len()),
            message: format!(
                "expression is {} bytes, over the limit of {} (Limits::max_len)",
                src.len(),
                limits.max_len
            ),
        });
    }
    let (root, _) = Parser::parse(
        src,
        engine.style(),
        engine.precedence(),
        limits.max_depth,
        Out {
            tree: &mut s.tree,
            pending: &mut s.pending,
            scratch: &mut s.stack,
        },
    )?;
    let mut r = Resolver {
        engine,
        src,
        vars: std::mem::take(&mut s.vars),
        extra: std::mem::take(&mut s.extra),
        fns: Vec::new(),
        macros: Vec::new(),
        expanded: false,
    };
    let pending = std::mem::take(&mut s.pending);
    let mut res = r.all(&mut s.tree, src, &pending, true);
    s.pending = pending;
    if res.is_ok() && r.expanded {
        // Macros make subtrees taller than the parser saw: check the depth again.
        res = r.check_depth(&s.tree, root).map(|_| ());
    }
    s.vars = r.vars;
    s.extra = r.extra;
    res?;
    s.tree.root = root;
    Ok(Resolved { root, fns: r.fns })
}

impl Resolver<'_> {
    fn pos(&self, start: u32, end: u32) -> Pos {
        Pos::of(self.src, start as usize, end as usize)
    }

    /// Resolves the names and calls `pending` (met while parsing `text`), in order.
    /// `top`: `text` is the source (not a macro's text), so names are ranges of it.
    fn all(
        &mut self,
        tree: &mut IrTree,
        text: &str,
        pending: &[Pending],
        top: bool,
    ) -> Result<(), Error> {
        for p in pending {
            match *p {
                Pending::Name { id, a, z } => {
                    let at = top.then_some((a, z));
                    self.name(tree, id, &text[a as usize..z as usize], at)?
                }
                Pending::Call { id, a, z, st, n } => {
                    let kind = self.call(tree, id, &text[a as usize..z as usize], st, n)?;
                    tree.nodes[id as usize].kind = kind;
                }
            }
        }
        Ok(())
    }

    fn call(
        &mut self,
        tree: &IrTree,
        id: u32,
        name: &str,
        st: u32,
        n: u32,
    ) -> Result<IrKind, Error> {
        let (start, end) = (tree.node(id).start, tree.node(id).end);
        let user = if self.engine.has_functions() {
            self.engine.function(&name.to_ascii_lowercase())
        } else {
            None
        };
        if let Some(f) = user {
            if !f.arity.accepts(n as usize) {
                return Err(Error::Type {
                    pos: self.pos(start, end),
                    message: format!("{} takes {} arguments, got {}", f.name, f.arity, n),
                });
            }
            let fid = match self.fns.iter().position(|g| Arc::ptr_eq(g, &f)) {
                Some(i) => i,
                None => {
                    self.fns.push(f);
                    self.fns.len() - 1
                }
            };
            Ok(IrKind::User(fid as u32, st, n))
        } else if let Some(b) = Builtin::lookup(name) {
            let (min, max) = b.arity();
            let len = n as usize;
            if len < min || len > max {
                return Err(Error::Type {
                    pos: self.pos(start, end),
                    message: format!(
                        "{} takes {} arguments, got {}",
                        b.name(),
                        arity_text(b),
                        len
                    ),
                });
            }
            Ok(IrKind::Builtin(b, st, n))
        } else {
            Err(Error::UnknownName {
                pos: self.pos(start, end),
                message: format!(
                    "no function named `{name}`; register it with Engine::register (built-ins: abs, sqrt, min, max, IfThen, length, ...)"
                ),
            })
        }
    }

    /// `at`: where `name` is in the source, when it is.
    fn name(
        &mut self,
        tree: &mut IrTree,
        id: u32,
        name: &str,
        at: Option<(u32, u32)>,
    ) -> Result<(), Error> {
        let is = |k: &str| name.eq_ignore_ascii_case(k);
        let kind = if is("true") {
            IrKind::Const(Value::Bool(true))
        } else if is("false") {
            IrKind::Const(Value::Bool(false))
        } else if is("null") || is("nil") {
            IrKind::Const(Value::Null)
        } else if is("pi") {
            IrKind::Const(Value::Float(std::f64::consts::PI))
        } else if let Some(v) = self
            .engine
            .has_constants()
            .then(|| self.engine.constant(&name.to_ascii_lowercase()))
            .flatten()
        {
            IrKind::Const(v.clone())
        } else {
            match self.engine.unknown_name(name) {
                Some(Resolution::Const(v)) => IrKind::Const(v),
                Some(Resolution::Macro(text)) => return self.expand(tree, id, name, &text),
                None => {
                    let names = Names {
                        head: self.src,
                        tail: &self.extra,
                        ranges: &self.vars,
                    };
                    let slot = match names.position(name) {
                        Some(i) => i,
                        None => {
                            let range = match at {
                                Some(r) => r,
                                None => {
                                    // a name from a macro's text: kept after the source
                                    let a = self.src.len() + self.extra.len();
                                    self.extra.push_str(name);
                                    (a as u32, (a + name.len()) as u32)
                                }
                            };
                            self.vars.push(range);
                            self.vars.len() - 1
                        }
                    };
                    IrKind::Var(slot as u32)
                }
            }
        };
        tree.nodes[id as usize].kind = kind;
        Ok(())
    }

    /// Parses the macro's text into the same arena, gives its nodes the name's span,
    /// resolves them, and puts its root in the name's node.
    fn expand(&mut self, tree: &mut IrTree, id: u32, name: &str, text: &str) -> Result<(), Error> {
        let limits = self.engine.limits();
        let (start, end) = (tree.node(id).start, tree.node(id).end);
        let pos = self.pos(start, end);
        if self.macros.len() >= limits.max_macro_depth || self.macros.iter().any(|m| m == name) {
            let chain = self.macros.join(" -> ");
            return Err(Error::Limit {
                pos,
                message: format!(
                    "macro `{name}` expands recursively or too deeply ({chain} -> {name}; Limits::max_macro_depth = {})",
                    limits.max_macro_depth
                ),
            });
        }
        if text.len() > limits.max_len {
            return Err(Error::Limit {
                pos,
                message: format!("macro `{name}` text is over Limits::max_len"),
            });
        }
        let base = tree.nodes.len();
        let mut pending = Vec::new();
        let mut stack = Vec::new();
        let (root, _) = Parser::parse(
            text,
            self.engine.style(),
            self.engine.precedence(),
            limits.max_depth,
            Out {
                tree,
                pending: &mut pending,
                scratch: &mut stack,
            },
        )
        .map_err(|e| Error::Syntax {
            pos,
            message: format!("in macro `{name}` = `{text}`: {}", e.message()),
        })?;
        if tree.nodes.len() > MAX_NODES.min(limits.max_len.saturating_mul(4).max(1024)) {
            return Err(Error::Limit {
                pos,
                message: "expression expands to too many nodes (macros?); simplify it".into(),
            });
        }
        for n in &mut tree.nodes[base..] {
            n.start = start;
            n.end = end;
        }
        self.expanded = true;
        self.macros.push(name.to_string());
        let r = self.all(tree, text, &pending, false);
        self.macros.pop();
        r?;
        let kind = std::mem::replace(
            &mut tree.nodes[root as usize].kind,
            IrKind::Const(Value::Null),
        );
        tree.nodes[id as usize].kind = kind;
        Ok(())
    }

    /// After macro expansion: the height of every subtree within `Limits::max_depth`.
    /// Recursion is bounded: each macro level adds at most `max_depth` levels and there
    /// are at most `max_macro_depth` levels of macros.
    fn check_depth(&self, tree: &IrTree, id: u32) -> Result<usize, Error> {
        let ir = tree.node(id);
        let d = match ir.kind {
            IrKind::Const(_) | IrKind::Var(_) => 1,
            IrKind::Unary(_, a) => self.check_depth(tree, a)? + 1,
            IrKind::Binary(_, a, b) => {
                self.check_depth(tree, a)?.max(self.check_depth(tree, b)?) + 1
            }
            IrKind::Builtin(_, s, n) | IrKind::User(_, s, n) | IrKind::List(s, n) => {
                let mut d = 0;
                for &c in tree.list(s, n) {
                    d = d.max(self.check_depth(tree, c)?);
                }
                d + 1
            }
        };
        let max = self.engine.limits().max_depth;
        if d > max {
            return Err(Error::Limit {
                pos: self.pos(ir.start, ir.end),
                message: format!("expression nested too deeply (limit {max}; Limits::max_depth)"),
            });
        }
        Ok(d)
    }
}
