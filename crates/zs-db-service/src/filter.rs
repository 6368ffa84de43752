//! Query filters: zs-expr expressions over record fields and parameters, and
//! server-registered filter functions.

use std::sync::Arc;

use zs_db::{FieldValue, RecordRef};
use zs_expr::{Engine, Program, Value};

use crate::proto::Param;

/// A filter function registered on the server: the record and the query's
/// parameters in, keep or not out.
pub type FilterFunction = Arc<dyn Fn(&RecordRef<'_>, &[(String, Param)]) -> bool + Send + Sync>;

/// The prefix naming a parameter in an expression (`param_min_age`).
pub const PARAM_PREFIX: &str = "param_";

/// A compiled expression filter.
pub struct ExprFilter {
    program: Program,
    /// For each variable: a parameter value, or the record field to read.
    vars: Vec<Var>,
    fields: Vec<String>,
}

enum Var {
    Param(Value),
    Field(usize),
}

fn to_expr(v: Option<FieldValue>) -> Value {
    match v {
        None | Some(FieldValue::Null) | Some(FieldValue::Bytes(_)) => Value::Null,
        Some(FieldValue::Bool(b)) => Value::Bool(b),
        Some(FieldValue::Int(i)) => Value::Int(i),
        Some(FieldValue::Float(f)) => Value::Float(f),
        Some(FieldValue::Str(s)) => Value::Str(s),
    }
}

/// A parameter as an expression value.
pub fn param_to_expr(p: &Param) -> Value {
    match p {
        Param::Null => Value::Null,
        Param::Bool(b) => Value::Bool(*b),
        Param::Int(i) => Value::Int(*i),
        Param::Float(f) => Value::Float(*f),
        Param::Str(s) => Value::Str(s.clone()),
    }
}

/// A parameter as a zs-db field value (index bounds).
pub fn param_to_field(p: &Param) -> FieldValue {
    match p {
        Param::Null => FieldValue::Null,
        Param::Bool(b) => FieldValue::Bool(*b),
        Param::Int(i) => FieldValue::Int(*i),
        Param::Float(f) => FieldValue::Float(*f),
        Param::Str(s) => FieldValue::Str(s.clone()),
    }
}

/// Compiles `text`; `param_<name>` variables take the parameters' values (an
/// unknown parameter is an error), other variables are record fields.
pub fn compile_expr(text: &str, params: &[(String, Param)]) -> Result<ExprFilter, String> {
    let program = Engine::new().compile(text).map_err(|e| e.to_string())?;
    let mut vars = Vec::new();
    let mut fields = Vec::new();
    for name in program.var_names() {
        if let Some(p) = name.strip_prefix(PARAM_PREFIX) {
            let v = params
                .iter()
                .find(|(k, _)| k == p)
                .map(|(_, v)| param_to_expr(v))
                .ok_or_else(|| format!("unknown parameter {p:?}"))?;
            vars.push(Var::Param(v));
        } else {
            vars.push(Var::Field(fields.len()));
            fields.push(name.clone());
        }
    }
    Ok(ExprFilter {
        program,
        vars,
        fields,
    })
}

impl ExprFilter {
    /// True if the record matches (an evaluation error does not match).
    pub fn matches(&self, r: &RecordRef<'_>) -> bool {
        let got = r.fields(&self.fields);
        let vals: Vec<Value> = self
            .vars
            .iter()
            .map(|v| match v {
                Var::Param(p) => p.clone(),
                Var::Field(i) => to_expr(got.get(*i).cloned().flatten()),
            })
            .collect();
        self.program.eval_bool(&vals[..]).unwrap_or(false)
    }
}

impl ExprFilter {
    /// The expression's value for the record (an evaluation error gives
    /// [`Value::Null`]).
    pub fn value(&self, r: &RecordRef<'_>) -> Value {
        let got = r.fields(&self.fields);
        let vals: Vec<Value> = self
            .vars
            .iter()
            .map(|v| match v {
                Var::Param(p) => p.clone(),
                Var::Field(i) => to_expr(got.get(*i).cloned().flatten()),
            })
            .collect();
        self.program.eval(&vals[..]).unwrap_or(Value::Null)
    }

    /// The record's sort key.
    pub fn sort_key(&self, r: &RecordRef<'_>) -> SortKey {
        SortKey::from(self.value(r))
    }
}

/// A sort expression's value, totally ordered: null < bools < numbers (integers
/// and floats compared by value; NaN above every other number) < strings (by
/// bytes) < vectors (element by element).
#[derive(Debug, Clone)]
pub enum SortKey {
    /// No value (a missing field, an evaluation error).
    Null,
    /// A bool.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A vector.
    Vec(Vec<SortKey>),
}

impl From<Value> for SortKey {
    fn from(v: Value) -> SortKey {
        match v {
            Value::Null => SortKey::Null,
            Value::Bool(b) => SortKey::Bool(b),
            Value::Int(i) => SortKey::Int(i),
            Value::UInt(u) => SortKey::UInt(u),
            Value::Float(f) => SortKey::Float(f),
            Value::Str(s) => SortKey::Str(s),
            Value::Vec(v) => SortKey::Vec(v.into_iter().map(SortKey::from).collect()),
        }
    }
}

impl SortKey {
    fn rank(&self) -> u8 {
        match self {
            SortKey::Null => 0,
            SortKey::Bool(_) => 1,
            SortKey::Int(_) | SortKey::UInt(_) | SortKey::Float(_) => 2,
            SortKey::Str(_) => 3,
            SortKey::Vec(_) => 4,
        }
    }
}

fn num_cmp(a: &SortKey, b: &SortKey) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    use SortKey::*;
    match (a, b) {
        (Int(x), Int(y)) => x.cmp(y),
        (UInt(x), UInt(y)) => x.cmp(y),
        (Int(_), UInt(_)) => Ordering::Less, // a UInt is above i64::MAX
        (UInt(_), Int(_)) => Ordering::Greater,
        (Float(x), Float(y)) => x.total_cmp(y),
        (Int(x), Float(y)) => (*x as f64).total_cmp(y).then(Ordering::Less),
        (Float(x), Int(y)) => x.total_cmp(&(*y as f64)).then(Ordering::Greater),
        (UInt(x), Float(y)) => (*x as f64).total_cmp(y).then(Ordering::Less),
        (Float(x), UInt(y)) => x.total_cmp(&(*y as f64)).then(Ordering::Greater),
        _ => Ordering::Equal,
    }
}

impl Ord for SortKey {
    fn cmp(&self, other: &SortKey) -> std::cmp::Ordering {
        use SortKey::*;
        self.rank()
            .cmp(&other.rank())
            .then_with(|| match (self, other) {
                (Bool(a), Bool(b)) => a.cmp(b),
                (Str(a), Str(b)) => a.cmp(b),
                (Vec(a), Vec(b)) => a.cmp(b),
                (Null, Null) => std::cmp::Ordering::Equal,
                _ => num_cmp(self, other),
            })
    }
}

impl PartialOrd for SortKey {
    fn partial_cmp(&self, other: &SortKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for SortKey {
    fn eq(&self, other: &SortKey) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for SortKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_are_totally_ordered() {
        let v = [
            SortKey::Null,
            SortKey::Bool(false),
            SortKey::Bool(true),
            SortKey::Int(-3),
            SortKey::Float(-2.5),
            SortKey::Int(2),
            SortKey::Float(2.0),
            SortKey::Float(2.5),
            SortKey::Int(i64::MAX),
            SortKey::UInt(u64::MAX),
            SortKey::Float(f64::NAN),
            SortKey::Str("a".into()),
            SortKey::Str("b".into()),
            SortKey::Vec(vec![SortKey::Int(1)]),
        ];
        for (i, a) in v.iter().enumerate() {
            for (j, b) in v.iter().enumerate() {
                assert_eq!(a.cmp(b), i.cmp(&j), "{a:?} vs {b:?}");
            }
        }
    }
}
