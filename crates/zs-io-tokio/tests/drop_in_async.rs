//! Dropping a backend that owns its runtime from inside another runtime's task
//! must not panic (tokio refuses to drop a runtime in an async context).

use std::sync::Arc;

use zs_io::Backend;
use zs_io_tokio::TokioBackend;

#[test]
fn last_owned_backend_dropped_inside_async_code_does_not_panic() {
    let outer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let backend: Arc<dyn Backend> = Arc::new(TokioBackend::new(zs_io::Config::default()).unwrap());
    let held = backend.clone();
    outer.block_on(async move {
        drop(backend);
        // The last reference goes here, inside an async context.
        drop(held);
    });
}

#[test]
fn last_owned_backend_dropped_inside_a_spawned_task_does_not_panic() {
    let outer = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let backend = TokioBackend::new(zs_io::Config::default()).unwrap();
    let r = outer.block_on(async move { tokio::spawn(async move { drop(backend) }).await });
    assert!(r.is_ok(), "the task dropping the backend panicked: {r:?}");
}
