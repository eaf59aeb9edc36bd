//! The global allocator: jemalloc, set up so that memory freed after a wave of readers leaves
//! the process by itself, with no call from us.
//!
//! Measured against glibc's malloc (which needed its per-thread caches emptied by hand and
//! `malloc_trim`) and mimalloc: BENCHMARKS.md, "Allocator choice (issue 11)".

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol when it starts (`_rjem_` is tikv-jemalloc-sys's
/// prefix; `_RJEM_MALLOC_CONF` in the environment overrides it):
/// - `background_thread`: a thread of jemalloc's own purges freed pages, also those of arenas
///   whose threads went idle (a worker once its posts sleep), which would otherwise wait for
///   that thread's next allocation;
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: freed pages go back within about a second, and
///   none are kept lazily freed (`MADV_FREE`), which RSS still counts;
/// - `tcache:false`: no per-thread cache of freed blocks. An idle thread's cache is never
///   flushed, and each block in it keeps a page of the peak resident: with the cache, 100,000
///   posts left the server at 1.18–1.35× its start; without it, within 10%.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: Conf =
    Conf(c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,tcache:false".as_ptr());

/// A C string pointer, as jemalloc declares `malloc_conf`.
#[repr(transparent)]
struct Conf(*const std::ffi::c_char);

// SAFETY: it points to a string literal, never written.
unsafe impl Sync for Conf {}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// If tikv-jemalloc-sys changed its symbol prefix, jemalloc would ignore `MALLOC_CONF`
    /// without a word and keep its defaults (10 s of dirty pages, then 10 s lazily freed, and
    /// a cache per thread).
    #[test]
    fn jemalloc_runs_with_our_options() {
        // SAFETY: reading jemalloc's options, each the type its documentation gives.
        let (background, dirty, muzzy, tcache) = unsafe {
            (
                tikv_jemalloc_ctl::raw::read::<bool>(b"opt.background_thread\0"),
                tikv_jemalloc_ctl::raw::read::<isize>(b"opt.dirty_decay_ms\0"),
                tikv_jemalloc_ctl::raw::read::<isize>(b"opt.muzzy_decay_ms\0"),
                tikv_jemalloc_ctl::raw::read::<bool>(b"opt.tcache\0"),
            )
        };
        assert_eq!(background, Ok(true));
        assert_eq!(dirty, Ok(1000));
        assert_eq!(muzzy, Ok(0));
        assert_eq!(tcache, Ok(false));
        assert_eq!(tikv_jemalloc_ctl::background_thread::read(), Ok(true));
    }

    fn rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    /// What the server relies on instead of trimming by hand: a wave of small blocks freed on
    /// a thread that then sits idle (as a worker does once its posts sleep) leaves the
    /// process's resident memory within seconds, with no call from us. Run in a process of its
    /// own: RSS is the whole process's, and tests running beside it allocate too.
    #[test]
    fn memory_freed_by_an_idle_thread_leaves_the_process() {
        let name = "allocator::tests::alone_memory_freed_by_an_idle_thread_leaves_the_process";
        let exe = std::env::current_exe().expect("the test binary");
        let out = std::process::Command::new(exe)
            .args(["--exact", name, "--ignored", "--test-threads=1"])
            .output()
            .expect("run the test alone");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[ignore = "run alone, by memory_freed_by_an_idle_thread_leaves_the_process"]
    fn alone_memory_freed_by_an_idle_thread_leaves_the_process() {
        const BLOCKS: usize = 200_000;
        const SIZE: usize = 320;
        const SLACK_KIB: u64 = 4 * 1024;
        let before = rss_kib();
        let (allocated_tx, allocated_rx) = mpsc::channel();
        let (seen_tx, seen_rx) = mpsc::channel::<()>();
        let idle = std::thread::spawn(move || {
            let blocks: Vec<Box<[u8]>> = (0..BLOCKS).map(|i| vec![i as u8; SIZE].into()).collect();
            allocated_tx.send(()).expect("the test waits");
            let _ = seen_rx.recv();
            drop(blocks);
            // Idle from here on: its arena sees no further call.
            let _ = seen_rx.recv_timeout(Duration::from_secs(15));
        });
        allocated_rx.recv().expect("the wave allocated");
        let peak = rss_kib();
        assert!(
            peak >= before + (BLOCKS * SIZE / 1024) as u64,
            "the wave never showed: {before} → {peak} KiB"
        );
        seen_tx.send(()).expect("the thread waits");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut now = peak;
        while now > before + SLACK_KIB && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            now = rss_kib();
        }
        drop(seen_tx);
        idle.join().expect("the idle thread");
        assert!(
            now <= before + SLACK_KIB,
            "RSS {before} KiB before, {peak} KiB at the peak, {now} KiB 10 s after the free"
        );
    }
}
