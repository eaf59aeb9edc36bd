//! Giving memory back to the system once a wave of readers has gone.
//!
//! When thousands of post actors go to sleep, their memory is freed, but glibc's allocator
//! keeps freed pages in its heap unless asked: a server that saw a spike would then sit at
//! its peak size. After enough posts slept, the registry asks the allocator to return free
//! pages (`malloc_trim`), off the async threads.
//!
//! glibc also raises its mmap and trim thresholds each time a large block is freed (up to
//! 32 MiB): after a wave of 100,000 posts, the writer's and workers' heaps kept up to ~20 MB
//! of free memory at their top, which `malloc_trim` does not release for a thread's arena, and
//! every further wave added ~13 MB. [`fix_allocator_thresholds`] pins both thresholds.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Posts that must have slept since the last trim before another one is worth its cost.
pub const TRIM_AFTER_SLEEPS: usize = 1024;

/// Fewer sleeps are still worth a trim once the wave is over (none during a whole
/// housekeeping interval): otherwise what the last posts of a wave freed would stay.
pub const TRIM_AFTER_WAVE: usize = 64;

#[derive(Default)]
pub struct Reclaimer {
    slept: AtomicUsize,
    /// `slept` as seen by the previous call: unchanged means no post slept in between.
    seen_before: AtomicUsize,
}

impl Reclaimer {
    /// Counts one post gone to sleep.
    pub fn post_slept(&self) {
        self.slept.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns free heap pages to the system if enough posts slept since the last time.
    /// Meant to be called at a steady interval (housekeeping).
    pub async fn reclaim_if_worthwhile(&self) {
        let slept = self.slept.load(Ordering::Relaxed);
        let wave_over = slept == self.seen_before.swap(slept, Ordering::Relaxed);
        if slept < TRIM_AFTER_SLEEPS && !(wave_over && slept >= TRIM_AFTER_WAVE) {
            return;
        }
        self.slept.fetch_sub(slept, Ordering::Relaxed);
        self.seen_before.store(0, Ordering::Relaxed);
        let _ = actix_web::rt::task::spawn_blocking(trim).await;
    }
}

/// Large blocks (a map of 100,000 posts) are mapped and unmapped on their own, and free memory
/// above this size at the top of any heap goes back at once. Setting the thresholds turns off
/// glibc's raising them; 128 KiB is its initial value. Call before any thread is spawned.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn fix_allocator_thresholds() {
    const THRESHOLD: libc::c_int = 128 * 1024;
    // SAFETY: mallopt only changes the allocator's tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_allocator_thresholds() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
