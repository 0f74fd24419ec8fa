//! `kubectl port-forward svc/vault`, once a pod behind it runs: watched, restarted once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use crate::process::{seconds, Next, Running, Tool};
use crate::secrets::kube::{self, INSTALL_HINT};

/// How long to wait for kubectl's next line before looking at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// How often the cluster is asked about the pods while waiting for one.
const POD_POLL: Duration = Duration::from_secs(1);
/// How often the wait for a pod says so on stderr.
const POD_NOTE_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub(crate) struct ForwardSpec {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    /// How long kubectl may take to print its `Forwarding from` line.
    pub start_deadline: Duration,
    /// How long to wait for a pod behind the service to run.
    pub pod_wait: Duration,
}

enum LaunchError {
    Stopped,
    /// kubectl exited before forwarding: our message, with its words.
    Exited(String),
    Failed(String),
}

type Launched = Result<(Running, u16), LaunchError>;

impl LaunchError {
    fn into_message(self) -> String {
        match self {
            LaunchError::Stopped => "stopped".into(),
            LaunchError::Exited(m) | LaunchError::Failed(m) => m,
        }
    }
}

impl ForwardSpec {
    /// kubectl's own wait for a running pod stays within our deadline, so it says why it gave up.
    fn tool(&self, local: Option<u16>) -> Tool {
        let local = local.map(|p| p.to_string()).unwrap_or_default();
        Tool::new("kubectl")
            .install_hint(INSTALL_HINT)
            .die_with_parent()
            .noise(|line| line.starts_with("Handling connection for"))
            .args(["port-forward", "--namespace", &self.namespace])
            .args(["--address", "127.0.0.1", "--pod-running-timeout"])
            .arg(go_duration(self.start_deadline / 2))
            .args([format!("svc/{}", self.service), format!("{local}:{}", self.port)])
    }

    /// What to check when the forward does not start or last, given what kubectl said.
    fn fix(&self, said: &str) -> String {
        let (ns, port, svc) = (&self.namespace, self.port, &self.service);
        if said.contains("connection refused") {
            format!(
                "Vault's pod runs but nothing in it listens on port {port} (Vault has not started yet, or \
                 exited): `kubectl --namespace {ns} get pods`, then `kubectl --namespace {ns} logs <pod>`"
            )
        } else {
            format!(
                "Is Vault's pod running? `kubectl --namespace {ns} get pods`, `kubectl --namespace {ns} describe \
                 svc {svc}`"
            )
        }
    }

    /// `kubectl get ARGS --namespace NS --output json`; `None` for NotFound.
    fn get(&self, args: &[&str]) -> Result<Option<Value>, String> {
        let (ns, svc) = (&self.namespace, &self.service);
        let tool = kube::kubectl_tool().arg("get").args(args);
        let tool = tool.args(["--namespace", ns, "--output", "json"]);
        let asking = format!("asking the cluster about svc/{svc} in namespace {ns}");
        let out = tool.output().map_err(|e| format!("{asking}: {e:#}"))?;
        if !out.status.success() {
            if String::from_utf8_lossy(&out.stderr).contains("(NotFound)") {
                return Ok(None);
            }
            return Err(format!("{asking}: {:#}", tool.failure(&out)));
        }
        let shown = tool.display();
        let object = serde_json::from_slice(&out.stdout);
        object.map(Some).map_err(|e| format!("`{shown}` printed no JSON: {e}"))
    }

    /// The service's pod selector (`app.kubernetes.io/name=vault`), or what is wrong.
    fn selector(&self) -> Result<String, LaunchError> {
        let (ns, svc) = (&self.namespace, &self.service);
        let Some(service) = self.get(&["service", svc]).map_err(LaunchError::Failed)? else {
            return Err(LaunchError::Failed(format!(
                "svc/{svc} not found in namespace {ns} (kubectl: Error from server (NotFound): services \"{svc}\" \
                 not found): Vault is not deployed there. Deploy it with layer 15: `helmfile --file \
                 infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync`; if it runs \
                 under another name, set namespace / service under [vault.port_forward] in .local/secrets.toml"
            )));
        };
        selector_of(&service).ok_or_else(|| {
            LaunchError::Failed(format!(
                "svc/{svc} in namespace {ns} has no pod selector, so kubectl cannot pick a pod behind it: set \
                 service under [vault.port_forward] in .local/secrets.toml to Vault's own service \
                 (`kubectl --namespace {ns} get svc`)"
            ))
        })
    }

    fn pods_now(&self, selector: &str) -> Result<Value, LaunchError> {
        let list = self.get(&["pods", "--selector", selector]);
        list.map(Option::unwrap_or_default).map_err(LaunchError::Failed)
    }

    /// Waits until a pod behind the service runs (kubectl refuses a Pending one), with notes.
    fn wait_for_pod(&self, until: Instant, stop: &AtomicBool) -> Result<(), LaunchError> {
        let selector = self.selector()?;
        let began = Instant::now();
        let mut noted: Option<Instant> = None;
        loop {
            let list = self.pods_now(&selector)?;
            let state = match behind(&list, &self.service, &selector) {
                Ok(name) => {
                    if noted.is_some() {
                        let after = seconds(Duration::from_secs(began.elapsed().as_secs()));
                        eprintln!(
                            "pod {name} is Running (after {after}); starting the port-forward"
                        );
                    }
                    return Ok(());
                }
                Err(state) => state,
            };
            let now = Instant::now();
            let Some(left) = until.checked_duration_since(now).filter(|d| !d.is_zero()) else {
                return Err(LaunchError::Failed(self.pod_wait_failure(&state, &list)));
            };
            if noted.is_none_or(|t| now.duration_since(t) >= POD_NOTE_EVERY) {
                let left_secs = left.as_secs_f64().ceil();
                eprintln!(
                    "waiting for Vault's pod: {state}; {left_secs} s left (vault.port_forward.pod_wait_secs)"
                );
                noted = Some(now);
            }
            let nap_until = now + POD_POLL.min(left);
            while Instant::now() < nap_until {
                if stop.load(Ordering::Relaxed) {
                    return Err(LaunchError::Stopped);
                }
                std::thread::sleep(POLL);
            }
        }
    }

    fn pod_wait_failure(&self, state: &str, list: &Value) -> String {
        let (ns, svc, waited) = (&self.namespace, &self.service, seconds(self.pod_wait));
        let first = list["items"].get(0).map(|p| p["metadata"]["name"].as_str().unwrap_or("?"));
        let fix = match first {
            Some(name) => format!(
                "`kubectl --namespace {ns} describe pod {name}` says why (its Events); if it is only slow (an \
                 image still pulling), raise vault.port_forward.pod_wait_secs ({waited}) in .local/secrets.toml"
            ),
            None => format!(
                "Vault's StatefulSet creates it: `kubectl --namespace {ns} get statefulsets,pods`, \
                 `kubectl --namespace {ns} get events`; if Vault is not fully deployed, sync layer 15 (`helmfile \
                 --file infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync`)"
            ),
        };
        format!(
            "{state}, after waiting {waited} for a pod behind svc/{svc} in namespace {ns} to run, so no \
             port-forward was started. {fix}; then run the command again"
        )
    }

    /// Starts kubectl and waits for its `Forwarding from 127.0.0.1:N -> P` line.
    fn launch(&self, local: Option<u16>, stop: &AtomicBool) -> Launched {
        let tool = self.tool(local);
        let running = tool.spawn().map_err(|e| LaunchError::Failed(format!("{e:#}")))?;
        let until = Instant::now() + self.start_deadline;
        let shown = tool.display();
        loop {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                let (said, deadline) = (running.last_lines(), seconds(self.start_deadline));
                let fix = self.fix(&said);
                return Err(LaunchError::Failed(format!(
                    "`{shown}` did not start forwarding within {deadline} and was stopped; kubectl said: {said}. \
                     {fix}. A slower cluster: raise vault.port_forward.start_timeout_secs in .local/secrets.toml"
                )));
            };
            if stop.load(Ordering::Relaxed) {
                return Err(LaunchError::Stopped);
            }
            match running.next_line(left.min(POLL * 4)) {
                Next::Line(line) => {
                    if let Some(("127.0.0.1", port)) = forwarding_from(&line) {
                        return Ok((running, port));
                    }
                }
                Next::Quiet => {}
                Next::Ended => {
                    let (how, said) = (ended(&running), running.last_lines());
                    let fix = self.fix(&said);
                    return Err(LaunchError::Exited(format!(
                        "`{shown}` {how} before forwarding; kubectl said: {said}. {fix}"
                    )));
                }
            }
        }
    }

    /// Waits for a running pod, then starts kubectl; back to waiting if the pod stopped meanwhile.
    fn bring_up(&self, local: Option<u16>, stop: &AtomicBool) -> Launched {
        let until = Instant::now() + self.pod_wait;
        loop {
            self.wait_for_pod(until, stop)?;
            match self.launch(local, stop) {
                Err(LaunchError::Exited(why)) if Instant::now() < until => {
                    let pods = self.pods_now(&self.selector()?)?;
                    if behind(&pods, "", "").is_ok() {
                        return Err(LaunchError::Exited(why));
                    }
                }
                other => return other,
            }
        }
    }
}

/// A duration as kubectl's flags take it: `15s`, `2500ms`.
fn go_duration(d: Duration) -> String {
    match d.as_millis().max(1) {
        ms if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// `app.kubernetes.io/name=vault,...` from a Service's `spec.selector`, if any.
fn selector_of(service: &Value) -> Option<String> {
    let map = service["spec"]["selector"].as_object()?;
    let parts: Vec<String> =
        map.iter().filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?))).collect();
    (!parts.is_empty()).then(|| parts.join(","))
}

/// A pod's name, whether it can be forwarded to, and `vault-0 is Pending (ContainerCreating)`.
fn pod_state(p: &Value) -> (String, bool, String) {
    let status = &p["status"];
    let terminating = !p["metadata"]["deletionTimestamp"].is_null();
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let reason_in = |key: &str| {
        list(&status[key]).iter().find_map(|c| {
            let state = &c["state"];
            let reason = state["waiting"]["reason"].as_str();
            reason.or(state["terminated"]["reason"].as_str()).map(String::from)
        })
    };
    let conditions = list(&status["conditions"]);
    let unscheduled =
        conditions.iter().find(|c| c["type"] == "PodScheduled" && c["status"] == "False");
    let unschedulable = unscheduled.map(|c| {
        let reason = c["reason"].as_str().unwrap_or("Unschedulable");
        match c["message"].as_str().filter(|m| !m.is_empty()) {
            Some(m) if m.chars().count() > 160 => {
                format!("{reason}: {}...", m.chars().take(160).collect::<String>())
            }
            Some(m) => format!("{reason}: {m}"),
            None => reason.to_string(),
        }
    });
    let reason = reason_in("initContainerStatuses")
        .map(|r| format!("Init:{r}"))
        .or_else(|| reason_in("containerStatuses"))
        .or(unschedulable)
        .or_else(|| status["reason"].as_str().map(String::from))
        .or_else(|| terminating.then(|| "Terminating".to_string()));
    let name = p["metadata"]["name"].as_str().unwrap_or("?").to_string();
    let phase = status["phase"].as_str().unwrap_or("Pending");
    let described = match reason {
        Some(r) => format!("{name} is {phase} ({r})"),
        None => format!("{name} is {phase}"),
    };
    (name, phase == "Running" && !terminating, described)
}

fn behind(list: &Value, service: &str, selector: &str) -> Result<String, String> {
    let pods: Vec<_> = list["items"].as_array().into_iter().flatten().map(pod_state).collect();
    if let Some((name, ..)) = pods.iter().find(|(_, runs, _)| *runs) {
        return Ok(name.clone());
    }
    let shown: Vec<&str> = pods.iter().take(3).map(|(.., described)| described.as_str()).collect();
    Err(match pods.len() {
        0 => format!("svc/{service} selects no pod (selector {selector})"),
        1 => format!("pod {}", shown[0]),
        n => {
            let more = match n.saturating_sub(3) {
                0 => String::new(),
                more => format!(" and {more} more"),
            };
            format!("no pod of svc/{service} is running: {}{more}", shown.join(", "))
        }
    })
}

fn ended(running: &Running) -> String {
    match running.exit_status() {
        Some(s) if s.starts_with("killed") => format!("was {s}"),
        Some(s) => format!("exited ({s})"),
        None => "closed its output".to_string(),
    }
}

#[derive(Default)]
struct Watch {
    down: Mutex<Option<String>>,
    /// While the watcher brings kubectl back after a failure.
    restarting: Mutex<bool>,
    restarted: Condvar,
    stop: AtomicBool,
}

/// A poisoned lock still holds a usable value here.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Watch {
    fn down(&self) -> Option<String> {
        lock(&self.down).clone()
    }

    fn set_down(&self, why: String) {
        *lock(&self.down) = Some(why);
    }

    fn set_restarting(&self, on: bool) {
        *lock(&self.restarting) = on;
        self.restarted.notify_all();
    }
}

/// A running `kubectl port-forward` to the in-cluster Vault. A watcher thread reads kubectl's
/// output all along (closed, kubectl dies of SIGPIPE at its next `Handling connection` line) and
/// restarts a failed kubectl once on the same port, after a running pod again; [`Self::lifeline`]
/// holds failed calls until then. Stopped on drop, and with a run killed outright.
pub(crate) struct PortForward {
    pub local_port: u16,
    watch: Arc<Watch>,
    watcher: Option<JoinHandle<()>>,
}

impl PortForward {
    pub(crate) fn start(spec: &ForwardSpec) -> Result<PortForward> {
        let watch = Arc::new(Watch::default());
        let (started, port) = std::sync::mpsc::channel();
        // `die_with_parent` is per thread: the forward's own watcher thread starts every kubectl.
        let (spec, shared) = (spec.clone(), Arc::clone(&watch));
        let watcher = std::thread::spawn(move || match spec.bring_up(None, &shared.stop) {
            Ok((running, local_port)) => {
                let _ = started.send(Ok(local_port));
                supervise(&spec, running, local_port, &shared);
            }
            Err(e) => {
                let _ = started.send(Err(e.into_message()));
            }
        });
        let mut forward = PortForward { local_port: 0, watch, watcher: Some(watcher) };
        forward.local_port = match port.recv() {
            Ok(Ok(local_port)) => local_port,
            Ok(Err(e)) => return Err(anyhow::Error::msg(e)),
            Err(_) => anyhow::bail!("the port-forward's watcher stopped unexpectedly"),
        };
        Ok(forward)
    }

    pub(crate) fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.local_port)
    }

    pub(crate) fn is_gone(&self) -> bool {
        self.watch.down().is_some()
    }

    /// For a failed connection: waits out a restart, then `None` (retry) or `Some(why)` (gone).
    pub(crate) fn lifeline(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let watch = Arc::clone(&self.watch);
        move || {
            let mut restarting = lock(&watch.restarting);
            while *restarting && !watch.stop.load(Ordering::Relaxed) {
                let waited = watch.restarted.wait_timeout(restarting, POLL * 2);
                restarting = waited.unwrap_or_else(|e| e.into_inner()).0;
            }
            drop(restarting);
            watch.down()
        }
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

/// Whether kubectl's line says the forward broke (kubectl 1.22 and earlier keep running).
fn reports_broken(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    l.contains("an error occurred forwarding") || l.contains("lost connection to pod")
}

/// Watches one forward: restarts it once, and records why it is gone when it fails again.
fn supervise(spec: &ForwardSpec, mut running: Running, port: u16, watch: &Watch) {
    let mut first_failure: Option<String> = None;
    let mut display = spec.tool(None).display();
    let (service, ns) = (&spec.service, &spec.namespace);
    loop {
        if watch.stop.load(Ordering::Relaxed) {
            return; // `running` is dropped: kubectl is killed
        }
        match running.next_line(POLL) {
            Next::Quiet => continue,
            Next::Line(line) if !reports_broken(&line) => continue,
            Next::Line(_) => {
                // Calls that fail from now on wait for the restart.
                watch.set_restarting(true);
                // Let it finish saying why (and exit, if it does).
                while let Next::Line(_) = running.next_line(Duration::from_millis(300)) {}
            }
            Next::Ended => watch.set_restarting(true),
        }
        let how = match running.exit_status() {
            Some(_) => ended(&running),
            None => "reported a broken forward".to_string(),
        };
        running.stop();
        let words = running.last_lines();
        let failure = format!("`{display}` {how}; kubectl said:\n  {words}");
        if let Some(first) = &first_failure {
            let fix = spec.fix(&words);
            watch.set_down(format!(
                "the port-forward to svc/{service} in namespace {ns} failed twice (it was restarted once).\n\
                 First: {first}\nThen: {failure}\n{fix}; then run the command again"
            ));
        }
        if first_failure.is_some() || watch.stop.load(Ordering::Relaxed) {
            watch.set_restarting(false);
            return;
        }
        eprintln!("note: {failure}\n  restarting it once, on the same port {port}");
        display = spec.tool(Some(port)).display();
        match spec.bring_up(Some(port), &watch.stop) {
            Ok((next, p)) if p == port => running = next,
            Ok((_next, p)) => watch.set_down(format!(
                "the port-forward to svc/{service} was restarted on port {p}, not {port}; run the command again"
            )),
            Err(e) => watch.set_down(format!(
                "the port-forward to svc/{service} in namespace {ns} failed and could not be restarted.\n\
                 First: {failure}\nThen: {}",
                e.into_message()
            )),
        }
        first_failure = Some(failure);
        watch.set_restarting(false);
        if watch.down().is_some() {
            return;
        }
    }
}

/// The host and port of kubectl's `Forwarding from 127.0.0.1:41234 -> 8200` (or `[::1]:41234`).
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
    use serde_json::json;

    #[test]
    fn kubectls_lines() {
        for (line, from) in [
            ("Forwarding from 127.0.0.1:41234 -> 8200", Some(("127.0.0.1", 41234))),
            ("Forwarding from [::1]:41234 -> 8200", Some(("::1", 41234))),
            ("Forwarding from 127.0.0.1:x -> 8200", None),
            ("Handling connection for 41234", None),
        ] {
            assert_eq!(forwarding_from(line), from, "{line}");
            assert!(!reports_broken(line), "{line}");
        }
        // kubectl 1.22 and earlier; 1.37's words are in the integration tests.
        assert!(reports_broken(
            "E0125 16:35:32.441184   17073 portforward.go:400] an error occurred forwarding 5432 -> 5432: ..."
        ));
        assert_eq!(go_duration(Duration::from_millis(2500)), "2500ms");
        assert_eq!(go_duration(Duration::ZERO), "1ms");
    }

    #[test]
    fn a_services_selector() {
        let svc = json!({"spec": {"selector": {"app.kubernetes.io/name": "vault", "component": "server"}}});
        let want = "app.kubernetes.io/name=vault,component=server";
        assert_eq!(selector_of(&svc).as_deref(), Some(want));
        assert_eq!(selector_of(&json!({"spec": {"type": "ExternalName"}})), None);
        assert_eq!(selector_of(&json!({"spec": {"selector": {}}})), None);
    }

    fn pod(name: &str, phase: &str, mut status: Value) -> Value {
        status["phase"] = json!(phase);
        json!({"metadata": {"name": name}, "status": status})
    }

    #[test]
    fn says_what_stands_behind_the_service() {
        let state = |reason: &str| json!([{"state": {"waiting": {"reason": reason}}}]);
        let creating =
            pod("vault-0", "Pending", json!({"containerStatuses": state("ContainerCreating")}));
        let long = format!("0/1 nodes are available: {}", "x".repeat(200));
        let unschedulable = pod(
            "vault-1",
            "Pending",
            json!({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                   "message": long}]}),
        );
        let init =
            pod("vault-2", "Pending", json!({"initContainerStatuses": state("PodInitializing")}));
        let list = json!({"items": [creating, unschedulable, init]});
        let clipped = &long[..160];
        let said = format!(
            "no pod of svc/vault is running: vault-0 is Pending (ContainerCreating), vault-1 is Pending \
             (Unschedulable: {clipped}...), vault-2 is Pending (Init:PodInitializing)"
        );
        assert_eq!(behind(&list, "vault", "sel"), Err(said));
        // One Running pod among others is enough: kubectl picks it.
        let mut running = pod("vault-3", "Running", json!({}));
        let list = json!({"items": [list["items"][0], running]});
        assert_eq!(behind(&list, "vault", "sel"), Ok("vault-3".into()));
        // ... unless it is on its way out.
        running["metadata"]["deletionTimestamp"] = json!("2026-12-01T00:00:00Z");
        let terminated = json!([{"state": {"terminated": {"reason": "Error", "exitCode": 1}}}]);
        let crashed = pod("vault-4", "Failed", json!({"containerStatuses": terminated}));
        for (list, said) in [
            (json!({"items": [running]}), "pod vault-3 is Running (Terminating)"),
            (json!({"items": [crashed]}), "pod vault-4 is Failed (Error)"),
        ] {
            assert_eq!(behind(&list, "vault", "sel"), Err(said.into()));
        }
    }
}
