//! The [`Engine`]: settings, registered functions and constants, the compile cache.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::error::Error;
use crate::interp::{self, Ctx};
use crate::lexer::Style;
use crate::parser::Precedence;
use crate::program::{self, Program};
use crate::resolve;
use crate::value::{Args, Value, Vars, V};

/// How many arguments a registered function accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    /// Exactly n.
    Exact(usize),
    /// From `min` to `max` inclusive.
    Range(usize, usize),
    /// At least n (variadic).
    AtLeast(usize),
}

impl Arity {
    /// Whether `n` arguments are accepted.
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exact(k) => n == k,
            Arity::Range(a, b) => (a..=b).contains(&n),
            Arity::AtLeast(a) => n >= a,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arity::Exact(k) => write!(f, "{k}"),
            Arity::Range(a, b) => write!(f, "{a} to {b}"),
            Arity::AtLeast(a) => write!(f, "at least {a}"),
        }
    }
}

type Func = dyn Fn(&Args<'_, '_>) -> Result<Value, String> + Send + Sync;
type Unknown = dyn Fn(&str) -> Option<Resolution> + Send + Sync;

/// A registered function (the seed's `RegOp`).
pub struct UserFn {
    pub(crate) name: String,
    pub(crate) arity: Arity,
    pub(crate) pure: bool,
    pub(crate) func: Box<Func>,
}

impl fmt::Debug for UserFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserFn")
            .field("name", &self.name)
            .field("arity", &self.arity)
            .finish()
    }
}

/// What the unknown-name callback says a name means.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// A constant value, substituted at compile time.
    Const(Value),
    /// Expression text, parsed and substituted in place of the name (a macro).
    Macro(String),
}

/// Limits that keep hostile or mistaken input cheap. Every one is checked, never assumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest source text in bytes (default 64 KiB).
    pub max_len: usize,
    /// Deepest nesting of the expression tree, macros included (default 255: at
    /// that depth parsing, folding and evaluation use at most about 60% of a 2 MiB
    /// thread's stack in debug builds (nested parentheses overflow it only past ~460
    /// levels, nested calls past ~420), so a 2 MiB thread survives any input; see
    /// `tests/stack.rs`).
    pub max_depth: usize,
    /// Most nodes evaluated in one evaluation (default 1,000,000).
    pub max_steps: u64,
    /// Longest string an operator or function may build, in bytes (default 1 MiB).
    pub max_string: usize,
    /// Deepest chain of macros expanding into macros (default 8).
    pub max_macro_depth: usize,
    /// Largest saved blob accepted by [`Engine::load`] (default 16 MiB).
    pub max_blob: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_len: 64 * 1024,
            max_depth: 255,
            max_steps: 1_000_000,
            max_string: 1 << 20,
            max_macro_depth: 8,
            max_blob: 16 << 20,
        }
    }
}

struct Cache {
    map: HashMap<String, (Arc<Program>, u64)>,
    tick: u64,
    cap: usize,
}

/// Compiles expressions under one set of settings, functions and constants.
///
/// `Engine` is `Send + Sync`; compiled [`Program`]s keep what they need (functions
/// included), so they can be evaluated on any thread without the engine.
pub struct Engine {
    style: Style,
    precedence: Precedence,
    limits: Limits,
    fns: HashMap<String, Arc<UserFn>>,
    consts: HashMap<String, Value>,
    unknown: Option<Box<Unknown>>,
    cache: Mutex<Cache>,
}

impl Default for Engine {
    fn default() -> Engine {
        Engine::new()
    }
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("style", &self.style)
            .field("precedence", &self.precedence)
            .field("limits", &self.limits)
            .field("functions", &self.fns.len())
            .finish()
    }
}

impl Engine {
    /// Default settings: [`Style::Both`], [`Precedence::Standard`], [`Limits::default`],
    /// a compile cache of 256 entries.
    pub fn new() -> Engine {
        Engine {
            style: Style::Both,
            precedence: Precedence::Standard,
            limits: Limits::default(),
            fns: HashMap::new(),
            consts: HashMap::new(),
            unknown: None,
            cache: Mutex::new(Cache {
                map: HashMap::new(),
                tick: 0,
                cap: 256,
            }),
        }
    }

    /// Sets the lexical style.
    pub fn with_style(mut self, style: Style) -> Engine {
        self.style = style;
        self.clear_cache();
        self
    }

    /// Sets the precedence mode.
    pub fn with_precedence(mut self, precedence: Precedence) -> Engine {
        self.precedence = precedence;
        self.clear_cache();
        self
    }

    /// Sets the limits.
    pub fn with_limits(mut self, limits: Limits) -> Engine {
        self.limits = limits;
        self.clear_cache();
        self
    }

    /// The lexical style.
    pub fn style(&self) -> Style {
        self.style
    }

    /// The precedence mode.
    pub fn precedence(&self) -> Precedence {
        self.precedence
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Registers a function under `name` (case-insensitive; it shadows a built-in of the
    /// same name). Calls are never folded at compile time, since the closure may have side
    /// effects; see [`register_pure`](Self::register_pure).
    pub fn register<F>(&mut self, name: &str, arity: Arity, f: F) -> &mut Engine
    where
        F: Fn(&Args<'_, '_>) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.insert_fn(name, arity, false, Box::new(f))
    }

    /// Like [`register`](Self::register), for functions whose result depends only on their
    /// arguments: calls with constant arguments are folded at compile time.
    pub fn register_pure<F>(&mut self, name: &str, arity: Arity, f: F) -> &mut Engine
    where
        F: Fn(&Args<'_, '_>) -> Result<Value, String> + Send + Sync + 'static,
    {
        self.insert_fn(name, arity, true, Box::new(f))
    }

    fn insert_fn(&mut self, name: &str, arity: Arity, pure: bool, func: Box<Func>) -> &mut Engine {
        let f = UserFn {
            name: name.to_string(),
            arity,
            pure,
            func,
        };
        self.fns.insert(name.to_ascii_lowercase(), Arc::new(f));
        self.clear_cache();
        self
    }

    /// Defines a named constant (case-insensitive), substituted at compile time.
    pub fn set_const(&mut self, name: &str, value: impl Into<Value>) -> &mut Engine {
        self.consts.insert(name.to_ascii_lowercase(), value.into());
        self.clear_cache();
        self
    }

    /// Sets the callback asked about names that are not built-in constants or registered
    /// constants: it may answer a constant, a macro (expression text), or `None`, in which
    /// case the name is a variable read from the evaluation context.
    pub fn on_unknown_name<F>(&mut self, f: F) -> &mut Engine
    where
        F: Fn(&str) -> Option<Resolution> + Send + Sync + 'static,
    {
        self.unknown = Some(Box::new(f));
        self.clear_cache();
        self
    }

    pub(crate) fn function(&self, lower: &str) -> Option<Arc<UserFn>> {
        if self.fns.is_empty() {
            return None;
        }
        self.fns.get(lower).cloned()
    }

    pub(crate) fn has_functions(&self) -> bool {
        !self.fns.is_empty()
    }

    pub(crate) fn has_constants(&self) -> bool {
        !self.consts.is_empty()
    }

    pub(crate) fn function_by_name(&self, name: &str) -> Option<Arc<UserFn>> {
        self.function(&name.to_ascii_lowercase())
    }

    pub(crate) fn constant(&self, lower: &str) -> Option<&Value> {
        self.consts.get(lower)
    }

    pub(crate) fn unknown_name(&self, name: &str) -> Option<Resolution> {
        self.unknown.as_ref().and_then(|f| f(name))
    }

    /// Parses, resolves, folds and compiles `text`.
    pub fn compile(&self, text: &str) -> Result<Program, Error> {
        resolve::with_scratch(|s| {
            let resolved = resolve::resolve(self, text, s)?;
            Ok(program::compile(
                text,
                s,
                resolved,
                self.limits.max_steps,
                self.limits.max_string,
            ))
        })
    }

    /// Like [`compile`](Self::compile), into an existing [`Program`] whose memory is
    /// reused (the way a parser reuses its slab): once `program` has held an
    /// expression at least as large, a recompile allocates nothing. For programs that
    /// compile an expression per request (filters received over the network,
    /// templates), one program per thread serves them all. On an error `program` is
    /// left as it was.
    ///
    /// ```
    /// use zs_expr::{Engine, Value};
    /// let engine = Engine::new();
    /// let mut p = engine.compile("0")?;
    /// for (text, want) in [("x * 2 + 1", 7.0), ("max(x, 10) - 1", 9.0)] {
    ///     engine.compile_into(text, &mut p)?;
    ///     assert_eq!(p.eval_f64(&[Value::Float(3.0)][..])?, want);
    /// }
    /// assert!(engine.compile_into("x +", &mut p).is_err());
    /// assert_eq!(p.source(), "max(x, 10) - 1");
    /// # Ok::<(), zs_expr::Error>(())
    /// ```
    pub fn compile_into(&self, text: &str, program: &mut Program) -> Result<(), Error> {
        resolve::with_scratch(|s| {
            let resolved = resolve::resolve(self, text, s)?;
            program::compile_into(
                text,
                s,
                resolved,
                self.limits.max_steps,
                self.limits.max_string,
                program,
            );
            Ok(())
        })
    }

    /// Like [`compile`](Self::compile) through a cache keyed by the text (least recently
    /// used entries are evicted beyond the capacity; errors are not cached).
    pub fn compile_cached(&self, text: &str) -> Result<Arc<Program>, Error> {
        {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            c.tick += 1;
            let tick = c.tick;
            if let Some(entry) = c.map.get_mut(text) {
                entry.1 = tick;
                return Ok(entry.0.clone());
            }
        }
        let p = Arc::new(self.compile(text)?);
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.cap == 0 {
            return Ok(p);
        }
        while c.map.len() >= c.cap {
            let oldest = c
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    c.map.remove(&k);
                }
                None => break,
            }
        }
        let tick = c.tick;
        c.map.insert(text.to_string(), (p.clone(), tick));
        Ok(p)
    }

    /// Sets the compile cache's capacity (0 disables it); shrinks it if needed.
    pub fn set_cache_capacity(&self, cap: usize) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        c.cap = cap;
        while c.map.len() > cap {
            let oldest = c
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                c.map.remove(&k);
            }
        }
    }

    /// Number of cached programs.
    pub fn cache_len(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }

    /// Empties the compile cache (done automatically when functions or settings change).
    pub fn clear_cache(&self) {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .clear();
    }

    /// Compiles (through the cache) and evaluates in one call.
    pub fn eval<X: Vars + ?Sized>(&self, text: &str, vars: &X) -> Result<Value, Error> {
        self.compile_cached(text)?.eval(vars)
    }

    /// Evaluates with the reference tree-walking interpreter: no constant folding, no
    /// compiled form. Slower; it exists to cross-check the compiler.
    pub fn interpret<X: Vars + ?Sized>(&self, text: &str, vars: &X) -> Result<Value, Error> {
        resolve::with_scratch(|s| {
            let r = resolve::resolve(self, text, s)?;
            let cx = Ctx {
                vars,
                names: resolve::Names {
                    head: text,
                    tail: &s.extra,
                    ranges: &s.vars,
                },
                fns: &r.fns,
                src: text,
                max_str: self.limits.max_string,
                max_steps: self.limits.max_steps,
            };
            let mut steps = self.limits.max_steps;
            interp::eval(&s.tree, r.root, &cx, &mut steps)
                .map(V::into_value)
                .map_err(|e| *e)
        })
    }
}
