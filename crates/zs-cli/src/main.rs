//! # zs: the zserver command line
//!
//! `zs <command> …`. Each subcommand lives in its own module and is listed in
//! [`Command`]; only commands that work are listed.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod call;
mod db;
mod dbsvc;
mod expr;
mod legacy;
mod registry;
mod serve;
mod services;
mod visit;
mod xnat;

/// The zserver command line.
#[derive(Debug, Parser)]
#[command(
    name = "zs",
    version,
    about = "zserver: long-lived encrypted command connections"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Every subcommand of `zs`.
#[derive(Debug, Subcommand)]
enum Command {
    // subcommand variants: one line per module
    /// Run a zserver (default 127.0.0.1:7777) with echo, time, stats until Ctrl-C.
    Serve(Box<serve::ServeArgs>),
    /// Call a command on a running zserver and print the answer.
    Call(call::CallArgs),
    /// Use the embedded store (zs-db): create, put, get, query, compact.
    Db(db::DbArgs),
    /// Evaluate an expression (zs-expr) and print its value.
    Expr(expr::ExprArgs),
    /// Load a running zserver: rpc calls, BigStream transfers or idle sessions.
    Bench(bench::BenchArgs),
    Xnat(xnat::XnatArgs),
    /// Accounts on a running `zs serve`: add, passwd, list, disable.
    User(services::UserArgs),
    /// Messages on a running `zs serve`: send, inbox.
    Msg(services::MsgArgs),
    /// Files on a running `zs serve`: put, get, ls, rm, mkdir (resumable).
    File(services::FileArgs),
    /// The cluster registry (embedded or etcd): ls, watch, pick, call the least loaded.
    Registry(registry::RegistryArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // subcommand dispatch: one arm per module
        Command::Serve(a) => serve::run(*a),
        Command::Call(a) => call::run(a),
        Command::Db(a) => db::run(a),
        Command::Expr(a) => expr::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Xnat(a) => xnat::run(a),
        Command::User(a) => services::run_user_cmd(a),
        Command::Msg(a) => services::run_msg_cmd(a),
        Command::File(a) => services::run_file_cmd(a),
        Command::Registry(a) => registry::run(a),
    }
}
