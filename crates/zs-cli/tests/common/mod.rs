//! Helpers shared by the `zs` CLI tests: the binary, a child that is killed when
//! the test ends, a free loopback port.
#![allow(dead_code)] // each test file uses the part it needs

use std::process::{Child, Command};

/// The `zs` binary under test.
pub fn zs() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zs"))
}

/// Kills the child when the test ends (pass or fail).
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
