//! The connection task fills a read buffer the handler sized (data left in
//! it with room reserved behind it) up to that room instead of regrowing it,
//! as zs-io's reactor does: what the handler keeps there is never moved.
//! Before session 13 the task reserved a chunk before every read, which
//! regrew (and copied) the buffer once less than a chunk of room was left.

use zs_io::{Backend, Config};
use zs_io_tokio::TokioBackend;

#[test]
fn a_buffer_the_handler_sized_is_filled_not_regrown() {
    zs_io::testkit::sized_read_buffer_stays_put(&|cfg: Config| -> Box<dyn Backend> {
        Box::new(TokioBackend::new(cfg).unwrap())
    });
}
