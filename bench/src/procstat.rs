//! Server resource readings from /proc: resident memory (VmRSS) and CPU time
//! (utime + stime) of a process and its direct children (nginx's workers).

use std::fs;

/// A process to watch; `None` reads nothing and reports zeros.
#[derive(Clone, Copy)]
pub struct Server {
    pub pid: Option<u32>,
}

impl Server {
    /// The pid and its direct children.
    fn tree(&self) -> Vec<u32> {
        let Some(pid) = self.pid else {
            return Vec::new();
        };
        let mut pids = vec![pid];
        if let Ok(dir) = fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(child) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Some(stat) = read_stat(child)
                    && stat.ppid == pid
                {
                    pids.push(child);
                }
            }
        }
        pids
    }

    /// Resident set size in bytes, summed over the tree.
    pub fn rss_bytes(&self) -> u64 {
        self.tree()
            .into_iter()
            .filter_map(|p| {
                let status = fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
                let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some(kb * 1024)
            })
            .sum()
    }

    /// CPU seconds (user + system), summed over the tree.
    pub fn cpu_seconds(&self) -> f64 {
        let ticks: u64 = self
            .tree()
            .into_iter()
            .filter_map(read_stat)
            .map(|s| s.utime + s.stime)
            .sum();
        ticks as f64 / clock_ticks()
    }

    /// Open file descriptors of the pid itself (nginx: the master only).
    pub fn open_fds(&self) -> Option<usize> {
        let pid = self.pid?;
        Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
    }

    pub fn alive(&self) -> bool {
        self.pid
            .is_none_or(|p| fs::metadata(format!("/proc/{p}")).is_ok())
    }
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid is field 4, utime 14, stime 15.
    Some(Stat {
        ppid: f.get(1)?.parse().ok()?,
        utime: f.get(11)?.parse().ok()?,
        stime: f.get(12)?.parse().ok()?,
    })
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Raises this process's open-files soft limit to the hard limit; returns it.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

/// The machine, for the report: (nproc, CPU model, kernel).
pub fn machine() -> (usize, String, String) {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    (nproc, model, kernel)
}
