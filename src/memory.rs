//! Giving memory back to the system once a wave of readers has gone.
//!
//! When thousands of post actors go to sleep, their memory is freed, but glibc's allocator
//! keeps freed pages in its heap unless asked: a server that saw a spike would then sit at
//! its peak size. After enough posts slept, the registry asks the allocator to return free
//! pages (`malloc_trim`), off the async threads.

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

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
