//! Interned virtual addresses with reference counts, shared by the Mux (a stream
//! stores a 4-byte index instead of a 28-byte address) and the tunnel driver (many
//! virtual connections share one listen or connect address).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Interned addresses with reference counts, so a stream stores a 4-byte index.
#[derive(Default)]
pub(crate) struct AddrTable {
    slots: Vec<(SocketAddr, u32)>,
    index: HashMap<SocketAddr, u32>,
    free: Vec<u32>,
}

impl AddrTable {
    pub(crate) fn intern(&mut self, a: SocketAddr) -> u32 {
        if let Some(&i) = self.index.get(&a) {
            self.slots[i as usize].1 += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = (a, 1);
                i
            }
            None => {
                self.slots.push((a, 1));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(a, i);
        i
    }
    /// The index of `a` if it is interned (no reference taken).
    pub(crate) fn find(&self, a: &SocketAddr) -> Option<u32> {
        self.index.get(a).copied()
    }
    pub(crate) fn get(&self, i: u32) -> SocketAddr {
        self.slots[i as usize].0
    }
    pub(crate) fn release(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        slot.1 -= 1;
        if slot.1 == 0 {
            self.index.remove(&slot.0);
            self.free.push(i);
        }
    }
    pub(crate) fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
        self.free.clear();
    }
}

/// The address reported for the far end of a virtual connection: the unspecified
/// address of the same family, port 0 (virtual connections have no source address).
pub(crate) fn anonymous(like: SocketAddr) -> SocketAddr {
    match like.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}
