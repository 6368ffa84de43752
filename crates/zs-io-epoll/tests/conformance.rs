//! The zs-io conformance kit against the epoll backend (both accept modes).
#![cfg(target_os = "linux")]

zs_io::conformance_tests!(|cfg: zs_io::Config| -> Box<dyn zs_io::Backend> {
    Box::new(zs_io_epoll::EpollBackend::new(cfg).unwrap())
});

mod handoff {
    zs_io::conformance_tests!(|cfg: zs_io::Config| -> Box<dyn zs_io::Backend> {
        Box::new(
            zs_io_epoll::EpollBackend::with_mode(cfg, zs_io_epoll::AcceptMode::HandOff).unwrap(),
        )
    });
}
