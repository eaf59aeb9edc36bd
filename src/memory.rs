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
//! blocks out ([`CachedBlocks::take`]; the writer, which this module does not know, through
//! [`HoldsCachedBlocks`]) and a short-lived thread frees them: on its exit they go
//! back to their heaps, where the trim that follows can release their pages. `malloc_trim`
//! never shrinks the top of a thread's heap either (only freeing a large block does), which
//! left up to 0.7 MB of a worker's peak heap resident; each thread also gives up one such block.
//!
//! Kept because it was measured (issue 11, BENCHMARKS.md "Allocator choice"): after 100,000
//! posts, mimalloc left 3.2–5.7× the starting RSS, jemalloc 1.18–1.35×, and 1.01–1.16× without
//! its thread cache (1.16× on an idle machine: over the 1.10× target); glibc with this module
//! 1.02–1.07× in every run.
//! It leans on glibc 2.36 internals, each checked by a test that fails when it changes:
//! - `tcache`: 7 blocks (`glibc.malloc.tcache_count`) in each of 64 sizes, 16 bytes apart
//!   from 24, per thread; [`CachedBlocks::take`] empties it by allocating that many.
//!   `after_a_wave_on_long_lived_threads_the_reclaim_gives_most_of_it_back_to_the_system`
//!   (32 MiB freed on 4 long-lived threads; its resident anonymous memory must fall by 90 % of it) fails with
//!   `GLIBC_TUNABLES=glibc.malloc.tcache_count=10` or more (5 MiB stay), or without the
//!   reclaim's cache emptying and trim (8 MiB stay). A count of 8 is not caught (1 MiB more).
//! - A thread's exit flushes its tcache into the blocks' own heaps:
//!   `blocks_freed_on_a_passing_thread_are_not_cached_by_the_caller`.
//! - `malloc_trim(0)` releases the pages of free blocks in every arena (the wave test).
//! - `mallopt(M_MMAP_THRESHOLD / M_TRIM_THRESHOLD)` stops glibc raising them after a large
//!   free: `a_large_block_freed_goes_back_at_once_even_after_another_was_freed` (16 MiB stay
//!   without [`fix_allocator_thresholds`]).
//!
//! Not caught by a test: the 64 KiB trimmer (the wave test's heaps shrink without it), and
//! freeing on the caller instead of a passing thread leaves 1 MiB more, within the wave test's
//! margin. `faults/run.sh memory` asserts the server's VmRSS after churns of readers is within
//! 10 % of the start, and `just bench`'s posts scenario measures it after 100,000 posts.

use std::alloc::Layout;
use std::future::Future;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use actix_rt::ArbiterHandle;
use tokio::sync::oneshot;

/// Posts gone to sleep and streams closed since the last trim before another one is worth
/// its cost (a post and a stream each freed a few KB).
pub const TRIM_AFTER: usize = 1024;

/// Fewer are still worth a trim once the wave is over (none during a whole housekeeping
/// interval): otherwise what the end of a wave freed would stay.
pub const TRIM_AFTER_WAVE: usize = 64;

/// A long-lived thread besides the workers (the storage writer) whose allocator cache a
/// reclaim empties. Implemented by the layer that owns the thread, which asks it to run
/// [`CachedBlocks::take`] on itself; this module knows none of those threads.
pub trait HoldsCachedBlocks {
    /// The blocks the thread's allocator caches, taken out on that thread; `None` once it
    /// has stopped.
    fn take_cached_blocks(&self) -> impl Future<Output = Option<CachedBlocks>> + Send;
}

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
    /// thread, of `workers` and of `other` (the writer) are emptied first.
    pub async fn reclaim_if_worthwhile(
        &self,
        streams_fallen: usize,
        workers: &[ArbiterHandle],
        other: &impl HoldsCachedBlocks,
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
        taken.extend(other.take_cached_blocks().await);
        let freed = actix_web::rt::task::spawn_blocking(move || give_back(taken)).await;
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

/// Frees what the threads' caches held so that their heaps can release it, then releases it.
/// Blocking: run it off the async threads.
fn give_back(taken: Vec<CachedBlocks>) {
    free_on_passing_thread(taken);
    trim();
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
        run_alone("taking_the_cached_blocks_gets_the_ones_this_thread_just_freed");
    }

    /// Alone in its process: glibc fills a thread's empty cache from its arena's bin of that
    /// size when it has to go there (`_int_malloc` stashes up to 7 more of the bin's blocks),
    /// and an arena's bins take what any thread sharing it frees. A first take may thus leave
    /// blocks stashed in the cache, so that ours do not all fit in it; in the whole suite it
    /// did, once in a few dozen runs ("still cached"). Here no other thread frees into the
    /// arena, and many blocks of the size are held first, so the bin is empty and the cache
    /// with it when ours are freed.
    #[test]
    #[ignore = "run alone, by taking_the_cached_blocks_gets_the_ones_this_thread_just_freed"]
    fn alone_taking_the_cached_blocks_gets_the_ones_this_thread_just_freed() {
        let layout = Layout::from_size_align(100, 8).expect("layout");
        let _emptied = CachedBlocks::take();
        let _held: Vec<Block> = (0..4096).filter_map(|_| Block::new(100)).collect();
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

    #[test]
    fn blocks_freed_on_a_passing_thread_are_not_cached_by_the_caller() {
        run_alone("blocks_freed_on_a_passing_thread_are_not_cached");
    }

    /// Runs `alone_<name>` by itself in a child process and asserts it passed: glibc serves a
    /// thread from an arena it may share with other threads, and RSS is the whole process's.
    fn run_alone(name: &str) {
        let name = format!("memory::tests::alone_{name}");
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args([
                "--exact",
                &name,
                "--ignored",
                "--test-threads=1",
                "--nocapture",
            ])
            .output()
            .expect("run the test alone");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{stderr}"
        );
    }

    #[test]
    fn after_a_wave_on_long_lived_threads_the_reclaim_gives_most_of_it_back_to_the_system() {
        run_alone("after_a_wave_the_reclaim_gives_most_of_it_back");
    }

    /// Long-lived threads holding their allocator caches, as the workers and the writer do.
    const THREADS: usize = 4;
    /// Bytes each thread allocates in the wave, in blocks of the sizes glibc caches.
    const WAVE_PER_THREAD: usize = 8 << 20;

    /// Resident anonymous memory of this process (`RssAnon`: the heaps, stacks), in bytes.
    /// Not VmRSS: that also counts the pages of the test binary's code as they are first run,
    /// which in a debug build of this size grew by 2 to 4 MiB during the test itself and
    /// depend on how the linker laid the code out, not on what the allocator gives back.
    fn rss() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .expect("RssAnon in kB");
        kb * 1024
    }

    /// Allocates `WAVE_PER_THREAD` bytes in small blocks (sizes cycling over the cached ones, as
    /// a post's many small allocations do) and frees them in a scattered order, as posts go to
    /// sleep: the last freed of each size, which this thread's cache keeps, lie all over the
    /// wave's pages. Returns once all of it is allocated and touched, and once it is freed.
    fn wave(allocated: &std::sync::Barrier, freed: &std::sync::Barrier) {
        let mut blocks = Vec::new();
        let mut bytes = 0;
        while bytes < WAVE_PER_THREAD {
            let size = 24 + 16 * (blocks.len() % CachedBlocks::SIZES);
            let block = Block::new(size).expect("allocate");
            // SAFETY: the block holds `size` bytes, all ours.
            unsafe { block.0.as_ptr().write_bytes(0xa5, size) };
            bytes += size;
            blocks.push(Some(block));
        }
        allocated.wait();
        // A fixed pseudo-random order (Fisher-Yates over xorshift): neighbours go far apart.
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for i in order {
            drop(blocks[i].take());
        }
        freed.wait();
    }

    /// The reclaim's steps on `THREADS` long-lived threads after a wave each: what
    /// [`Reclaimer::reclaim_if_worthwhile`] does on the workers, the writer and housekeeping.
    #[test]
    #[ignore = "run alone, by after_a_wave_on_long_lived_threads_the_reclaim_gives_most_of_it_back_to_the_system"]
    fn alone_after_a_wave_the_reclaim_gives_most_of_it_back() {
        use std::sync::{Arc, Barrier, mpsc};
        fix_allocator_thresholds();
        let started = Arc::new(Barrier::new(THREADS + 1));
        let allocated = Arc::new(Barrier::new(THREADS + 1));
        let freed = Arc::new(Barrier::new(THREADS + 1));
        let mut asks = Vec::new();
        let (reply, taken) = mpsc::channel();
        let mut threads = Vec::new();
        for _ in 0..THREADS {
            let (ask, asked) = mpsc::channel::<()>();
            let (started, allocated) = (started.clone(), allocated.clone());
            let (freed, reply) = (freed.clone(), reply.clone());
            threads.push(std::thread::spawn(move || {
                // Its stack and arena are there before the wave, in the figure it starts from.
                drop(Block::new(24));
                started.wait();
                started.wait();
                wave(&allocated, &freed);
                // Stay alive, caches and all, until asked for them; then until the end.
                for () in asked {
                    reply
                        .send(CachedBlocks::take())
                        .expect("send the cached blocks");
                }
            }));
            asks.push(ask);
        }
        started.wait();
        let before = rss();
        started.wait();
        allocated.wait();
        let peak = rss() - before;
        freed.wait();
        let freed_only = rss() - before;

        trim();
        for ask in &asks {
            ask.send(()).expect("ask a thread");
        }
        let taken: Vec<CachedBlocks> = taken.iter().take(THREADS).collect();
        give_back(taken);
        let after = rss().saturating_sub(before);
        // The control: freed without the reclaim, most of the wave stays resident (about 8 MiB
        // measured). If it did not, the wave missed the caches and the test would prove nothing.
        let stays_without_reclaim = freed_only >= 4 << 20;

        let figures = format!(
            "wave {} KiB on {THREADS} threads: resident {} KiB at its peak, {} KiB once freed, \
             {} KiB after the reclaim",
            THREADS * WAVE_PER_THREAD / 1024,
            peak / 1024,
            freed_only / 1024,
            after / 1024
        );
        println!("{figures}");
        assert!(peak >= THREADS * WAVE_PER_THREAD * 9 / 10, "{figures}");
        assert!(
            stays_without_reclaim,
            "the freed wave left the process by itself, so nothing here tests the reclaim: {figures}"
        );
        assert!(after <= peak / 10, "less than 90% given back: {figures}");
        drop(asks);
        for thread in threads {
            thread.join().expect("wave thread");
        }
    }

    #[test]
    fn a_large_block_freed_goes_back_at_once_even_after_another_was_freed() {
        run_alone("a_large_block_freed_goes_back_at_once");
    }

    /// glibc raises its mmap threshold to the size of a mapped block freed (and its trim
    /// threshold to twice that), so the next block that size lands in the heap and stays
    /// resident when freed: what [`fix_allocator_thresholds`] turns off.
    #[test]
    #[ignore = "run alone, by a_large_block_freed_goes_back_at_once_even_after_another_was_freed"]
    fn alone_a_large_block_freed_goes_back_at_once() {
        const LARGE: usize = 16 << 20;
        fix_allocator_thresholds();
        let touched = || {
            let block = Block::new(LARGE).expect("allocate");
            // SAFETY: the block holds `LARGE` bytes, all ours.
            unsafe { block.0.as_ptr().write_bytes(0xa5, LARGE) };
            block
        };
        drop(touched());
        let before = rss();
        let block = touched();
        let held = rss() - before;
        drop(block);
        let kept = rss().saturating_sub(before);
        let figures = format!(
            "{} KiB held, {} KiB kept once freed",
            held / 1024,
            kept / 1024
        );
        println!("{figures}");
        assert!(held >= LARGE * 9 / 10, "{figures}");
        assert!(kept <= LARGE / 4, "{figures}");
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
