//! `zs expr '<text>'`: evaluate one expression and print its value.

use std::process::ExitCode;

use clap::ValueEnum;
use zs_expr::{Engine, Precedence, Style, Value};

/// Lexical style of the expression text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StyleArg {
    /// `{..}` `(*..*)` comments, `'..'` strings with `''` and `#13`, `$FF`.
    Pascal,
    /// `/*..*/` `#` comments, `".."` strings with `\` escapes, `0xFF`.
    C,
    /// Accept both where they do not clash.
    Both,
}

/// Operator precedence table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecedenceArg {
    /// zExpression's table: `and` loosest, then `or xor`, comparisons, `+ -`, `* / ^ …`.
    Seed,
    /// Conventional C/Pascal-like precedence.
    Standard,
}

/// Arguments of `zs expr`.
#[derive(Debug, clap::Args)]
pub struct ExprArgs {
    /// The expression, e.g. `'x * 2 + 1'` (may start with `-`).
    #[arg(allow_hyphen_values = true)]
    pub text: String,
    /// Lexical style.
    #[arg(long, value_enum, default_value_t = StyleArg::Both)]
    pub style: StyleArg,
    /// Precedence mode.
    #[arg(long, value_enum, default_value_t = PrecedenceArg::Standard)]
    pub precedence: PrecedenceArg,
    /// A variable, `name=value` (repeatable). The value is an integer, a float, `true` /
    /// `false`, or else a string.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
}

/// Runs `zs expr`: prints the value on standard output, or the error with a caret under
/// the offending text on standard error and exits with code 1.
pub fn run(args: ExprArgs) -> ExitCode {
    let style = match args.style {
        StyleArg::Pascal => Style::Pascal,
        StyleArg::C => Style::C,
        StyleArg::Both => Style::Both,
    };
    let precedence = match args.precedence {
        PrecedenceArg::Seed => Precedence::Seed,
        PrecedenceArg::Standard => Precedence::Standard,
    };
    let mut vars: Vec<(&str, Value)> = Vec::with_capacity(args.vars.len());
    for v in &args.vars {
        match v.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => {
                vars.push((name.trim(), Value::parse_literal(value)))
            }
            _ => {
                eprintln!("error: --var needs NAME=VALUE, got {v:?}");
                return ExitCode::from(1);
            }
        }
    }
    // Print / DoStatus lines go to standard error, so standard output stays the value.
    zs_expr::set_print_hook(Some(std::sync::Arc::new(|line: &str| eprintln!("{line}"))));
    let engine = Engine::new().with_style(style).with_precedence(precedence);
    match engine.compile(&args.text).and_then(|p| p.eval(&vars[..])) {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", e.render(&args.text));
            ExitCode::from(1)
        }
    }
}
