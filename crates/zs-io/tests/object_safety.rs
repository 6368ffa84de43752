//! Pins object safety of the seam: these only compile while the traits stay
//! usable as trait objects.
use std::sync::Arc;

use zs_io::{Backend, Connection, Handler, Listener};

fn _assert_backend(_: &dyn Backend) {}
fn _assert_boxed_backend(_: Box<dyn Backend>) {}
fn _assert_arc_backend(_: Arc<dyn Backend>) {}
fn _assert_listener(_: &dyn Listener) {}
fn _assert_connection(_: &dyn Connection) {}
fn _assert_handler(_: Box<dyn Handler>) {}

fn _send_sync<T: Send + Sync + ?Sized>() {}

#[test]
fn seam_traits_are_object_safe_and_thread_safe() {
    _send_sync::<dyn Backend>();
    _send_sync::<dyn Listener>();
    _send_sync::<dyn Connection>();
    fn _handler_send<T: Send + ?Sized>() {}
    _handler_send::<dyn Handler>();
}
