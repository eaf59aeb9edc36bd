//! How the kernel schedules the worker threads.
//!
//! A reader joining a post whose actor lives on the other worker wakes that worker, and its
//! answer wakes this one back. Under Linux's default policy the woken thread preempts the
//! waker when both share a CPU, so two busy workers took turns on one CPU, one switch per
//! wake-up: about one context switch per view. `SCHED_BATCH` (documented in `sched(7)` for
//! non-interactive work that should not preempt its own threads on wake-up) lets the waker
//! finish what it has ready first; the woken worker runs when the CPU is free or at the next
//! tick. Measured on the 2-core bench machine (BENCHMARKS.md): less server CPU per view, more
//! views per second, and a shorter fan-out.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// `SCHED_BATCH`: a worker woken by another does not preempt it.
    #[default]
    Batch,
    /// The system's default policy.
    Normal,
}

impl Scheduling {
    /// Applies the policy to the calling thread only.
    pub fn apply_to_this_thread(self) {
        if self == Self::Normal {
            return;
        }
        if let Err(e) = set_batch() {
            tracing::warn!("cannot switch a worker to batch scheduling: {e}");
        }
    }
}

#[cfg(target_os = "linux")]
fn set_batch() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: on Linux, pid 0 names the calling thread; `param` outlives the call.
    match unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(target_os = "linux"))]
fn set_batch() -> std::io::Result<()> {
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy_of_this_thread() -> libc::c_int {
        // SAFETY: pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    /// The policy a new thread has after applying `scheduling` to itself.
    fn policy_of_a_thread_applying(scheduling: Scheduling) -> libc::c_int {
        std::thread::spawn(move || {
            scheduling.apply_to_this_thread();
            policy_of_this_thread()
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn batch_applies_to_the_calling_thread_only() {
        let before = policy_of_this_thread();
        assert_eq!(
            policy_of_a_thread_applying(Scheduling::Batch),
            libc::SCHED_BATCH
        );
        assert_eq!(policy_of_this_thread(), before);
    }

    #[test]
    fn normal_leaves_the_policy_alone() {
        let before = policy_of_this_thread();
        assert_eq!(policy_of_a_thread_applying(Scheduling::Normal), before);
    }
}
