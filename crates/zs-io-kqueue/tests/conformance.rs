//! The zs-io conformance kit against the kqueue backend (runs on BSD/macOS only).
#![cfg(any(target_os = "freebsd", target_os = "macos"))]

zs_io::conformance_tests!(|cfg: zs_io::Config| -> Box<dyn zs_io::Backend> {
    Box::new(zs_io_kqueue::KqueueBackend::new(cfg).unwrap())
});
