//! Blocking host work with a bound: the `vfio-host` thread.
//!
//! Opening a VFIO device makes the host kernel reset the function, and closing or resetting
//! one waits for the device too; on a sick device (or a host under load) each can take seconds
//! or, in the worst case, not return. The VMM thread must stay able to answer the API, run
//! timers and shut the VM down, so it hands such work to this thread and waits for it at most
//! a bound. Work that overruns its bound is abandoned, not cancelled: it finishes here later
//! and its result (an opened device, say) is dropped here, which closes it. While the thread
//! is still busy with abandoned work, new work is refused at once instead of queueing behind
//! it — except closing a device, which is queued ([`HostWorker::drop_there`]): a device is
//! never closed on the VMM thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostWorkError {
    #[error("the host did not finish {what} within {} s; vfvmm gave up waiting (the work may still complete)", .after.as_secs())]
    TimedOut { what: String, after: Duration },
    #[error("the host has not finished an earlier operation ({what}, abandoned after its bound): try again later")]
    Busy { what: String },
    #[error("the vfio-host thread is gone")]
    Gone,
    #[error("cannot start the vfio-host thread: {0}")]
    Spawn(String),
}

type Job = Box<dyn FnOnce() + Send>;

/// The `vfio-host` thread and its queue.
pub struct HostWorker {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set while the thread runs work the VMM thread abandoned; the text names it.
    overrun: Arc<Mutex<Option<String>>>,
    /// Whether the thread is running a job at all (for the overrun check).
    running: Arc<AtomicBool>,
}

impl HostWorker {
    /// Starts the thread; `on_start` runs first on it (its seccomp filter).
    pub fn spawn(on_start: impl FnOnce() -> Result<(), String> + Send + 'static) -> Result<Self, HostWorkError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let running = Arc::new(AtomicBool::new(false));
        let overrun = Arc::new(Mutex::new(None::<String>));
        let (thread_running, thread_overrun) = (running.clone(), overrun.clone());
        let thread = std::thread::Builder::new()
            .name("vfio-host".into())
            .spawn(move || {
                if let Err(e) = on_start() {
                    log::error!("vfio-host thread: {e}; host work will be refused");
                    return;
                }
                for job in queue {
                    thread_running.store(true, Ordering::SeqCst);
                    job();
                    thread_running.store(false, Ordering::SeqCst);
                    if let Ok(mut o) = thread_overrun.lock() {
                        if let Some(what) = o.take() {
                            log::info!("the host finished {what} after all (abandoned earlier)");
                        }
                    }
                }
            })
            .map_err(|e| HostWorkError::Spawn(e.to_string()))?;
        Ok(Self { jobs: Some(jobs), thread: Some(thread), overrun, running })
    }

    /// What the thread is still doing that the VMM thread abandoned, if it is.
    fn abandoned_work(&self) -> Option<String> {
        let earlier = self.overrun.lock().ok()?.clone()?;
        self.running.load(Ordering::SeqCst).then_some(earlier)
    }

    /// Runs `job` on the thread and waits at most `bound` for its result.
    pub fn run<T: Send + 'static>(
        &self,
        what: &str,
        bound: Duration,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HostWorkError> {
        if let Some(earlier) = self.abandoned_work() {
            return Err(HostWorkError::Busy { what: earlier });
        }
        let (reply, result) = mpsc::sync_channel::<T>(1);
        let jobs = self.jobs.as_ref().ok_or(HostWorkError::Gone)?;
        jobs.send(Box::new(move || {
            // The VMM thread may have stopped waiting: then the result is dropped here.
            let _ = reply.send(job());
        }))
        .map_err(|_| HostWorkError::Gone)?;
        let started = Instant::now();
        match result.recv_timeout(bound) {
            Ok(value) => Ok(value),
            Err(RecvTimeoutError::Disconnected) => Err(HostWorkError::Gone),
            Err(RecvTimeoutError::Timeout) => {
                if let Ok(mut o) = self.overrun.lock() {
                    *o = Some(what.to_string());
                }
                log::error!("the host did not finish {what} in {} ms: abandoned", started.elapsed().as_millis());
                Err(HostWorkError::TimedOut { what: what.to_string(), after: bound })
            }
        }
    }
}

impl HostWorker {
    /// Drops `value` (closing the host device it holds) on the thread, waiting at most
    /// `bound`. While the thread is still busy with abandoned work, `value` is queued behind
    /// it without waiting: it is never dropped (never waited for) on the caller's thread.
    pub fn drop_there<T: Send + 'static>(&self, what: &str, bound: Duration, value: T) -> Result<(), HostWorkError> {
        match self.abandoned_work() {
            Some(earlier) => {
                if let Some(jobs) = self.jobs.as_ref() {
                    let _ = jobs.send(Box::new(move || drop(value)));
                }
                Err(HostWorkError::Busy { what: earlier })
            }
            None => self.run(what, bound, move || drop(value)),
        }
    }
}

impl Drop for HostWorker {
    /// Lets the thread finish its queue; waits only if nothing overran (an overrun job may
    /// never return).
    fn drop(&mut self) {
        drop(self.jobs.take());
        let overran = self.overrun.lock().map(|o| o.is_some()).unwrap_or(true);
        if let Some(t) = self.thread.take() {
            if !overran {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn worker() -> HostWorker {
        HostWorker::spawn(|| Ok(())).unwrap()
    }

    #[test]
    fn work_returns_its_result() {
        let w = worker();
        assert_eq!(w.run("adding", Duration::from_secs(5), || 2 + 2), Ok(4));
        assert_eq!(w.run("again", Duration::from_secs(5), || "ok"), Ok("ok"));
    }

    /// A result the VMM thread stopped waiting for, dropped when it comes.
    struct Opened(Arc<AtomicUsize>);
    impl Drop for Opened {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn hung_work_is_abandoned_at_its_bound_and_later_work_is_refused_until_it_ends() {
        let w = worker();
        let closed = Arc::new(AtomicUsize::new(0));
        let (release, hang) = mpsc::channel::<()>();
        let c = closed.clone();
        let started = Instant::now();
        let r = w.run("opening 0000:01:10.0", Duration::from_millis(200), move || {
            let _ = hang.recv();
            Opened(c)
        });
        assert!(started.elapsed() < Duration::from_secs(2), "the bound held");
        assert!(matches!(r, Err(HostWorkError::TimedOut { ref what, .. }) if what == "opening 0000:01:10.0"));
        // Still hung: refused at once, naming what the host is still doing.
        let started = Instant::now();
        let busy = w.run("closing", Duration::from_secs(5), || ());
        assert!(started.elapsed() < Duration::from_millis(100));
        assert_eq!(busy, Err(HostWorkError::Busy { what: "opening 0000:01:10.0".into() }));
        // The host finishes: the abandoned result is dropped (closed) on the worker and new
        // work is taken again.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while closed.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(closed.load(Ordering::SeqCst), 1, "the late device was closed");
        let mut later = Err(HostWorkError::Gone);
        while Instant::now() < deadline {
            later = w.run("closing", Duration::from_secs(5), || 7);
            if later.is_ok() {
                break;
            }
        }
        assert_eq!(later, Ok(7));
    }

    /// A value whose drop would wait on the host: dropped on the worker, never on the caller,
    /// even while the worker is stuck on abandoned work.
    struct Device(mpsc::Sender<Option<String>>);
    impl Drop for Device {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().name().map(str::to_string));
        }
    }

    #[test]
    fn a_device_is_closed_on_the_worker_even_while_it_is_stuck() {
        let w = worker();
        let (closed, where_closed) = mpsc::channel();
        assert_eq!(w.drop_there("closing", Duration::from_secs(5), Device(closed.clone())), Ok(()));
        assert_eq!(where_closed.recv().unwrap().as_deref(), Some("vfio-host"));
        let (release, hang) = mpsc::channel::<()>();
        let _ = w.run("resetting", Duration::from_millis(50), move || {
            let _ = hang.recv();
        });
        let started = Instant::now();
        let queued = w.drop_there("closing", Duration::from_secs(5), Device(closed));
        assert!(started.elapsed() < Duration::from_millis(100), "no wait behind the stuck work");
        assert_eq!(queued, Err(HostWorkError::Busy { what: "resetting".into() }));
        assert!(where_closed.try_recv().is_err(), "not dropped on the caller");
        release.send(()).unwrap();
        assert_eq!(where_closed.recv_timeout(Duration::from_secs(5)).unwrap().as_deref(), Some("vfio-host"));
    }

    #[test]
    fn a_worker_whose_start_failed_refuses_work() {
        let w = HostWorker::spawn(|| Err("no filter".into())).unwrap();
        assert_eq!(w.run("x", Duration::from_secs(5), || 1), Err(HostWorkError::Gone));
    }

    #[test]
    fn dropping_a_worker_stuck_on_abandoned_work_does_not_wait_for_it() {
        let w = worker();
        let (_keep, hang) = mpsc::channel::<()>();
        let _ = w.run("resetting", Duration::from_millis(50), move || {
            let _ = hang.recv_timeout(Duration::from_secs(30));
        });
        let started = Instant::now();
        drop(w);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
