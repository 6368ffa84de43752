//! Name resolution: AST → IR. Functions get ids, constants and macros are substituted,
//! every other name becomes a variable slot (numbered by first appearance).

use std::sync::Arc;

use crate::builtins::{arity_text, Builtin};
use crate::error::{Error, Pos};
use crate::parser::{Ast, BinOp, ExprKind, Parser, UnOp};
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

    fn push(&mut self, ir: Ir) -> u32 {
        self.nodes.push(ir);
        (self.nodes.len() - 1) as u32
    }
}

/// The result of resolving one source text.
pub(crate) struct Resolved {
    pub tree: IrTree,
    pub vars: Vec<String>,
    pub fns: Vec<Arc<UserFn>>,
}

struct Resolver<'e> {
    engine: &'e Engine,
    tree: IrTree,
    src: &'e str,
    vars: Vec<String>,
    fns: Vec<Arc<UserFn>>,
    nodes: usize,
    macros: Vec<String>,
}

pub(crate) const MAX_NODES: usize = 1 << 20;

/// Working memory of parsing and resolving, kept per thread between compilations so that
/// a warm compile allocates nothing for the syntax tree and the resolved tree (the way a
/// reused slab does). Buffers that grew past [`KEEP_NODES`] are freed instead of kept, so
/// one huge expression does not pin its memory.
#[derive(Default)]
struct Scratch {
    ast: Ast,
    tree: IrTree,
}

const KEEP_NODES: usize = 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

fn recycle_ast(mut ast: Ast) {
    if ast.nodes.capacity() <= KEEP_NODES && ast.items.capacity() <= KEEP_NODES {
        ast.clear();
        SCRATCH.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                c.ast = ast;
            }
        });
    }
}

/// Gives a resolved tree's memory back for the next compilation on this thread.
pub(crate) fn recycle_tree(mut tree: IrTree) {
    if tree.nodes.capacity() <= KEEP_NODES && tree.items.capacity() <= KEEP_NODES {
        tree.nodes.clear();
        tree.items.clear();
        SCRATCH.with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                c.tree = tree;
            }
        });
    }
}

pub(crate) fn resolve(engine: &Engine, src: &str) -> Result<Resolved, Error> {
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
    let (ast_bufs, mut tree) = SCRATCH.with(|c| {
        let mut c = c.borrow_mut();
        (std::mem::take(&mut c.ast), std::mem::take(&mut c.tree))
    });
    let mut ast = Parser::parse(
        src,
        engine.style(),
        engine.precedence(),
        limits.max_depth,
        ast_bufs,
    )?;
    tree.nodes.reserve(ast.nodes.len());
    tree.items.reserve(ast.items.len());
    let mut r = Resolver {
        engine,
        tree,
        src,
        vars: Vec::new(),
        fns: Vec::new(),
        nodes: 0,
        macros: Vec::new(),
    };
    let root = ast.root;
    let res = r.expr(&mut ast, src, root, None);
    recycle_ast(ast);
    r.tree.root = res?.0;
    Ok(Resolved {
        tree: r.tree,
        vars: r.vars,
        fns: r.fns,
    })
}

impl Resolver<'_> {
    fn pos(&self, start: usize, end: usize) -> Pos {
        Pos::of(self.src, start, end)
    }

    /// Resolves node `id` of `ast` (taking its contents: every node is visited once).
    fn expr(
        &mut self,
        ast: &mut Ast,
        text: &str,
        id: u32,
        span: Option<(usize, usize)>,
    ) -> Result<(u32, usize), Error> {
        let e = &mut ast.nodes[id as usize];
        let (start, end) = span.unwrap_or((e.start, e.end));
        let kind = std::mem::replace(&mut e.kind, ExprKind::Lit(Value::Null));
        self.nodes += 1;
        let limits = self.engine.limits();
        if self.nodes > MAX_NODES.min(limits.max_len.saturating_mul(4).max(1024)) {
            return Err(Error::Limit {
                pos: self.pos(start, end),
                message: "expression expands to too many nodes (macros?); simplify it".into(),
            });
        }
        let (kind, depth) = match kind {
            ExprKind::Lit(v) => (IrKind::Const(v), 1),
            ExprKind::Name(a, z) => return self.name(&text[a as usize..z as usize], start, end),
            ExprKind::Unary(op, a) => {
                let (a, d) = self.expr(ast, text, a, span)?;
                (IrKind::Unary(op, a), d + 1)
            }
            ExprKind::Binary(op, a, b) => {
                let (a, da) = self.expr(ast, text, a, span)?;
                let (b, db) = self.expr(ast, text, b, span)?;
                (IrKind::Binary(op, a, b), da.max(db) + 1)
            }
            ExprKind::List(st, n) => {
                let (items, d) = self.all(ast, text, st, n, span)?;
                (IrKind::List(items, n), d + 1)
            }
            ExprKind::Call(a, z, st, n) => {
                let name = &text[a as usize..z as usize];
                let (args, d) = self.all(ast, text, st, n, span)?;
                let user = if self.engine.has_functions() {
                    self.engine.function(&name.to_ascii_lowercase())
                } else {
                    None
                };
                if let Some(f) = user {
                    let pos = self.pos(start, end);
                    if !f.arity.accepts(n as usize) {
                        return Err(Error::Type {
                            pos,
                            message: format!("{} takes {} arguments, got {}", f.name, f.arity, n),
                        });
                    }
                    let id = match self.fns.iter().position(|g| Arc::ptr_eq(g, &f)) {
                        Some(i) => i,
                        None => {
                            self.fns.push(f);
                            self.fns.len() - 1
                        }
                    };
                    (IrKind::User(id as u32, args, n), d + 1)
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
                    (IrKind::Builtin(b, args, n), d + 1)
                } else {
                    return Err(Error::UnknownName {
                        pos: self.pos(start, end),
                        message: format!(
                            "no function named `{name}`; register it with Engine::register (built-ins: abs, sqrt, min, max, IfThen, length, ...)"
                        ),
                    });
                }
            }
        };
        if depth > limits.max_depth {
            return Err(Error::Limit {
                pos: self.pos(start, end),
                message: format!(
                    "expression nested too deeply (limit {}; Limits::max_depth)",
                    limits.max_depth
                ),
            });
        }
        let id = self.tree.push(Ir {
            kind,
            start: start as u32,
            end: end as u32,
        });
        Ok((id, depth))
    }

    /// Resolves the list `ast.items[start..start + n]`.
    fn all(
        &mut self,
        ast: &mut Ast,
        text: &str,
        start: u32,
        n: u32,
        span: Option<(usize, usize)>,
    ) -> Result<(u32, usize), Error> {
        // Reserve the list's range first: the items' own lists go after it.
        let out = self.tree.items.len();
        self.tree.items.resize(out + n as usize, 0);
        let mut depth = 0;
        for k in 0..n {
            let id = ast.items[(start + k) as usize];
            let (ir, d) = self.expr(ast, text, id, span)?;
            depth = depth.max(d);
            self.tree.items[out + k as usize] = ir;
        }
        Ok((out as u32, depth))
    }

    fn leaf(&mut self, start: usize, end: usize, kind: IrKind) -> Result<(u32, usize), Error> {
        let id = self.tree.push(Ir {
            kind,
            start: start as u32,
            end: end as u32,
        });
        Ok((id, 1))
    }

    fn name(&mut self, name: &str, start: usize, end: usize) -> Result<(u32, usize), Error> {
        let is = |k: &str| name.eq_ignore_ascii_case(k);
        if is("true") {
            return self.leaf(start, end, IrKind::Const(Value::Bool(true)));
        } else if is("false") {
            return self.leaf(start, end, IrKind::Const(Value::Bool(false)));
        } else if is("null") || is("nil") {
            return self.leaf(start, end, IrKind::Const(Value::Null));
        } else if is("pi") {
            return self.leaf(
                start,
                end,
                IrKind::Const(Value::Float(std::f64::consts::PI)),
            );
        }
        if self.engine.has_constants() {
            if let Some(v) = self.engine.constant(&name.to_ascii_lowercase()) {
                return self.leaf(start, end, IrKind::Const(v.clone()));
            }
        }
        if let Some(res) = self.engine.unknown_name(name) {
            match res {
                Resolution::Const(v) => return self.leaf(start, end, IrKind::Const(v)),
                Resolution::Macro(text) => return self.expand(name, &text, start, end),
            }
        }
        let slot = match self.vars.iter().position(|v| v == name) {
            Some(i) => i,
            None => {
                self.vars.push(name.to_string());
                self.vars.len() - 1
            }
        };
        self.leaf(start, end, IrKind::Var(slot as u32))
    }

    fn expand(
        &mut self,
        name: &str,
        text: &str,
        start: usize,
        end: usize,
    ) -> Result<(u32, usize), Error> {
        let limits = self.engine.limits();
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
        let mut ast = Parser::parse(
            text,
            self.engine.style(),
            self.engine.precedence(),
            limits.max_depth,
            Ast::default(),
        )
        .map_err(|e| Error::Syntax {
            pos,
            message: format!("in macro `{name}` = `{text}`: {}", e.message()),
        })?;
        self.macros.push(name.to_string());
        let root = ast.root;
        let r = self.expr(&mut ast, text, root, Some((start, end)));
        self.macros.pop();
        r
    }
}
