//! The HPC worker pool: blocking or heavy handlers run here, never on a loop.

use std::sync::Mutex;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of worker threads fed by a crossbeam channel. Dropping the pool lets
/// the queued jobs finish and joins the threads.
pub struct WorkerPool {
    tx: Mutex<Option<Sender<Job>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    size: usize,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerPool({} threads)", self.size)
    }
}

impl WorkerPool {
    /// A pool of `threads` workers (at least one).
    pub fn new(threads: usize) -> WorkerPool {
        let size = threads.max(1);
        let (tx, rx): (Sender<Job>, Receiver<Job>) = crossbeam_channel::unbounded();
        let threads = (0..size)
            .map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("zs-hpc-{i}"))
                    .spawn(move || {
                        for job in rx.iter() {
                            // A panicking handler must not kill the worker.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                    })
                    .expect("spawn HPC worker thread")
            })
            .collect();
        WorkerPool {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
            size,
        }
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Queues `job`; false if the pool has been shut down.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> bool {
        match &*self.tx.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(tx) => tx.send(Box::new(job)).is_ok(),
            None => false,
        }
    }

    /// Stops accepting jobs, lets queued ones finish and joins the workers.
    pub fn shutdown(&self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let me = std::thread::current().id();
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn runs_every_job_and_survives_panics() {
        let pool = WorkerPool::new(3);
        let n = Arc::new(AtomicUsize::new(0));
        assert!(pool.spawn(|| panic!("handler bug")));
        for _ in 0..100 {
            let n = n.clone();
            assert!(pool.spawn(move || {
                n.fetch_add(1, Ordering::SeqCst);
            }));
        }
        pool.shutdown();
        assert_eq!(n.load(Ordering::SeqCst), 100);
        assert!(!pool.spawn(|| {}));
    }
}
