//! The crate's error type: every failure carries a position and a message a person can act on.

use std::fmt;

/// A place in the source text of an expression (byte offset, length, 1-based line and column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    /// Byte offset of the first character.
    pub offset: usize,
    /// Length in bytes of the offending span (at least 1 when the source is not empty).
    pub len: usize,
    /// 1-based line number.
    pub line: u32,
    /// 1-based column (in characters).
    pub column: u32,
}

impl Pos {
    /// Position of the byte range `start..end` inside `source` (clamped to the text).
    pub fn of(source: &str, start: usize, end: usize) -> Pos {
        let mut start = start.min(source.len());
        while start > 0 && !source.is_char_boundary(start) {
            start -= 1;
        }
        let end = end.clamp(start, source.len());
        let before = &source[..start];
        let line = before.matches('\n').count() as u32 + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = source[line_start..start].chars().count() as u32 + 1;
        Pos {
            offset: start,
            len: end - start,
            line,
            column,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Everything that can go wrong while compiling, loading or evaluating an expression.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not a well-formed expression (bad token, missing parenthesis, ...).
    #[error("syntax error at {pos}: {message}")]
    Syntax {
        /// Where.
        pos: Pos,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A function or variable name that nothing defines.
    #[error("unknown name at {pos}: {message}")]
    UnknownName {
        /// Where the name is used.
        pos: Pos,
        /// Which name, and how to define it.
        message: String,
    },
    /// An operator or function got a value of the wrong type, or the wrong number of arguments.
    #[error("type error at {pos}: {message}")]
    Type {
        /// The operator or call.
        pos: Pos,
        /// The types involved and how to convert.
        message: String,
    },
    /// Integer overflow, division by zero, a float that does not fit an integer, ...
    #[error("arithmetic error at {pos}: {message}")]
    Arithmetic {
        /// The operator or call.
        pos: Pos,
        /// The values involved.
        message: String,
    },
    /// A registered function returned an error.
    #[error("function `{name}` failed at {pos}: {message}")]
    Function {
        /// The call.
        pos: Pos,
        /// The function's name.
        name: String,
        /// The function's own message.
        message: String,
    },
    /// A configured limit (length, depth, steps, string size) was exceeded.
    #[error("limit exceeded at {pos}: {message}")]
    Limit {
        /// Where evaluation or parsing stopped.
        pos: Pos,
        /// Which limit, its value, and the setting that raises it.
        message: String,
    },
    /// A saved compiled expression could not be loaded (corrupted, truncated, wrong version).
    #[error("cannot load compiled expression: {message}")]
    Load {
        /// What is wrong with the blob.
        message: String,
    },
}

impl Error {
    /// The source position, when the error has one.
    pub fn pos(&self) -> Option<Pos> {
        match self {
            Error::Syntax { pos, .. }
            | Error::UnknownName { pos, .. }
            | Error::Type { pos, .. }
            | Error::Arithmetic { pos, .. }
            | Error::Function { pos, .. }
            | Error::Limit { pos, .. } => Some(*pos),
            Error::Load { .. } => None,
        }
    }

    /// The message without the position prefix.
    pub fn message(&self) -> &str {
        match self {
            Error::Syntax { message, .. }
            | Error::UnknownName { message, .. }
            | Error::Type { message, .. }
            | Error::Arithmetic { message, .. }
            | Error::Function { message, .. }
            | Error::Limit { message, .. }
            | Error::Load { message } => message,
        }
    }

    /// The error followed by the offending source line and a caret line under the span,
    /// for terminals and logs.
    pub fn render(&self, source: &str) -> String {
        let mut out = self.to_string();
        if let Some(pos) = self.pos() {
            let line = source
                .lines()
                .nth(pos.line.saturating_sub(1) as usize)
                .unwrap_or("");
            let col = pos.column.saturating_sub(1) as usize;
            let width = source
                .get(pos.offset..pos.offset + pos.len)
                .map_or(1, |s| s.chars().take_while(|&c| c != '\n').count())
                .max(1);
            out.push_str(&format!(
                "\n  {line}\n  {}{}",
                " ".repeat(col),
                "^".repeat(width)
            ));
        }
        out
    }
}

/// The class of a failure inside an operator or built-in, before a position is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Type,
    Arith,
    Limit,
}

/// A failure of an operator or built-in; the evaluator attaches the position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OpErr {
    pub class: Class,
    pub msg: String,
}

impl OpErr {
    pub fn ty(msg: impl Into<String>) -> OpErr {
        OpErr {
            class: Class::Type,
            msg: msg.into(),
        }
    }
    pub fn arith(msg: impl Into<String>) -> OpErr {
        OpErr {
            class: Class::Arith,
            msg: msg.into(),
        }
    }
    pub fn limit(msg: impl Into<String>) -> OpErr {
        OpErr {
            class: Class::Limit,
            msg: msg.into(),
        }
    }
    pub fn at(self, pos: Pos) -> Error {
        match self.class {
            Class::Type => Error::Type {
                pos,
                message: self.msg,
            },
            Class::Arith => Error::Arithmetic {
                pos,
                message: self.msg,
            },
            Class::Limit => Error::Limit {
                pos,
                message: self.msg,
            },
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
