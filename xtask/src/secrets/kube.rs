//! kubectl (through `process::Tool`, with a deadline): the current context, ESO's objects, events.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::process::Tool;
use crate::secrets::guard::KubeContext;

pub(crate) const INSTALL_HINT: &str =
    "install kubectl (https://kubernetes.io/docs/tasks/tools/) and put it on PATH";

/// kubectl for one call (not the port-forward), with a 30 s deadline.
pub(crate) fn kubectl_tool() -> Tool {
    Tool::new("kubectl").deadline(Duration::from_secs(30)).install_hint(INSTALL_HINT).timeout_hint(
        "Is the cluster up and reachable? `kubectl cluster-info` shows where kubectl looks.",
    )
}

pub(crate) fn kubectl(args: &[&str]) -> Result<String> {
    kubectl_tool().args(args).run()
}

/// The current kube context, or `None` when kubectl is missing, has none, or fails.
pub(crate) fn current_context(kubeconfig: &[PathBuf]) -> Option<String> {
    context(kubeconfig).ok().flatten()
}

/// The current kube context (`Ok(None)`: no kubectl or none set), asked once per process.
pub(crate) fn context(kubeconfig: &[PathBuf]) -> Result<Option<String>> {
    static CONTEXT: OnceLock<Result<Option<String>, String>> = OnceLock::new();
    let ask = || -> Result<Option<String>> {
        if crate::tools::which("kubectl").is_none() || !kubeconfig_exists(kubeconfig) {
            return Ok(None);
        }
        let tool = kubectl_tool().args(["config", "current-context"]);
        let out = tool.output()?;
        if !out.status.success() {
            if String::from_utf8_lossy(&out.stderr).contains("current-context is not set") {
                return Ok(None);
            }
            return Err(tool.failure(&out));
        }
        let ctx = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((!ctx.is_empty()).then_some(ctx))
    };
    let answer = CONTEXT.get_or_init(|| ask().map_err(|e| format!("{e:#}")));
    answer.clone().map_err(anyhow::Error::msg)
}

/// The kube context for the guardrail: kubectl missing or failing beside a kubeconfig is `Unknown`.
pub(crate) fn guard_context(kubeconfig: &[PathBuf]) -> KubeContext {
    match context(kubeconfig) {
        Ok(Some(context)) => KubeContext::Named(context),
        Ok(None) if crate::tools::which("kubectl").is_none() && kubeconfig_exists(kubeconfig) => {
            KubeContext::Unknown {
                why: "kubectl is not on PATH to read your kubeconfig".into(),
                fix: format!("To have the context checked, {INSTALL_HINT}"),
            }
        }
        Ok(None) => KubeContext::None,
        Err(e) => KubeContext::Unknown {
            why: format!("kubectl cannot read your kubeconfig: {e:#}"),
            fix: "Fix the kubeconfig until `kubectl config current-context` answers".into(),
        },
    }
}

/// Whether kubectl could find a kubeconfig (none listed: kubectl decides). Without one, no child.
fn kubeconfig_exists(kubeconfig: &[PathBuf]) -> bool {
    kubeconfig.is_empty() || kubeconfig.iter().any(|p| p.exists())
}

/// The current context with its CA inline. It holds credentials: keep it in memory.
pub(crate) fn raw_minified_config() -> Result<String> {
    kubectl_tool().args("config view --minify --raw --flatten --output json".split(' ')).run()
}

pub(crate) const ESO_GROUP: &str = "external-secrets.io";

/// The version of ESO's API that layer 15's manifests use (ESO 0.16+).
pub(crate) const ESO_V1: &str = "external-secrets.io/v1";

pub(crate) const ESO_INSTALL: &str =
    "helm repo add external-secrets https://charts.external-secrets.io && \
     helm install external-secrets external-secrets/external-secrets --namespace external-secrets \
     --create-namespace --wait";

pub(crate) const ESO_UPGRADE: &str = "helm repo add external-secrets https://charts.external-secrets.io; \
     helm repo update external-secrets && helm upgrade external-secrets external-secrets/external-secrets \
     --namespace external-secrets --wait";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EsoApi {
    Missing,
    Old(Vec<String>),
    V1,
}

impl EsoApi {
    pub(crate) fn parse(api_versions: &str) -> EsoApi {
        let ours = api_versions.lines().map(str::trim);
        let ours = ours.filter(|l| l.split_once('/').is_some_and(|(g, _)| g == ESO_GROUP));
        let ours: Vec<String> = ours.map(String::from).collect();
        match ours.iter().any(|v| v == ESO_V1) {
            true => EsoApi::V1,
            false if ours.is_empty() => EsoApi::Missing,
            false => EsoApi::Old(ours),
        }
    }

    pub(crate) fn problem(&self) -> Option<(String, String)> {
        match self {
            EsoApi::V1 => None,
            EsoApi::Missing => Some((
                format!("External Secrets Operator is not installed: the cluster serves no {ESO_GROUP} API"),
                format!("install it: {ESO_INSTALL}"),
            )),
            EsoApi::Old(versions) => Some((
                format!(
                    "External Secrets Operator is older than 0.16: the cluster serves {} but not {ESO_V1}, \
                     which layer 15's ClusterSecretStore and ExternalSecrets use",
                    versions.join(", ")
                ),
                format!("upgrade it to 0.16 or later: {ESO_UPGRADE}"),
            )),
        }
    }
}

/// `kubectl api-versions` (the server's answer, not the discovery cache).
pub(crate) fn eso_api() -> Result<EsoApi> {
    Ok(EsoApi::parse(&kubectl(&["api-versions"])?))
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn items(list: &Value) -> &[Value] {
    list["items"].as_array().map_or(&[], Vec::as_slice)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Ready {
    pub ready: Option<bool>,
    pub reason: String,
    pub message: String,
}

impl Ready {
    pub(crate) fn of(object: &Value) -> Ready {
        let conditions = object["status"]["conditions"].as_array();
        match conditions.and_then(|c| c.iter().find(|c| c["type"] == "Ready")) {
            Some(c) => Ready {
                ready: Some(c["status"] == "True"),
                reason: text(&c["reason"]),
                message: text(&c["message"]),
            },
            None => Ready::default(),
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self.ready {
            None => "no Ready condition yet".to_string(),
            Some(_) => format!("{}: {}", self.reason, self.message),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct EsStatus {
    pub namespace: String,
    pub name: String,
    pub store: String,
    pub ready: Option<bool>,
    pub reason: String,
    pub message: String,
    pub refresh_time: Option<String>,
    pub synced_resource_version: Option<String>,
    pub refresh_interval: Option<String>,
    pub refresh_policy: Option<String>,
    /// The Secret it writes: `spec.target.name`, else its own name.
    pub target: String,
}

impl EsStatus {
    pub(crate) fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Why ESO 0.16+ ignores a force-sync once synced: `CreatedOnce`, or periodic every 0.
    pub(crate) fn ignores_force_sync(&self) -> Option<String> {
        let synced = self.synced_resource_version.as_deref().is_some_and(|v| !v.is_empty());
        match (self.refresh_policy.as_deref(), self.refresh_interval.as_deref()) {
            (Some("CreatedOnce"), _) => {
                (synced && self.refresh_time.is_some()).then(|| "refreshPolicy: CreatedOnce".into())
            }
            (Some("OnChange"), _) => None,
            (_, Some(every)) if synced && go_seconds(every).is_some_and(|s| s <= 0.0) => {
                Some(format!("refreshInterval: {every}"))
            }
            _ => None,
        }
    }
}

/// A Go duration (`0`, `1h30m`, `500ms`, `-1.5h`) in seconds; `None` when it is not one.
pub(crate) fn go_seconds(duration: &str) -> Option<f64> {
    let d = duration.trim();
    let (sign, mut rest) = match d.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, d.strip_prefix('+').unwrap_or(d)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    let mut total = None;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !c.is_ascii_digit() && c != '.');
        let (number, unit) = rest.split_at(end?);
        let end = unit.find(|c: char| c.is_ascii_digit() || c == '.');
        let (unit, next) = unit.split_at(end.unwrap_or(unit.len()));
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total = Some(total.unwrap_or(0.0) + number.parse::<f64>().ok()? * scale);
        rest = next;
    }
    total.map(|t| sign * t)
}

/// `kubectl get ARGS --output json` (shown, stdout) about ESO's objects; `None` for NotFound.
fn get_eso(args: &[&str]) -> Result<Option<(String, Vec<u8>)>> {
    let tool = kubectl_tool().arg("get").args(args).args(["--output", "json"]);
    let out = tool.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        return Ok(Some((tool.display(), out.stdout)));
    } else if stderr.contains("(NotFound)") {
        return Ok(None);
    } else if !stderr.contains("the server doesn't have a resource type")
        && !stderr.contains("the server could not find the requested resource")
    {
        return Err(tool.failure(&out));
    }
    let (what, fix) = EsoApi::Missing.problem().expect("a problem");
    let said = crate::process::tail(&stderr, 1);
    anyhow::bail!("{what} (`{}`: {said}); {fix}", tool.display())
}

pub(crate) fn external_secrets() -> Result<Vec<EsStatus>> {
    let Some((_, out)) = get_eso(&["externalsecrets", "--all-namespaces"])? else {
        return Ok(Vec::new());
    };
    let list: Value = serde_json::from_slice(&out).context("kubectl printed no JSON list")?;
    Ok(parse_external_secrets(&list))
}

fn parse_external_secrets(list: &Value) -> Vec<EsStatus> {
    let opt = |v: &Value| v.as_str().map(String::from);
    let statuses = items(list).iter().map(|item| {
        let (spec, status) = (&item["spec"], &item["status"]);
        let store_ref = &spec["secretStoreRef"];
        let store_kind = store_ref["kind"].as_str().unwrap_or("SecretStore");
        let ready = Ready::of(item);
        let name = text(&item["metadata"]["name"]);
        EsStatus {
            namespace: text(&item["metadata"]["namespace"]),
            store: format!("{store_kind}/{}", text(&store_ref["name"])),
            ready: ready.ready,
            reason: ready.reason,
            message: ready.message,
            refresh_time: opt(&status["refreshTime"]),
            synced_resource_version: opt(&status["syncedResourceVersion"]),
            refresh_interval: match &spec["refreshInterval"] {
                Value::Number(n) => Some(n.to_string()),
                v => opt(v),
            },
            refresh_policy: opt(&spec["refreshPolicy"]),
            target: opt(&spec["target"]["name"]).filter(|t| !t.is_empty()).unwrap_or(name.clone()),
            name,
        }
    });
    statuses.collect()
}

pub(crate) fn cluster_secret_store(name: &str) -> Result<Option<Ready>> {
    let Some((shown, out)) = get_eso(&["clustersecretstore", name])? else {
        return Ok(None);
    };
    let object: Value =
        serde_json::from_slice(&out).with_context(|| format!("`{shown}` printed no JSON"))?;
    Ok(Some(Ready::of(&object)))
}

/// Asks ESO to re-read an ExternalSecret, or to validate a ClusterSecretStore ahead of its backoff.
pub(crate) fn force_sync(object: &[&str], stamp: &str) -> Result<()> {
    let stamp = format!("force-sync={stamp}");
    kubectl_tool().arg("annotate").args(object).args([&stamp, "--overwrite"]).run().map(drop)
}

pub(crate) fn namespaces() -> Result<BTreeSet<String>> {
    let json = kubectl(&["get", "namespaces", "--output", "json"])?;
    let list: Value =
        serde_json::from_str(&json).context("kubectl get namespaces printed no JSON list")?;
    Ok(items(&list).iter().map(|n| text(&n["metadata"]["name"])).collect())
}

/// An Event about one object: where ESO says why it failed (its Ready condition is generic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    pub id: String,
    pub count: u64,
    pub object: String,
    pub reason: String,
    pub message: String,
    /// When it last happened (RFC 3339); then `metadata.resourceVersion` orders.
    pub last: String,
    pub version: u64,
}

impl Event {
    /// `ESO's last warning (Reason): message`, on one line (Vault's errors span several).
    pub(crate) fn said(&self) -> String {
        let message = self.message.split_whitespace().collect::<Vec<_>>().join(" ");
        format!("ESO's last warning ({}): {message}", self.reason)
    }
}

pub(crate) fn store_event() -> Option<Event> {
    let store = crate::secrets::scan::STORE_NAME;
    let events = warning_events(None, "ClusterSecretStore", Some(store)).ok()?;
    newest_by_object(events).remove(store)
}

pub(crate) fn said(event: Option<&Event>) -> String {
    event.map(|e| format!("; {}", e.said())).unwrap_or_default()
}

/// Vault refusing a login (a failed TokenReview too) or a read, in ESO's words.
pub(crate) fn permission_denied(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("permission denied") || t.contains("code: 403")
}

pub(crate) fn warning_events(
    namespace: Option<&str>,
    kind: &str,
    name: Option<&str>,
) -> Result<Vec<Event>> {
    events(namespace, kind, name, Some("Warning"))
}

/// Events about `kind` objects in `namespace` (`None`: all), about `name` and of `type_` if given.
pub(crate) fn events(
    namespace: Option<&str>,
    kind: &str,
    name: Option<&str>,
    type_: Option<&str>,
) -> Result<Vec<Event>> {
    let name = name.map(|name| format!(",involvedObject.name={name}")).unwrap_or_default();
    let type_ = type_.map(|t| format!(",type={t}")).unwrap_or_default();
    let selector = format!("involvedObject.kind={kind}{name}{type_}");
    let mut args = vec!["get", "events"];
    match namespace {
        Some(ns) => args.extend(["--namespace", ns]),
        None => args.push("--all-namespaces"),
    }
    args.extend(["--field-selector", &selector, "--output", "json"]);
    parse_events(&kubectl(&args)?)
}

fn parse_events(json: &str) -> Result<Vec<Event>> {
    let list: Value =
        serde_json::from_str(json).context("kubectl get events printed no JSON list")?;
    let events = items(&list).iter().map(|e| {
        let count = e["count"].as_u64().or(e["series"]["count"].as_u64());
        // core/v1 Events carry lastTimestamp, events.k8s.io ones eventTime (and a series).
        let times = [
            &e["series"]["lastObservedTime"],
            &e["lastTimestamp"],
            &e["eventTime"],
            &e["metadata"]["creationTimestamp"],
        ];
        let last = times.into_iter().find_map(|v| v.as_str().filter(|t| !t.is_empty()));
        Event {
            id: text(&e["metadata"]["name"]),
            count: count.unwrap_or(1),
            object: text(&e["involvedObject"]["name"]),
            reason: text(&e["reason"]),
            message: text(&e["message"]),
            last: last.unwrap_or_default().to_string(),
            version: text(&e["metadata"]["resourceVersion"]).parse().unwrap_or(0),
        }
    });
    Ok(events.collect())
}

/// When an event last happened, comparable: UTC, its fraction padded to 9 digits; then its version.
fn instant(e: &Event) -> (String, u64) {
    let t = e.last.trim_end_matches('Z');
    let (secs, frac) = t.split_once('.').unwrap_or((t, ""));
    (format!("{secs}.{frac:0<9}"), e.version)
}

pub(crate) fn newest_by_object(events: Vec<Event>) -> BTreeMap<String, Event> {
    let mut newest: BTreeMap<String, Event> = BTreeMap::new();
    for e in events {
        if newest.get(&e.object).is_none_or(|have| instant(have) < instant(&e)) {
            newest.insert(e.object.clone(), e);
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for (d, secs) in [
            ("0", Some(0.0)),
            ("0h0m0s", Some(0.0)),
            ("-1m", Some(-60.0)),
            ("1h30m", Some(5400.0)),
            ("1.5h", Some(5400.0)),
            ("500ms", Some(0.5)),
            ("", None),
            ("90", None),
            ("5d", None),
            ("h", None),
        ] {
            assert_eq!(go_seconds(d), secs, "{d:?}");
        }
    }

    #[test]
    fn reads_what_decides_whether_eso_rereads_it() {
        let list = serde_json::json!({"items": [
          {"metadata": {"namespace": "ameide", "name": "zero"},
           "spec": {"refreshInterval": 0, "target": {"name": "zero-secret"}},
           "status": {"refreshTime": "2026-11-28T03:00:00Z", "syncedResourceVersion": "1-abc"}},
          {"metadata": {"namespace": "ameide", "name": "never-synced"}, "spec": {"refreshInterval": "0s"}},
          {"metadata": {"namespace": "ameide", "name": "hourly"},
           "spec": {"refreshInterval": "1h"},
           "status": {"refreshTime": "2026-11-28T03:00:00Z", "syncedResourceVersion": "1-abc"}},
          {"metadata": {"namespace": "ameide", "name": "on-change"},
           "spec": {"refreshInterval": "0", "refreshPolicy": "OnChange"},
           "status": {"refreshTime": "2026-11-28T03:00:00Z", "syncedResourceVersion": "1-abc"}},
          {"metadata": {"namespace": "ameide", "name": "periodic-zero"},
           "spec": {"refreshInterval": "0h0m0s", "refreshPolicy": "Periodic"},
           "status": {"syncedResourceVersion": "1-abc"}}
        ]});
        let es = parse_external_secrets(&list);
        let ignored: Vec<Option<String>> = es.iter().map(EsStatus::ignores_force_sync).collect();
        let zero = Some("refreshInterval: 0".to_string());
        let periodic = Some("refreshInterval: 0h0m0s".to_string());
        assert_eq!(ignored, [zero, None, None, None, periodic]);
        let targets = (es[0].target.as_str(), es[1].target.as_str());
        assert_eq!(targets, ("zero-secret", "never-synced"));
    }

    #[test]
    fn the_newest_event_per_object_wins() {
        let text = r#"{"items": [
          {"metadata": {"resourceVersion": "10"}, "involvedObject": {"name": "a"}, "reason": "UpdateFailed",
           "message": "old", "lastTimestamp": "2026-12-01T00:00:05Z"},
          {"metadata": {"resourceVersion": "12"}, "involvedObject": {"name": "a"}, "reason": "UpdateFailed",
           "message": "same second, later", "lastTimestamp": "2026-12-01T00:00:09Z"},
          {"metadata": {"resourceVersion": "11"}, "involvedObject": {"name": "a"}, "reason": "UpdateFailed",
           "message": "same second, earlier", "lastTimestamp": "2026-12-01T00:00:09Z"},
          {"metadata": {"resourceVersion": "3"}, "involvedObject": {"name": "b"}, "reason": "UpdateFailed",
           "message": "series", "eventTime": "2026-12-01T00:00:09.500000Z", "lastTimestamp": null},
          {"metadata": {"resourceVersion": "4"}, "involvedObject": {"name": "b"}, "reason": "UpdateFailed",
           "message": "whole second", "lastTimestamp": "2026-12-01T00:00:09Z"}
        ]}"#;
        let newest = newest_by_object(parse_events(text).unwrap());
        assert_eq!(newest["a"].message, "same second, later");
        assert_eq!(newest["b"].message, "series");
    }

    #[test]
    fn only_esos_own_group_counts() {
        let prefixed = "external-secrets.io.example/v1\napps/v1\n";
        assert_eq!(EsoApi::parse(prefixed), EsoApi::Missing);
        let both = "external-secrets.io/v1beta1\nexternal-secrets.io/v1\n";
        assert_eq!(EsoApi::parse(both), EsoApi::V1);
    }
}
