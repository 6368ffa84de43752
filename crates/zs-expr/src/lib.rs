//! # zs-expr: the expression engine of zserver (zExpression in Rust)
//!
//! ZServer4D's zExpression let servers evaluate small formulas and filters supplied as
//! text: database queries (`age > 30 and name = 'bob'`), computed fields, text templates.
//! This crate does that safely and fast: text is parsed once into a compact compiled form
//! with constants folded, names resolved to slots and functions to ids, then evaluated
//! many times against variables that are *borrowed* from the caller (a record, a map),
//! never copied. Bad input is an [`Error`] with a position and an actionable message;
//! length, depth, evaluation steps and string sizes are all bounded ([`Limits`]).
//!
//! ## Example: register a function, compile once, evaluate with variables
//!
//! ```
//! use std::collections::HashMap;
//! use zs_expr::{Arity, Engine, Value};
//!
//! let mut engine = Engine::new();
//! // The seed's RegOp: a closure with an arity.
//! engine.register("myAdd", Arity::Exact(2), |args| {
//!     Ok(Value::Float((args.f64(0)? + args.f64(1)?) * 0.5))
//! });
//!
//! // Compile once …
//! let filter = engine.compile("age > 30 and name = 'bob' and myAdd(age, 10) < 100")?;
//! assert_eq!(filter.var_names(), ["age", "name"]);
//!
//! // … evaluate per record by slot: no name lookups, nothing cloned.
//! let record = [Value::Int(42), Value::from("bob")];
//! assert!(filter.eval_bool(&record[..])?);
//! let other = [Value::Int(42), Value::from("alice")];
//! assert!(!filter.eval_bool(&other[..])?);
//!
//! // Or by name.
//! let mut vars = HashMap::new();
//! vars.insert("x".to_string(), Value::Int(4));
//! assert_eq!(engine.eval("x * 2 + 1", &vars)?, Value::Int(9));
//!
//! // Errors carry the position.
//! let err = engine.compile("1 + (2 * 3").unwrap_err();
//! assert_eq!(err.pos().unwrap().column, 11);
//! # Ok::<(), zs_expr::Error>(())
//! ```
//!
//! ## Precedence modes (chosen per engine)
//!
//! [`Precedence::Standard`] (default) is conventional C/Pascal-like precedence;
//! [`Precedence::Seed`] is zExpression's table, lowest to highest: `and`; `or xor`;
//! comparisons; `+ -`; `* / mod div shl shr ^`. See [`Precedence`] for the full table.
//!
//! ```
//! use zs_expr::{Engine, NoVars, Precedence, Value};
//! let std = Engine::new();
//! let seed = Engine::new().with_precedence(Precedence::Seed);
//! assert_eq!(std.eval("2 * 3 ^ 2", &NoVars)?, Value::Int(18));
//! assert_eq!(seed.eval("2 * 3 ^ 2", &NoVars)?, Value::Int(36)); // ^ at the * level
//! assert_eq!(std.eval("true or false and false", &NoVars)?, Value::Bool(true));
//! assert_eq!(seed.eval("true or false and false", &NoVars)?, Value::Bool(false)); // and is loosest
//! assert_eq!(std.eval("1 + 2 shl 3", &NoVars)?, Value::Int(24));
//! assert_eq!(seed.eval("1 + 2 shl 3", &NoVars)?, Value::Int(17));
//! # Ok::<(), zs_expr::Error>(())
//! ```
//!
//! ## Lexical styles (chosen per engine)
//!
//! [`Style::Pascal`], [`Style::C`], and [`Style::Both`] (default, accepts both where they
//! do not clash). See [`Style`] for the table.
//!
//! ```
//! use zs_expr::{Engine, NoVars, Style, Value};
//! let pascal = Engine::new().with_style(Style::Pascal);
//! let c = Engine::new().with_style(Style::C);
//! let both = Engine::new();
//! assert_eq!(pascal.eval("{ comment } (* too *) length('it''s'#13#10) + $10", &NoVars)?, Value::Int(22));
//! assert_eq!(c.eval(r#"/* comment */ length("a\tb") + 0x10 # trailing"#, &NoVars)?, Value::Int(19));
//! assert_eq!(both.eval(r#"'a'#65 + "b" // mixed"#, &NoVars)?, Value::from("aAb"));
//! assert!(pascal.compile(r#""text""#).is_err()); // double quotes are C style
//! # Ok::<(), zs_expr::Error>(())
//! ```
//!
//! ## Values and mixed operations
//!
//! Values are `null`, bool, integer (`i64`, or `u64` above `i64::MAX`), float, string and
//! vector (`1, 2, 3` or `(1, 2)`).
//! - **Integers never overflow silently**: results are computed exactly and stored as `Int`
//!   when they fit `i64`, `UInt` when they fit `u64`, otherwise the operation is an
//!   [`Error::Arithmetic`]. Any float operand makes the result a float.
//! - `/` always gives a float; `div` is integer division (integers only), `mod`/`%` the
//!   remainder with the dividend's sign; division by zero is an error for all three.
//! - `^` / `power`: integer for a non-negative integer exponent (checked), else float.
//! - `shl shr << >>` need integers and a shift of 0..63; `shl` is checked like `*`.
//! - `and or xor` are logical on two bools and bitwise on two integers; `and`/`or`
//!   short-circuit when the left side is a bool that decides the result. `not` negates a
//!   bool or complements an integer's bits.
//! - A string used with an arithmetic operator is parsed as a number (`'123' + 1 = 124`,
//!   `'$FF' * 1 = 255`); a non-numeric string there is an error (`'abc' + 1`). Two strings
//!   with `+` concatenate (`'a' + 'b' = 'ab'`); to join text and numbers use `str(x)`.
//! - `=` and `<>` never fail: numbers compare by value across int and float (exactly), a
//!   numeric string equals its number, vectors compare element-wise, other mixes are
//!   unequal. `< > <= >=` order numbers, strings (by code point), a numeric string with a
//!   number, and bools; other mixes are an error. NaN compares false.
//! - `null` is only equal to itself; arithmetic on it is an error.
//!
//! ## Names
//!
//! Function names, keywords and constants are case-insensitive; variables are
//! case-sensitive. A bare name is, in order: `true false null nil pi`; a constant set with
//! [`Engine::set_const`]; whatever the [`Engine::on_unknown_name`] callback answers
//! (a constant or a macro); otherwise a variable read at evaluation time.
//!
//! Built-ins: `abs sqrt sin cos tan arctan exp ln power round trunc int frac min max clamp`,
//! casts `int float bool str`, strings `length upper lower pos copy substr replace trim
//! wildcard`, `IfThen(c, a, b)` (evaluates only the branch taken), `random()` / `random(n)`.
//! `copy(s, index, count)` is 1-based like Pascal's `Copy`; `substr(s, start[, count])` is
//! 0-based like C++'s. `round` rounds half to even (like Delphi's `Round`).
//!
//! ## Compile once, evaluate per record
//!
//! [`Engine::compile`] folds constants (`2 * 3 + x` becomes `6 + x`), resolves functions
//! to ids and variables to slots. [`Program::bind`] resolves those slots against a record
//! layout once, so a filter over many records does no name lookups at all; values are
//! read through [`Vars`] as borrowed [`ValueRef`]s. Expressions over ints, floats and
//! bools run on an allocation-free numeric fast path; anything else (strings, vectors,
//! user functions, overflow) takes the general evaluator, with identical results.
//!
//! When type inference proves every node numeric or boolean (variables are checked when
//! evaluation starts: a float, or an integer below 2^53 in magnitude), compiling also
//! produces a tag-free register bytecode over plain `f64`s, which [`Program::eval_f64`],
//! [`Program::eval_bool`] and (when the result's type is known statically)
//! [`Program::eval`] run first. Integer results stay exact there (anything that could
//! reach 2^53 gives up to the tagged path); operations whose integer and float results
//! differ (`div`, `^` between integers, shifts, bitwise operators) are never translated.
//!
//! ## Save, cache, template
//!
//! [`Engine::compile_cached`] keeps compiled programs in a bounded cache keyed by text;
//! [`Program::save`] / [`Engine::load`] store the compiled form (versioned, CRC-checked);
//! [`Engine::expand_template`] fills `<expr>` spans of a text template.
#![forbid(unsafe_code)]

mod binary;
mod builtins;
mod engine;
mod error;
mod fast;
mod interp;
mod lexer;
mod ops;
mod parser;
mod program;
mod resolve;
mod template;
mod typed;
mod value;

pub use binary::FORMAT_VERSION;
pub use engine::{Arity, Engine, Limits, Resolution, UserFn};
pub use error::{Error, Pos, Result};
pub use lexer::Style;
pub use parser::{BinOp, Precedence, UnOp};
pub use program::Program;
pub use template::Delimiters;
pub use value::{Args, AsValueRef, Binding, NoVars, Record, Scalar, Value, ValueRef, Vars};

/// Names of every built-in function (canonical names, lower case).
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    builtins::Builtin::ALL.iter().map(|b| b.name())
}
