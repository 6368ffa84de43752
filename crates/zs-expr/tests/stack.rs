//! Hostile nesting never overflows the stack of an ordinary thread: at the
//! default `Limits::max_depth` (255) the parser, resolver and evaluator stay well
//! inside the 2 MiB a spawned thread gets, in debug builds too, and deeper
//! input is a `Limit` error.

use zs_expr::Engine;

fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn deep_parentheses_are_an_error_not_a_crash() {
    for n in [100, 127, 128, 129, 254, 255, 256, 1000, 8000] {
        on_small_stack(move || {
            let src = format!("{}1{}", "(".repeat(n), ")".repeat(n));
            let r = Engine::new().compile(&src);
            // the default limit (255) counts the parentheses and the literal
            assert_eq!(r.is_ok(), n < 255, "{n}: {:?}", r.err());
        });
    }
}

#[test]
fn deep_operators_and_calls_are_an_error_not_a_crash() {
    for n in [200, 253, 254, 255, 256, 8000] {
        on_small_stack(move || {
            // at the limit with a variable, so nothing folds: every evaluator recurses
            let x = [("x", zs_expr::Value::Int(-3))];
            let calls = format!("{}x{}", "abs(".repeat(n), ")".repeat(n));
            let r = Engine::new().compile(&calls);
            assert_eq!(r.is_ok(), n < 255, "{n}");
            if let Ok(p) = r {
                assert_eq!(p.eval(&x[..]).unwrap(), zs_expr::Value::Int(3));
                assert_eq!(
                    Engine::new().interpret(&calls, &x[..]).unwrap(),
                    zs_expr::Value::Int(3)
                );
            }
            let parens = format!("{}x{}", "(-".repeat(n / 2), ")".repeat(n / 2));
            if let Ok(p) = Engine::new().compile(&parens) {
                let _ = p.eval(&x[..]);
            }
            let neg = format!("{}1", "-".repeat(n));
            let _ = Engine::new()
                .compile(&neg)
                .map(|p| p.eval(&zs_expr::NoVars));
            let calls = format!("{}1{}", "abs(".repeat(n), ")".repeat(n));
            let _ = Engine::new()
                .compile(&calls)
                .map(|p| p.eval(&zs_expr::NoVars));
            let sum = format!("{}1", "1+".repeat(n));
            let _ = Engine::new()
                .compile(&sum)
                .map(|p| p.eval(&zs_expr::NoVars));
        });
    }
}

/// Headroom: input at the default limit fits in three quarters of a 2 MiB stack (the
/// rest is left to the frames of whoever calls the engine: a server's worker, a query).
#[test]
fn the_default_depth_leaves_a_quarter_of_the_stack() {
    let n = 254;
    std::thread::Builder::new()
        .stack_size(3 << 19)
        .spawn(move || {
            let parens = format!("{}x{}", "(".repeat(n), ")".repeat(n));
            let calls = format!("{}x{}", "abs(".repeat(n), ")".repeat(n));
            let x = [("x", zs_expr::Value::Int(-3))];
            for src in [parens, calls] {
                let p = Engine::new().compile(&src).unwrap();
                assert!(p.eval(&x[..]).is_ok());
                assert!(Engine::new().interpret(&src, &x[..]).is_ok());
            }
        })
        .unwrap()
        .join()
        .unwrap();
}
