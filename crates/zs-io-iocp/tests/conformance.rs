//! The `zs_io` conformance kit against the IOCP backend (Windows only; under wine
//! in CI: `cargo xtask test-windows -p zs-io-iocp`).
#![cfg(windows)]

zs_io::conformance_tests!(|cfg: zs_io::Config| -> Box<dyn zs_io::Backend> {
    Box::new(zs_io_iocp::IocpBackend::new(cfg).expect("start the IOCP backend"))
});
