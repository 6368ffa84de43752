//! Tokens of both lexical styles (Pascal and C) and the default that accepts both.

use crate::error::{Error, Pos};
use crate::value::Value;

/// Which lexical conventions the source text uses.
///
/// | element | `Pascal` | `C` | `Both` (default) |
/// |---|---|---|---|
/// | `{..}` `(*..*)` comments | yes | no | yes |
/// | `//..` line comments | yes | yes | yes |
/// | `/*..*/` comments | no | yes | yes |
/// | `#..` line comments | no | yes | when `#` is not followed by a digit or `$` |
/// | `'it''s'` strings, `#13` / `#$0D` char codes | yes | no | yes |
/// | `"a\n"` strings with backslash escapes | no | yes | yes |
/// | `'a\n'` single-quoted strings with backslash escapes | no | yes | no |
/// | `$FF` hex | yes | no | yes |
/// | `0xFF` hex | no | yes | yes |
///
/// Operators, numbers and names are the same in every style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// Pascal: `{}` and `(* *)` comments, `'..'` strings with `''` and `#13`, `$FF`.
    Pascal,
    /// C: `/* */` and `#` comments, `".."` and `'..'` strings with `\` escapes, `0xFF`.
    C,
    /// Accepts both (the default).
    #[default]
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpTok {
    Plus,
    Minus,
    Star,
    Slash,
    Div,
    Mod,
    Caret,
    Shl,
    Shr,
    And,
    Or,
    Xor,
    Not,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok<'s> {
    Lit(Value),
    /// A name, borrowed from the source text.
    Ident(&'s str),
    Op(OpTok),
    LParen,
    RParen,
    Comma,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token<'s> {
    pub tok: Tok<'s>,
    pub start: usize,
    pub end: usize,
}

pub(crate) struct Lexer<'s> {
    src: &'s str,
    b: &'s [u8],
    i: usize,
    style: Style,
}

fn pascal(style: Style) -> bool {
    matches!(style, Style::Pascal | Style::Both)
}
fn cstyle(style: Style) -> bool {
    matches!(style, Style::C | Style::Both)
}

impl<'s> Lexer<'s> {
    pub fn new(src: &'s str, style: Style) -> Lexer<'s> {
        Lexer {
            src,
            b: src.as_bytes(),
            i: 0,
            style,
        }
    }

    fn err(&self, start: usize, end: usize, msg: impl Into<String>) -> Error {
        Error::Syntax {
            pos: Pos::of(self.src, start, end.max(start + 1)),
            message: msg.into(),
        }
    }

    fn peek(&self, k: usize) -> u8 {
        self.b.get(self.i + k).copied().unwrap_or(0)
    }

    /// Skips whitespace and comments.
    fn skip(&mut self) -> Result<(), Error> {
        loop {
            let c = self.peek(0);
            let start = self.i;
            if c.is_ascii_whitespace() {
                self.i += 1;
            } else if (c == b'/' && self.peek(1) == b'/') || (c == b'#' && self.hash_is_comment()) {
                self.line_comment();
            } else if c == b'/' && self.peek(1) == b'*' && cstyle(self.style) {
                self.block_comment(start, 2, "*/")?;
            } else if c == b'(' && self.peek(1) == b'*' && pascal(self.style) {
                self.block_comment(start, 2, "*)")?;
            } else if c == b'{' && pascal(self.style) {
                self.block_comment(start, 1, "}")?;
            } else {
                return Ok(());
            }
        }
    }

    fn hash_is_comment(&self) -> bool {
        match self.style {
            Style::C => true,
            Style::Pascal => false,
            Style::Both => !(self.peek(1).is_ascii_digit() || self.peek(1) == b'$'),
        }
    }

    fn line_comment(&mut self) {
        while self.i < self.b.len() && self.b[self.i] != b'\n' {
            self.i += 1;
        }
    }

    fn block_comment(&mut self, start: usize, open: usize, close: &str) -> Result<(), Error> {
        let rest = &self.src[self.i + open..];
        match rest.find(close) {
            Some(k) => {
                self.i += open + k + close.len();
                Ok(())
            }
            None => Err(self.err(
                start,
                start + open,
                format!("comment is never closed; add `{close}`"),
            )),
        }
    }

    pub fn next_token(&mut self) -> Result<Token<'s>, Error> {
        self.skip()?;
        let start = self.i;
        let c = self.peek(0);
        if self.i >= self.b.len() {
            return Ok(Token {
                tok: Tok::Eof,
                start,
                end: start,
            });
        }
        let tok = match c {
            b'0'..=b'9' | b'.' if c != b'.' || self.peek(1).is_ascii_digit() => self.number()?,
            b'$' => {
                if !pascal(self.style) {
                    return Err(self.err(
                        start,
                        start + 1,
                        "`$` hex numbers are Pascal style; write 0xFF in C style",
                    ));
                }
                self.i += 1;
                self.hex(start)?
            }
            b'\'' => {
                if self.style == Style::C {
                    self.c_string(b'\'')?
                } else {
                    self.pascal_string()?
                }
            }
            b'#' => self.pascal_string()?,
            b'"' => {
                if !cstyle(self.style) {
                    return Err(self.err(
                        start,
                        start + 1,
                        "double-quoted strings are C style; in Pascal style write 'text'",
                    ));
                }
                self.c_string(b'"')?
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                loop {
                    while matches!(self.peek(0), b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'0'..=b'9') {
                        self.i += 1;
                    }
                    // a dotted path (`param.lo`, `address.city`): one name, for nested
                    // fields; the dot must be followed by a letter or `_`
                    if self.peek(0) == b'.'
                        && matches!(self.peek(1), b'a'..=b'z' | b'A'..=b'Z' | b'_')
                    {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                let word = &self.src[start..self.i];
                // Keywords are 2 or 3 letters: lower-case into a tiny buffer and match.
                let kw = if (2..=3).contains(&word.len()) {
                    let mut w = [0u8; 3];
                    for (d, c) in w.iter_mut().zip(word.bytes()) {
                        *d = c.to_ascii_lowercase();
                    }
                    match &w {
                        b"and" => Some(OpTok::And),
                        b"or\0" => Some(OpTok::Or),
                        b"xor" => Some(OpTok::Xor),
                        b"not" => Some(OpTok::Not),
                        b"div" => Some(OpTok::Div),
                        b"mod" => Some(OpTok::Mod),
                        b"shl" => Some(OpTok::Shl),
                        b"shr" => Some(OpTok::Shr),
                        _ => None,
                    }
                } else {
                    None
                };
                match kw {
                    Some(op) => Tok::Op(op),
                    None => Tok::Ident(word),
                }
            }
            b'(' => self.one(Tok::LParen),
            b')' => self.one(Tok::RParen),
            b',' => self.one(Tok::Comma),
            b'+' => self.one(Tok::Op(OpTok::Plus)),
            b'-' => self.one(Tok::Op(OpTok::Minus)),
            b'*' => self.one(Tok::Op(OpTok::Star)),
            b'/' => self.one(Tok::Op(OpTok::Slash)),
            b'%' => self.one(Tok::Op(OpTok::Mod)),
            b'^' => self.one(Tok::Op(OpTok::Caret)),
            b'&' => self.two(b'&', OpTok::And, OpTok::And),
            b'|' => self.two(b'|', OpTok::Or, OpTok::Or),
            b'!' => self.two(b'=', OpTok::Ne, OpTok::Not),
            b'=' => match self.peek(1) {
                b'=' => self.n(2, OpTok::Eq),
                b'<' => self.n(2, OpTok::Le),
                b'>' => self.n(2, OpTok::Ge),
                _ => self.n(1, OpTok::Eq),
            },
            b'<' => match self.peek(1) {
                b'=' => self.n(2, OpTok::Le),
                b'>' => self.n(2, OpTok::Ne),
                b'<' => self.n(2, OpTok::Shl),
                _ => self.n(1, OpTok::Lt),
            },
            b'>' => match self.peek(1) {
                b'=' => self.n(2, OpTok::Ge),
                b'<' => self.n(2, OpTok::Ne),
                b'>' => self.n(2, OpTok::Shr),
                _ => self.n(1, OpTok::Gt),
            },
            _ => {
                let ch = self.src[start..].chars().next().unwrap_or('?');
                let hint = match ch {
                    '{' | '}' => " (braces are Pascal comments; use the Pascal or default style)",
                    _ => "",
                };
                return Err(self.err(
                    start,
                    start + ch.len_utf8(),
                    format!("unexpected character `{ch}`{hint}"),
                ));
            }
        };
        Ok(Token {
            tok,
            start,
            end: self.i,
        })
    }

    fn one(&mut self, t: Tok<'s>) -> Tok<'s> {
        self.i += 1;
        t
    }
    fn n(&mut self, k: usize, op: OpTok) -> Tok<'s> {
        self.i += k;
        Tok::Op(op)
    }
    fn two(&mut self, second: u8, doubled: OpTok, single: OpTok) -> Tok<'s> {
        if self.peek(1) == second {
            self.n(2, doubled)
        } else {
            self.n(1, single)
        }
    }

    fn digits(&mut self) -> usize {
        let s = self.i;
        while self.peek(0).is_ascii_digit() {
            self.i += 1;
        }
        self.i - s
    }

    fn number(&mut self) -> Result<Tok<'s>, Error> {
        let start = self.i;
        if self.peek(0) == b'0' && matches!(self.peek(1), b'x' | b'X') {
            if !cstyle(self.style) {
                return Err(self.err(
                    start,
                    start + 2,
                    "`0x` hex numbers are C style; write $FF in Pascal style",
                ));
            }
            self.i += 2;
            return self.hex(start);
        }
        self.digits();
        let mut float = false;
        if self.peek(0) == b'.' && self.peek(1).is_ascii_digit() {
            self.i += 1;
            self.digits();
            float = true;
        }
        if matches!(self.peek(0), b'e' | b'E') {
            let save = self.i;
            self.i += 1;
            if matches!(self.peek(0), b'+' | b'-') {
                self.i += 1;
            }
            if self.digits() == 0 {
                self.i = save;
                return Err(self.err(start, save + 1, "exponent needs digits, e.g. 1.0e-2"));
            }
            float = true;
        }
        if matches!(self.peek(0), b'a'..=b'z' | b'A'..=b'Z' | b'_') {
            return Err(self.err(
                start,
                self.i + 1,
                "a number runs into a name; put an operator or space between them",
            ));
        }
        let text = &self.src[start..self.i];
        if float {
            return text
                .parse::<f64>()
                .map(|f| Tok::Lit(Value::Float(f)))
                .map_err(|_| self.err(start, self.i, format!("bad number `{text}`")));
        }
        // Short decimal integers (the usual case) are accumulated directly; longer ones
        // go through the checked std parser.
        if text.len() <= 18 {
            let v = text.bytes().fold(0u64, |v, d| v * 10 + u64::from(d - b'0'));
            return Ok(Tok::Lit(Value::from(v)));
        }
        match text.parse::<u64>() {
            Ok(u) => Ok(Tok::Lit(Value::from(u))),
            Err(_) => Err(self.err(
                start,
                self.i,
                format!(
                    "integer `{text}` does not fit 64 bits; write it as a float such as {text}.0"
                ),
            )),
        }
    }

    fn hex(&mut self, start: usize) -> Result<Tok<'s>, Error> {
        let s = self.i;
        while self.peek(0).is_ascii_hexdigit() {
            self.i += 1;
        }
        let text = &self.src[s..self.i];
        if text.is_empty() {
            return Err(self.err(start, self.i, "hex number needs digits, e.g. $FF or 0xFF"));
        }
        if matches!(self.peek(0), b'g'..=b'z' | b'G'..=b'Z' | b'_') {
            return Err(self.err(start, self.i + 1, "bad hex digit"));
        }
        u64::from_str_radix(text, 16)
            .map(|u| Tok::Lit(Value::from(u)))
            .map_err(|_| {
                self.err(
                    start,
                    self.i,
                    "hex number does not fit 64 bits (at most 16 digits)",
                )
            })
    }

    /// `'..'` with `''`, chained with `#13`, `#$0D` character codes.
    fn pascal_string(&mut self) -> Result<Tok<'s>, Error> {
        let start = self.i;
        let mut out = String::new();
        loop {
            match self.peek(0) {
                b'\'' => {
                    self.i += 1;
                    while let Some(rest) = self.src.get(self.i..) {
                        let Some(k) = rest.find('\'') else {
                            return Err(self.err(
                                start,
                                start + 1,
                                "string is never closed; add `'` (write `''` for a quote inside)",
                            ));
                        };
                        out.push_str(&rest[..k]);
                        self.i += k + 1;
                        if self.peek(0) == b'\'' {
                            out.push('\'');
                            self.i += 1;
                        } else {
                            break;
                        }
                    }
                }
                b'#' if pascal(self.style) => {
                    let cs = self.i;
                    self.i += 1;
                    let code = if self.peek(0) == b'$' {
                        self.i += 1;
                        let s = self.i;
                        while self.peek(0).is_ascii_hexdigit() {
                            self.i += 1;
                        }
                        u32::from_str_radix(&self.src[s..self.i], 16).ok()
                    } else {
                        let s = self.i;
                        self.digits();
                        self.src[s..self.i].parse::<u32>().ok()
                    };
                    match code.and_then(char::from_u32) {
                        Some(ch) => out.push(ch),
                        None => {
                            return Err(self.err(
                                cs,
                                self.i,
                                "bad character code; write #13 or #$0D (a Unicode scalar value)",
                            ))
                        }
                    }
                }
                _ => break,
            }
        }
        Ok(Tok::Lit(Value::Str(out)))
    }

    /// `".."` (or `'..'` in C style) with backslash escapes.
    fn c_string(&mut self, quote: u8) -> Result<Tok<'s>, Error> {
        let start = self.i;
        self.i += 1;
        let mut out = String::new();
        loop {
            let Some(ch) = self.src[self.i..].chars().next() else {
                return Err(self.err(
                    start,
                    start + 1,
                    format!("string is never closed; add `{}`", quote as char),
                ));
            };
            self.i += ch.len_utf8();
            if ch as u32 == u32::from(quote) {
                break;
            }
            if ch != '\\' {
                out.push(ch);
                continue;
            }
            let es = self.i - 1;
            let Some(e) = self.src[self.i..].chars().next() else {
                continue;
            };
            self.i += e.len_utf8();
            let decoded = match e {
                'n' => Some('\n'),
                't' => Some('\t'),
                'r' => Some('\r'),
                '0' => Some('\0'),
                '\\' => Some('\\'),
                '"' => Some('"'),
                '\'' => Some('\''),
                'x' => {
                    let s = self.i;
                    while self.i - s < 2 && self.peek(0).is_ascii_hexdigit() {
                        self.i += 1;
                    }
                    u32::from_str_radix(&self.src[s..self.i], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                'u' => {
                    let braced = self.peek(0) == b'{';
                    if braced {
                        self.i += 1;
                    }
                    let s = self.i;
                    let max = if braced { 6 } else { 4 };
                    while self.i - s < max && self.peek(0).is_ascii_hexdigit() {
                        self.i += 1;
                    }
                    let v = u32::from_str_radix(&self.src[s..self.i], 16)
                        .ok()
                        .and_then(char::from_u32);
                    if braced {
                        if self.peek(0) == b'}' {
                            self.i += 1;
                            v
                        } else {
                            None
                        }
                    } else {
                        v
                    }
                }
                _ => None,
            };
            match decoded {
                Some(c) => out.push(c),
                None => {
                    return Err(self.err(
                        es,
                        self.i,
                        "bad escape; use \\n \\t \\r \\0 \\\\ \\\" \\' \\xHH \\uHHHH or \\u{H..}",
                    ))
                }
            }
        }
        Ok(Tok::Lit(Value::Str(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str, style: Style) -> Result<Vec<Tok<'_>>, Error> {
        let mut l = Lexer::new(s, style);
        let mut v = Vec::new();
        loop {
            let t = l.next_token()?;
            if t.tok == Tok::Eof {
                return Ok(v);
            }
            v.push(t.tok);
        }
    }

    #[test]
    fn strings_and_codes() {
        assert_eq!(
            toks("'it''s'#13#10'x'", Style::Pascal).unwrap(),
            vec![Tok::Lit(Value::from("it's\r\nx"))]
        );
        assert_eq!(
            toks("#$41", Style::Both).unwrap(),
            vec![Tok::Lit(Value::from("A"))]
        );
        assert_eq!(
            toks(r#""a\tb\x41\u{263A}""#, Style::C).unwrap(),
            vec![Tok::Lit(Value::from("a\tbA\u{263A}"))]
        );
        assert!(toks("\"x\"", Style::Pascal).is_err());
        assert!(toks("'abc", Style::Both).is_err());
    }

    #[test]
    fn comments_per_style() {
        assert_eq!(
            toks("1 { c } (* d *) // e", Style::Pascal).unwrap().len(),
            1
        );
        assert_eq!(toks("1 /* c */ # d", Style::C).unwrap().len(), 1);
        assert!(toks("1 { c }", Style::C).is_err());
        assert_eq!(toks("1 # note", Style::Both).unwrap().len(), 1);
    }

    #[test]
    fn numbers() {
        assert_eq!(
            toks("$FF 0xff 1.0e-2 18446744073709551615", Style::Both).unwrap(),
            vec![
                Tok::Lit(Value::Int(255)),
                Tok::Lit(Value::Int(255)),
                Tok::Lit(Value::Float(0.01)),
                Tok::Lit(Value::UInt(u64::MAX)),
            ]
        );
        assert!(toks("18446744073709551616", Style::Both).is_err());
        assert!(toks("1e", Style::Both).is_err());
    }
}
