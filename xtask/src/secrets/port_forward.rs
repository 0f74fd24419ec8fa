//! The port-forward to the in-cluster Vault: `kubectl port-forward
//! svc/vault`, watched, restarted once, stopped on drop. Every kubectl runs
//! through `process::Tool`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::process::{seconds, Next, Running, Tool};
use crate::secrets::kube::INSTALL_HINT;

/// How long to wait for kubectl's next line before looking at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// What to forward: `svc/<service>:<port>` in `namespace`.
#[derive(Clone, Debug)]
pub struct ForwardSpec {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    /// How long kubectl may take to print its `Forwarding from` line.
    pub start_deadline: Duration,
}

impl ForwardSpec {
    /// `kubectl port-forward ... svc/vault [LOCAL]:8200`: a random free
    /// loopback port the first time, the same one on a restart.
    fn tool(&self, local: Option<u16>) -> Tool {
        let local = local.map(|p| p.to_string()).unwrap_or_default();
        Tool::new("kubectl")
            .install_hint(INSTALL_HINT)
            .die_with_parent()
            .noise(|line| line.starts_with("Handling connection for"))
            .args([
                "port-forward".to_string(),
                "--namespace".into(),
                self.namespace.clone(),
                "--address".into(),
                "127.0.0.1".into(),
                format!("svc/{}", self.service),
                format!("{local}:{}", self.port),
            ])
    }

    /// What to check when the forward does not start or does not last.
    fn fix(&self) -> String {
        format!(
            "Is Vault deployed (layer 15) and its pod running? `kubectl --namespace {ns} get pods`, \
             `kubectl --namespace {ns} get svc {svc}`",
            ns = self.namespace,
            svc = self.service
        )
    }

    /// Starts kubectl and waits for its `Forwarding from 127.0.0.1:N -> P`
    /// line: the child and N, or kubectl's own words. Gives up early when
    /// `stop` is set.
    fn launch(&self, local: Option<u16>, stop: &AtomicBool) -> Result<(Running, u16), String> {
        let tool = self.tool(local);
        let running = tool.spawn().map_err(|e| format!("{e:#}"))?;
        let until = Instant::now() + self.start_deadline;
        loop {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return Err(format!(
                    "`{}` did not start forwarding within {} and was stopped; kubectl said: {}. {}. A slower \
                     cluster: raise vault.port_forward.start_timeout_secs in .local/secrets.toml",
                    tool.display(),
                    seconds(self.start_deadline),
                    running.last_lines(),
                    self.fix()
                ));
            };
            if stop.load(Ordering::Relaxed) {
                return Err("stopped".into());
            }
            match running.next_line(left.min(POLL * 4)) {
                Next::Line(line) => {
                    if let Some(("127.0.0.1", port)) = forwarding_from(&line) {
                        return Ok((running, port));
                    }
                }
                Next::Quiet => {}
                Next::Ended => {
                    return Err(format!(
                        "`{}` {} before forwarding; kubectl said: {}. {}",
                        tool.display(),
                        ended(&running),
                        running.last_lines(),
                        self.fix()
                    ))
                }
            }
        }
    }
}

/// "exited (exit 1)", "was killed by signal 13".
fn ended(running: &Running) -> String {
    match running.exit_status() {
        Some(s) if s.starts_with("killed") => format!("was {s}"),
        Some(s) => format!("exited ({s})"),
        None => "closed its output".to_string(),
    }
}

/// What the forward's watcher shares with its owner.
#[derive(Default)]
struct Watch {
    /// Why the forward is gone for good, once it is.
    down: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// A running `kubectl port-forward` to the in-cluster Vault.
///
/// kubectl writes `Handling connection for N` to stdout for every
/// connection, and a Go program whose stdout is closed dies of SIGPIPE: so
/// its output is read for the forward's whole life (by a watcher thread),
/// and the last lines are kept for messages. When kubectl exits (a pod that
/// went away: `error: lost connection to pod`) or reports a broken forward
/// (`an error occurred forwarding`), the watcher starts it once more on the
/// same local port, so the address stays valid and the HTTP client's
/// retries carry over the gap. A second failure is final: [`Self::lifeline`]
/// then says why, in kubectl's words. Stopped on drop, on every exit path
/// that unwinds; on Ctrl-C the terminal signals kubectl too; on Linux a
/// process killed outright takes kubectl with it (`Tool::die_with_parent`).
pub struct PortForward {
    pub local_port: u16,
    watch: Arc<Watch>,
    watcher: Option<JoinHandle<()>>,
}

impl PortForward {
    /// Forwards a free loopback port to `svc/<service>:<port>`, with the port
    /// kubectl itself reports.
    pub fn start(spec: &ForwardSpec) -> Result<PortForward> {
        let watch = Arc::new(Watch::default());
        let (started, port) = std::sync::mpsc::channel();
        // Every kubectl of this forward is started by its watcher thread,
        // which lives exactly as long as the forward: with
        // `die_with_parent`, a run killed outright takes kubectl with it.
        let watcher = {
            let spec = spec.clone();
            let watch = Arc::clone(&watch);
            std::thread::spawn(move || match spec.launch(None, &watch.stop) {
                Ok((running, local_port)) => {
                    let _ = started.send(Ok(local_port));
                    supervise(&spec, running, local_port, &watch);
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                }
            })
        };
        let mut forward = PortForward {
            local_port: 0,
            watch,
            watcher: Some(watcher),
        };
        match port.recv() {
            Ok(Ok(local_port)) => {
                forward.local_port = local_port;
                Ok(forward)
            }
            Ok(Err(e)) => Err(anyhow::Error::msg(e)),
            Err(_) => Err(anyhow::anyhow!(
                "the port-forward's watcher stopped unexpectedly"
            )),
        }
    }

    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_port)
    }

    /// `Some(why)` once the forward is gone for good: for the HTTP client,
    /// so a call through a dead forward stops at once with kubectl's words.
    pub fn lifeline(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let watch = Arc::clone(&self.watch);
        move || watch.down.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.watch.stop.store(true, Ordering::Relaxed);
        if let Some(watcher) = self.watcher.take() {
            // The watcher notices within POLL and drops (kills) kubectl.
            let _ = watcher.join();
        }
    }
}

/// Does this line of kubectl's say the forward is broken? Old kubectl
/// (1.22 and earlier) keeps running after it; newer ones exit.
fn reports_broken(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("an error occurred forwarding") || l.contains("lost connection to pod")
}

/// Watches one forward: reads kubectl's output (its last lines, without
/// the per-connection noise, are kept by `Running`), restarts it once, and
/// records why it is gone when it fails again.
fn supervise(spec: &ForwardSpec, mut running: Running, port: u16, watch: &Watch) {
    let mut first_failure: Option<String> = None;
    let mut display = spec.tool(None).display();
    loop {
        if watch.stop.load(Ordering::Relaxed) {
            return; // `running` is dropped: kubectl is killed
        }
        match running.next_line(POLL) {
            Next::Quiet => continue,
            Next::Line(line) => {
                if !reports_broken(&line) {
                    continue;
                }
                // Let it finish saying why (and exit, if it does).
                while let Next::Line(_) = running.next_line(Duration::from_millis(300)) {}
            }
            Next::Ended => {}
        }
        let how = if running.exit_status().is_some() {
            ended(&running)
        } else {
            "reported a broken forward".to_string()
        };
        running.stop();
        let words = running.last_lines();
        let failure = format!("`{display}` {how}; kubectl said:\n  {words}");
        if let Some(first) = &first_failure {
            let why = format!(
                "the port-forward to svc/{} in namespace {} failed twice (it was restarted once).\n\
                 First: {first}\nThen: {failure}\n{}; then run the command again",
                spec.service,
                spec.namespace,
                spec.fix()
            );
            *watch.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            return;
        }
        if watch.stop.load(Ordering::Relaxed) {
            return;
        }
        eprintln!("note: {failure}\n  restarting it once, on the same port {port}");
        first_failure = Some(failure);
        display = spec.tool(Some(port)).display();
        match spec.launch(Some(port), &watch.stop) {
            Ok((next, p)) if p == port => running = next,
            Ok((_next, p)) => {
                *watch.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "the port-forward to svc/{} was restarted on port {p}, not {port}; run the command again",
                    spec.service
                ));
                return;
            }
            Err(e) => {
                let first = first_failure.unwrap_or_default();
                *watch.down.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!(
                    "the port-forward to svc/{} in namespace {} failed and could not be restarted.\n\
                     First: {first}\nThen: {e}",
                    spec.service, spec.namespace
                ));
                return;
            }
        }
    }
}

/// Parses kubectl's `Forwarding from 127.0.0.1:41234 -> 8200` (or
/// `[::1]:41234`): the listening host and port.
fn forwarding_from(line: &str) -> Option<(&str, u16)> {
    let rest = line.trim().strip_prefix("Forwarding from ")?;
    let (local, _remote) = rest.split_once(" -> ")?;
    let (host, port) = local.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forwarding_lines() {
        assert_eq!(
            forwarding_from("Forwarding from 127.0.0.1:41234 -> 8200"),
            Some(("127.0.0.1", 41234))
        );
        assert_eq!(
            forwarding_from("Forwarding from [::1]:41234 -> 8200"),
            Some(("::1", 41234))
        );
        assert_eq!(forwarding_from("Handling connection for 41234"), None);
        assert_eq!(forwarding_from("Forwarding from 127.0.0.1:x -> 8200"), None);
    }

    #[test]
    fn knows_kubectls_words_for_a_broken_forward() {
        assert!(reports_broken(
            r#"E1129 19:09:00.123456   4242 portforward.go:424] "Unhandled Error" err="an error occurred forwarding 41234 -> 8200: error forwarding port 8200 to pod 6f1c, uid : connection refused""#
        ));
        assert!(reports_broken(
            "E0125 16:35:32.441184   17073 portforward.go:400] an error occurred forwarding 5432 -> 5432: ..."
        ));
        assert!(reports_broken("error: lost connection to pod"));
        assert!(!reports_broken("Handling connection for 41234"));
        assert!(!reports_broken("Forwarding from 127.0.0.1:41234 -> 8200"));
    }
}
