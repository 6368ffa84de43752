//! Query filters written as zs-expr expressions over record fields
//! (`age > 30 and name = 'bob'`), and the index hints read off such filters.

use std::ops::Bound;
use std::sync::Arc;

use zs_expr::{Engine, Value};

use crate::error::{Error, Result};
use crate::query::{FilterFn, IndexHint};
use crate::record::{FieldValue, RecordRef};

fn to_expr(v: Option<FieldValue>) -> Value {
    match v {
        None | Some(FieldValue::Null) | Some(FieldValue::Bytes(_)) => Value::Null,
        Some(FieldValue::Bool(b)) => Value::Bool(b),
        Some(FieldValue::Int(i)) => Value::Int(i),
        Some(FieldValue::Float(f)) => Value::Float(f),
        Some(FieldValue::Str(s)) => Value::Str(s),
    }
}

/// Compiles `text` into a record predicate. Variables are record fields (see
/// [`RecordRef::field`]); a missing field is `null`; a record whose evaluation fails
/// (e.g. `null > 3`) does not match.
pub fn compile_filter(text: &str) -> Result<FilterFn> {
    let program = Arc::new(
        Engine::new()
            .compile(text)
            .map_err(|e| Error::Query(e.to_string()))?,
    );
    let names: Vec<String> = program.var_names().to_vec();
    Ok(Arc::new(move |r: &RecordRef<'_>| {
        let vars: Vec<Value> = r.fields(&names).into_iter().map(to_expr).collect();
        program.eval_bool(&vars[..]).unwrap_or(false)
    }))
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(FieldValue),
    Str(String),
    Op(&'static str),
    And,
    Other,
}

fn tokens(text: &str) -> Option<Vec<Tok>> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'\'' || c == b'"' {
            let end = text[i + 1..].find(c as char)? + i + 1;
            let s = &text[i + 1..end];
            if s.contains('\\') || b.get(end + 1) == Some(&c) {
                return None; // escapes: leave it to the engine
            }
            out.push(Tok::Str(s.to_string()));
            i = end + 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            let s = &text[start..i];
            out.push(Tok::Num(match s.parse::<i64>() {
                Ok(n) => FieldValue::Int(n),
                Err(_) => FieldValue::Float(s.parse().ok()?),
            }));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                i += 1;
            }
            let w = &text[start..i];
            match w.to_ascii_lowercase().as_str() {
                "and" => out.push(Tok::And),
                "or" | "xor" | "not" | "div" | "mod" | "shl" | "shr" | "true" | "false"
                | "null" | "nil" | "pi" => return None,
                _ => out.push(Tok::Ident(w.to_string())),
            }
        } else {
            let two = text.get(i..i + 2).unwrap_or("");
            let (op, n) = match (two, c) {
                ("&&", _) => ("and", 2),
                ("<=", _) => ("<=", 2),
                (">=", _) => (">=", 2),
                ("==", _) => ("=", 2),
                ("<>" | "!=" | "||" | "<<" | ">>" | "//" | "/*" | "(*", _) => return None,
                (_, b'=') => ("=", 1),
                (_, b'<') => ("<", 1),
                (_, b'>') => (">", 1),
                _ => ("", 1),
            };
            match op {
                "and" => out.push(Tok::And),
                "" => {
                    // anything else (parentheses, arithmetic, comments): not a plain conjunction
                    if matches!(c, b'{' | b'#' | b'|' | b'!' | b'(' | b')' | b'$') {
                        return None;
                    }
                    out.push(Tok::Other)
                }
                op => out.push(Tok::Op(op)),
            }
            i += n;
        }
    }
    Some(out)
}

/// Index hints implied by a filter that is a plain conjunction of comparisons
/// `field op literal` (or `literal op field`), one per such comparison. Any other
/// shape (or, not, parentheses, arithmetic) gives no hint: the scan then visits every
/// record. The filter itself is always applied, so a hint only narrows the ids visited.
/// Index keys are type-exact: `age = 5` looks up numeric 5, not the string `'5'`.
pub fn index_hints(text: &str) -> Vec<IndexHint> {
    let Some(toks) = tokens(text) else {
        return Vec::new();
    };
    let mut hints = Vec::new();
    for part in toks.split(|t| *t == Tok::And) {
        let (field, op, lit) = match part {
            [Tok::Ident(f), Tok::Op(op), lit @ (Tok::Num(_) | Tok::Str(_))] => (f, *op, lit),
            [lit @ (Tok::Num(_) | Tok::Str(_)), Tok::Op(op), Tok::Ident(f)] => {
                let flipped = match *op {
                    "<" => ">",
                    ">" => "<",
                    "<=" => ">=",
                    ">=" => "<=",
                    o => o,
                };
                (f, flipped, lit)
            }
            _ => continue,
        };
        let v = match lit {
            Tok::Num(n) => n.clone(),
            Tok::Str(s) => FieldValue::Str(s.clone()),
            _ => continue,
        };
        let (lo, hi) = match op {
            "=" => (Bound::Included(v.clone()), Bound::Included(v)),
            "<" => (Bound::Unbounded, Bound::Excluded(v)),
            "<=" => (Bound::Unbounded, Bound::Included(v)),
            ">" => (Bound::Excluded(v), Bound::Unbounded),
            ">=" => (Bound::Included(v), Bound::Unbounded),
            _ => continue,
        };
        hints.push(IndexHint {
            field: field.clone(),
            lo,
            hi,
        });
    }
    hints
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Kind;

    #[test]
    fn filter_over_json_and_kv() {
        let f = compile_filter("age > 30 and name = 'bob'").unwrap();
        let yes = RecordRef {
            id: 1,
            kind: Kind::Json,
            data: br#"{"age":31,"name":"bob"}"#,
        };
        let no = RecordRef {
            id: 2,
            kind: Kind::Json,
            data: br#"{"age":31,"name":"ann"}"#,
        };
        let missing = RecordRef {
            id: 3,
            kind: Kind::Json,
            data: br#"{"name":"bob"}"#,
        };
        assert!(f(&yes) && !f(&no) && !f(&missing));
        let kv = crate::record::encode_kv(&[
            ("age".into(), FieldValue::Int(40)),
            ("name".into(), FieldValue::Str("bob".into())),
        ])
        .unwrap();
        assert!(f(&RecordRef {
            id: 4,
            kind: Kind::KeyValue,
            data: &kv
        }));
        assert!(compile_filter("age > ").is_err());
    }

    #[test]
    fn filter_over_nested_json_fields() {
        let f = compile_filter("address.city = 'Oslo' and stats.visits.total > 2").unwrap();
        let rec = |data: &'static [u8]| RecordRef {
            id: 1,
            kind: Kind::Json,
            data,
        };
        assert!(f(&rec(
            br#"{"address":{"city":"Oslo"},"stats":{"visits":{"total":3}}}"#
        )));
        assert!(!f(&rec(
            br#"{"address":{"city":"Bergen"},"stats":{"visits":{"total":3}}}"#
        )));
        assert!(!f(&rec(br#"{"address":{"city":"Oslo"}}"#)));
        // and a nested field narrows the scan like a top-level one
        let h = index_hints("address.city = 'Oslo'");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].field, "address.city");
    }

    #[test]
    fn hints_only_for_plain_conjunctions() {
        let h = index_hints("age > 30 and 'bob' = name");
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].field, "age");
        assert_eq!(h[0].lo, Bound::Excluded(FieldValue::Int(30)));
        assert_eq!(h[1].hi, Bound::Included(FieldValue::Str("bob".into())));
        assert!(index_hints("age > 30 or name = 'x'").is_empty());
        assert!(index_hints("(age > 30)").is_empty());
        assert!(index_hints("age + 1 > 30").is_empty());
        assert_eq!(index_hints("age >= 2.5 && x < 3").len(), 2);
    }
}
