//! The zs-io conformance kit against the tokio backend.
zs_io::conformance_tests!(|cfg: zs_io::Config| -> Box<dyn zs_io::Backend> {
    Box::new(zs_io_tokio::TokioBackend::new(cfg).unwrap())
});

/// The same backend on a runtime the caller owns.
mod borrowed_runtime {
    use std::sync::OnceLock;
    fn rt() -> &'static tokio::runtime::Runtime {
        static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
        RT.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        })
    }
    zs_io::conformance_tests!(|cfg: zs_io::Config| -> Box<dyn zs_io::Backend> {
        Box::new(zs_io_tokio::TokioBackend::with_handle(
            cfg,
            rt().handle().clone(),
        ))
    });
}
