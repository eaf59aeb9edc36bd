//! Giving memory back to the system once a wave of readers has gone.
//!
//! When thousands of post actors go to sleep, their memory is freed, but glibc's allocator
//! keeps freed pages in its heap unless asked: a server that saw a spike would then sit at
//! its peak size. After enough posts slept, the registry asks the allocator to return free
//! pages (`malloc_trim`), off the async threads.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Posts that must have slept since the last trim before another one is worth its cost.
pub const TRIM_AFTER_SLEEPS: usize = 1024;

#[derive(Default)]
pub struct Reclaimer {
    slept: AtomicUsize,
}

impl Reclaimer {
    /// Counts one post gone to sleep.
    pub fn post_slept(&self) {
        self.slept.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns free heap pages to the system if enough posts slept since the last time.
    pub async fn reclaim_if_worthwhile(&self) {
        if self.slept.load(Ordering::Relaxed) < TRIM_AFTER_SLEEPS {
            return;
        }
        self.slept.store(0, Ordering::Relaxed);
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
