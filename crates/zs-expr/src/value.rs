//! Values: the owned [`Value`], the borrowed [`ValueRef`] that variables hand out, and the
//! [`Vars`] trait through which evaluation reads variables without cloning them.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// An owned value: the result of an evaluation, a constant, or a variable's content.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Value {
    /// No value (`null` / `nil`).
    #[default]
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A signed integer; the normal integer type.
    Int(i64),
    /// An unsigned integer above `i64::MAX` (results that fit `i64` are always `Int`).
    UInt(u64),
    /// A 64-bit float.
    Float(f64),
    /// A string.
    Str(String),
    /// A vector, written `a, b, c` or `(a, b, c)`.
    Vec(Vec<Value>),
}

/// A borrowed view of a value: what a [`Vars`] context returns, so that evaluating over
/// a record never clones its strings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// No value.
    Null,
    /// A bool.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A float.
    Float(f64),
    /// A borrowed string.
    Str(&'a str),
    /// A borrowed vector.
    Vec(&'a [Value]),
}

impl Value {
    /// A borrowed view of this value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Int(i) => ValueRef::Int(*i),
            Value::UInt(u) => ValueRef::UInt(*u),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Str(s) => ValueRef::Str(s),
            Value::Vec(v) => ValueRef::Vec(v),
        }
    }

    /// The name of this value's type as used in error messages (`int`, `string`, ...).
    pub fn type_name(&self) -> &'static str {
        self.as_ref().type_name()
    }

    /// Integers from an `i128`: `Int` when it fits `i64`, `UInt` when it fits `u64`, else `None`.
    pub fn from_i128(v: i128) -> Option<Value> {
        if let Ok(i) = i64::try_from(v) {
            Some(Value::Int(i))
        } else {
            u64::try_from(v).ok().map(Value::UInt)
        }
    }

    /// Parses a command-line style literal: integer, float, `true`/`false`, else a string.
    pub fn parse_literal(text: &str) -> Value {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
        if let Ok(u) = text.parse::<u64>() {
            return Value::UInt(u);
        }
        if text.bytes().any(|b| b.is_ascii_digit()) {
            if let Ok(f) = text.parse::<f64>() {
                return Value::Float(f);
            }
        }
        if text.eq_ignore_ascii_case("true") {
            return Value::Bool(true);
        }
        if text.eq_ignore_ascii_case("false") {
            return Value::Bool(false);
        }
        Value::Str(text.to_string())
    }
}

impl ValueRef<'_> {
    /// The name of this value's type as used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            ValueRef::Null => "null",
            ValueRef::Bool(_) => "bool",
            ValueRef::Int(_) | ValueRef::UInt(_) => "int",
            ValueRef::Float(_) => "float",
            ValueRef::Str(_) => "string",
            ValueRef::Vec(_) => "vector",
        }
    }

    /// An owned copy.
    pub fn to_value(&self) -> Value {
        match *self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::UInt(u) => Value::UInt(u),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Str(s) => Value::Str(s.to_string()),
            ValueRef::Vec(v) => Value::Vec(v.to_vec()),
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Value {
        Value::Int(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Value {
        Value::Int(v.into())
    }
}
impl From<u64> for Value {
    fn from(v: u64) -> Value {
        i64::try_from(v).map_or(Value::UInt(v), Value::Int)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}
impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Value {
        Value::Vec(v)
    }
}

pub(crate) fn fmt_float(f: f64, out: &mut fmt::Formatter<'_>) -> fmt::Result {
    // Debug keeps a ".0" on whole numbers, so floats stay recognisable as floats.
    write!(out, "{f:?}")
}

impl fmt::Display for Value {
    /// Strings print raw at the top level; inside vectors they are quoted Pascal-style.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_ref().fmt(f)
    }
}

impl fmt::Display for ValueRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ValueRef::Null => f.write_str("null"),
            ValueRef::Bool(b) => write!(f, "{b}"),
            ValueRef::Int(i) => write!(f, "{i}"),
            ValueRef::UInt(u) => write!(f, "{u}"),
            ValueRef::Float(x) => fmt_float(x, f),
            ValueRef::Str(s) => f.write_str(s),
            ValueRef::Vec(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    match item {
                        Value::Str(s) => write!(f, "'{}'", s.replace('\'', "''"))?,
                        other => write!(f, "{other}")?,
                    }
                }
                f.write_str("]")
            }
        }
    }
}

/// Variables bound at evaluation time.
///
/// A compiled [`Program`](crate::Program) numbers its variables by first appearance
/// (`program.var_names()`); evaluation asks for each by that `slot` *and* its `name`, so a
/// context can answer by position (a slice of values laid out once, the fast path for
/// filtering many records) or by name (a map). Values are borrowed, never cloned.
pub trait Vars {
    /// The value of variable number `slot`, called `name`; `None` if unbound.
    fn get(&self, slot: usize, name: &str) -> Option<ValueRef<'_>>;

    /// The variable as a plain number or bool, for the numeric fast path; `None` if it is
    /// unbound or of another type. The default goes through [`get`](Self::get); override it
    /// only to skip that indirection.
    #[inline]
    fn get_scalar(&self, slot: usize, name: &str) -> Option<Scalar> {
        match self.get(slot, name)? {
            ValueRef::Int(i) => Some(Scalar::Int(i)),
            ValueRef::Float(x) => Some(Scalar::Float(x)),
            ValueRef::Bool(b) => Some(Scalar::Bool(b)),
            _ => None,
        }
    }
}

/// A variable's value when it is an `i64`, an `f64` or a bool (see [`Vars::get_scalar`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar {
    /// An `Int`.
    Int(i64),
    /// A `Float`.
    Float(f64),
    /// A `Bool`.
    Bool(bool),
}

#[inline]
fn scalar_of(v: &Value) -> Option<Scalar> {
    match *v {
        Value::Int(i) => Some(Scalar::Int(i)),
        Value::Float(x) => Some(Scalar::Float(x)),
        Value::Bool(b) => Some(Scalar::Bool(b)),
        _ => None,
    }
}

/// No variables at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVars;

impl Vars for NoVars {
    fn get(&self, _slot: usize, _name: &str) -> Option<ValueRef<'_>> {
        None
    }
}

/// By slot: element `i` is variable `i` of the program.
impl Vars for [Value] {
    #[inline]
    fn get(&self, slot: usize, _name: &str) -> Option<ValueRef<'_>> {
        <[Value]>::get(self, slot).map(Value::as_ref)
    }
    #[inline]
    fn get_scalar(&self, slot: usize, _name: &str) -> Option<Scalar> {
        scalar_of(<[Value]>::get(self, slot)?)
    }
}

/// By slot, like `[Value]`.
impl Vars for Vec<Value> {
    #[inline]
    fn get(&self, slot: usize, _name: &str) -> Option<ValueRef<'_>> {
        self.as_slice().get(slot).map(Value::as_ref)
    }
    #[inline]
    fn get_scalar(&self, slot: usize, _name: &str) -> Option<Scalar> {
        scalar_of(self.as_slice().get(slot)?)
    }
}

/// By slot, borrowed views.
impl Vars for [ValueRef<'_>] {
    #[inline]
    fn get(&self, slot: usize, _name: &str) -> Option<ValueRef<'_>> {
        <[ValueRef<'_>]>::get(self, slot).copied()
    }
}

/// By name (a linear search; fine for a handful of variables).
impl Vars for [(&str, Value)] {
    fn get(&self, _slot: usize, name: &str) -> Option<ValueRef<'_>> {
        self.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// By name.
impl<S: std::hash::BuildHasher> Vars for HashMap<String, Value, S> {
    fn get(&self, _slot: usize, name: &str) -> Option<ValueRef<'_>> {
        HashMap::get(self, name).map(Value::as_ref)
    }
}

/// By name.
impl Vars for BTreeMap<String, Value> {
    fn get(&self, _slot: usize, name: &str) -> Option<ValueRef<'_>> {
        BTreeMap::get(self, name).map(Value::as_ref)
    }
}

impl<T: Vars + ?Sized> Vars for &T {
    #[inline]
    fn get(&self, slot: usize, name: &str) -> Option<ValueRef<'_>> {
        (**self).get(slot, name)
    }
    #[inline]
    fn get_scalar(&self, slot: usize, name: &str) -> Option<Scalar> {
        (**self).get_scalar(slot, name)
    }
}

/// The evaluator's working value: like [`ValueRef`] but may own computed strings and vectors.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum V<'a> {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Vec(Cow<'a, [Value]>),
}

impl<'a> V<'a> {
    #[inline]
    pub fn from_ref(r: ValueRef<'a>) -> V<'a> {
        match r {
            ValueRef::Null => V::Null,
            ValueRef::Bool(b) => V::Bool(b),
            ValueRef::Int(i) => V::Int(i),
            ValueRef::UInt(u) => V::UInt(u),
            ValueRef::Float(f) => V::Float(f),
            ValueRef::Str(s) => V::Str(Cow::Borrowed(s)),
            ValueRef::Vec(v) => V::Vec(Cow::Borrowed(v)),
        }
    }

    #[inline]
    pub fn borrow(v: &'a Value) -> V<'a> {
        V::from_ref(v.as_ref())
    }

    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            V::Null => ValueRef::Null,
            V::Bool(b) => ValueRef::Bool(*b),
            V::Int(i) => ValueRef::Int(*i),
            V::UInt(u) => ValueRef::UInt(*u),
            V::Float(f) => ValueRef::Float(*f),
            V::Str(s) => ValueRef::Str(s),
            V::Vec(v) => ValueRef::Vec(v),
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            V::Null => Value::Null,
            V::Bool(b) => Value::Bool(b),
            V::Int(i) => Value::Int(i),
            V::UInt(u) => Value::UInt(u),
            V::Float(f) => Value::Float(f),
            V::Str(s) => Value::Str(s.into_owned()),
            V::Vec(v) => Value::Vec(v.into_owned()),
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.as_ref().type_name()
    }

    pub fn from_value(v: Value) -> V<'static> {
        match v {
            Value::Null => V::Null,
            Value::Bool(b) => V::Bool(b),
            Value::Int(i) => V::Int(i),
            Value::UInt(u) => V::UInt(u),
            Value::Float(f) => V::Float(f),
            Value::Str(s) => V::Str(Cow::Owned(s)),
            Value::Vec(v) => V::Vec(Cow::Owned(v)),
        }
    }
}

/// The arguments handed to a registered function: borrowed views, with typed accessors
/// whose errors name the argument.
pub struct Args<'s, 'a> {
    pub(crate) items: &'s [V<'a>],
}

impl Args<'_, '_> {
    /// Number of arguments.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when called with no arguments.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Argument `i` (0-based), or `Null` when out of range.
    pub fn get(&self, i: usize) -> ValueRef<'_> {
        self.items.get(i).map_or(ValueRef::Null, V::as_ref)
    }

    /// Every argument in order.
    pub fn iter(&self) -> impl Iterator<Item = ValueRef<'_>> + '_ {
        self.items.iter().map(V::as_ref)
    }

    /// Argument `i` as a float (ints and numeric strings convert; anything else is an error).
    pub fn f64(&self, i: usize) -> Result<f64, String> {
        crate::ops::to_f64(&self.items.get(i).cloned().unwrap_or(V::Null))
            .map_err(|e| format!("argument {}: {}", i + 1, e.msg))
    }

    /// Argument `i` as an `i64` (floats must be whole; numeric strings convert).
    pub fn i64(&self, i: usize) -> Result<i64, String> {
        crate::ops::to_i64(&self.items.get(i).cloned().unwrap_or(V::Null))
            .map_err(|e| format!("argument {}: {}", i + 1, e.msg))
    }

    /// Argument `i` as text (numbers and bools are formatted; null is an error).
    pub fn string(&self, i: usize) -> Result<String, String> {
        match self.items.get(i) {
            None | Some(V::Null) => {
                Err(format!("argument {} is null, a string was expected", i + 1))
            }
            Some(v) => Ok(v.as_ref().to_string()),
        }
    }
}

/// Something that can be viewed as a [`ValueRef`]: [`Value`] and `ValueRef` itself.
pub trait AsValueRef {
    /// The borrowed view.
    fn value_ref(&self) -> ValueRef<'_>;
}

impl AsValueRef for Value {
    #[inline]
    fn value_ref(&self) -> ValueRef<'_> {
        self.as_ref()
    }
}

impl AsValueRef for ValueRef<'_> {
    #[inline]
    fn value_ref(&self) -> ValueRef<'_> {
        *self
    }
}

/// A program's variables resolved against a record layout once (see
/// [`Program::bind`](crate::Program::bind)), to evaluate over many records of that layout
/// with no name lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub(crate) field_of_slot: Vec<Option<usize>>,
    pub(crate) missing: Vec<String>,
}

impl Binding {
    /// Variables of the program that are not fields of the layout (they evaluate as
    /// "not bound" errors; check this once instead of per record).
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// The variables of one record laid out like the binding's field list.
    pub fn record<'r, T: AsValueRef>(&'r self, fields: &'r [T]) -> Record<'r, T> {
        Record {
            binding: self,
            fields,
        }
    }
}

/// One record seen through a [`Binding`]; implements [`Vars`].
#[derive(Debug, Clone, Copy)]
pub struct Record<'r, T> {
    binding: &'r Binding,
    fields: &'r [T],
}

impl<T: AsValueRef> Vars for Record<'_, T> {
    #[inline]
    fn get(&self, slot: usize, _name: &str) -> Option<ValueRef<'_>> {
        let field = (*self.binding.field_of_slot.get(slot)?)?;
        self.fields.get(field).map(AsValueRef::value_ref)
    }
}
