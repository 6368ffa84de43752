//! Name resolution: AST → IR. Functions get ids, constants and macros are substituted,
//! every other name becomes a variable slot (numbered by first appearance).

use std::sync::Arc;

use crate::builtins::{arity_text, Builtin};
use crate::error::{Error, Pos};
use crate::parser::{Ast, BinOp, ExprKind, Parser, UnOp};
use crate::value::Value;
use crate::{Engine, Resolution, UserFn};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum IrKind {
    Const(Value),
    Var(u32),
    Unary(UnOp, Box<Ir>),
    Binary(BinOp, Box<Ir>, Box<Ir>),
    Builtin(Builtin, Vec<Ir>),
    User(u32, Vec<Ir>),
    List(Vec<Ir>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ir {
    pub kind: IrKind,
    pub start: u32,
    pub end: u32,
}

/// The result of resolving one source text.
pub(crate) struct Resolved {
    pub ir: Ir,
    pub vars: Vec<String>,
    pub fns: Vec<Arc<UserFn>>,
}

struct Resolver<'e> {
    engine: &'e Engine,
    src: &'e str,
    vars: Vec<String>,
    fns: Vec<Arc<UserFn>>,
    nodes: usize,
    macros: Vec<String>,
}

pub(crate) const MAX_NODES: usize = 1 << 20;

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
    let mut ast = Parser::parse(src, engine.style(), engine.precedence(), limits.max_depth)?;
    let mut r = Resolver {
        engine,
        src,
        vars: Vec::new(),
        fns: Vec::new(),
        nodes: 0,
        macros: Vec::new(),
    };
    let root = ast.root;
    let (ir, _) = r.expr(&mut ast, root, None)?;
    Ok(Resolved {
        ir,
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
        ast: &mut Ast<'_>,
        id: u32,
        span: Option<(usize, usize)>,
    ) -> Result<(Ir, usize), Error> {
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
            ExprKind::Name(n) => return self.name(n, start, end),
            ExprKind::Unary(op, a) => {
                let (a, d) = self.expr(ast, a, span)?;
                (IrKind::Unary(op, Box::new(a)), d + 1)
            }
            ExprKind::Binary(op, a, b) => {
                let (a, da) = self.expr(ast, a, span)?;
                let (b, db) = self.expr(ast, b, span)?;
                (IrKind::Binary(op, Box::new(a), Box::new(b)), da.max(db) + 1)
            }
            ExprKind::List(st, n) => {
                let (items, d) = self.all(ast, st, n, span)?;
                (IrKind::List(items), d + 1)
            }
            ExprKind::Call(name, st, n) => {
                let (args, d) = self.all(ast, st, n, span)?;
                let user = if self.engine.has_functions() {
                    self.engine.function(&name.to_ascii_lowercase())
                } else {
                    None
                };
                if let Some(f) = user {
                    let pos = self.pos(start, end);
                    if !f.arity.accepts(args.len()) {
                        return Err(Error::Type {
                            pos,
                            message: format!(
                                "{} takes {} arguments, got {}",
                                f.name,
                                f.arity,
                                args.len()
                            ),
                        });
                    }
                    let id = match self.fns.iter().position(|g| Arc::ptr_eq(g, &f)) {
                        Some(i) => i,
                        None => {
                            self.fns.push(f);
                            self.fns.len() - 1
                        }
                    };
                    (IrKind::User(id as u32, args), d + 1)
                } else if let Some(b) = Builtin::lookup(name) {
                    let (min, max) = b.arity();
                    if args.len() < min || args.len() > max {
                        return Err(Error::Type {
                            pos: self.pos(start, end),
                            message: format!(
                                "{} takes {} arguments, got {}",
                                b.name(),
                                arity_text(b),
                                args.len()
                            ),
                        });
                    }
                    (IrKind::Builtin(b, args), d + 1)
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
        Ok((
            Ir {
                kind,
                start: start as u32,
                end: end as u32,
            },
            depth,
        ))
    }

    /// Resolves the list `ast.items[start..start + n]`.
    fn all(
        &mut self,
        ast: &mut Ast<'_>,
        start: u32,
        n: u32,
        span: Option<(usize, usize)>,
    ) -> Result<(Vec<Ir>, usize), Error> {
        let mut out = Vec::with_capacity(n as usize);
        let mut depth = 0;
        for k in start..start + n {
            let id = ast.items[k as usize];
            let (ir, d) = self.expr(ast, id, span)?;
            depth = depth.max(d);
            out.push(ir);
        }
        Ok((out, depth))
    }

    fn name(&mut self, name: &str, start: usize, end: usize) -> Result<(Ir, usize), Error> {
        let mk = |kind| {
            Ok((
                Ir {
                    kind,
                    start: start as u32,
                    end: end as u32,
                },
                1,
            ))
        };
        let is = |k: &str| name.eq_ignore_ascii_case(k);
        if is("true") {
            return mk(IrKind::Const(Value::Bool(true)));
        } else if is("false") {
            return mk(IrKind::Const(Value::Bool(false)));
        } else if is("null") || is("nil") {
            return mk(IrKind::Const(Value::Null));
        } else if is("pi") {
            return mk(IrKind::Const(Value::Float(std::f64::consts::PI)));
        }
        if self.engine.has_constants() {
            if let Some(v) = self.engine.constant(&name.to_ascii_lowercase()) {
                return mk(IrKind::Const(v.clone()));
            }
        }
        if let Some(res) = self.engine.unknown_name(name) {
            match res {
                Resolution::Const(v) => return mk(IrKind::Const(v)),
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
        mk(IrKind::Var(slot as u32))
    }

    fn expand(
        &mut self,
        name: &str,
        text: &str,
        start: usize,
        end: usize,
    ) -> Result<(Ir, usize), Error> {
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
        )
        .map_err(|e| Error::Syntax {
            pos,
            message: format!("in macro `{name}` = `{text}`: {}", e.message()),
        })?;
        self.macros.push(name.to_string());
        let root = ast.root;
        let r = self.expr(&mut ast, root, Some((start, end)));
        self.macros.pop();
        r
    }
}
