//! The reactor fills a read buffer the handler sized (data left in it with
//! room reserved behind it) up to that room instead of regrowing it, so what
//! the handler keeps there is never moved: a frame being completed where it
//! lies stays put (the kit's `sized_read_buffer_stays_put`, which tokio runs
//! too).

#![cfg(target_os = "linux")]

use zs_io::{Backend, Config};
use zs_io_epoll::EpollBackend;

#[test]
fn a_buffer_the_handler_sized_is_filled_not_regrown() {
    zs_io::testkit::sized_read_buffer_stays_put(&|cfg: Config| -> Box<dyn Backend> {
        Box::new(EpollBackend::new(cfg).unwrap())
    });
}
