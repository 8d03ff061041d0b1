//! The delivery worker's CPU-heavy work (rendering an invoice's PDF,
//! encoding an email) on one thread of its own at a lower CPU priority
//! (nice 10), so that a month's close, when every invoice is rendered and
//! mailed at once, yields the cores to the requests being served rather
//! than competing with them as equals. One thread bounds that work to one
//! core; jobs queue for it in order.

use std::sync::mpsc;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// How much lower than the server's the thread's CPU priority is (Linux
/// nice levels; ignored elsewhere).
const NICE: i32 = 10;

/// A handle to the background thread; the thread ends when the last handle
/// is dropped.
#[derive(Debug, Clone)]
pub struct Background {
    jobs: mpsc::Sender<Job>,
}

impl Background {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Background> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("delivery-cpu".into())
            .spawn(move || {
                lower_priority();
                for job in queue {
                    job();
                }
            })?;
        Ok(Background { jobs })
    }

    /// Runs `work` on the background thread and returns its result; `Err`
    /// if the thread is gone (or `work` panicked).
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (done, result) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(work());
            }))
            .map_err(|_| "the delivery thread has stopped".to_owned())?;
        result
            .await
            .map_err(|_| "the delivery thread dropped a job".to_owned())
    }
}

/// Lowers the calling thread's CPU priority by [`NICE`]. Linux keeps a nice
/// value per thread; a failure only leaves the priority as it was.
#[cfg(target_os = "linux")]
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers and change only the
    // calling thread's scheduling priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, NICE) != 0 {
            tracing::debug!("cannot lower the delivery thread's priority");
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_and_return_their_results() {
        let background = Background::start().unwrap();
        let (a, b) = tokio::join!(background.run(|| 1 + 1), background.run(|| "two"));
        assert_eq!((a.unwrap(), b.unwrap()), (2, "two"));
    }
}
