//! `zs expr` end to end: runs the built binary.

use std::process::{Command, Output};

fn zs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zs"))
        .args(args)
        .output()
        .expect("run zs")
}

fn ok(args: &[&str]) -> String {
    let out = zs(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim_end()
        .to_string()
}

#[test]
fn prints_values() {
    assert_eq!(ok(&["expr", "1 + 2 * 3"]), "7");
    assert_eq!(ok(&["expr", "7 / 2"]), "3.5");
    assert_eq!(ok(&["expr", "'a' + 'b'"]), "ab");
    assert_eq!(ok(&["expr", "1, 'x', true"]), "[1, 'x', true]");
    assert_eq!(
        ok(&["expr", "9223372036854775807 + 1"]),
        "9223372036854775808"
    );
    assert_eq!(ok(&["expr", "-2 ^ 2"]), "-4");
}

#[test]
fn variables() {
    assert_eq!(ok(&["expr", "x * 2 + 1", "--var", "x=20"]), "41");
    assert_eq!(
        ok(&[
            "expr",
            "name = 'bob' and age > 30",
            "--var",
            "name=bob",
            "--var",
            "age=31"
        ]),
        "true"
    );
    assert_eq!(ok(&["expr", "y * 2", "--var", "y=1.25"]), "2.5");
}

#[test]
fn precedence_flag() {
    assert_eq!(ok(&["expr", "2 * 3 ^ 2"]), "18");
    assert_eq!(ok(&["expr", "--precedence", "seed", "2 * 3 ^ 2"]), "36");
    assert_eq!(
        ok(&[
            "expr",
            "--precedence",
            "standard",
            "true or false and false"
        ]),
        "true"
    );
    assert_eq!(
        ok(&["expr", "--precedence", "seed", "true or false and false"]),
        "false"
    );
}

#[test]
fn style_flag() {
    assert_eq!(
        ok(&["expr", "--style", "pascal", "{c} 'it''s'#33"]),
        "it's!"
    );
    assert_eq!(
        ok(&["expr", "--style", "c", "/* c */ \"a\\u0042\" # end"]),
        "aB"
    );
    assert_eq!(ok(&["expr", "$10 + 0x10"]), "32");
    let out = zs(&["expr", "--style", "pascal", "0x10"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn bad_input_exits_1_with_the_error() {
    for (args, needle) in [
        (&["expr", "1 + (2"][..], "expected `)`"),
        (&["expr", "1 / 0"][..], "division by zero"),
        (&["expr", "x + 1"][..], "`x` is not bound"),
        (&["expr", "nosuch(1)"][..], "no function named"),
        (&["expr", "x", "--var", "novalue"][..], "NAME=VALUE"),
    ] {
        let out = zs(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = zs(&["expr", "1 +\n  @"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2, column 3") && err.contains("  ^"),
        "{err}"
    );
}

#[test]
fn seed_builtins_from_the_command_line() {
    assert_eq!(ok(&["expr", "IntToStr(6*7)"]), "42");
    assert_eq!(ok(&["expr", "inttostr(6*7) + '!'"]), "42!");
    assert_eq!(ok(&["expr", "ROL8($81, 1)"]), "3");
    assert_eq!(ok(&["expr", "Vec3(1, 2)"]), "[1, 2, 0.0]");
    assert_eq!(ok(&["expr", "StrToInt(x) * 2", "--var", "x=21"]), "42");
    assert_eq!(
        ok(&[
            "expr",
            "IntToStr(6*7) + ' ' + UpperCase(Trim(s))",
            "--var",
            "s= ok "
        ]),
        "42 OK"
    );
    // Print's line goes to standard error; the value to standard output.
    let out = zs(&["expr", "Print('a', 1)"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "a,1");
    assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), "a,1");
    // A bad conversion is an error with exit code 1, not a panic.
    let out = zs(&["expr", "StrToInt('abc')"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid integer"));
}
