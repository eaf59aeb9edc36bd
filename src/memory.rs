//! Giving memory back to the system once a wave of readers has gone.
//!
//! When thousands of post actors go to sleep, or thousands of streams close, their memory is
//! freed, but glibc's allocator keeps freed pages in its heap unless asked: a server that saw
//! a spike would then sit at its peak size. After enough posts slept or streams closed, the
//! allocator is asked to return free pages (`malloc_trim`), off the async threads.
//!
//! glibc also raises its mmap and trim thresholds each time a large block is freed (up to
//! 32 MiB): after a wave of 100,000 posts, the writer's and workers' heaps kept up to ~20 MB
//! of free memory at their top, which `malloc_trim` does not release for a thread's arena, and
//! every further wave added ~13 MB. [`fix_allocator_thresholds`] pins both thresholds.
//!
//! Each thread also keeps up to seven freed blocks of each small size for itself (glibc's
//! `tcache`). After a wave these are the last blocks its posts freed, scattered over the whole
//! peak heap, and each one keeps its page resident: about 230 blocks per worker, 1 to 2 MB.
//! `malloc_trim` cannot see them. So before trimming, every long-lived thread takes its cached
//! blocks out ([`CachedBlocks::take`]) and a short-lived thread frees them: on its exit they go
//! back to their heaps, where the trim that follows can release their pages. `malloc_trim`
//! never shrinks the top of a thread's heap either (only freeing a large block does), which
//! left up to 0.7 MB of a worker's peak heap resident; each thread also gives up one such block.

use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use actix_rt::ArbiterHandle;
use tokio::sync::oneshot;

use crate::storage::writer::Writer;

/// Posts gone to sleep and streams closed since the last trim before another one is worth
/// its cost (a post and a stream each freed a few KB).
pub const TRIM_AFTER: usize = 1024;

/// Fewer are still worth a trim once the wave is over (none during a whole housekeeping
/// interval): otherwise what the end of a wave freed would stay.
pub const TRIM_AFTER_WAVE: usize = 64;

#[derive(Default)]
pub struct Reclaimer {
    slept: AtomicUsize,
    /// `slept` as seen by the previous call: unchanged means no post slept in between.
    seen_before: AtomicUsize,
    /// How far the open streams fell since the last trim.
    fallen: AtomicUsize,
    /// Reclaims completed since start.
    done: AtomicU64,
}

impl Reclaimer {
    /// How many times memory was given back since start.
    pub fn reclaims(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Counts one post gone to sleep.
    pub fn post_slept(&self) {
        self.slept.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns free heap pages to the system if enough posts slept or streams closed since
    /// the last time. Meant to be called at a steady interval (housekeeping) on a long-lived
    /// thread, with how far the open streams fell since the previous call; the caches of that
    /// thread, of `workers` and of `writer` are emptied first.
    pub async fn reclaim_if_worthwhile(
        &self,
        streams_fallen: usize,
        workers: &[ArbiterHandle],
        writer: &Writer,
    ) {
        let slept = self.slept.load(Ordering::Relaxed);
        let fallen = self.fallen.fetch_add(streams_fallen, Ordering::Relaxed) + streams_fallen;
        let wave_over =
            slept == self.seen_before.swap(slept, Ordering::Relaxed) && streams_fallen == 0;
        let released = slept + fallen;
        if released < TRIM_AFTER && !(wave_over && released >= TRIM_AFTER_WAVE) {
            return;
        }
        self.slept.fetch_sub(slept, Ordering::Relaxed);
        self.seen_before.store(0, Ordering::Relaxed);
        self.fallen.store(0, Ordering::Relaxed);
        // Fast bins hold blocks freed but not merged; merge them first, so that what the
        // caches refill from below is only blocks whose pages stay resident anyway.
        if actix_web::rt::task::spawn_blocking(trim).await.is_err() {
            return;
        }
        let mut taken = vec![CachedBlocks::take()];
        for worker in workers {
            let (tx, rx) = oneshot::channel();
            if worker.spawn_fn(move || drop(tx.send(CachedBlocks::take()))) {
                taken.extend(rx.await.ok());
            }
        }
        taken.extend(writer.take_cached_blocks().await);
        let freed = actix_web::rt::task::spawn_blocking(move || {
            free_on_passing_thread(taken);
            trim();
        })
        .await;
        if freed.is_ok() {
            self.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Blocks of every size a thread caches, taken out of that thread's cache, and one block from
/// the thread's own heap large enough that freeing it trims that heap's top.
pub struct CachedBlocks {
    cached: Vec<Block>,
    trimmer: Option<Block>,
}

impl CachedBlocks {
    /// glibc caches up to this many blocks per size (`glibc.malloc.tcache_count`)...
    const PER_SIZE: usize = 7;
    /// ...in 64 sizes, 16 bytes apart, the smallest holding 24 bytes.
    const SIZES: usize = 64;
    /// Freeing a block of at least 64 KiB is what makes glibc trim the top of a thread's heap
    /// (`malloc_trim` releases pages inside free blocks, never a thread heap's top).
    const TRIMMER: usize = 64 * 1024;

    /// Allocates as many blocks of each cached size as the calling thread's cache holds, which
    /// empties it: the cache is where a thread's allocations of those sizes are served first.
    pub fn take() -> Self {
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            return Self {
                cached: Vec::new(),
                trimmer: None,
            };
        }
        let mut cached = Vec::with_capacity(Self::PER_SIZE * Self::SIZES);
        for i in 0..Self::SIZES {
            for _ in 0..Self::PER_SIZE {
                cached.extend(Block::new(24 + 16 * i));
            }
        }
        Self {
            cached,
            trimmer: Block::new(Self::TRIMMER),
        }
    }
}

/// One heap block, freed on drop by whichever thread drops it.
struct Block(NonNull<u8>, Layout);

// SAFETY: a block is plain heap memory no one else points to; any thread may free it.
unsafe impl Send for Block {}

impl Block {
    fn new(size: usize) -> Option<Self> {
        let layout = Layout::from_size_align(size, 8).ok()?;
        // SAFETY: `size` is never zero here; the block is freed with `layout` in `drop`.
        let ptr = NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        Some(Self(ptr, layout))
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout and freed only here.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), self.1) };
    }
}

/// Frees the cached blocks on a thread that ends right after: what it caches in turn goes back
/// to the heaps when it exits, instead of staying in a long-lived thread's cache. Then the
/// trimmers: each heap's top shrinks, now that the blocks next to it are free.
fn free_on_passing_thread(blocks: Vec<CachedBlocks>) {
    let (cached, trimmers): (Vec<_>, Vec<_>) =
        blocks.into_iter().map(|b| (b.cached, b.trimmer)).unzip();
    let passing = std::thread::Builder::new()
        .name("viewcounter-reclaim".into())
        .spawn(move || drop(cached));
    if let Ok(thread) = passing {
        let _ = thread.join();
    }
    drop(trimmers);
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

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    #[test]
    fn taking_the_cached_blocks_gets_the_ones_this_thread_just_freed() {
        let layout = Layout::from_size_align(100, 8).expect("layout");
        let freed: Vec<usize> = (0..CachedBlocks::PER_SIZE)
            .map(|_| {
                // SAFETY: non-zero size; freed right below with the same layout.
                let block = unsafe { std::alloc::alloc(layout) };
                assert!(!block.is_null());
                block
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|block| {
                // SAFETY: allocated above with `layout`.
                unsafe { std::alloc::dealloc(block, layout) };
                block as usize
            })
            .collect();
        let taken = CachedBlocks::take();
        let taken: Vec<usize> = taken.cached.iter().map(|b| b.0.as_ptr() as usize).collect();
        for block in &freed {
            assert!(taken.contains(block), "{block:#x} is still cached");
        }
    }

    /// Run alone, in a process of its own (this test binary, asked for the one test below):
    /// glibc serves a thread's requests from an arena it shares with whatever other threads
    /// exist, so test threads running beside it can hand the blocks back and fail it.
    #[test]
    fn blocks_freed_on_a_passing_thread_are_not_cached_by_the_caller() {
        let name = "memory::tests::alone_blocks_freed_on_a_passing_thread_are_not_cached";
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args(["--exact", name, "--ignored", "--test-threads=1"])
            .output()
            .expect("run the test alone");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}"
        );
    }

    #[test]
    #[ignore = "run alone, by blocks_freed_on_a_passing_thread_are_not_cached_by_the_caller"]
    fn alone_blocks_freed_on_a_passing_thread_are_not_cached() {
        let taken = CachedBlocks::take();
        let addresses: Vec<usize> = taken.cached.iter().map(|b| b.0.as_ptr() as usize).collect();
        free_on_passing_thread(vec![taken]);
        // Had this thread freed them, its cache would serve them again first.
        let again = CachedBlocks::take();
        let cached = again
            .cached
            .iter()
            .filter(|b| addresses.contains(&(b.0.as_ptr() as usize)))
            .count();
        assert!(
            cached < addresses.len() / 2,
            "{cached} of {} came back",
            addresses.len()
        );
    }
}
