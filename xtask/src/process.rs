//! Every child process: with a deadline, drained pipes, its stderr on failure,
//! killed on drop. Never put a secret in a [`Tool`]'s arguments or environment
//! (pass a `fsutil::PrivateTempFile`); no child inherits [`TOKEN_VARS`].

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The deadline of a call that does not set its own.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// Variables that hold a Vault token: removed from every child's environment.
pub(crate) const TOKEN_VARS: [&str; 2] = ["VAULT_TOKEN", "BAO_TOKEN"];

/// How many of a child's last output lines an error message quotes.
const TAIL_LINES: usize = 8;

#[derive(Clone, Default)]
pub(crate) struct Tool {
    program: OsString,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    deadline: Duration,
    install_hint: Option<String>,
    timeout_hint: Option<String>,
    die_with_parent: bool,
    noise: Option<fn(&str) -> bool>,
}

impl Tool {
    pub(crate) fn new(program: impl AsRef<OsStr>) -> Tool {
        Tool { program: program.as_ref().to_owned(), deadline: DEFAULT_DEADLINE, ..Tool::default() }
    }

    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Tool {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub(crate) fn args(mut self, args: impl IntoIterator<Item = impl AsRef<OsStr>>) -> Tool {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    pub(crate) fn dir(mut self, dir: impl Into<PathBuf>) -> Tool {
        self.dir = Some(dir.into());
        self
    }

    pub(crate) fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Tool {
        self.env.push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub(crate) fn deadline(mut self, deadline: Duration) -> Tool {
        self.deadline = deadline;
        self
    }

    pub(crate) fn install_hint(mut self, hint: impl Into<String>) -> Tool {
        self.install_hint = Some(hint.into());
        self
    }

    /// What to do when the call outlives its deadline (how to give it longer).
    pub(crate) fn timeout_hint(mut self, hint: impl Into<String>) -> Tool {
        self.timeout_hint = Some(hint.into());
        self
    }

    /// Linux: SIGTERM to the child when the thread that starts it ends (even by SIGKILL).
    pub(crate) fn die_with_parent(mut self) -> Tool {
        self.die_with_parent = true;
        self
    }

    /// Lines not kept for [`Running::last_lines`], such as `Handling connection for N`.
    pub(crate) fn noise(mut self, is_noise: fn(&str) -> bool) -> Tool {
        self.noise = Some(is_noise);
        self
    }

    /// `program arg arg ...` for messages (arguments never hold values).
    pub(crate) fn display(&self) -> String {
        let words = std::iter::once(&self.program).chain(&self.args);
        words.map(|w| w.to_string_lossy()).collect::<Vec<_>>().join(" ")
    }

    fn expression(&self) -> duct::Expression {
        #[allow(clippy::disallowed_methods)] // The one place that builds a duct expression.
        let mut e = duct::cmd(&self.program, &self.args).unchecked().stdin_null();
        if let Some(dir) = &self.dir {
            e = e.dir(dir);
        }
        // duct applies the outermost setting first: explicit variables win.
        for (k, v) in &self.env {
            e = e.env(k, v);
        }
        for name in TOKEN_VARS {
            e = e.env_remove(name);
        }
        #[cfg(target_os = "linux")]
        if self.die_with_parent {
            e = e.before_spawn(die_with_parent);
        }
        e
    }

    fn spawn_error(&self, err: std::io::Error) -> anyhow::Error {
        let program = self.program.to_string_lossy();
        let default_hint = || format!("install {program} and put it on PATH");
        let hint = self.install_hint.clone().unwrap_or_else(default_hint);
        if err.kind() == std::io::ErrorKind::NotFound {
            anyhow!("{program} is not installed or not on PATH: {hint}")
        } else {
            anyhow!("cannot start `{}`: {err}. {hint}", self.display())
        }
    }

    /// Runs to completion, whatever the exit status; fails to start or past its deadline.
    pub(crate) fn output(&self) -> Result<Output> {
        let captured = self.expression().stdout_capture().stderr_capture();
        let handle = captured.start().map_err(|e| self.spawn_error(e))?;
        let waited = handle.wait_timeout(self.deadline);
        if let Some(out) = waited.with_context(|| format!("waiting for `{}`", self.display()))? {
            return Ok(out.clone());
        }
        let _ = handle.kill();
        // What it said on stderr is often the reason; never stdout (see `failure`).
        let said = match handle.wait_timeout(Duration::from_secs(2)) {
            Ok(Some(out)) => tail(&String::from_utf8_lossy(&out.stderr), TAIL_LINES),
            _ => "no output".to_string(),
        };
        let (shown, within) = (self.display(), seconds(self.deadline));
        let hint = self.timeout_hint.as_deref().unwrap_or("Run it by hand to see where it hangs.");
        bail!("`{shown}` did not finish within {within} and was stopped (it said: {said}). {hint}")
    }

    /// Runs to completion and returns stdout; a non-zero exit is [`Tool::failure`].
    pub(crate) fn run(&self) -> Result<String> {
        let out = self.output()?;
        if !out.status.success() {
            return Err(self.failure(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The error for a finished call that failed: exit code and the tail of
    /// stderr. Never stdout: some children print secrets they read there.
    pub(crate) fn failure(&self, out: &Output) -> anyhow::Error {
        let (shown, code) = (self.display(), exit_text(out.status));
        let said = tail(&String::from_utf8_lossy(&out.stderr), TAIL_LINES);
        anyhow!("`{shown}` failed ({code}): {said}")
    }

    /// Starts a long-running child, killed on drop. Its output is drained for
    /// its whole life (a Go program dies of SIGPIPE once stdout is closed).
    pub(crate) fn spawn(&self) -> Result<Running> {
        let reader = self.expression().stderr_to_stdout().reader();
        let reader = Arc::new(reader.map_err(|e| self.spawn_error(e))?);
        let last = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let (tx, rx) = mpsc::channel();
        let (drained, kept, noise) = (Arc::clone(&reader), Arc::clone(&last), self.noise);
        // At EOF duct reaps the child; then the thread ends and `tx` hangs up.
        std::thread::spawn(move || {
            for line in BufReader::new(&*drained).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                if !noise.is_some_and(|is_noise| is_noise(&line)) {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() == TAIL_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(line.clone());
                }
                // The receiver may be gone; keep draining regardless.
                let _ = tx.send(line);
            }
        });
        Ok(Running { reader, last, lines: rx })
    }
}

/// What a [`Running`] child did next: a line, nothing in time, or closed its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    Line(String),
    Quiet,
    Ended,
}

/// A long-running child from [`Tool::spawn`], killed on drop.
pub(crate) struct Running {
    reader: Arc<duct::ReaderHandle>,
    last: Arc<Mutex<VecDeque<String>>>,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// The next line the child writes, waiting up to `timeout`.
    pub(crate) fn next_line(&self, timeout: Duration) -> Next {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Next::Line(line),
            Err(mpsc::RecvTimeoutError::Timeout) => Next::Quiet,
            Err(mpsc::RecvTimeoutError::Disconnected) => Next::Ended,
        }
    }

    /// How the child ended ([`exit_text`]), or `None` while it runs.
    pub(crate) fn exit_status(&self) -> Option<String> {
        Some(exit_text(self.reader.try_wait().ok()??.status))
    }

    /// The last lines the child wrote (stdout and stderr), oldest first.
    pub(crate) fn last_lines(&self) -> String {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        tail(&Vec::from(last.clone()).join("\n"), TAIL_LINES)
    }

    /// Kills the child and reads every line: 2 s at most (a grandchild may hold the pipe).
    pub(crate) fn stop(&mut self) {
        let _ = self.reader.kill();
        let until = Instant::now() + Duration::from_secs(2);
        while let Next::Line(_) = self.next_line(until.saturating_duration_since(Instant::now())) {}
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `1.5 s`, `30 s`: a deadline for messages.
pub(crate) fn seconds(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs.fract() == 0.0 {
        format!("{secs:.0} s")
    } else {
        format!("{secs:.1} s")
    }
}

/// Between fork and exec: SIGTERM when the parent thread ends; give up if it is gone.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut std::process::Command) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec; only async-signal-safe
    // calls (prctl, getppid), no allocation on success.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("its parent exited while it started"));
            }
            Ok(())
        });
    }
    Ok(())
}

/// How a child ended, for messages: `exit 3`, `killed by signal 9`.
pub(crate) fn exit_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        Some(code) => format!("exit {code}"),
        None => format!("killed by signal {}", status.signal().unwrap_or(0)),
    }
}

/// The last `n` non-empty lines of `text`, joined for one message.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> =
        text.lines().filter(|l| !l.trim().is_empty()).map(str::trim_end).collect();
    if lines.is_empty() {
        return "no output".to_string();
    }
    lines[lines.len().saturating_sub(n)..].join("\n  ")
}

/// Keeps a command that changes state running to its end when its output
/// loses its reader (`| head`): SIGHUP is ignored, and stdout and stderr go
/// through a pipe of ours whose thread drops what can no longer be written.
pub(crate) struct FinishRegardless(Vec<Copier>);

/// The descriptors moved onto one pipe, the file they pointed to, and its copier.
struct Copier {
    fds: Vec<i32>,
    original: File,
    thread: std::thread::JoinHandle<()>,
}

/// Whether stderr was a terminal before [`finish_regardless`] moved it.
static STDERR_TERMINAL: AtomicBool = AtomicBool::new(false);

pub(crate) fn finish_regardless() -> FinishRegardless {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: SIG_IGN installs no handler; nothing runs in signal context.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    STDERR_TERMINAL.store(std::io::stderr().is_terminal(), Ordering::Relaxed);
    let _ = std::io::stdout().flush();
    // Which file each descriptor is, before either moves (a closed one stays).
    let dup = |fd: std::os::fd::BorrowedFd| fd.try_clone_to_owned().map(File::from);
    let (out, err) = (dup(std::io::stdout().as_fd()), dup(std::io::stderr().as_fd()));
    let id = |f: &File| f.metadata().ok().map(|m| (m.dev(), m.ino()));
    let groups: Vec<(Vec<i32>, File)> = match (out, err) {
        (Ok(out), Ok(err)) if id(&out).is_some() && id(&out) == id(&err) => vec![(vec![1, 2], out)],
        (out, err) => {
            let files = [(1, out), (2, err)].into_iter();
            files.filter_map(|(fd, file)| Some((vec![fd], file.ok()?))).collect()
        }
    };
    let copies = groups.into_iter().map(|(fds, file)| Copier::start(fds, file));
    FinishRegardless(copies.flatten().collect())
}

/// Whether stderr is (or, under [`finish_regardless`], was) a terminal.
pub(crate) fn stderr_is_terminal() -> bool {
    STDERR_TERMINAL.load(Ordering::Relaxed) || std::io::stderr().is_terminal()
}

impl Copier {
    fn start(fds: Vec<i32>, original: File) -> std::io::Result<Copier> {
        let (mut from, writer) = std::io::pipe()?;
        let mut to = original.try_clone()?;
        let thread = std::thread::Builder::new().name("output".into());
        let thread = thread.spawn(move || {
            // Once the reader of `to` is gone, read and drop the rest.
            if std::io::copy(&mut from, &mut to).is_err() {
                let _ = std::io::copy(&mut from, &mut std::io::sink());
            }
        })?;
        // SAFETY: dup2 onto our own standard descriptor; a failure leaves it as it was.
        let moved = |fd: &i32| unsafe { libc::dup2(writer.as_raw_fd(), *fd) } >= 0;
        let fds = fds.into_iter().filter(moved).collect();
        Ok(Copier { fds, original, thread })
    }
}

impl Drop for FinishRegardless {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
        for copier in &self.0 {
            for fd in &copier.fds {
                // SAFETY: points the standard descriptor back, closing our pipe's end there.
                unsafe { libc::dup2(copier.original.as_raw_fd(), *fd) };
            }
        }
        // A child that inherited the pipe could hold it open: wait 2 s at most.
        let until = Instant::now() + Duration::from_secs(2);
        for copier in &self.0 {
            while !copier.thread.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `script` in `sh`, with `$V` a value that must never reach a message.
    fn sh(script: &str) -> Tool {
        Tool::new("sh").args(["-c", script]).env("V", "canary-on-stdout")
    }

    #[test]
    fn run_returns_stdout_and_fails_with_stderr_only() {
        let out = sh("echo \"${VAULT_TOKEN-unset} ${BAO_TOKEN-unset}\"");
        let out = out.env("VAULT_TOKEN", "given").run().unwrap();
        assert_eq!(out, "given unset\n", "explicit token only");
        // Some children print what they read on stdout: a failure never repeats it.
        let failing = sh("echo \"$V\"; echo first >&2; echo boom >&2; exit 3");
        let err = failing.run().unwrap_err().to_string();
        assert!(err.contains("(exit 3): first\n  boom"), "{err}");
        assert!(!err.contains("canary-on-stdout"), "{err}");
    }

    #[test]
    fn a_call_past_its_deadline_is_killed_and_quotes_only_its_stderr() {
        let start = Instant::now();
        let err = sh("echo \"$V\"; echo waiting for the lock >&2; exec sleep 30")
            .deadline(Duration::from_millis(300))
            .timeout_hint("raise helmfile.sync_timeout_secs")
            .output()
            .unwrap_err()
            .to_string();
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err.contains("did not finish within 0.3 s"), "{err}");
        assert!(err.contains("waiting for the lock"), "{err}");
        assert!(err.contains("raise helmfile.sync_timeout_secs"), "{err}");
        assert!(!err.contains("canary-on-stdout"), "{err}");
        assert_eq!(seconds(Duration::from_secs(600)), "600 s");
    }

    #[test]
    fn a_missing_program_says_how_to_install_it() {
        let missing = Tool::new("xtask-no-such-tool").install_hint("run `cargo xtask tools`");
        let err = missing.run().unwrap_err().to_string();
        assert!(err.contains("not installed"), "{err}");
        assert!(err.contains("cargo xtask tools"), "{err}");
    }

    #[test]
    fn a_spawned_child_is_drained_for_its_whole_life_and_killed_on_drop() {
        // About 120 KiB at once, more than a pipe holds (64 KiB), then a
        // marker, then a line every 5 ms: undrained, the writes would block.
        let script = "yes 0123456789012345678901234567890123456789 | head -n 3000; \
             echo marker; i=0; while :; do echo line $i; i=$((i+1)); sleep 0.005; done";
        let running = sh(script).spawn().unwrap();
        let mut bytes = 0;
        loop {
            match running.next_line(Duration::from_secs(5)) {
                Next::Line(l) if l == "marker" => break,
                Next::Line(l) => bytes += l.len() + 1,
                other => panic!("no marker after {bytes} bytes: {other:?}"),
            }
        }
        assert!(bytes > 64 * 1024, "only {bytes} bytes before the marker");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(running.exit_status(), None, "still running");
        assert!(running.last_lines().contains("line "));
        let pid = running.reader.pids()[0];
        drop(running);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the child outlived it");
    }

    #[test]
    fn a_spawned_child_reports_its_lines_its_quiet_its_end_and_its_exit() {
        let child = sh("echo one; echo noise 1; echo two >&2; sleep 1; exit 4");
        let running = child.noise(|line| line.starts_with("noise")).spawn().unwrap();
        let lines: Vec<Next> = (0..3).map(|_| running.next_line(Duration::from_secs(5))).collect();
        let want = ["one", "noise 1", "two"].map(|l| Next::Line(l.into()));
        assert_eq!(lines, want);
        assert_eq!(running.next_line(Duration::from_millis(100)), Next::Quiet);
        assert_eq!(running.exit_status(), None);
        assert_eq!(running.next_line(Duration::from_secs(5)), Next::Ended);
        assert_eq!(running.exit_status().as_deref(), Some("exit 4"));
        assert_eq!(running.last_lines(), "one\n  two", "noise is not kept");
    }
}
