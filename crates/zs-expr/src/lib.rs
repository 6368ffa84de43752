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
//! A name may be a dotted path, `a.b.c` (each dot followed by a letter or `_`): it is one
//! variable, so a host can hand nested fields to a filter (zs-db reads `address.city`
//! from nested JSON).
//!
//! ```
//! use zs_expr::{Engine, Value};
//! let p = Engine::new().compile("address.city = 'Oslo' and stats.visits > 2")?;
//! assert_eq!(p.var_names(), ["address.city", "stats.visits"]);
//! let rec = [Value::from("Oslo"), Value::Int(3)];
//! assert!(p.eval_bool(&rec[..])?);
//! # Ok::<(), zs_expr::Error>(())
//! ```
//!
//! ## Built-in functions
//!
//! Names and aliases are case-insensitive (`IntToStr`, `inttostr`, `INTTOSTR`), as in the
//! seed's `SystemOpRunTime`. [`builtin_names`] lists the canonical names. Calls with
//! constant arguments are folded at compile time, except `random`, `RandomFloat` and
//! `Print` (they have effects). Each is covered by the table in `tests/builtins.rs` (and
//! the math core by `tests/table.rs`).
//!
//! | group | functions (aliases) | notes |
//! |---|---|---|
//! | math | `abs sqrt sqr sin cos tan arctan (atan) exp ln power (pow) round trunc int frac deg min max clamp` | `round` is half to even; `sqr` keeps integers exact (checked); `deg(x)` normalises an angle to (-180, 180] like the seed's `NormalizeDegAngle` |
//! | constants | `pi` and `PI()`, `True()`, `False()`, `Nop(…)` (0) | |
//! | integer casts | `Byte (UInt8) Word (UInt16) Cardinal (LongWord, UInt32) UInt64 ShortInt (Int8) SmallInt (Int16) Integer (LongInt, Int32) Int64`, `int` | Pascal typecasts: the value wraps to the width (`Byte(300) = 44`, `ShortInt(200) = -56`); floats round half to even first (Delphi's Variant conversion), numeric strings are parsed, bools are 0/1; a float beyond 64 bits is an error |
//! | float casts | `float (Double, Extended, Real) Single` | `Single` rounds to `f32` precision |
//! | bits | `ROL8/16/32/64(x, n)`, `ROR8/16/32/64(x, n)`, `Endian16/32/64(x)` (signed), `EndianU16/32/64(x)` (unsigned), `SAR16/32/64(x, n)` | `x` wraps to the width; rotations take `n` modulo the width (negative rotates the other way); `SAR` is an arithmetic shift of the signed value, `n >= 0`, a shift of the width or more leaves the sign |
//! | random | `random()` float in [0, 1), `random(n)` integer in [0, n), `RandomFloat() (RandomF)` | xorshift64* per thread, reproducible with [`seed_random`]; not for cryptography |
//! | vectors | `Vec2/Vec3/Vec4(x, …)`, `RColor(r, g, b, a)` | a vector value of numbers; missing components are `0.0` (`RColor`'s alpha `1.0`). The seed returns the text `"x,y"`; use `str()` if you need text |
//! | text | `str (String, Text)(a, …)` joins the text of every argument; `length (len) upper (UpperCase) lower (LowerCase) trim TrimLeft TrimRight pos copy substr replace LeftStr RightStr ReverseString (ReverseStr) QuotedStr DupeString (ReplicateStr) StringOfChar Chr Ord`, functional `Delete(s, index, count)` and `Insert(sub, s, index)` | positions are 1-based and count characters (`copy`, `pos`, `Delete`, `Insert`); `substr(s, start[, count])` is 0-based like C++ |
//! | conversions | `IntToStr FloatToStr StrToInt (StrToInt64) StrToIntDef StrToFloat StrToFloatDef BoolToStr StrToBool IntToHex(x[, digits])` | `FloatToStr` is Delphi's general format (15 significant digits, `1E20`, `NAN`, `INF`); `StrToInt` takes decimal, `$FF` or `0xFF` and errors on anything else (`StrToIntDef` returns the default); `BoolToStr(true) = '-1'`, `BoolToStr(b, true)` is `'True'`/`'False'`, like Delphi; `IntToHex(-1)` is the 64-bit two's complement |
//! | compare | `SameText CompareText CompareStr` (-1, 0 or 1), `ContainsText(text, sub) ContainsStr StartsText(sub, text) StartsStr EndsText EndsStr` | `…Text` ignore case; argument order as Delphi's `StrUtils` |
//! | matching | `MultipleMatch (Multiple)(pattern, text, …)`, `wildcard(pattern, text)`, `ReplaceStr(s, old, new[, OnlyWord[, IgnoreCase]])` | `MultipleMatch` is the seed's `umlMultipleMatch`: `;`-separated alternatives, `*` `?`, case-insensitive, true when every text matches; `wildcard` is the case-sensitive single pattern |
//! | control | `IfThen (if)(c, a, b)` | evaluates only the branch taken |
//! | output | `Print (DoStatus, Status)(a, …)` | joins its arguments with `,`, hands the line to [`set_print_hook`] (the `zs expr` CLI prints it on standard error) and returns it |
//!
//! Every string a function builds is bounded by [`Limits::max_string`] *before* it is
//! allocated (`DupeString('x', 1e9)` is an [`Error::Limit`], not an allocation).
//! `not x` is the operator (the seed's `Not()` function); `FitXY`, `SearchStr` and the
//! hex/binary text helpers (`ToHex`, `Hex8…`, `ToBin`, `Bin8…`) are not provided.
//!
//! ```
//! use zs_expr::{Engine, NoVars, Value};
//! let e = Engine::new();
//! assert_eq!(e.eval("IntToStr(6 * 7)", &NoVars)?, Value::from("42"));
//! assert_eq!(e.eval("ROL8($81, 1) + Byte(300)", &NoVars)?, Value::Int(3 + 44));
//! assert_eq!(e.eval("MultipleMatch('*.doc;*.TXT', 'notes.txt')", &NoVars)?, Value::Bool(true));
//! assert_eq!(e.eval("FloatToStr(0.1 + 0.2) + ' ' + UpperCase(Trim('  ok '))", &NoVars)?, Value::from("0.3 OK"));
//! assert!(e.eval("StrToInt('4x')", &NoVars).is_err());
//! # Ok::<(), zs_expr::Error>(())
//! ```
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
mod stdlib;
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

/// Seeds the generator behind `random`, `random(n)` and `RandomFloat` **on this thread**
/// (each thread has its own xorshift64* state, seeded randomly at first use). The same
/// seed gives the same sequence, which makes tests and replays reproducible. Not for
/// cryptography.
///
/// ```
/// use zs_expr::{Engine, NoVars};
/// let e = Engine::new();
/// zs_expr::seed_random(7);
/// let a = e.eval("random(1000), RandomFloat()", &NoVars)?;
/// zs_expr::seed_random(7);
/// assert_eq!(e.eval("random(1000), RandomFloat()", &NoVars)?, a);
/// # Ok::<(), zs_expr::Error>(())
/// ```
pub fn seed_random(seed: u64) {
    builtins::seed_random(seed)
}

/// Receives the lines of `Print(…)` / `DoStatus(…)` / `Status(…)` (see [`set_print_hook`]).
pub type PrintHook = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Sets where `Print(…)` / `DoStatus(…)` / `Status(…)` send their line (process-wide;
/// `None`, the default, drops it). The functions always return the line as a string, so
/// a library that never sets a hook never writes to the terminal on a peer's behalf.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use zs_expr::{Engine, NoVars, Value};
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let sink = seen.clone();
/// zs_expr::set_print_hook(Some(Arc::new(move |line: &str| sink.lock().unwrap().push(line.to_string()))));
/// assert_eq!(Engine::new().eval("Print('x', 6 * 7)", &NoVars)?, Value::from("x,42"));
/// zs_expr::set_print_hook(None);
/// assert_eq!(*seen.lock().unwrap(), ["x,42"]);
/// # Ok::<(), zs_expr::Error>(())
/// ```
pub fn set_print_hook(hook: Option<PrintHook>) {
    stdlib::set_print_hook(hook)
}

/// Names of every built-in function (canonical names, lower case).
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    builtins::Builtin::ALL.iter().map(|b| b.name())
}
