//! Dotted names (`param.lo`, `address.city`) are single variables, so a host can bind
//! nested fields (zs-db filters over nested JSON use them).

use zs_expr::{Engine, NoVars, Value};

#[test]
fn dotted_names_are_variables() {
    let e = Engine::new();
    let p = e.compile("param.lo + param.hi * 2").unwrap();
    assert_eq!(p.var_names(), ["param.lo", "param.hi"]);
    let vars = [("param.lo", Value::Int(1)), ("param.hi", Value::Int(20))];
    assert_eq!(p.eval(&vars[..]).unwrap(), Value::Int(41));
    // deeper paths, `_` and digits inside segments
    let p = e.compile("a.b_2.c3 > 1 and _x._y").unwrap();
    assert_eq!(p.var_names(), ["a.b_2.c3", "_x._y"]);
    // the interpreter agrees
    let vars = [("a.b_2.c3", Value::Int(5)), ("_x._y", Value::Bool(true))];
    assert_eq!(
        e.interpret("a.b_2.c3 > 1 and _x._y", &vars[..]).unwrap(),
        Value::Bool(true)
    );
}

#[test]
fn a_dot_not_followed_by_a_letter_is_not_part_of_a_name() {
    let e = Engine::new();
    // `x .5` is a name then a number: two operands in a row
    assert!(e.compile("x.5").is_err());
    assert!(e.compile("x.").is_err());
    assert!(e.compile("x..y").is_err());
    // numbers keep their decimal point
    assert_eq!(e.eval("1.5 * 2", &NoVars).unwrap(), Value::Float(3.0));
    assert_eq!(e.eval(".5 + 1", &NoVars).unwrap(), Value::Float(1.5));
}

/// A registered function that compiles an expression itself while the outer compilation
/// folds a call to it (the per-thread scratch memory is in use then): both work.
#[test]
fn compiling_inside_a_folded_function_call() {
    use zs_expr::Arity;
    let mut e = Engine::new();
    e.register_pure("inner", Arity::Exact(1), |args| {
        let p = Engine::new()
            .compile("a.b * 10 + 1")
            .map_err(|e| e.to_string())?;
        let v = Value::Int(args.f64(0)? as i64);
        p.eval(&[("a.b", v)][..]).map_err(|e| e.to_string())
    });
    let p = e.compile("inner(4) + y.z").unwrap();
    assert!(p.node_count() <= 3, "the call was folded");
    assert_eq!(p.var_names(), ["y.z"]);
    assert_eq!(
        p.eval(&[("y.z", Value::Int(1))][..]).unwrap(),
        Value::Int(42)
    );
    // and the thread's scratch is clean for the next compilation
    let q = e.compile("q + 1").unwrap();
    assert_eq!(q.var_names(), ["q"]);
    assert_eq!(q.eval(&[("q", Value::Int(1))][..]).unwrap(), Value::Int(2));
}
