//! Pratt parser producing an AST with source spans, under both precedence modes.

use crate::error::{Error, Pos};
use crate::lexer::{Lexer, OpTok, Style, Tok, Token};
use crate::resolve::{Ir, IrKind, IrTree};
use crate::value::Value;

/// Which operator precedence table the parser uses.
///
/// Lowest binding first; all binary operators are left-associative except `^` in
/// `Standard` mode, which is right-associative. Unary `-`, `+`, `not` bind tighter than any
/// binary operator except `^` in `Standard` mode.
///
/// | level | `Seed` (zExpression compatible) | `Standard` (C/Pascal-like, default) |
/// |---|---|---|
/// | 1 | `and & &&` | `or \| \|\|` |
/// | 2 | `or \| \|\| xor` | `xor` |
/// | 3 | comparisons `= == <> >< != < > <= =< >= =>` | `and & &&` |
/// | 4 | `+ -` | comparisons |
/// | 5 | `* / div mod % shl shr << >> ^` | `shl shr << >>` |
/// | 6 | unary | `+ -` |
/// | 7 | | `* / div mod %` |
/// | 8 | | unary |
/// | 9 | | `^` (right-associative) |
///
/// Examples where they differ: `2 * 3 ^ 2` is 36 in `Seed` and 18 in `Standard`;
/// `true or false and false` is `false` in `Seed` and `true` in `Standard`;
/// `1 + 2 shl 3` is 17 in `Seed` and 24 in `Standard`; `-2 ^ 2` is 4 in `Seed` and -4 in
/// `Standard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precedence {
    /// The seed's table: `and` loosest, then `or xor`, comparisons, `+ -`, then
    /// `* / mod div shl shr ^` together.
    Seed,
    /// Conventional precedence (the default).
    #[default]
    Standard,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    FDiv,
    IDiv,
    Mod,
    Pow,
    Shl,
    Shr,
    And,
    Or,
    Xor,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl BinOp {
    /// The canonical spelling, for messages.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::FDiv => "/",
            BinOp::IDiv => "div",
            BinOp::Mod => "mod",
            BinOp::Pow => "^",
            BinOp::Shl => "shl",
            BinOp::Shr => "shr",
            BinOp::And => "and",
            BinOp::Or => "or",
            BinOp::Xor => "xor",
            BinOp::Eq => "=",
            BinOp::Ne => "<>",
            BinOp::Lt => "<",
            BinOp::Gt => ">",
            BinOp::Le => "<=",
            BinOp::Ge => ">=",
        }
    }

    pub(crate) const ALL: [BinOp; 18] = [
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::FDiv,
        BinOp::IDiv,
        BinOp::Mod,
        BinOp::Pow,
        BinOp::Shl,
        BinOp::Shr,
        BinOp::And,
        BinOp::Or,
        BinOp::Xor,
        BinOp::Eq,
        BinOp::Ne,
        BinOp::Lt,
        BinOp::Gt,
        BinOp::Le,
        BinOp::Ge,
    ];
}

/// Unary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum UnOp {
    Neg,
    Plus,
    Not,
}

/// A name or call the parser leaves for the resolver (in creation order: arguments before
/// their call, left before right). The node itself holds a placeholder until resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Pending {
    /// Node `id` is the name `text[a..z]`.
    Name { id: u32, a: u32, z: u32 },
    /// Node `id` calls `text[a..z]` with the arguments `items[st..st + n]`.
    Call {
        id: u32,
        a: u32,
        z: u32,
        st: u32,
        n: u32,
    },
}

/// Where the parser writes: straight into the resolved tree's arena (no separate syntax
/// tree to convert), plus the names and calls left to resolve.
pub(crate) struct Out<'t> {
    pub tree: &'t mut IrTree,
    pub pending: &'t mut Vec<Pending>,
    /// Argument and item lists being collected (a stack: inner lists finish first).
    pub scratch: &'t mut Vec<u32>,
}

pub(crate) struct Parser<'s, 't> {
    src: &'s str,
    lex: Lexer<'s>,
    tok: Token<'s>,
    prec: Precedence,
    max_depth: usize,
    nesting: usize,
    out: Out<'t>,
}

fn binop(op: OpTok) -> Option<BinOp> {
    Some(match op {
        OpTok::Plus => BinOp::Add,
        OpTok::Minus => BinOp::Sub,
        OpTok::Star => BinOp::Mul,
        OpTok::Slash => BinOp::FDiv,
        OpTok::Div => BinOp::IDiv,
        OpTok::Mod => BinOp::Mod,
        OpTok::Caret => BinOp::Pow,
        OpTok::Shl => BinOp::Shl,
        OpTok::Shr => BinOp::Shr,
        OpTok::And => BinOp::And,
        OpTok::Or => BinOp::Or,
        OpTok::Xor => BinOp::Xor,
        OpTok::Eq => BinOp::Eq,
        OpTok::Ne => BinOp::Ne,
        OpTok::Lt => BinOp::Lt,
        OpTok::Gt => BinOp::Gt,
        OpTok::Le => BinOp::Le,
        OpTok::Ge => BinOp::Ge,
        OpTok::Not => return None,
    })
}

/// (left binding power, right binding power) of a binary operator.
fn binding(prec: Precedence, op: BinOp) -> (u8, u8) {
    let level = match prec {
        Precedence::Seed => match op {
            BinOp::And => 1,
            BinOp::Or | BinOp::Xor => 2,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => 3,
            BinOp::Add | BinOp::Sub => 4,
            _ => 5,
        },
        Precedence::Standard => match op {
            BinOp::Or => 1,
            BinOp::Xor => 2,
            BinOp::And => 3,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => 4,
            BinOp::Shl | BinOp::Shr => 5,
            BinOp::Add | BinOp::Sub => 6,
            BinOp::Mul | BinOp::FDiv | BinOp::IDiv | BinOp::Mod => 7,
            BinOp::Pow => 9,
        },
    };
    if prec == Precedence::Standard && op == BinOp::Pow {
        (level * 2, level * 2 - 1) // right-associative
    } else {
        (level * 2, level * 2 + 1)
    }
}

fn unary_bp(prec: Precedence) -> u8 {
    match prec {
        Precedence::Seed => 12,
        Precedence::Standard => 16,
    }
}

fn describe(t: &Tok<'_>) -> String {
    match t {
        Tok::Lit(v) => format!("value `{v}`"),
        Tok::Ident(n) => format!("name `{n}`"),
        Tok::Op(_) => "an operator".into(),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
        Tok::Eof => "the end of the text".into(),
    }
}

impl<'s, 't> Parser<'s, 't> {
    /// Parses `src` into `out.tree`; returns the root node and its depth.
    pub fn parse(
        src: &'s str,
        style: Style,
        prec: Precedence,
        max_depth: usize,
        out: Out<'t>,
    ) -> Result<(u32, usize), Error> {
        let mut lex = Lexer::new(src, style);
        let tok = lex.next_token()?;
        let mut p = Parser {
            src,
            lex,
            tok,
            prec,
            max_depth,
            nesting: 0,
            out,
        };
        p.out.tree.nodes.reserve((src.len() / 2 + 1).min(256));
        if matches!(p.tok.tok, Tok::Eof) {
            return Err(p.err_here("the expression is empty"));
        }
        let e = p.list()?;
        if !matches!(p.tok.tok, Tok::Eof) {
            let msg = if matches!(p.tok.tok, Tok::RParen) {
                "unmatched `)`".to_string()
            } else {
                format!(
                    "expected an operator or the end, found {}",
                    describe(&p.tok.tok)
                )
            };
            return Err(p.err_here(msg));
        }
        let depth = p.at(e).depth as usize;
        Ok((e, depth))
    }

    fn at(&self, id: u32) -> &Ir {
        &self.out.tree.nodes[id as usize]
    }

    /// Moves `scratch[base..]` to `items`: the range `(start, count)`.
    fn take_items(&mut self, base: usize) -> (u32, u32) {
        let items = &mut self.out.tree.items;
        let start = items.len();
        items.extend(self.out.scratch.drain(base..));
        (start as u32, (items.len() - start) as u32)
    }

    fn err_here(&self, msg: impl Into<String>) -> Error {
        Error::Syntax {
            pos: Pos::of(
                self.src,
                self.tok.start,
                self.tok.end.max(self.tok.start + 1),
            ),
            message: msg.into(),
        }
    }

    fn bump(&mut self) -> Result<Token<'s>, Error> {
        let next = self.lex.next_token()?;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    fn node(&mut self, kind: IrKind, start: usize, end: usize, depth: usize) -> Result<u32, Error> {
        if depth > self.max_depth {
            return Err(self.err_depth(depth, start, end));
        }
        let nodes = &mut self.out.tree.nodes;
        nodes.push(Ir {
            kind,
            start: start as u32,
            end: end as u32,
            depth: depth as u32,
        });
        Ok((nodes.len() - 1) as u32)
    }

    #[cold]
    #[inline(never)]
    fn err_depth(&self, depth: usize, start: usize, end: usize) -> Error {
        Error::Limit {
            pos: Pos::of(self.src, start, end),
            message: format!(
                "expression nested too deeply ({depth} levels, limit {}; raise Limits::max_depth or split it)",
                self.max_depth
            ),
        }
    }

    /// `a, b, c` at the top level or inside parentheses: a vector when there is a comma.
    fn list(&mut self) -> Result<u32, Error> {
        let first = self.expr(0)?;
        if !matches!(self.tok.tok, Tok::Comma) {
            return Ok(first);
        }
        let (start, mut depth, mut end) = {
            let f = self.at(first);
            (f.start as usize, f.depth as usize, f.end as usize)
        };
        let base = self.out.scratch.len();
        self.out.scratch.push(first);
        while matches!(self.tok.tok, Tok::Comma) {
            self.bump()?;
            let e = self.expr(0)?;
            depth = depth.max(self.at(e).depth as usize);
            end = self.at(e).end as usize;
            self.out.scratch.push(e);
        }
        let (st, n) = self.take_items(base);
        self.node(IrKind::List(st, n), start, end, depth + 1)
    }

    fn expr(&mut self, min_bp: u8) -> Result<u32, Error> {
        self.nesting += 1;
        if self.nesting > self.max_depth {
            return Err(self.err_limit());
        }
        let r = self.expr_inner(min_bp);
        self.nesting -= 1;
        r
    }

    fn err_limit(&self) -> Error {
        Error::Limit {
            pos: Pos::of(
                self.src,
                self.tok.start,
                self.tok.end.max(self.tok.start + 1),
            ),
            message: format!(
                "expression nested too deeply (limit {}; raise Limits::max_depth or split it)",
                self.max_depth
            ),
        }
    }

    // The parser recurses once per nesting level (expr -> expr_inner -> prefix -> paren
    // -> list -> expr for parentheses), so these frames are kept small: error messages
    // are built in separate cold functions, and each kind of operand has its own
    // function, so that a parenthesis does not carry the locals of a call's arguments.
    // That is what lets the default `Limits::max_depth` of 255 fit a 2 MiB thread with
    // room to spare in debug builds (tests/stack.rs).

    fn expr_inner(&mut self, min_bp: u8) -> Result<u32, Error> {
        let mut lhs = self.prefix()?;
        while let Tok::Op(o) = &self.tok.tok {
            let Some(op) = binop(*o) else {
                return Err(self.err_not_infix());
            };
            let (l, r) = binding(self.prec, op);
            if l < min_bp {
                break;
            }
            self.bump()?;
            if matches!(self.tok.tok, Tok::Eof) {
                return Err(self.err_no_rhs(op));
            }
            let rhs = self.expr(r)?;
            lhs = self.binary(op, lhs, rhs)?;
        }
        Ok(lhs)
    }

    fn binary(&mut self, op: BinOp, lhs: u32, rhs: u32) -> Result<u32, Error> {
        let (l, r) = (self.at(lhs), self.at(rhs));
        let (start, end, depth) = (l.start, r.end, l.depth.max(r.depth) + 1);
        self.node(
            IrKind::Binary(op, lhs, rhs),
            start as usize,
            end as usize,
            depth as usize,
        )
    }

    #[cold]
    #[inline(never)]
    fn err_not_infix(&self) -> Error {
        self.err_here("`not` is a prefix operator; did you mean `<>` or `and not`?")
    }

    #[cold]
    #[inline(never)]
    fn err_no_rhs(&self, op: BinOp) -> Error {
        self.err_here(format!("`{}` needs a right operand", op.symbol()))
    }

    fn prefix(&mut self) -> Result<u32, Error> {
        let t = self.bump()?;
        match t.tok {
            Tok::Lit(v) => self.node(IrKind::Const(v), t.start, t.end, 1),
            Tok::Op(o @ (OpTok::Minus | OpTok::Plus | OpTok::Not)) => self.unary(o, t.start),
            Tok::LParen => self.paren(t.start),
            Tok::Ident(name) => self.ident(name, t.start, t.end),
            other => Err(self.err_operand(other, t.start, t.end)),
        }
    }

    #[inline(never)]
    fn unary(&mut self, o: OpTok, start: usize) -> Result<u32, Error> {
        let op = match o {
            OpTok::Minus => UnOp::Neg,
            OpTok::Plus => UnOp::Plus,
            _ => UnOp::Not,
        };
        let operand = self.expr(unary_bp(self.prec))?;
        let (end, depth) = (self.at(operand).end, self.at(operand).depth + 1);
        self.node(
            IrKind::Unary(op, operand),
            start,
            end as usize,
            depth as usize,
        )
    }

    #[inline(never)]
    fn paren(&mut self, start: usize) -> Result<u32, Error> {
        if matches!(self.tok.tok, Tok::RParen) {
            return Err(self.err_empty_parens());
        }
        let inner = self.list()?;
        if !matches!(self.tok.tok, Tok::RParen) {
            return Err(self.err_no_close());
        }
        let close = self.bump()?;
        let e = &mut self.out.tree.nodes[inner as usize];
        e.start = start as u32;
        e.end = close.end as u32;
        Ok(inner)
    }

    #[cold]
    #[inline(never)]
    fn err_empty_parens(&self) -> Error {
        self.err_here("empty parentheses; put an expression inside")
    }

    #[cold]
    #[inline(never)]
    fn err_no_close(&self) -> Error {
        self.err_here(format!(
            "expected `)` to close the `(`, found {}",
            describe(&self.tok.tok)
        ))
    }

    #[inline(never)]
    fn ident(&mut self, name: &'s str, start: usize, end: usize) -> Result<u32, Error> {
        if !matches!(self.tok.tok, Tok::LParen) {
            let id = self.node(IrKind::Const(Value::Null), start, end, 1)?;
            self.out.pending.push(Pending::Name {
                id,
                a: start as u32,
                z: end as u32,
            });
            return Ok(id);
        }
        self.bump()?;
        let base = self.out.scratch.len();
        let mut depth = 0;
        if !matches!(self.tok.tok, Tok::RParen) {
            loop {
                let a = self.expr(0)?;
                depth = depth.max(self.at(a).depth as usize);
                self.out.scratch.push(a);
                match self.tok.tok {
                    Tok::Comma => {
                        self.bump()?;
                    }
                    Tok::RParen => break,
                    _ => return Err(self.err_bad_args(name)),
                }
            }
        }
        let close = self.bump()?;
        let (st, n) = self.take_items(base);
        let id = self.node(IrKind::Const(Value::Null), start, close.end, depth + 1)?;
        self.out.pending.push(Pending::Call {
            id,
            a: start as u32,
            z: end as u32,
            st,
            n,
        });
        Ok(id)
    }

    #[cold]
    #[inline(never)]
    fn err_bad_args(&self, name: &str) -> Error {
        self.err_here(format!(
            "expected `,` or `)` in the arguments of `{name}`, found {}",
            describe(&self.tok.tok)
        ))
    }

    #[cold]
    #[inline(never)]
    fn err_operand(&self, other: Tok<'s>, start: usize, end: usize) -> Error {
        let msg = match other {
            Tok::Eof => "unexpected end of the expression; an operand is missing".to_string(),
            Tok::RParen => "unexpected `)`; an operand is missing".to_string(),
            Tok::Comma => "unexpected `,`; an operand is missing".to_string(),
            Tok::Op(_) => "an operator cannot start an operand".to_string(),
            o => format!("unexpected {}", describe(&o)),
        };
        Error::Syntax {
            pos: Pos::of(self.src, start, end.max(start + 1)),
            message: msg,
        }
    }
}
