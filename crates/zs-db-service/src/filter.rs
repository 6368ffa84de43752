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
