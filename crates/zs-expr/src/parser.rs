//! Pratt parser producing an AST with source spans, under both precedence modes.

use crate::error::{Error, Pos};
use crate::lexer::{Lexer, OpTok, Style, Tok, Token};
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

/// A syntax node; children are indices into [`Ast::nodes`], argument and item lists
/// ranges `(start, count)` of [`Ast::items`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExprKind {
    Lit(Value),
    /// A name: its byte range in the source text.
    Name(u32, u32),
    Unary(UnOp, u32),
    Binary(BinOp, u32, u32),
    /// A call: the name's byte range, then the argument list.
    Call(u32, u32, u32, u32),
    List(u32, u32),
}

/// A parsed text: every node in one arena (one allocation instead of one per node). Its
/// vectors are reused from one parse to the next (see `resolve::Scratch`).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Ast {
    pub nodes: Vec<Expr>,
    pub items: Vec<u32>,
    /// Argument and item lists being collected (a stack: inner lists finish first).
    pub scratch: Vec<u32>,
    pub root: u32,
}

impl Ast {
    /// Empties the vectors, keeping their memory.
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.items.clear();
        self.scratch.clear();
        self.root = 0;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expr {
    pub kind: ExprKind,
    pub start: usize,
    pub end: usize,
    pub depth: usize,
}

pub(crate) struct Parser<'s> {
    src: &'s str,
    lex: Lexer<'s>,
    tok: Token<'s>,
    prec: Precedence,
    max_depth: usize,
    nesting: usize,
    nodes: Vec<Expr>,
    items: Vec<u32>,
    /// Argument and item lists being collected (a stack: inner lists finish first).
    scratch: Vec<u32>,
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

impl<'s> Parser<'s> {
    pub fn parse(
        src: &'s str,
        style: Style,
        prec: Precedence,
        max_depth: usize,
        mut bufs: Ast,
    ) -> Result<Ast, Error> {
        bufs.clear();
        let mut lex = Lexer::new(src, style);
        let tok = lex.next_token()?;
        let mut p = Parser {
            src,
            lex,
            tok,
            prec,
            max_depth,
            nesting: 0,
            nodes: bufs.nodes,
            items: bufs.items,
            scratch: bufs.scratch,
        };
        p.nodes.reserve((src.len() / 2 + 1).min(256));
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
        Ok(Ast {
            nodes: p.nodes,
            items: p.items,
            scratch: p.scratch,
            root: e,
        })
    }

    fn at(&self, id: u32) -> &Expr {
        &self.nodes[id as usize]
    }

    /// Moves `scratch[base..]` to `items`: the range `(start, count)`.
    fn take_items(&mut self, base: usize) -> (u32, u32) {
        let start = self.items.len();
        self.items.extend(self.scratch.drain(base..));
        (start as u32, (self.items.len() - start) as u32)
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

    fn node(
        &mut self,
        kind: ExprKind,
        start: usize,
        end: usize,
        depth: usize,
    ) -> Result<u32, Error> {
        if depth > self.max_depth {
            return Err(Error::Limit {
                pos: Pos::of(self.src, start, end),
                message: format!(
                    "expression nested too deeply ({depth} levels, limit {}; raise Limits::max_depth or split it)",
                    self.max_depth
                ),
            });
        }
        self.nodes.push(Expr {
            kind,
            start,
            end,
            depth,
        });
        Ok((self.nodes.len() - 1) as u32)
    }

    /// `a, b, c` at the top level or inside parentheses: a vector when there is a comma.
    fn list(&mut self) -> Result<u32, Error> {
        let first = self.expr(0)?;
        if !matches!(self.tok.tok, Tok::Comma) {
            return Ok(first);
        }
        let (start, mut depth, mut end) = {
            let f = self.at(first);
            (f.start, f.depth, f.end)
        };
        let base = self.scratch.len();
        self.scratch.push(first);
        while matches!(self.tok.tok, Tok::Comma) {
            self.bump()?;
            let e = self.expr(0)?;
            depth = depth.max(self.at(e).depth);
            end = self.at(e).end;
            self.scratch.push(e);
        }
        let (st, n) = self.take_items(base);
        self.node(ExprKind::List(st, n), start, end, depth + 1)
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

    fn expr_inner(&mut self, min_bp: u8) -> Result<u32, Error> {
        let mut lhs = self.prefix()?;
        while let Tok::Op(o) = &self.tok.tok {
            let op = match binop(*o) {
                Some(b) => b,
                None => {
                    return Err(self
                        .err_here("`not` is a prefix operator; did you mean `<>` or `and not`?"))
                }
            };
            let (l, r) = binding(self.prec, op);
            if l < min_bp {
                break;
            }
            self.bump()?;
            if matches!(self.tok.tok, Tok::Eof) {
                return Err(self.err_here(format!("`{}` needs a right operand", op.symbol())));
            }
            let rhs = self.expr(r)?;
            let (l, r) = (self.at(lhs), self.at(rhs));
            let (start, end, depth) = (l.start, r.end, l.depth.max(r.depth) + 1);
            lhs = self.node(ExprKind::Binary(op, lhs, rhs), start, end, depth)?;
        }
        Ok(lhs)
    }

    fn prefix(&mut self) -> Result<u32, Error> {
        let t = self.bump()?;
        match t.tok {
            Tok::Lit(v) => self.node(ExprKind::Lit(v), t.start, t.end, 1),
            Tok::Op(o @ (OpTok::Minus | OpTok::Plus | OpTok::Not)) => {
                let op = match o {
                    OpTok::Minus => UnOp::Neg,
                    OpTok::Plus => UnOp::Plus,
                    _ => UnOp::Not,
                };
                let operand = self.expr(unary_bp(self.prec))?;
                let (end, depth) = (self.at(operand).end, self.at(operand).depth + 1);
                self.node(ExprKind::Unary(op, operand), t.start, end, depth)
            }
            Tok::LParen => {
                if matches!(self.tok.tok, Tok::RParen) {
                    return Err(self.err_here("empty parentheses; put an expression inside"));
                }
                let inner = self.list()?;
                if !matches!(self.tok.tok, Tok::RParen) {
                    return Err(self.err_here(format!(
                        "expected `)` to close the `(`, found {}",
                        describe(&self.tok.tok)
                    )));
                }
                let close = self.bump()?;
                let e = &mut self.nodes[inner as usize];
                e.start = t.start;
                e.end = close.end;
                Ok(inner)
            }
            Tok::Ident(name) => {
                if !matches!(self.tok.tok, Tok::LParen) {
                    return self.node(
                        ExprKind::Name(t.start as u32, t.end as u32),
                        t.start,
                        t.end,
                        1,
                    );
                }
                self.bump()?;
                let base = self.scratch.len();
                let mut depth = 0;
                if !matches!(self.tok.tok, Tok::RParen) {
                    loop {
                        let a = self.expr(0)?;
                        depth = depth.max(self.at(a).depth);
                        self.scratch.push(a);
                        match self.tok.tok {
                            Tok::Comma => {
                                self.bump()?;
                            }
                            Tok::RParen => break,
                            _ => {
                                return Err(self.err_here(format!(
                                    "expected `,` or `)` in the arguments of `{name}`, found {}",
                                    describe(&self.tok.tok)
                                )))
                            }
                        }
                    }
                }
                let close = self.bump()?;
                let (st, n) = self.take_items(base);
                self.node(
                    ExprKind::Call(t.start as u32, t.end as u32, st, n),
                    t.start,
                    close.end,
                    depth + 1,
                )
            }
            other => {
                let msg = match other {
                    Tok::Eof => {
                        "unexpected end of the expression; an operand is missing".to_string()
                    }
                    Tok::RParen => "unexpected `)`; an operand is missing".to_string(),
                    Tok::Comma => "unexpected `,`; an operand is missing".to_string(),
                    Tok::Op(_) => "an operator cannot start an operand".to_string(),
                    o => format!("unexpected {}", describe(&o)),
                };
                Err(Error::Syntax {
                    pos: Pos::of(self.src, t.start, t.end.max(t.start + 1)),
                    message: msg,
                })
            }
        }
    }
}
