//! ESO's way into Vault: Kubernetes auth at the store's `mountPath`, its config, a read-only
//! policy and the role bound to ESO's service account. [`apply`] writes only what differs.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::secrets::provider::vault_http::{Method, Reply, VaultHttp};
use crate::secrets::{config::Config, kube};
use crate::{project, yaml};

/// The store chart, whose defaults the layer-15 values overlay.
pub(crate) const STORE_CHART_VALUES: &str =
    "infra/kubernetes/charts/platform/vault-secret-store/values.yaml";

/// What ESO logs in as and may read, from the store chart and layer 15.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct EsoNames {
    pub store: String,
    /// `auth.kubernetes.mountPath`, without slashes.
    pub auth_mount: String,
    pub role: String,
    pub policy: String,
    pub kv_path: String,
    pub kv_version: String,
    pub service_account: String,
    pub namespace: String,
    pub kubernetes_host: String,
    /// As written in the values (e.g. `15m`), and in seconds.
    pub token_ttl: String,
    pub token_ttl_secs: u64,
}

impl EsoNames {
    pub(crate) fn load(root: &Path, env: &str) -> Result<EsoNames> {
        let purpose = "ESO's access to Vault is set up from it";
        let chart = read_yaml(root, Path::new(STORE_CHART_VALUES), purpose)?;
        let layer = project::flag_file(env);
        let layer15 = read_yaml(root, &layer, purpose)?;
        let store_over = layer15.get("vault").and_then(|v| v.get("store"));
        let need = |value: Option<&str>, key: &str| -> Result<String> {
            match value.map(str::trim) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => bail!(
                    "{STORE_CHART_VALUES} has no `{key}`: ESO's access to Vault is set up from it. Restore it from git."
                ),
            }
        };
        // Layer 15's `vault.store.<path>`, else the chart's `vault.<path>`.
        let v = |path: &[&str]| {
            let walk = |mut node: Option<&Rc<yaml::Node>>| {
                for key in path {
                    node = node.and_then(|n| n.get(key));
                }
                node.and_then(|n| n.as_str()).map(str::to_string)
            };
            let value = walk(store_over).or_else(|| walk(chart.get("vault")));
            need(value.as_deref(), &format!("vault.{}", path.join(".")))
        };
        let sa = |key: &str| {
            let value = chart.get("serviceAccount").and_then(|s| s.str_at(key));
            need(value, &format!("serviceAccount.{key}"))
        };
        let token_ttl = v(&["auth", "tokenTTL"])?;
        let token_ttl_secs = parse_duration(&token_ttl).with_context(|| {
            format!("vault.auth.tokenTTL in {STORE_CHART_VALUES}: use a duration such as 15m, 900s or 1h")
        })?;
        let kv_version = v(&["version"])?;
        if kv_version != "v1" && kv_version != "v2" {
            let layer = layer.display();
            bail!("vault.version is {kv_version:?} in {layer}: the store knows v1 and v2");
        }
        Ok(EsoNames {
            store: need(chart.str_at("storeName"), "storeName")?,
            auth_mount: v(&["auth", "mountPath"])?.trim_matches('/').to_string(),
            role: v(&["role"])?,
            policy: v(&["auth", "policy"])?,
            kv_path: v(&["path"])?.trim_matches('/').to_string(),
            kv_version,
            service_account: sa("name")?,
            namespace: sa("namespace")?,
            kubernetes_host: v(&["auth", "kubernetesHost"])?,
            token_ttl,
            token_ttl_secs,
        })
    }

    pub(crate) fn policy_text(&self) -> String {
        let (store, role, p) = (&self.store, &self.role, &self.kv_path);
        let header = format!(
            "# Written by `cargo xtask secrets seed`: what ClusterSecretStore/{store} (role {role}) may do. Read only.\n"
        );
        if self.kv_version == "v1" {
            return format!(
                "{header}path \"{p}/*\" {{\n  capabilities = [\"read\", \"list\"]\n}}\n"
            );
        }
        format!(
            "{header}path \"{p}/data/*\" {{\n  capabilities = [\"read\"]\n}}\n\npath \"{p}/metadata/*\" {{\n  \
             capabilities = [\"read\", \"list\"]\n}}\n"
        )
    }

    pub(crate) fn data_path(&self, key: &str) -> String {
        match self.kv_version.as_str() {
            "v1" => format!("{}/{key}", self.kv_path),
            _ => format!("{}/data/{key}", self.kv_path),
        }
    }

    pub(crate) fn subject(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }
}

/// The first document of `rel`; `purpose` says why it is read.
pub(crate) fn read_yaml(root: &Path, rel: &Path, purpose: &str) -> Result<Rc<yaml::Node>> {
    let shown = rel.display();
    let text = std::fs::read_to_string(root.join(rel))
        .with_context(|| format!("reading {shown} ({purpose})"))?;
    let docs = yaml::parse_documents(&text)
        .map_err(|e| anyhow::anyhow!("{shown}:{}:{}: {}", e.line, e.col, e.message))?;
    docs.into_iter().next().with_context(|| format!("{shown} is empty"))
}

/// A token TTL in seconds: a Go duration (`15m`, `1h30m`) or bare seconds.
pub(crate) fn parse_duration(text: &str) -> Result<u64> {
    let t = text.trim();
    let secs = t.parse::<u64>().map(|n| n as f64).ok();
    match secs.or_else(|| kube::go_seconds(t)) {
        Some(s) if s >= 1.0 => Ok(s as u64),
        Some(_) => bail!("{text:?}: a token TTL must be one second or more"),
        None => bail!("{text:?} is not a duration"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum State {
    InPlace,
    Ensure,
    /// Not done, and why (a token without the right, no cluster).
    Skipped(String),
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Item {
    /// `auth`, `config`, `policy` or `role`.
    pub kind: &'static str,
    pub name: String,
    pub state: State,
    pub detail: String,
}

impl Item {
    pub(crate) fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct KubeConfig {
    host: String,
    ca_cert: String,
    reviewer_jwt_set: bool,
    disable_local_ca_jwt: bool,
}

impl KubeConfig {
    fn of(d: &Value) -> KubeConfig {
        let text = |key: &str| d[key].as_str().unwrap_or_default();
        KubeConfig {
            host: text("kubernetes_host").to_string(),
            ca_cert: text("kubernetes_ca_cert").trim().to_string(),
            reviewer_jwt_set: d["token_reviewer_jwt_set"].as_bool().unwrap_or(false),
            disable_local_ca_jwt: d["disable_local_ca_jwt"].as_bool().unwrap_or(false),
        }
    }

    fn at(host: &str, ca_cert: &str) -> KubeConfig {
        KubeConfig { host: host.into(), ca_cert: ca_cert.into(), ..KubeConfig::default() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    pub names: EsoNames,
    pub items: Vec<Item>,
    /// The kube context's API server and CA, for a Vault outside a pod.
    #[serde(skip)]
    outside: Option<ApiServer>,
    #[serde(skip)]
    kubeconfig: Vec<PathBuf>,
}

impl Plan {
    fn new(names: &EsoNames, kubeconfig: &[PathBuf], states: [State; 4]) -> Plan {
        let (mount, p, host) = (&names.auth_mount, &names.kv_path, &names.kubernetes_host);
        let (subject, policy, ttl) = (names.subject(), &names.policy, &names.token_ttl);
        let kinds = [
            ("auth", format!("{mount}/"), "the kubernetes auth method ESO logs in with".into()),
            (
                "config",
                format!("auth/{mount}/config"),
                format!("kubernetes_host {host}; Vault's own service-account token and CA review ESO's token"),
            ),
            (
                "policy",
                policy.clone(),
                match names.kv_version.as_str() {
                    "v1" => format!("read and list {p}/*, nothing else"),
                    _ => format!("read {p}/data/*, read and list {p}/metadata/*, nothing else"),
                },
            ),
            (
                "role",
                names.role.clone(),
                format!("service account {subject} only, policy {policy}, token TTL {ttl}"),
            ),
        ];
        let items = kinds.into_iter().zip(states);
        let items = items.map(|((kind, name, detail), state)| Item { kind, name, state, detail });
        let (names, kubeconfig) = (names.clone(), kubeconfig.to_vec());
        Plan { names, items: items.collect(), outside: None, kubeconfig }
    }

    fn count(&self, state: State) -> usize {
        self.items.iter().filter(|i| i.state == state).count()
    }

    pub(crate) fn complete(&self) -> bool {
        self.items.iter().all(|i| i.state == State::InPlace)
    }

    pub(crate) fn render(&self, verbose: bool) -> String {
        let names = &self.names;
        let (store, role, subject) = (&names.store, &names.role, names.subject());
        let (ensure, in_place) = (self.count(State::Ensure), self.count(State::InPlace));
        let mut out = format!(
            "eso access (ClusterSecretStore/{store} -> role {role}, service account {subject}): {ensure} to ensure, \
             {in_place} in place\n"
        );
        let width = self.items.iter().map(|i| i.label().len()).max().unwrap_or(0);
        for i in &self.items {
            let (tag, detail) = match &i.state {
                State::Ensure => ("ensure", &i.detail),
                State::Skipped(why) => ("skipped", why),
                State::InPlace if verbose => ("in place", &i.detail),
                State::InPlace => continue,
            };
            out.push_str(&format!("  {tag:<10} {:<width$}  {detail}\n", i.label()));
        }
        out
    }
}

fn denial(call: &str, reply: &Reply) -> String {
    format!(
        "the token may not {call} ({}); run the seed once with a token that may (the dev chart's root token, or \
         `bao login` as root), or see docs/secrets.md#esos-access-to-vault",
        reply.errors()
    )
}

enum Found {
    Denied(String),
    Missing,
    Body(Value),
}

/// GET `path`; an error for an answer other than 200, 404 or a denial.
fn get(http: &VaultHttp, path: &str) -> Result<Found> {
    let reply = http.try_call(Method::Get, path, None)?;
    Ok(match reply.status {
        401 | 403 => Found::Denied(denial(&format!("read {path}"), &reply)),
        404 => Found::Missing,
        200 => Found::Body(reply.body),
        code => bail!("GET {path} failed with HTTP {code}: {}", reply.errors()),
    })
}

fn state_of(found: Found, as_wanted: impl FnOnce(&Value) -> bool) -> State {
    match found {
        Found::Denied(why) => State::Skipped(why),
        Found::Body(body) if as_wanted(&body) => State::InPlace,
        Found::Body(_) | Found::Missing => State::Ensure,
    }
}

/// The `sys/auth` table, keyed by `<path>/`: `data` when an object, else the body.
pub(crate) fn mount_table(body: &Value) -> &Value {
    body.get("data").filter(|d| d.is_object()).unwrap_or(body)
}

pub(crate) fn plan(http: &VaultHttp, names: &EsoNames, kubeconfig: &[PathBuf]) -> Result<Plan> {
    let mount = &names.auth_mount;
    let auth_state = match get(http, "sys/auth")? {
        Found::Denied(why) => State::Skipped(why),
        Found::Missing => State::Ensure,
        Found::Body(body) => match mount_table(&body).get(format!("{mount}/")) {
            None => State::Ensure,
            Some(m) if m["type"] == "kubernetes" => State::InPlace,
            Some(m) => bail!(
                "the auth method at {mount}/ is {:?}, not kubernetes: ClusterSecretStore/{} logs in there with \
                 Kubernetes auth. Disable it (`bao auth disable {mount}`) or change vault.auth.mountPath in \
                 {STORE_CHART_VALUES}",
                m["type"].as_str().unwrap_or("unknown"),
                names.store
            ),
        },
    };
    let current = match auth_state {
        State::InPlace => match get(http, &format!("auth/{mount}/config"))? {
            Found::Denied(why) => {
                // Nothing past the auth method is readable: all skipped, without details.
                let skipped = State::Skipped(why);
                let states = [auth_state, skipped.clone(), skipped.clone(), skipped];
                let mut plan = Plan::new(names, kubeconfig, states);
                plan.items[1..].iter_mut().for_each(|i| i.detail.clear());
                return Ok(plan);
            }
            Found::Body(body) if body["data"].is_object() => Some(KubeConfig::of(&body["data"])),
            Found::Body(_) | Found::Missing => None,
        },
        _ => None,
    };
    let mut outside = None;
    let config_state = match &auth_state {
        State::Skipped(why) => State::Skipped(why.clone()),
        _ => {
            let has_context = || kube::current_context(kubeconfig).is_some();
            decide_config(names, current.as_ref(), has_context, api_server_of_context, &mut outside)
        }
    };
    let policy = get(http, &format!("sys/policies/acl/{}", names.policy))?;
    let policy_state = state_of(policy, |b| b["data"]["policy"] == names.policy_text());
    let role_state = match &auth_state {
        State::InPlace => {
            let role = get(http, &format!("auth/{mount}/role/{}", names.role))?;
            state_of(role, |b| role_matches(names, &b["data"]))
        }
        other => other.clone(),
    };
    let states = [auth_state, config_state, policy_state, role_state];
    Ok(Plan { outside, ..Plan::new(names, kubeconfig, states) })
}

/// Whether the config is the in-pod one or the kube context's (asked for only to compare).
fn decide_config(
    names: &EsoNames,
    current: Option<&KubeConfig>,
    has_context: impl FnOnce() -> bool,
    context_api: impl FnOnce() -> Result<ApiServer>,
    outside: &mut Option<ApiServer>,
) -> State {
    if current == Some(&KubeConfig::at(&names.kubernetes_host, "")) {
        return State::InPlace;
    }
    if !has_context() {
        return State::Skipped(
            "no kube context, so no cluster whose ESO could log in (a Vault outside a pod reviews ESO's token \
             with the kube context's API server and CA)"
                .into(),
        );
    }
    // Nothing to compare (a first seed) or no API server: [`apply`] writes it either way.
    let Some(api) = current.and_then(|_| context_api().ok()) else {
        return State::Ensure;
    };
    let in_place = current == Some(&KubeConfig::at(&api.server, api.ca_pem.trim()));
    *outside = Some(api);
    if in_place {
        State::InPlace
    } else {
        State::Ensure
    }
}

pub(crate) fn strings(v: &Value) -> Vec<String> {
    let all = v.as_array().map(Vec::as_slice).unwrap_or_default();
    all.iter().filter_map(Value::as_str).map(String::from).collect()
}

fn role_matches(names: &EsoNames, d: &Value) -> bool {
    let is = |v: &Value, want: &str| strings(v) == [want];
    is(&d["bound_service_account_names"], &names.service_account)
        && is(&d["bound_service_account_namespaces"], &names.namespace)
        && is(&d["token_policies"], &names.policy)
        && d["token_ttl"].as_u64() == Some(names.token_ttl_secs)
}

#[derive(Debug, Clone)]
pub(crate) struct ApiServer {
    pub server: String,
    pub ca_pem: String,
}

/// The current kube context's server and CA (inline: kubectl reads a CA file).
pub(crate) fn api_server_of_context() -> Result<ApiServer> {
    use base64::{engine::general_purpose::STANDARD, Engine};
    let text = kube::raw_minified_config()?;
    let v: Value = serde_json::from_str(&text).context("kubectl config view printed no JSON")?;
    let cluster = &v["clusters"][0]["cluster"];
    let server = cluster["server"]
        .as_str()
        .filter(|s| !s.is_empty())
        .context("the kube context names no API server")?
        .to_string();
    let Some(data) = cluster["certificate-authority-data"].as_str() else {
        bail!("the kube context has no CA for {server}: Vault needs one to review tokens there")
    };
    let der = STANDARD.decode(data.trim()).context("certificate-authority-data is not base64")?;
    let ca_pem = String::from_utf8(der).context("certificate-authority-data is not PEM text")?;
    Ok(ApiServer { server, ca_pem })
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Applied {
    pub written: Vec<String>,
    /// Pieces not written, with the reason (a refused token): ESO cannot log in yet.
    pub not_written: Vec<(String, String)>,
    pub notes: Vec<String>,
}

fn config_body(host: &str, ca_pem: &str) -> Value {
    json!({"kubernetes_host": host, "kubernetes_ca_cert": ca_pem, "token_reviewer_jwt": "", "disable_local_ca_jwt": false})
}

pub(crate) fn apply(http: &VaultHttp, plan: &Plan) -> Result<Applied> {
    let names = &plan.names;
    let (mount, store, policy, role) =
        (&names.auth_mount, &names.store, &names.policy, &names.role);
    let mut done = Applied::default();
    for item in plan.items.iter().filter(|i| i.state == State::Ensure) {
        let label = item.label();
        let (path, body) = match item.kind {
            "auth" => (
                format!("sys/auth/{mount}"),
                json!({"type": "kubernetes", "description": format!("ESO's login for ClusterSecretStore/{store}")}),
            ),
            "config" => (format!("auth/{mount}/config"), config_body(&names.kubernetes_host, "")),
            "policy" => {
                (format!("sys/policies/acl/{policy}"), json!({"policy": names.policy_text()}))
            }
            _ => (
                format!("auth/{mount}/role/{role}"),
                json!({
                    "bound_service_account_names": [names.service_account],
                    "bound_service_account_namespaces": [names.namespace],
                    "token_policies": [policy],
                    "token_ttl": names.token_ttl_secs,
                }),
            ),
        };
        let post = |body: &Value| http.try_call(Method::Post, &path, Some(body));
        let mut reply = post(&body)?;
        // A Raft standby says "no handler for route" until it applied a new mount.
        for _ in 0..50 {
            if reply.status != 404 || !reply.errors().contains("no handler for route") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            reply = post(&body)?;
        }
        // Outside a pod Vault has no service-account CA: it reviews with the kube context's.
        if item.kind == "config"
            && reply.status == 400
            && reply.errors().contains("serviceaccount/ca.crt")
        {
            let api = match plan.outside.clone().map_or_else(api_server_of_context, Ok) {
                Ok(api) => api,
                Err(e) => {
                    let why = "Vault runs outside a pod and the kube context gives no API server";
                    done.not_written.push((label, format!("{why}: {e:#}")));
                    continue;
                }
            };
            reply = post(&config_body(&api.server, &api.ca_pem))?;
            let (server, subject, host) = (&api.server, names.subject(), &names.kubernetes_host);
            done.notes.push(format!(
                "Vault runs outside a pod: {label} reviews ESO's tokens with {server} and the kube context's CA. \
                 ESO's own token is then the reviewer, so service account {subject} needs a ClusterRoleBinding to \
                 system:auth-delegator, and the store's server ({host}) must be reachable from the pods"
            ));
        }
        // A concurrent seed enabled it between our read and our write.
        if item.kind == "auth" && reply.status == 400 && reply.errors().contains("already in use") {
            let auths = http.try_call(Method::Get, "sys/auth", None)?;
            if mount_table(&auths.body)[format!("{mount}/")]["type"] == "kubernetes" {
                continue;
            }
        }
        let (status, errors) = (reply.status, reply.errors());
        if matches!(status, 401 | 403) {
            done.not_written.push((label, denial(&format!("write {path}"), &reply)));
        } else if (200..300).contains(&status) {
            done.written.push(label);
        } else {
            bail!("POST {path} ({label}) failed with HTTP {status}: {errors}");
        }
    }
    done.notes.extend(service_account_missing(names, &plan.kubeconfig));
    Ok(done)
}

/// A note when the service account the role binds is not in the cluster; nothing
/// without a kube context or an answer (`doctor` reports kubectl's trouble).
pub(crate) fn service_account_missing(names: &EsoNames, kubeconfig: &[PathBuf]) -> Option<String> {
    kube::current_context(kubeconfig)?;
    let field = format!("metadata.name={}", names.service_account);
    let found = kube::kubectl_tool()
        .args(["get", "serviceaccounts", "--namespace", &names.namespace])
        .args(["--field-selector", &field, "--output", "name"])
        .run()
        .ok()?;
    let subject = names.subject();
    found.trim().is_empty().then(|| {
        format!(
            "service account {subject} is not in the cluster, so ESO cannot log in as the role binds it. Find ESO's \
             service account (`kubectl get serviceaccounts --all-namespaces | grep external-secrets`), set \
             serviceAccount.name and serviceAccount.namespace in {STORE_CHART_VALUES}, and seed again"
        )
    })
}

/// What to check when Vault says `permission denied` to ESO.
pub(crate) fn denied_checks(root: &Path, env: &str, cfg: &Config) -> String {
    let (role, subject, mount) = match EsoNames::load(root, env) {
        Ok(n) => (n.role.clone(), n.subject(), n.auth_mount),
        Err(_) => (
            "external-secrets".to_string(),
            "external-secrets/external-secrets".to_string(),
            "kubernetes".to_string(),
        ),
    };
    let vault_ns = &cfg.port_forward.namespace;
    let sync = crate::secrets::helmfile::sync_display(env);
    format!(
        "Vault answers `permission denied` to every ESO login it refuses (a failed TokenReview included) and \
         to every read ESO's policy does not allow. Check (1) that role auth/{mount}/role/{role} binds the \
         service account the store logs in as, {subject} (bound_service_account_names and \
         bound_service_account_namespaces): `cargo xtask secrets doctor` compares them on its `eso access` \
         lines and `cargo xtask secrets seed` writes the role and ESO's policy again; (2) that Vault's \
         reviewer may create TokenReviews: `kubectl get clusterrolebindings --output wide | grep \
         system:auth-delegator` must list {vault_ns}/vault (a Vault outside the cluster reviews with ESO's own \
         token: then {subject}); `{sync}` brings that binding, then `kubectl --namespace {vault_ns} delete pod \
         vault-0` and `cargo xtask secrets seed`."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_value_names_the_file_and_key() {
        let dir = std::env::temp_dir().join(format!("eso-missing-{}", std::process::id()));
        let root = crate::project_root();
        let layer = project::flag_file("local");
        for rel in [Path::new(STORE_CHART_VALUES), &layer] {
            std::fs::create_dir_all(dir.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(root.join(rel), dir.join(rel)).unwrap();
        }
        let chart = dir.join(STORE_CHART_VALUES);
        let text = std::fs::read_to_string(&chart).unwrap();
        std::fs::write(&chart, text.replace("    policy: external-secrets\n", "")).unwrap();
        let err = EsoNames::load(&dir, "local").unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains(STORE_CHART_VALUES) && err.contains("`vault.auth.policy`"), "{err}");
    }

    #[test]
    fn the_mount_table_is_data_when_it_is_an_object() {
        let nested =
            json!({"data": {"kubernetes/": {"type": "kubernetes"}}, "kubernetes/": {"type": "x"}});
        let flat = json!({"kubernetes/": {"type": "kubernetes"}, "data": null});
        for body in [nested, flat] {
            assert_eq!(mount_table(&body)["kubernetes/"]["type"], "kubernetes");
        }
    }

    #[test]
    fn a_first_seed_plans_the_config_without_asking_kubectl_for_the_api_server() {
        let names = EsoNames::load(&crate::project_root(), "local").unwrap();
        let server = "https://127.0.0.1:6443";
        let api = || Ok(ApiServer { server: server.into(), ca_pem: "PEM\n".into() });
        let not_asked = || -> Result<ApiServer> { panic!("kubectl config view was run") };
        let mut outside = None;
        // Nothing configured yet: written, the API server left to apply.
        let state = decide_config(&names, None, || true, not_asked, &mut outside);
        assert_eq!((state, outside.is_none()), (State::Ensure, true));
        // The in-pod config in place: nothing asked.
        let in_pod = KubeConfig::at(&names.kubernetes_host, "");
        let state =
            decide_config(&names, Some(&in_pod), || panic!("context"), not_asked, &mut outside);
        assert_eq!(state, State::InPlace);
        // No kube context: skipped, whatever Vault holds.
        let state = decide_config(&names, None, || false, not_asked, &mut outside);
        assert!(matches!(state, State::Skipped(why) if why.starts_with("no kube context")));
        // A config Vault holds is compared with the context's API server.
        let outside_cfg = KubeConfig::at(server, "PEM");
        let state = decide_config(&names, Some(&outside_cfg), || true, api, &mut outside);
        assert_eq!(state, State::InPlace);
        assert_eq!(outside.map(|a| a.server), Some(server.into()));
        let stale = KubeConfig::at("https://10.0.0.1", "");
        let state = decide_config(&names, Some(&stale), || true, api, &mut None);
        assert_eq!(state, State::Ensure);
    }

    #[test]
    fn token_ttls() {
        for (ttl, secs) in [("15m", 900), ("1h30m", 5400), ("1.5h", 5400), ("90", 90)] {
            assert_eq!(parse_duration(ttl).unwrap(), secs, "{ttl}");
        }
        for bad in ["0s", "500ms", "5d", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plan_snapshot() {
        let names = EsoNames::load(&crate::project_root(), "local").unwrap();
        let skipped = State::Skipped("the token may not".into());
        let states = [State::Ensure, State::InPlace, State::Ensure, skipped];
        let mut plan = Plan::new(&names, &[], states);
        for item in &mut plan.items {
            item.detail = format!("{} detail", item.kind);
        }
        let expected = "eso access (ClusterSecretStore/ameide-vault -> role external-secrets, service account \
                        external-secrets/external-secrets): 2 to ensure, 1 in place
  ensure     auth kubernetes/               auth detail
  ensure     policy external-secrets        policy detail
  skipped    role external-secrets          the token may not
";
        assert_eq!(plan.render(false), expected);
        assert!(plan
            .render(true)
            .contains("  in place   config auth/kubernetes/config  config detail\n"));
    }
}
