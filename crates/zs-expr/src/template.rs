//! Text macros: replace `<expr>` spans inside a template with their values.

use crate::error::{Error, Pos};
use crate::value::{ValueRef, Vars};
use crate::Engine;

/// The delimiters around expressions in a template. The default is `<` and `>`; for HTML
/// pick something that does not occur in the markup, such as `<?` / `?>` or `{{` / `}}`.
/// There is no escape: the first `close` after an `open` ends the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delimiters {
    /// Opening delimiter (non-empty).
    pub open: String,
    /// Closing delimiter (non-empty).
    pub close: String,
}

impl Default for Delimiters {
    fn default() -> Delimiters {
        Delimiters::new("<", ">")
    }
}

impl Delimiters {
    /// Delimiters `open` … `close`.
    pub fn new(open: &str, close: &str) -> Delimiters {
        Delimiters {
            open: open.to_string(),
            close: close.to_string(),
        }
    }
}

fn shift(e: Error, template: &str, base: usize) -> Error {
    let moved = |p: Pos| Pos::of(template, base + p.offset, base + p.offset + p.len);
    match e {
        Error::Syntax { pos, message } => Error::Syntax {
            pos: moved(pos),
            message,
        },
        Error::UnknownName { pos, message } => Error::UnknownName {
            pos: moved(pos),
            message,
        },
        Error::Type { pos, message } => Error::Type {
            pos: moved(pos),
            message,
        },
        Error::Arithmetic { pos, message } => Error::Arithmetic {
            pos: moved(pos),
            message,
        },
        Error::Function { pos, name, message } => Error::Function {
            pos: moved(pos),
            name,
            message,
        },
        Error::Limit { pos, message } => Error::Limit {
            pos: moved(pos),
            message,
        },
        other => other,
    }
}

impl Engine {
    /// Expands every `open expr close` span of `template` with the expression's value
    /// (strings inserted as they are, other values formatted). Expressions are compiled
    /// through the cache and read variables **by name** from `vars` (each span numbers its
    /// own slots, so use a by-name context such as a `HashMap<String, Value>`). Error
    /// positions point into the template.
    pub fn expand_template<X: Vars + ?Sized>(
        &self,
        template: &str,
        delims: &Delimiters,
        vars: &X,
    ) -> Result<String, Error> {
        if delims.open.is_empty() || delims.close.is_empty() {
            return Err(Error::Syntax {
                pos: Pos::of(template, 0, 1),
                message: "template delimiters must not be empty".into(),
            });
        }
        let max = self.limits().max_string;
        let mut out = String::with_capacity(template.len());
        let mut rest = 0usize;
        while let Some(k) = template[rest..].find(&delims.open) {
            let open_at = rest + k;
            out.push_str(&template[rest..open_at]);
            let body_at = open_at + delims.open.len();
            let Some(len) = template[body_at..].find(&delims.close) else {
                return Err(Error::Syntax {
                    pos: Pos::of(template, open_at, body_at),
                    message: format!("`{}` is never closed; add `{}`", delims.open, delims.close),
                });
            };
            let body = &template[body_at..body_at + len];
            let program = self
                .compile_cached(body)
                .map_err(|e| shift(e, template, body_at))?;
            program
                .eval_with(vars, |v| match v {
                    ValueRef::Str(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                })
                .map_err(|e| shift(e, template, body_at))?;
            if out.len() > max {
                return Err(Error::Limit {
                    pos: Pos::of(template, open_at, body_at + len),
                    message: format!("expanded text is over Limits::max_string ({max} bytes)"),
                });
            }
            rest = body_at + len + delims.close.len();
        }
        out.push_str(&template[rest..]);
        Ok(out)
    }
}
