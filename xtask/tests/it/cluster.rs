//! The cluster stand-in for one sandbox: `tests/cluster/standin.py`, a
//! loopback API server that the real kubectl (pinned, from `.tools/bin`)
//! talks to, with ESO's controllers and a kubelet whose port-forwards reach
//! a real OpenBao. The sandbox's kubeconfig points at it; tests describe
//! the cluster with [`Sandbox::scenario`]'s `kubectl` part (see [`apply`])
//! or change it through [`Cluster`]'s control calls.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::Sandbox;

pub(crate) const ESO_CRD: &str = "externalsecrets.external-secrets.io";
pub(crate) const STORE_CRD: &str = "clustersecretstores.external-secrets.io";

/// A running stand-in, stopped on drop.
pub(crate) struct Cluster {
    child: Child,
    /// `https://127.0.0.1:PORT`: kubectl sends no token over plain HTTP.
    pub url: String,
    pub token: String,
    /// The file holding the server certificate's CA (PEM).
    pub ca_file: PathBuf,
    /// Plain HTTP, `/_standin/` only: the tests' control calls.
    control: String,
    pub dir: PathBuf,
}

impl Cluster {
    /// Starts the stand-in with its state and logs in `dir`.
    pub(crate) fn start(dir: &Path) -> Cluster {
        std::fs::create_dir_all(dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/standin.py");
        let log = std::fs::File::create(dir.join("standin.log")).unwrap();
        let child = Command::new("python3")
            .arg(&script)
            .arg("--dir")
            .arg(dir)
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting python3 tests/cluster/standin.py");
        let info = dir.join("standin.json");
        let until = Instant::now() + Duration::from_secs(20);
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&info) {
                if let Ok(v) = serde_json::from_str::<Value>(&text) {
                    break v;
                }
            }
            assert!(
                Instant::now() < until,
                "the cluster stand-in did not start: {}",
                std::fs::read_to_string(dir.join("standin.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Cluster {
            child,
            url: text["url"].as_str().unwrap().to_string(),
            token: text["token"].as_str().unwrap().to_string(),
            ca_file: PathBuf::from(text["ca_file"].as_str().unwrap()),
            control: text["control_url"].as_str().unwrap().to_string(),
            dir: dir.to_path_buf(),
        }
    }

    /// One control call (`/_standin/...`), its JSON answer.
    pub(crate) fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let port = crate::support::port_of(&self.control);
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = body.map(Value::to_string).unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        let (head, rest) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(
            head.starts_with("HTTP/1.1 2") || head.starts_with("HTTP/1.0 2"),
            "{method} {path}: {head}\n{rest}"
        );
        // The body may come chunked: take the JSON between the first `{`/`[` and the last `}`/`]`.
        let start = rest.find(['{', '[']).unwrap_or(0);
        let end = rest.rfind(['}', ']']).map_or(rest.len(), |i| i + 1);
        serde_json::from_str(&rest[start..end]).unwrap_or(Value::Null)
    }

    /// Creates or replaces these objects.
    pub(crate) fn put(&self, objects: &[Value]) {
        self.call("POST", "/_standin/objects", Some(&json!(objects)));
    }

    pub(crate) fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) {
        let mut o = json!({"apiVersion": api_version, "kind": kind, "name": name});
        if let Some(ns) = namespace {
            o["namespace"] = json!(ns);
        }
        self.call("POST", "/_standin/delete", Some(&json!([o])));
    }

    /// Every object the cluster holds.
    pub(crate) fn objects(&self) -> Vec<Value> {
        match self.call("GET", "/_standin/objects", None) {
            Value::Array(items) => items,
            other => other["items"].as_array().cloned().unwrap_or_default(),
        }
    }

    /// The object of `kind` named `name` (in `namespace`), if any.
    pub(crate) fn object(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.objects().into_iter().find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns)
        })
    }

    /// Merges `knobs` into the stand-in's knobs.
    pub(crate) fn knobs(&self, knobs: Value) {
        self.call("PUT", "/_standin/knobs", Some(&knobs));
    }

    /// The port-forward sessions the kubelet served.
    pub(crate) fn forwards(&self) -> Vec<Value> {
        self.call("GET", "/_standin/portforward", None)["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `METHOD path -> status` of every API request so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("requests.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kubeconfig whose current context `context` (none when `None`) reaches
/// `server`, whose CA is in `ca_file`, with `user`; `cluster` adds or
/// replaces fields of the cluster entry.
pub(crate) fn kubeconfig(
    context: Option<&str>,
    server: &str,
    ca_file: &Path,
    user: &Value,
    cluster: &Value,
) -> Value {
    let name = context.unwrap_or("none");
    let mut entry = json!({"server": server, "certificate-authority": ca_file});
    if let Some(extra) = cluster.as_object() {
        if extra.contains_key("certificate-authority-data") {
            entry.as_object_mut().unwrap().remove("certificate-authority");
        }
        for (k, v) in extra {
            entry[k] = v.clone();
        }
    }
    let mut config = json!({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": name, "cluster": entry}],
        "users": [{"name": format!("admin@{name}"), "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": format!("admin@{name}")}}],
    });
    if let Some(ctx) = context {
        config["current-context"] = json!(ctx);
    }
    config
}

pub(crate) fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
           "status": {"phase": "Active"}})
}

/// `svc/<name>` in `ns`, selecting `app.kubernetes.io/name=<name>`, port
/// `port` to the pod's port of the same number.
pub(crate) fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
           "spec": {"type": "ClusterIP", "clusterIP": "10.43.0.10",
                    "selector": {"app.kubernetes.io/name": name},
                    "ports": [{"name": "http", "port": port, "protocol": "TCP", "targetPort": port}]}})
}

/// A pod `<app>-0` behind [`service`]`(ns, app, port)`, in `phase`
/// (`Pending` waits in ContainerCreating).
pub(crate) fn pod(ns: &str, app: &str, port: u16, phase: &str) -> Value {
    let running = phase == "Running";
    let state = if running {
        json!({"running": {"startedAt": "2026-12-01T00:00:00Z"}})
    } else {
        json!({"waiting": {"reason": "ContainerCreating"}})
    };
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": format!("{app}-0"),
                        "labels": {"app.kubernetes.io/name": app}},
           "spec": {"nodeName": "k3d-ameide-server-0",
                    "containers": [{"name": app, "image": "openbao/openbao:2.7.2",
                                    "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}]}]},
           "status": {"phase": phase,
                      "conditions": [{"type": "Ready", "status": if running { "True" } else { "False" }}],
                      "containerStatuses": [{"name": app, "ready": running, "restartCount": 0,
                                             "state": state}]}})
}

/// ESO's service account `external-secrets/<name>`.
pub(crate) fn service_account(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"namespace": ns, "name": name}})
}

/// `ClusterSecretStore/ameide-vault` on `provider` (`vault` or `azure`);
/// `ready` sets the Ready condition ESO last wrote.
pub(crate) fn store(provider: &str, ready: Option<(bool, &str)>) -> Value {
    let spec = if provider == "vault" {
        json!({"provider": {"vault": {"server": "http://vault.vault.svc.cluster.local:8200",
                                      "path": "secret", "version": "v2",
                                      "auth": {"kubernetes": {"mountPath": "kubernetes", "role": "external-secrets",
                                               "serviceAccountRef": {"name": "external-secrets", "namespace": "external-secrets"}}}}}})
    } else {
        json!({"provider": {"azurekv": {"vaultUrl": "https://ameide-local.vault.azure.net/",
                                        "authType": "WorkloadIdentity"}}})
    };
    let mut o = json!({"apiVersion": "external-secrets.io/v1", "kind": "ClusterSecretStore",
                       "metadata": {"name": "ameide-vault"}, "spec": spec});
    if let Some((ok, message)) = ready {
        o["status"] = json!({"conditions": [{"type": "Ready", "status": if ok { "True" } else { "False" },
            "reason": if ok { "Valid" } else { "ValidationFailed" }, "message": message}]});
    }
    o
}

/// An ExternalSecret on `store` (`Kind/name`), last synced ESO's way:
/// Ready, `refreshTime` set and `syncedResourceVersion` current.
pub(crate) fn external_secret(ns: &str, name: &str, store: &str) -> Value {
    let (kind, store_name) = store.split_once('/').unwrap();
    json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
           "metadata": {"namespace": ns, "name": name},
           "spec": {"refreshInterval": "1h", "secretStoreRef": {"kind": kind, "name": store_name},
                    "target": {"name": name}, "data": []}})
}

/// Sets up the sandbox's cluster from a scenario's `kubectl` part:
///
/// ```json
/// {"context": "k3d-ameide",          // the kubeconfig's current context (none: no context)
///  "vault_addr": "http://127.0.0.1:N",// svc/vault and pod vault-0, forwarded to this OpenBao
///  "port_forward": {"die_after": [..], "refuse": true, "pod_phase": "Pending", "no_pod": true,
///                   "service": "vault", "websocket": false},
///  "crds": ["externalsecrets.external-secrets.io"],   // ESO installed (v1)
///  "eso_version": "v1beta1",          // ESO's CRDs serve only this version
///  "clustersecretstore": {...},       // fields merged into ClusterSecretStore/ameide-vault
///  "eso": {"clock_offset": -30, "reconcile_delay": 0.2, "provider": "azure",
///          "stores": {"vault": {"ready": false, "message": "..."}},
///          "externalsecrets": [{"namespace": "ameide", "name": "a", "store": "Kind/name",
///                               "refreshInterval": "0", "refreshPolicy": "CreatedOnce"}]},
///  "objects": [...],                  // any other objects, as they are
///  "cluster": {...}, "user": {...}}   // kubeconfig overrides (server, CA; the credential)
/// ```
///
/// Objects persist across calls, as a cluster's would: a later scenario
/// changes knobs and adds what is missing.
pub(crate) fn apply(sb: &Sandbox, cluster: &Cluster, sc: &Value) {
    let context = sc["context"].as_str();
    let user =
        if sc["user"].is_object() { sc["user"].clone() } else { json!({"token": cluster.token}) };
    let server = sc["cluster"]["server"].as_str().unwrap_or(&cluster.url);
    let config = kubeconfig(context, server, &cluster.ca_file, &user, &sc["cluster"]);
    std::fs::write(sb.home.join(".kube/config"), serde_json::to_string_pretty(&config).unwrap())
        .unwrap();

    let have = cluster.objects();
    let has = |kind: &str, name: &str| {
        have.iter().any(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    };
    let mut objects = Vec::new();
    for ns in ["vault", "external-secrets", "ameide", "team", "other"] {
        if !has("Namespace", ns) {
            objects.push(namespace(ns));
        }
    }
    if !has("ServiceAccount", "external-secrets") {
        objects.push(service_account("external-secrets", "external-secrets"));
    }
    let pf = &sc["port_forward"];
    if let Some(addr) = sc["vault_addr"].as_str() {
        let service_name = pf["service"].as_str().unwrap_or("vault");
        objects.push(service("vault", service_name, 8200));
        if !pf["no_pod"].as_bool().unwrap_or(false) {
            let phase = pf["pod_phase"].as_str().unwrap_or("Running");
            objects.push(pod("vault", service_name, 8200, phase));
        }
        let upstream = addr.trim_start_matches("http://").trim_start_matches("https://");
        cluster.knobs(json!({"upstreams": {format!("vault/{service_name}-0"): upstream}}));
    }
    let mut portforward = json!({"websocket": true, "refuse": false, "die_after": [null]});
    for key in ["websocket", "refuse", "die_after"] {
        if !pf[key].is_null() {
            portforward[key] = pf[key].clone();
        }
    }
    cluster.knobs(json!({ "portforward": portforward }));
    let crds = sc["crds"].as_array().cloned().unwrap_or_default();
    if crds.iter().any(|c| c == ESO_CRD) {
        let version = sc["eso_version"].as_str().unwrap_or("v1");
        cluster.call(
            "POST",
            "/_standin/eso-crds",
            Some(&json!({"served": [version], "storage": version})),
        );
    }
    let eso = &sc["eso"];
    if eso.is_object() {
        let mut health = serde_json::Map::new();
        for (provider, h) in eso["stores"].as_object().cloned().unwrap_or_default() {
            health.insert(provider, h);
        }
        cluster.knobs(json!({
            "clock_offset": eso["clock_offset"].as_f64().unwrap_or(0.0),
            "reconcile_delay": eso["reconcile_delay"].as_f64().unwrap_or(0.2),
            "store_health": health,
        }));
        if !has("ClusterSecretStore", "ameide-vault") {
            let provider = eso["provider"].as_str().unwrap_or("vault");
            objects.push(store(provider, None));
        }
        for e in eso["externalsecrets"].as_array().cloned().unwrap_or_default() {
            let name = e["name"].as_str().unwrap();
            if has("ExternalSecret", name) {
                continue;
            }
            let mut o = external_secret(
                e["namespace"].as_str().unwrap_or("ameide"),
                name,
                e["store"].as_str().unwrap_or("ClusterSecretStore/ameide-vault"),
            );
            for key in ["refreshInterval", "refreshPolicy"] {
                if !e[key].is_null() {
                    o["spec"][key] = e[key].clone();
                }
            }
            objects.push(o);
        }
    }
    if sc["clustersecretstore"].is_object() {
        let provider = eso["provider"].as_str().unwrap_or("vault");
        let mut o = store(provider, None);
        for (k, v) in sc["clustersecretstore"].as_object().unwrap() {
            o[k] = v.clone();
        }
        objects.push(o);
    }
    objects.extend(sc["objects"].as_array().cloned().unwrap_or_default());
    if !objects.is_empty() {
        cluster.put(&objects);
    }
    if eso.is_object() {
        wait_settled(cluster);
    }
}

/// Waits until ESO has reconciled every new ExternalSecret once (each has
/// a Ready condition), as a cluster that has been up a while would be.
pub(crate) fn wait_settled(cluster: &Cluster) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let pending: Vec<String> = cluster
            .objects()
            .into_iter()
            .filter(|o| {
                (o["kind"] == "ExternalSecret" || o["kind"] == "ClusterSecretStore")
                    && o["status"]["conditions"].as_array().is_none()
            })
            .map(|o| o["metadata"]["name"].to_string())
            .collect();
        if pending.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "ESO did not reconcile {pending:?} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}
