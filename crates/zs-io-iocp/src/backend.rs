//! [`IocpBackend`]: the `zs_io::Backend` on completion ports, and its listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use zs_io::{Backend, Config, Error, Handler, HandlerFactory, Listener};

use crate::event_loop::{Cmd, Loop, LoopHandle, Shared};

/// The Windows transport backend: a pool of event loops, each a thread with its own
/// I/O completion port, driving `AcceptEx`, `ConnectEx`, `WSARecv` and `WSASend`.
///
/// Connections are spread round robin over the loops and stay on theirs; a
/// listener's `AcceptEx` completions arrive on one loop, which hands each accepted
/// socket to the next loop in turn. [`Backend::shutdown`] (also run on drop) closes
/// everything and joins the threads.
#[derive(Debug)]
pub struct IocpBackend {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl IocpBackend {
    /// Starts `config.effective_loops()` loop threads.
    pub fn new(config: Config) -> Result<IocpBackend, Error> {
        let n = config.effective_loops();
        let handles = (0..n)
            .map(|_| LoopHandle::new().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let shared = Arc::new(Shared::new(config, handles));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("zs-iocp-{i}"))
                .spawn(move || Loop::new(i, sh).run());
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let b = IocpBackend {
                        shared,
                        threads: Mutex::new(threads),
                    };
                    b.shutdown();
                    return Err(Error::Io(e));
                }
            }
        }
        Ok(IocpBackend {
            shared,
            threads: Mutex::new(threads),
        })
    }

    /// The number of event loops (threads) running.
    pub fn loops(&self) -> usize {
        self.shared.loops.len()
    }
}

impl Backend for IocpBackend {
    fn name(&self) -> &str {
        "iocp"
    }

    fn listen(
        &self,
        addr: SocketAddr,
        factory: HandlerFactory,
    ) -> Result<Box<dyn Listener>, Error> {
        if self.shared.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        // No SO_REUSEADDR: on Windows it would let another socket steal the port; a
        // listener can rebind a port with connections in TIME_WAIT without it.
        sock.bind(&addr.into())?;
        sock.listen(self.shared.config.backlog)?;
        let local = sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| Error::Io(std::io::Error::other("listener has no IP address")))?;
        let id = self.shared.next_id();
        let closed = Arc::new(AtomicBool::new(false));
        let l = self.shared.pick_loop();
        self.shared.loops[l].send(Cmd::Listen {
            id,
            sock,
            factory,
            closed: closed.clone(),
        });
        Ok(Box::new(IocpListener {
            id,
            local,
            closed,
            shared: self.shared.clone(),
        }))
    }

    fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
        handler: Box<dyn Handler>,
    ) -> Result<(), Error> {
        if self.shared.shut.load(Ordering::Acquire) {
            return Err(Error::ShutDown);
        }
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        // ConnectEx wants a bound socket.
        let any: SocketAddr = if addr.is_ipv6() {
            "[::]:0".parse()
        } else {
            "0.0.0.0:0".parse()
        }
        .map_err(|_| Error::Io(std::io::Error::other("bad wildcard address")))?;
        sock.bind(&any.into())?;
        let id = self.shared.next_id();
        let l = self.shared.pick_loop();
        self.shared.loops[l].send(Cmd::Connect {
            id,
            sock,
            addr,
            timeout,
            handler,
        });
        Ok(())
    }

    fn shutdown(&self) {
        if !self.shared.shut.swap(true, Ordering::AcqRel) {
            for lp in &self.shared.loops {
                lp.send(Cmd::Shutdown);
            }
        }
        if self.shared.loops.iter().any(|l| l.on_loop_thread()) {
            return; // called from a handler: the loops stop by themselves
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            if t.join().is_err() {
                tracing::error!("iocp: an event loop panicked");
            }
        }
    }
}

impl Drop for IocpBackend {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A listening socket of an [`IocpBackend`].
#[derive(Debug)]
struct IocpListener {
    id: u64,
    local: SocketAddr,
    closed: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Listener for IocpListener {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for lp in &self.shared.loops {
            lp.send(Cmd::CloseListener(self.id));
        }
    }
}

impl Drop for IocpListener {
    fn drop(&mut self) {
        self.shutdown();
    }
}
