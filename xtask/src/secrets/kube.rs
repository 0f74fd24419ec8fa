//! kubectl: the current context, the port-forward to the in-cluster Vault
//! (watched, restarted once, stopped on drop), ExternalSecret status. Every
//! call goes through `process::Tool`, with a deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::process::{seconds, Next, Running, Tool};

/// The deadline of one kubectl call (`get`, `annotate`, `config`).
pub const KUBECTL_DEADLINE: Duration = Duration::from_secs(30);

const INSTALL_HINT: &str =
    "install kubectl (https://kubernetes.io/docs/tasks/tools/) and put it on PATH";

/// kubectl, with its deadline and the hints for our messages.
fn kubectl_tool() -> Tool {
    Tool::new("kubectl")
        .deadline(KUBECTL_DEADLINE)
        .install_hint(INSTALL_HINT)
        .timeout_hint(
            "Is the cluster up and reachable? `kubectl cluster-info` shows where kubectl looks.",
        )
}

/// The current kube context, or `None` when kubectl is missing, has none,
/// or fails (see [`context`] for the reason). Asked once per process.
pub fn current_context() -> Option<String> {
    context().ok().flatten()
}

/// The answer of the first [`context`] call: a run never changes the
/// kubeconfig, and doctor, seed and migrate ask several times.
static CONTEXT: OnceLock<Result<Option<String>, String>> = OnceLock::new();

/// The current kube context: `Ok(None)` when kubectl is not installed or
/// no context is set; an error with kubectl's words when it fails
/// otherwise (a broken kubeconfig) or outlives its deadline. kubectl is
/// asked once per process; later calls repeat its answer, error included
/// (a kubectl that timed out once is not waited for again).
pub fn context() -> Result<Option<String>> {
    once(&CONTEXT, ask_context)
}

/// `cell`'s answer, from `ask` the first time. An error is kept as its
/// message (with its causes), as anyhow errors cannot be cloned.
fn once<T: Clone>(
    cell: &OnceLock<Result<T, String>>,
    ask: impl FnOnce() -> Result<T>,
) -> Result<T> {
    cell.get_or_init(|| ask().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn ask_context() -> Result<Option<String>> {
    if crate::tools::which("kubectl").is_none() || !kubeconfig_exists() {
        return Ok(None);
    }
    let tool = kubectl_tool().args(["config", "current-context"]);
    let out = tool.output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("current-context is not set") {
            return Ok(None);
        }
        return Err(tool.failure(&out));
    }
    let ctx = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((!ctx.is_empty()).then_some(ctx))
}

/// Whether kubectl could find a kubeconfig: a path in `KUBECONFIG` that
/// exists (a `:`-separated list; empty counts as unset; a pipe such as
/// `<(sops -d ...)` counts), else `~/.kube/config`.
/// Without one kubectl has no current context, and the answer costs no
/// kubectl child (a Go binary's start: about 50 ms of CPU per seed). Where
/// we cannot tell (no `HOME`), kubectl decides.
fn kubeconfig_exists() -> bool {
    match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(list) => std::env::split_paths(&list).any(|p| p.exists()),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => std::path::Path::new(&home).join(".kube/config").exists(),
            None => true,
        },
    }
}

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

/// Runs kubectl, returning stdout or an error with kubectl's own message.
pub fn kubectl(args: &[&str]) -> Result<String> {
    kubectl_tool().args(args).run()
}

/// `kubectl config view --minify --raw --output json`: the current context
/// with its cluster's CA inline. It carries the context's credentials too:
/// keep it in memory; a failure quotes kubectl's stderr only.
pub fn raw_minified_config() -> Result<String> {
    kubectl_tool()
        .args(["config", "view", "--minify", "--raw", "--output", "json"])
        .run()
}

/// Is the CRD installed? `kubectl get crd NAME` answers `Error from server
/// (NotFound): customresourcedefinitions.apiextensions.k8s.io "NAME" not
/// found` when it is not.
pub fn crd_present(name: &str) -> Result<bool> {
    let tool = kubectl_tool().args(["get", "crd", name]);
    let out = tool.output()?;
    if out.status.success() {
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("(NotFound)") || stderr.contains(&format!("\"{name}\" not found")) {
        return Ok(false);
    }
    Err(tool.failure(&out))
}

/// One ExternalSecret's readiness, as ESO reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EsStatus {
    pub namespace: String,
    pub name: String,
    /// `Kind/name` of its store.
    pub store: String,
    /// The Ready condition: `Some(true)`, `Some(false)`, or `None` when absent.
    pub ready: Option<bool>,
    pub reason: String,
    pub message: String,
    /// When ESO last synced it (RFC 3339, the cluster's clock), if it says.
    pub refresh_time: Option<String>,
    /// The object version ESO last synced (changes with its annotations).
    pub synced_resource_version: Option<String>,
}

impl EsStatus {
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Every ExternalSecret in the cluster (`kubectl get externalsecrets -A -o json`).
pub fn external_secrets() -> Result<Vec<EsStatus>> {
    let text = kubectl(&[
        "get",
        "externalsecrets",
        "--all-namespaces",
        "--output",
        "json",
    ])?;
    parse_external_secrets(&text)
}

pub fn parse_external_secrets(text: &str) -> Result<Vec<EsStatus>> {
    let list: serde_json::Value =
        serde_json::from_str(text).context("kubectl printed no JSON list")?;
    let mut out = Vec::new();
    for item in list["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let store_ref = &item["spec"]["secretStoreRef"];
        let ready = item["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .cloned();
        out.push(EsStatus {
            namespace: s(&item["metadata"]["namespace"]),
            name: s(&item["metadata"]["name"]),
            store: format!(
                "{}/{}",
                store_ref["kind"].as_str().unwrap_or("SecretStore"),
                store_ref["name"].as_str().unwrap_or_default()
            ),
            ready: ready.as_ref().map(|c| c["status"] == "True"),
            reason: ready.as_ref().map(|c| s(&c["reason"])).unwrap_or_default(),
            message: ready.as_ref().map(|c| s(&c["message"])).unwrap_or_default(),
            refresh_time: item["status"]["refreshTime"].as_str().map(String::from),
            synced_resource_version: item["status"]["syncedResourceVersion"]
                .as_str()
                .map(String::from),
        });
    }
    Ok(out)
}

/// Asks ESO to re-read an ExternalSecret now.
pub fn force_sync(namespace: &str, name: &str, stamp: &str) -> Result<()> {
    kubectl(&[
        "annotate",
        "externalsecret",
        name,
        "--namespace",
        namespace,
        &format!("force-sync={stamp}"),
        "--overwrite",
    ])?;
    Ok(())
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
    fn reads_eso_conditions() {
        let text = r#"{"items": [
          {"metadata": {"namespace": "ameide", "name": "a"},
           "spec": {"secretStoreRef": {"kind": "ClusterSecretStore", "name": "ameide-vault"}},
           "status": {"refreshTime": "2026-11-28T03:00:00Z", "conditions": [{"type": "Ready", "status": "True", "reason": "SecretSynced", "message": "ok"}]}},
          {"metadata": {"namespace": "ameide", "name": "b"},
           "spec": {"secretStoreRef": {"kind": "ClusterSecretStore", "name": "ameide-vault"}},
           "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "SecretSyncedError", "message": "could not get secret data from provider"}]}},
          {"metadata": {"namespace": "x", "name": "c"}, "spec": {}}
        ]}"#;
        let es = parse_external_secrets(text).unwrap();
        assert_eq!(es[0].ready, Some(true));
        assert_eq!(es[0].refresh_time.as_deref(), Some("2026-11-28T03:00:00Z"));
        assert_eq!(
            (es[1].ready, es[1].reason.as_str()),
            (Some(false), "SecretSyncedError")
        );
        assert_eq!((es[2].ready, es[2].store.as_str()), (None, "SecretStore/"));
        assert_eq!(es[1].id(), "ameide/b");
    }

    #[test]
    fn the_context_is_asked_once_and_its_answer_repeated() {
        let asked = std::cell::Cell::new(0);
        let cell = OnceLock::new();
        for _ in 0..3 {
            let ctx = once(&cell, || {
                asked.set(asked.get() + 1);
                Ok(Some("k3d-ameide".to_string()))
            });
            assert_eq!(ctx.unwrap().as_deref(), Some("k3d-ameide"));
        }
        assert_eq!(asked.get(), 1);
        // A failure too, in kubectl's words and with its causes.
        let cell: OnceLock<Result<Option<String>, String>> = OnceLock::new();
        for _ in 0..2 {
            let err = once(&cell, || {
                asked.set(asked.get() + 1);
                Err(anyhow::anyhow!("error: broken kubeconfig").context("kubectl config"))
            })
            .unwrap_err();
            assert_eq!(
                format!("{err:#}"),
                "kubectl config: error: broken kubeconfig"
            );
        }
        assert_eq!(asked.get(), 2);
    }

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
