//! The real `viewcounter` binary, where process behaviour matters (signals, kill -9, the
//! owner's commands): a server as a child process, and one-shot commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::app::{DEFAULT_SLUGS, STOP_TIMEOUT, counts_of, db_path, slugs_path, token, write_slugs};
use crate::http::{Counts, Reader, Req, Response, join, send};

// ---------------------------------------------------------------------------------------------
// The real binary.

/// The `viewcounter` binary cargo built for the test being run: cargo names it in
/// `CARGO_BIN_EXE_viewcounter` when it runs an integration test; a test binary run by hand
/// finds it beside its own directory (`target/debug/deps/..`).
pub fn bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_viewcounter") {
        return path.into();
    }
    let test = std::env::current_exe().expect("the test binary's path");
    let beside = test
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("viewcounter"))
        .filter(|path| path.is_file());
    beside.unwrap_or_else(|| {
        panic!("no viewcounter binary: run the tests with cargo test (which builds it)")
    })
}

/// A command for the binary in `dir`, with no `VIEWCOUNTER_*` setting from outside the test.
pub fn bin_command(dir: &Path) -> Command {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VIEWCOUNTER_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir)
        .env("VIEWCOUNTER_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// `viewcounter serve` as a child process, on port 0 in its own directory.
pub struct BinServer {
    /// Where it listens, from its `listening on` line.
    pub addr: SocketAddr,
    /// Its db, allow-list and `server.log`.
    pub dir: TempDir,
    /// The process, for signals and its exit status.
    pub child: Child,
    /// Kept open: a closed pipe would make its next `println!` fail.
    _stdout: BufReader<ChildStdout>,
}

impl BinServer {
    /// Starts a server on a fresh directory with the default allow-list.
    pub async fn start(flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        write_slugs(&slugs_path(dir.path()), DEFAULT_SLUGS);
        Self::start_in(dir, flags).await
    }

    /// Starts a server on `dir`'s db and allow-list; waits for `listening on http://…`.
    pub async fn start_in(dir: TempDir, flags: &[&str]) -> Self {
        Self::start_with_env(dir, &["serve"], flags, &[]).await
    }

    /// `viewcounter <sub…> --listen 127.0.0.1:0 --db … --slugs … <flags…>` with `env` set.
    pub async fn start_with_env(
        dir: TempDir,
        sub: &[&str],
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::launch(dir, sub, flags, env, None).await
    }

    /// `serve` in a process whose open-files limit (soft and hard) is `files`.
    pub async fn start_with_open_files(files: u64, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        write_slugs(&slugs_path(dir.path()), DEFAULT_SLUGS);
        Self::launch(dir, &["serve"], flags, &[], Some(files)).await
    }

    async fn launch(
        dir: TempDir,
        sub: &[&str],
        flags: &[&str],
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("log file");
        let mut cmd = bin_command(dir.path());
        cmd.args(sub)
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0", "--db"])
            .arg(db_path(dir.path()))
            .arg("--slugs")
            .arg(slugs_path(dir.path()))
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(files) = open_files {
            // SAFETY: only setrlimit runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, files, files));
            }
        }
        let mut child = cmd.spawn().expect("spawn viewcounter serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stdout.read_line(&mut line)).await;
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        match read {
            Ok(Ok(n)) if n > 0 => {}
            other => panic!("no `listening on` line ({other:?}); log:\n{log}"),
        }
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; log:\n{log}"));
        Self {
            addr,
            dir,
            child,
            _stdout: stdout,
        }
    }

    pub fn db(&self) -> PathBuf {
        db_path(self.dir.path())
    }

    pub fn slugs_file(&self) -> PathBuf {
        slugs_path(self.dir.path())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("server still running");
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the server: {e}"),
            Err(_) => panic!(
                "server still running after {within:?}; log:\n{}",
                self.log()
            ),
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub async fn kill_9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.wait(STOP_TIMEOUT).await;
    }

    pub async fn join(&self, slug: &str) -> Reader {
        join(self.addr, slug, Req::connect(slug, &token())).await
    }

    pub async fn send(&self, req: Req) -> Response {
        send(self.addr, req).await
    }

    pub async fn counts(&self, slug: &str) -> Counts {
        counts_of(self.addr, slug).await
    }

    /// Hands back the directory of a server that has exited.
    pub fn into_dir(self) -> TempDir {
        self.dir
    }
}

/// What a command printed, and how it exited.
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    /// What a command that must succeed printed; fails showing its stderr otherwise.
    pub fn success(self) -> String {
        assert!(self.status.success(), "{}: {}", self.status, self.stderr);
        self.stdout
    }
}

/// `viewcounter ARGS…` in `dir`, a command that exits by itself (an owner's command, or
/// `serve` refusing its flags): `.await` it for its output, within 30 s.
pub fn run<'a>(dir: &'a Path, args: &'a [&'a str]) -> Run<'a> {
    Run {
        dir,
        args,
        env: &[],
        stdin: None,
        quiet: false,
    }
}

/// A command to run; see [`run`].
pub struct Run<'a> {
    /// Its working directory.
    dir: &'a Path,
    /// What follows `viewcounter`.
    args: &'a [&'a str],
    /// `VIEWCOUNTER_*` settings of the test's own.
    env: &'a [(&'a str, &'a str)],
    /// Fed to its standard input, which is closed after it (otherwise it has none).
    stdin: Option<&'a str>,
    /// `VIEWCOUNTER_LOG=warn`: stderr holds the command's own messages, not the info log.
    quiet: bool,
}

impl<'a> Run<'a> {
    pub fn env(self, env: &'a [(&'a str, &'a str)]) -> Self {
        Self { env, ..self }
    }

    pub fn stdin(self, text: &'a str) -> Self {
        Self {
            stdin: Some(text),
            ..self
        }
    }

    pub fn quiet(self) -> Self {
        Self {
            quiet: true,
            ..self
        }
    }

    /// The output, or `Err` when the command is still running after `within` (for tests in
    /// which not ending is the failure they look for).
    pub async fn within(self, within: Duration) -> Result<RunOutput, String> {
        let mut cmd = bin_command(self.dir);
        if self.quiet {
            cmd.env("VIEWCOUNTER_LOG", "warn");
        }
        cmd.args(self.args)
            .envs(self.env.iter().copied())
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run viewcounter");
        if let Some(text) = self.stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(text.as_bytes()).await.expect("write stdin");
        }
        let out = match tokio::time::timeout(within, child.wait_with_output()).await {
            Err(_) => return Err(format!("still running after {within:?}")),
            Ok(out) => out.expect("viewcounter runs"),
        };
        Ok(RunOutput {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

impl<'a> std::future::IntoFuture for Run<'a> {
    type Output = RunOutput;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = RunOutput> + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        let args = self.args;
        Box::pin(async move {
            self.within(Duration::from_secs(30))
                .await
                .unwrap_or_else(|e| panic!("viewcounter {args:?}: {e}"))
        })
    }
}

/// `viewcounter export ARGS…` in `dir` with `env`, quiet.
pub async fn export(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let args: Vec<&str> = std::iter::once("export")
        .chain(args.iter().copied())
        .collect();
    run(dir, &args).env(env).quiet().await
}

/// A command that failed as a command should: exit status 1, a `viewcounter: ` message on
/// stderr, no panic, and no partial output.
pub fn assert_clean_failure(out: &RunOutput) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failure exit, not a panic (101) or a signal: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(out.stderr.starts_with("viewcounter: "), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "no partial output: {}", out.stdout);
}
