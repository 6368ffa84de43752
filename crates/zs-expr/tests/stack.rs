//! Hostile nesting never overflows the stack of an ordinary thread: at the
//! default `Limits::max_depth` (128) the parser, resolver and evaluator stay well
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
    for n in [100, 127, 128, 129, 255, 256, 1000, 8000] {
        on_small_stack(move || {
            let src = format!("{}1{}", "(".repeat(n), ")".repeat(n));
            let r = Engine::new().compile(&src);
            // the default limit (128) counts the parentheses and the literal
            assert_eq!(r.is_ok(), n < 128, "{n}: {:?}", r.err());
        });
    }
}

#[test]
fn deep_operators_and_calls_are_an_error_not_a_crash() {
    for n in [200, 255, 256, 8000] {
        on_small_stack(move || {
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
