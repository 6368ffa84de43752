//! The HPC worker pool: blocking or heavy handlers run here, never on a loop.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

type Job = Box<dyn FnOnce() + Send + 'static>;
/// `None` tells one worker to exit (sent by [`WorkerPool::shutdown`]).
type Msg = Option<Job>;

thread_local! {
    /// The job queue of the pool this worker thread belongs to.
    static CURRENT: RefCell<Option<Sender<Msg>>> = const { RefCell::new(None) };
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A future polled on the pool: each wake queues one poll job.
struct Task {
    fut: Mutex<Option<BoxFuture>>,
    queued: AtomicBool,
    tx: Sender<Msg>,
}

impl Task {
    fn schedule(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let t = self.clone();
            // A shut-down pool drops the task (and so answers its responder).
            let _ = self.tx.send(Some(Box::new(move || t.run())));
        }
    }

    fn run(self: &Arc<Self>) {
        self.queued.store(false, Ordering::Release);
        let mut g = self.fut.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = g.as_mut() {
            let waker = Waker::from(self.clone());
            let mut cx = Context::from_waker(&waker);
            if f.as_mut().poll(&mut cx).is_ready() {
                *g = None;
            }
        }
    }
}

impl Wake for Task {
    fn wake(self: Arc<Self>) {
        self.schedule();
    }
}

/// Runs `fut` on the pool of the current worker thread (async handlers). False
/// when not called on a pool thread.
pub(crate) fn spawn_on_current(fut: impl Future<Output = ()> + Send + 'static) -> bool {
    let tx = CURRENT.with(|c| c.borrow().clone());
    match tx {
        Some(tx) => {
            let t = Arc::new(Task {
                fut: Mutex::new(Some(Box::pin(fut))),
                queued: AtomicBool::new(false),
                tx,
            });
            t.schedule();
            true
        }
        None => false,
    }
}

/// A fixed set of worker threads fed by a crossbeam channel. Dropping the pool lets
/// the queued jobs finish and joins the threads. New jobs wait in a queue of
/// bounded length ([`WorkerPool::with_queue`]); wake-ups of async handlers
/// already running are never refused.
pub struct WorkerPool {
    tx: Mutex<Option<Sender<Msg>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    size: usize,
    /// New jobs queued and not yet started.
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerPool({} threads)", self.size)
    }
}

impl WorkerPool {
    /// A pool of `threads` workers (at least one) with a queue of 4096 jobs.
    pub fn new(threads: usize) -> WorkerPool {
        WorkerPool::with_queue(threads, 4096)
    }

    /// A pool of `threads` workers whose queue holds at most `max_waiting`
    /// jobs not yet started (at least one).
    pub fn with_queue(threads: usize, max_waiting: usize) -> WorkerPool {
        let size = threads.max(1);
        let (tx, rx): (Sender<Msg>, Receiver<Msg>) = crossbeam_channel::unbounded();
        let threads = (0..size)
            .map(|i| {
                let rx = rx.clone();
                let me = tx.clone();
                std::thread::Builder::new()
                    .name(format!("zs-hpc-{i}"))
                    .spawn(move || {
                        CURRENT.with(|c| *c.borrow_mut() = Some(me));
                        while let Ok(Some(job)) = rx.recv() {
                            // A panicking handler must not kill the worker.
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        CURRENT.with(|c| c.borrow_mut().take());
                    })
                    .expect("spawn HPC worker thread")
            })
            .collect();
        WorkerPool {
            tx: Mutex::new(Some(tx)),
            threads: Mutex::new(threads),
            size,
            waiting: Arc::new(AtomicUsize::new(0)),
            max_waiting: max_waiting.max(1),
        }
    }

    /// Number of worker threads.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether the queue of jobs not yet started is full.
    pub fn is_full(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) >= self.max_waiting
    }

    /// Queues `job`; false (and `job` dropped) if the pool has been shut down
    /// or its queue is full.
    pub fn spawn(&self, job: impl FnOnce() + Send + 'static) -> bool {
        let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return false;
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        let waiting = self.waiting.clone();
        let job = move || {
            waiting.fetch_sub(1, Ordering::AcqRel);
            job()
        };
        if tx.send(Some(Box::new(job))).is_err() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Stops accepting jobs, lets queued ones finish and joins the workers.
    pub fn shutdown(&self) {
        let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        for _ in 0..self.size {
            let _ = tx.send(None);
        }
        drop(tx);
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
    fn the_queue_of_new_jobs_is_bounded() {
        let pool = WorkerPool::with_queue(1, 3);
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = std::sync::mpsc::channel::<()>();
        // Occupy the only worker, then fill the queue.
        assert!(pool.spawn(move || {
            started_tx.send(()).unwrap();
            let _ = hold_rx.recv();
        }));
        started_rx.recv().unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let r = ran.clone();
            assert!(pool.spawn(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }));
        }
        assert!(pool.is_full());
        assert!(!pool.spawn(|| {}), "a fourth waiting job is refused");
        hold_tx.send(()).unwrap();
        pool.shutdown();
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        assert!(!pool.is_full());
    }

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
