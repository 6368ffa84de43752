//! Binary save and load of compiled expressions.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! magic "ZSEX" | version u8 (=1) | flags u8 (=0) | body_len u32 | body | crc32 u32
//! body := source:str  vars:[str]  fns:[str]  consts:[value]  args:[u32]  nodes:[node]
//! str  := len u32, UTF-8 bytes          [T] := count u32, T…
//! value:= tag u8 (0 null, 1 bool u8, 2 int i64, 3 uint u64, 4 float f64 bits, 5 str, 6 vec [value])
//! node := tag u8, operands (u8 op codes / u32 indices), span start u32, span end u32
//! ```
//!
//! The CRC-32 (IEEE) covers everything before it. Loading checks the checksum, every
//! count against the bytes left (nothing is allocated from an unchecked length), every
//! index (children come before their parent, the root is last), arities, nesting depth
//! against the engine's limits, and resolves function names in the loading engine.

use crate::builtins::Builtin;
use crate::error::Error;
use crate::parser::{BinOp, UnOp};
use crate::program::{Node, Program};
use crate::value::Value;
use crate::Engine;

const MAGIC: &[u8; 4] = b"ZSEX";
/// Current format version.
pub const FORMAT_VERSION: u8 = 1;

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}
static CRC: [u32; 256] = crc_table();

/// CRC-32 (IEEE 802.3).
pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

fn op_code(op: BinOp) -> u8 {
    BinOp::ALL
        .iter()
        .position(|o| *o == op)
        .map_or(255, |i| i as u8)
}
fn un_code(op: UnOp) -> u8 {
    match op {
        UnOp::Neg => 0,
        UnOp::Plus => 1,
        UnOp::Not => 2,
    }
}

struct W(Vec<u8>);
impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.u8(0),
            Value::Bool(b) => {
                self.u8(1);
                self.u8(u8::from(*b));
            }
            Value::Int(i) => {
                self.u8(2);
                self.0.extend_from_slice(&i.to_le_bytes());
            }
            Value::UInt(u) => {
                self.u8(3);
                self.0.extend_from_slice(&u.to_le_bytes());
            }
            Value::Float(f) => {
                self.u8(4);
                self.0.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Str(s) => {
                self.u8(5);
                self.str(s);
            }
            Value::Vec(items) => {
                self.u8(6);
                self.u32(items.len() as u32);
                for it in items {
                    self.value(it);
                }
            }
        }
    }
}

impl Program {
    /// Saves the compiled form. Load it with [`Engine::load`]; the loading engine must have
    /// the user functions the expression calls registered (they are saved by name).
    ///
    /// Format version 1 (all integers little-endian):
    ///
    /// ```text
    /// magic "ZSEX" | version u8 (=1) | flags u8 (=0) | body_len u32 | body | crc32 u32
    /// body  := source:str  vars:[str]  fns:[str]  consts:[value]  args:[u32]  nodes:[node]
    /// str   := len u32, UTF-8 bytes            [T] := count u32, then the T's
    /// value := tag u8: 0 null | 1 bool u8 | 2 int i64 | 3 uint u64 | 4 float f64 bits
    ///          | 5 str | 6 vector [value]
    /// node  := tag u8, operands (u8 operator / built-in codes, u32 indices),
    ///          span start u32, span end u32 (byte offsets into the source)
    /// ```
    ///
    /// The CRC-32 (IEEE) covers every byte before it. Nodes are in evaluation order: children
    /// before their parent, the root last. Loading verifies all of that and never trusts a
    /// length before checking it against the bytes present.
    pub fn save(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(
            64 + self.text.len() + self.nodes.len() * 16,
        ));
        w.0.extend_from_slice(MAGIC);
        w.u8(FORMAT_VERSION);
        w.u8(0);
        w.u32(0); // body length, patched below
        w.str(self.source());
        let names = self.names();
        w.u32(names.len() as u32);
        for v in names.iter() {
            w.str(v);
        }
        w.u32(self.fns.len() as u32);
        for f in &self.fns {
            w.str(&f.name);
        }
        w.u32(self.consts.len() as u32);
        for c in &self.consts {
            w.value(c);
        }
        w.u32(self.args.len() as u32);
        for a in &self.args {
            w.u32(*a);
        }
        w.u32(self.nodes.len() as u32);
        for (n, (s, e)) in self.nodes.iter().zip(&self.spans[self.nvars as usize..]) {
            match *n {
                Node::Const(k) => {
                    w.u8(0);
                    w.u32(k);
                }
                Node::Var(v) => {
                    w.u8(1);
                    w.u32(v);
                }
                Node::Unary(op, a) => {
                    w.u8(2);
                    w.u8(un_code(op));
                    w.u32(a);
                }
                Node::Bin(op, a, b) => {
                    w.u8(3);
                    w.u8(op_code(op));
                    w.u32(a);
                    w.u32(b);
                }
                Node::BinK(op, a, k) => {
                    w.u8(4);
                    w.u8(op_code(op));
                    w.u32(a);
                    w.u32(k);
                }
                Node::VarK(op, v, k) => {
                    w.u8(5);
                    w.u8(op_code(op));
                    w.u32(v);
                    w.u32(k);
                }
                Node::And(a, b) => {
                    w.u8(6);
                    w.u32(a);
                    w.u32(b);
                }
                Node::Or(a, b) => {
                    w.u8(7);
                    w.u32(a);
                    w.u32(b);
                }
                Node::If(c, a, b) => {
                    w.u8(8);
                    w.u32(c);
                    w.u32(a);
                    w.u32(b);
                }
                Node::Call(b, st, n) => {
                    w.u8(9);
                    w.u8(b.code());
                    w.u32(st);
                    w.u32(n);
                }
                Node::User(f, st, n) => {
                    w.u8(10);
                    w.u32(f);
                    w.u32(st);
                    w.u32(n);
                }
                Node::List(st, n) => {
                    w.u8(11);
                    w.u32(st);
                    w.u32(n);
                }
            }
            w.u32(*s);
            w.u32(*e);
        }
        let body_len = (w.0.len() - 10) as u32;
        w.0[6..10].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32(&w.0);
        w.u32(crc);
        w.0
    }
}

struct R<'b> {
    b: &'b [u8],
    i: usize,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Load {
        message: msg.into(),
    }
}

impl<'b> R<'b> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'b [u8], Error> {
        if self.b.len() - self.i < n {
            return Err(bad(format!("truncated while reading {what}")));
        }
        let s = &self.b[self.i..self.i + n];
        self.i += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    /// A count of items each at least `min_size` bytes long, checked against what is left.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize, Error> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_size) > self.b.len() - self.i {
            return Err(bad(format!("{what} count {n} is larger than the blob")));
        }
        Ok(n)
    }
    fn str(&mut self, max: usize, what: &str) -> Result<String, Error> {
        let n = self.count(1, what)?;
        if n > max {
            return Err(bad(format!("{what} is {n} bytes, over the limit of {max}")));
        }
        let s = self.take(n, what)?;
        std::str::from_utf8(s)
            .map(str::to_string)
            .map_err(|_| bad(format!("{what} is not UTF-8")))
    }
    fn value(&mut self, depth: usize, max_depth: usize, max_str: usize) -> Result<Value, Error> {
        if depth > max_depth {
            return Err(bad("constant vectors nested too deeply"));
        }
        Ok(match self.u8("constant tag")? {
            0 => Value::Null,
            1 => match self.u8("bool")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                _ => return Err(bad("bad bool byte")),
            },
            2 => Value::Int(self.u64("int")? as i64),
            3 => Value::UInt(self.u64("uint")?),
            4 => Value::Float(f64::from_bits(self.u64("float")?)),
            5 => Value::Str(self.str(max_str, "string constant")?),
            6 => {
                let n = self.count(1, "vector")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1, max_depth, max_str)?);
                }
                Value::Vec(items)
            }
            t => return Err(bad(format!("unknown constant tag {t}"))),
        })
    }
}

fn binop(c: u8) -> Result<BinOp, Error> {
    BinOp::ALL
        .get(c as usize)
        .copied()
        .ok_or_else(|| bad(format!("unknown operator code {c}")))
}

impl Engine {
    /// Loads a compiled expression saved by [`Program::save`]. A truncated, corrupted or
    /// foreign blob, a newer format version, or a function this engine does not have is an
    /// error, never a panic. The program gets this engine's evaluation limits.
    pub fn load(&self, blob: &[u8]) -> Result<Program, Error> {
        let limits = *self.limits();
        if blob.len() > limits.max_blob {
            return Err(bad(format!(
                "blob is {} bytes, over Limits::max_blob ({})",
                blob.len(),
                limits.max_blob
            )));
        }
        if blob.len() < 14 || &blob[..4] != MAGIC {
            return Err(bad("not a zs-expr compiled expression (bad magic)"));
        }
        if blob[4] != FORMAT_VERSION {
            return Err(bad(format!(
                "format version {} is not supported (this build reads {FORMAT_VERSION})",
                blob[4]
            )));
        }
        let body_len = u32::from_le_bytes([blob[6], blob[7], blob[8], blob[9]]) as usize;
        if body_len != blob.len() - 14 {
            return Err(bad("length field does not match the blob (truncated?)"));
        }
        let (data, tail) = blob.split_at(blob.len() - 4);
        let want = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        if crc32(data) != want {
            return Err(bad("checksum mismatch (corrupted blob)"));
        }
        let mut r = R { b: data, i: 10 };
        let source = r.str(limits.max_len, "source")?;
        let nvars = r.count(4, "variables")?;
        let mut vars = Vec::with_capacity(nvars);
        for _ in 0..nvars {
            vars.push(r.str(limits.max_len, "variable name")?);
        }
        let nfns = r.count(4, "functions")?;
        let mut fns = Vec::with_capacity(nfns);
        for _ in 0..nfns {
            let name = r.str(limits.max_len, "function name")?;
            match self.function_by_name(&name) {
                Some(f) => fns.push(f),
                None => {
                    return Err(bad(format!(
                        "the expression calls `{name}`, which is not registered in this engine"
                    )))
                }
            }
        }
        let nconsts = r.count(1, "constants")?;
        let mut consts = Vec::with_capacity(nconsts);
        for _ in 0..nconsts {
            consts.push(r.value(0, limits.max_depth, limits.max_string)?);
        }
        let nargs = r.count(4, "arguments")?;
        let mut args = Vec::with_capacity(nargs);
        for _ in 0..nargs {
            args.push(r.u32("argument")?);
        }
        let nnodes = r.count(13, "nodes")?;
        if nnodes == 0 {
            return Err(bad("no nodes"));
        }
        let mut nodes = Vec::with_capacity(nnodes);
        // the names go after the source in the program's text
        let mut text =
            String::with_capacity(source.len() + vars.iter().map(String::len).sum::<usize>());
        text.push_str(&source);
        let mut spans = Vec::with_capacity(vars.len() + nnodes);
        for v in &vars {
            let a = text.len() as u32;
            text.push_str(v);
            spans.push((a, text.len() as u32));
        }
        let mut depth: Vec<usize> = Vec::with_capacity(nnodes);
        for i in 0..nnodes {
            let child = |x: u32| -> Result<usize, Error> {
                if (x as usize) < i {
                    Ok(depth[x as usize])
                } else {
                    Err(bad(format!(
                        "node {i} refers to node {x}, which does not come before it"
                    )))
                }
            };
            let k_ok = |k: u32| -> Result<(), Error> {
                if (k as usize) < consts.len() {
                    Ok(())
                } else {
                    Err(bad(format!("constant index {k} out of range")))
                }
            };
            let v_ok = |v: u32| -> Result<(), Error> {
                if (v as usize) < vars.len() {
                    Ok(())
                } else {
                    Err(bad(format!("variable index {v} out of range")))
                }
            };
            let list = |st: u32, n: u32| -> Result<usize, Error> {
                let end = (st as usize)
                    .checked_add(n as usize)
                    .filter(|&e| e <= args.len());
                let Some(end) = end else {
                    return Err(bad("argument list out of range"));
                };
                let mut d = 0;
                for &a in &args[st as usize..end] {
                    d = d.max(child(a)?);
                }
                Ok(d)
            };
            let tag = r.u8("node tag")?;
            let (node, d) = match tag {
                0 => {
                    let k = r.u32("node")?;
                    k_ok(k)?;
                    (Node::Const(k), 0)
                }
                1 => {
                    let v = r.u32("node")?;
                    v_ok(v)?;
                    (Node::Var(v), 0)
                }
                2 => {
                    let op = match r.u8("unary op")? {
                        0 => UnOp::Neg,
                        1 => UnOp::Plus,
                        2 => UnOp::Not,
                        c => return Err(bad(format!("unknown unary operator code {c}"))),
                    };
                    let a = r.u32("node")?;
                    (Node::Unary(op, a), child(a)?)
                }
                3..=5 => {
                    let op = binop(r.u8("operator")?)?;
                    let (a, b) = (r.u32("node")?, r.u32("node")?);
                    match tag {
                        3 => (Node::Bin(op, a, b), child(a)?.max(child(b)?)),
                        4 => {
                            k_ok(b)?;
                            (Node::BinK(op, a, b), child(a)?)
                        }
                        _ => {
                            v_ok(a)?;
                            k_ok(b)?;
                            (Node::VarK(op, a, b), 0)
                        }
                    }
                }
                6 | 7 => {
                    let (a, b) = (r.u32("node")?, r.u32("node")?);
                    let d = child(a)?.max(child(b)?);
                    (
                        if tag == 6 {
                            Node::And(a, b)
                        } else {
                            Node::Or(a, b)
                        },
                        d,
                    )
                }
                8 => {
                    let (c, a, b) = (r.u32("node")?, r.u32("node")?, r.u32("node")?);
                    (Node::If(c, a, b), child(c)?.max(child(a)?).max(child(b)?))
                }
                9 => {
                    let code = r.u8("builtin")?;
                    let b = Builtin::from_code(code)
                        .ok_or_else(|| bad(format!("unknown built-in code {code}")))?;
                    let (st, n) = (r.u32("node")?, r.u32("node")?);
                    let (min, max) = b.arity();
                    if (n as usize) < min || (n as usize) > max {
                        return Err(bad(format!("built-in {} with {n} arguments", b.name())));
                    }
                    (Node::Call(b, st, n), list(st, n)?)
                }
                10 => {
                    let (f, st, n) = (r.u32("node")?, r.u32("node")?, r.u32("node")?);
                    let Some(func) = fns.get(f as usize) else {
                        return Err(bad("function index out of range"));
                    };
                    if !func.arity.accepts(n as usize) {
                        return Err(bad(format!(
                            "function `{}` does not take {n} arguments here",
                            func.name
                        )));
                    }
                    (Node::User(f, st, n), list(st, n)?)
                }
                11 => {
                    let (st, n) = (r.u32("node")?, r.u32("node")?);
                    (Node::List(st, n), list(st, n)?)
                }
                t => return Err(bad(format!("unknown node tag {t}"))),
            };
            let d = d + 1;
            if d > limits.max_depth {
                return Err(bad(format!(
                    "expression deeper than Limits::max_depth ({})",
                    limits.max_depth
                )));
            }
            let (s, e) = (r.u32("span")?, r.u32("span")?);
            if s > e || e as usize > source.len() {
                return Err(bad("source span out of range"));
            }
            nodes.push(node);
            spans.push((s, e));
            depth.push(d);
        }
        if r.i != data.len() {
            return Err(bad("trailing bytes after the nodes"));
        }
        let mut p = Program {
            text,
            src_len: source.len() as u32,
            nodes,
            spans: spans.into(),
            nvars: vars.len() as u32,
            args: args.into(),
            consts: consts.into(),
            fns,
            max_steps: limits.max_steps,
            max_str: limits.max_string,
            numeric: false,
            typed: crate::typed::Typed::default(),
        };
        p.finish(true);
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subtrees_cannot_blow_up_evaluation() {
        // A hostile blob: node i = node(i-1) + node(i-1), 60 levels: 2^60 evaluations.
        let eng = Engine::new();
        let mut p = eng.compile("1").unwrap();
        for i in 1..60u32 {
            p.nodes.push(Node::Bin(BinOp::Add, i - 1, i - 1));
            p.spans.push((0, 1));
        }
        let q = eng.load(&p.save()).unwrap();
        assert!(
            !q.numeric,
            "fast path refused: worst case exceeds the step limit"
        );
        let t = std::time::Instant::now();
        assert!(matches!(q.eval(&crate::NoVars), Err(Error::Limit { .. })));
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn crc_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
