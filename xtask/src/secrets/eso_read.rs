//! Reading Vault as ESO does (`check --live --as-eso`, `doctor`): login, reads, a refused write.
//! The JWT and Vault tokens stay in memory: never in argv, output or errors.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::output::Secret;
use crate::pool::bounded;
use crate::secrets::eso_access::{read_yaml, strings, EsoNames, STORE_CHART_VALUES};
use crate::secrets::provider::vault_http::{Method, Reply, VaultHttp};
use crate::secrets::{eso_access, helmfile, kube, vault_checks};

/// A check-and-set version no KV entry reaches (exact in JSON): the write probe cannot land.
const NO_SUCH_VERSION: u64 = (1 << 53) - 1;

/// How long the service-account token lives: ESO's controller asks for 600 s.
const TOKEN_DURATION: &str = "10m";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum How {
    /// ESO's own login: TokenRequest, Vault login, TokenReview.
    #[default]
    Login,
    /// No cluster to log in through: a token minted with the role's policies.
    PolicyOnly,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Refused {
    pub cause: String,
    pub fix: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct AsEso {
    pub method: How,
    pub role: String,
    /// `<namespace>/<name>` of the service account ESO logs in as.
    pub service_account: String,
    pub auth: String,
    pub kube_context: Option<String>,
    /// Policy only: why no login was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_only_reason: Option<String>,
    /// The login failed: why, and the fix. Nothing was read then.
    pub login_refused: Option<Refused>,
    pub policies: Vec<String>,
    pub read: Vec<String>,
    /// Keys not read, with why (refused, missing, no `value`).
    pub unreadable: Vec<(String, String)>,
    pub write_refused: bool,
    pub write_answer: String,
}

impl AsEso {
    fn new(method: How, names: &EsoNames, kube_context: Option<String>) -> AsEso {
        AsEso {
            method,
            role: names.role.clone(),
            service_account: names.subject(),
            auth: format!("auth/{}", names.auth_mount),
            kube_context,
            ..AsEso::default()
        }
    }

    pub(crate) fn ok(&self) -> bool {
        self.login_refused.is_none() && self.unreadable.is_empty() && self.write_refused
    }

    pub(crate) fn summary(&self) -> String {
        let (account, auth, role) = (&self.service_account, &self.auth, &self.role);
        if let Some(refused) = &self.login_refused {
            let cause = &refused.cause;
            return format!(
                "as ESO: the login as {account} through {auth} (role {role}) fails: {cause}"
            );
        }
        let policies = self.policies.join(", ");
        let how = match self.method {
            How::Login => {
                let context = self.kube_context.as_deref();
                let context = context.map(|c| format!(" in kube context {c}")).unwrap_or_default();
                format!("as ESO (logged in as {account} through {auth}{context}, role {role}, policies {policies})")
            }
            How::PolicyOnly => format!(
                "as ESO, policy only: no cluster to log in through ({}) — this does not prove ESO's login (role \
                 {role}, policies {policies})",
                self.policy_only_reason.as_deref().unwrap_or("no kube context")
            ),
        };
        let (read, total) = (self.read.len(), self.read.len() + self.unreadable.len());
        let write = match self.write_refused {
            true => "refused".to_string(),
            false => format!("NOT refused ({})", self.write_answer),
        };
        format!("{how}: {read} of {total} keys read, write {write}")
    }

    pub(crate) fn fix(&self) -> String {
        match &self.login_refused {
            Some(refused) => refused.fix.clone(),
            None => "cargo xtask secrets check --live --as-eso; cargo xtask secrets seed".into(),
        }
    }
}

/// Logs in as ESO does (no cluster: [`policy_only`]) and [`probe`]s with its token.
pub(crate) fn read_as_eso(
    http: &VaultHttp,
    names: &EsoNames,
    keys: &[String],
    root: &Path,
    env: &str,
    kubeconfig: &[PathBuf],
) -> Result<AsEso> {
    let policy_only = |why: String| policy_only(http, names, keys, why);
    let context = match kube::context(kubeconfig) {
        Ok(Some(context)) => context,
        Ok(None) if crate::tools::which("kubectl").is_none() => {
            return policy_only("kubectl is not installed".into())
        }
        Ok(None) => return policy_only("no kube context".into()),
        Err(e) => return policy_only(format!("kubectl cannot read its kube context: {e:#}")),
    };
    let mut as_eso = AsEso::new(How::Login, names, Some(context.clone()));
    let (jwt, audiences) = match service_account_token(names, &audiences(root)?, &context)? {
        Minted::Token(jwt, audiences) => (jwt, audiences),
        Minted::Refused(refused) => {
            as_eso.login_refused = Some(refused);
            return Ok(as_eso);
        }
        Minted::NoCluster(why) => return policy_only(why),
    };
    let login_path = format!("auth/{}/login", names.auth_mount);
    let body = json!({"role": names.role, "jwt": jwt.expose()});
    let anonymous = http.with_token(Secret::new(String::new()));
    let login = anonymous.try_call(Method::Post, &login_path, Some(&body))?;
    drop((body, jwt));
    let token = login.body["auth"]["client_token"].as_str().unwrap_or("");
    if login.status != 200 || token.is_empty() {
        let why = Why { http, names, context: &context, env };
        as_eso.login_refused = Some(why.refused(&login, &audiences));
        return Ok(as_eso);
    }
    as_eso.policies = strings(&login.body["auth"]["policies"]);
    probe(http, token, names, keys, as_eso)
}

/// `serviceAccount.audiences` of the store chart: what ESO's TokenRequest asks for.
fn audiences(root: &Path) -> Result<Vec<String>> {
    let purpose = "ESO's login is set up from it";
    let values = read_yaml(root, Path::new(STORE_CHART_VALUES), purpose)?;
    let list = values.get("serviceAccount").and_then(|s| s.get("audiences"));
    let list = list.map(|a| a.as_seq()).unwrap_or_default();
    Ok(list.iter().filter_map(|n| n.as_str()).map(String::from).collect())
}

enum Minted {
    /// The JWT, and the audiences the API server gave it.
    Token(Secret, Vec<String>),
    Refused(Refused),
    NoCluster(String),
}

/// Whether kubectl failed because it never reached the API server.
fn unreachable(stderr: &str) -> bool {
    [
        "was refused - did you specify the right host or port",
        "Unable to connect to the server",
        "dial tcp",
        "no such host",
        "i/o timeout",
        "TLS handshake timeout",
        "context deadline exceeded",
    ]
    .iter()
    .any(|s| stderr.contains(s))
}

fn service_account_token(names: &EsoNames, audiences: &[String], context: &str) -> Result<Minted> {
    let (sa, ns) = (&names.service_account, &names.namespace);
    let mut tool = kube::kubectl_tool().args(["create", "token", sa, "--namespace", ns]);
    tool = tool.args(["--duration", TOKEN_DURATION, "--output", "json"]);
    for audience in audiences {
        tool = tool.args(["--audience", audience]);
    }
    let unreached =
        |said| format!("kubectl cannot reach the cluster of kube context {context}: {said}");
    let out = match tool.output() {
        Ok(out) => out,
        Err(e) => return Ok(Minted::NoCluster(unreached(format!("{e:#}")))),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let said = crate::process::tail(&stderr, 1);
    if !out.status.success() {
        let subject = names.subject();
        let refused = |cause, fix| Ok(Minted::Refused(Refused { cause, fix }));
        if unreachable(&stderr) {
            return Ok(Minted::NoCluster(unreached(said)));
        }
        if stderr.contains("forbidden") {
            return refused(
                format!(
                    "kube context {context} may not create a token for service account {subject} (kubectl: \
                     {said}), so the login ESO's controller makes cannot be tried from here"
                ),
                "switch to a kube context whose user may create service-account tokens, such as the cluster's \
                 admin context (`kubectl config get-contexts` lists them, `kubectl config use-context <name>` \
                 picks one), and run this again"
                    .into(),
            );
        }
        if stderr.contains("not found") {
            return refused(
                format!(
                    "service account {subject} is not in the cluster of kube context {context} (kubectl: \
                     {said}), so ESO's controller gets no token to log in with"
                ),
                format!(
                    "if ESO runs under another service account, find it (`kubectl get serviceaccounts \
                     --all-namespaces | grep external-secrets`), set serviceAccount.name and \
                     serviceAccount.namespace in {STORE_CHART_VALUES}, and run `cargo xtask secrets seed`; if \
                     ESO is not installed: {}",
                    kube::ESO_INSTALL
                ),
            );
        }
        bail!(
            "{}. Run that command by hand to see what kubectl needs, fix it, and run this again",
            tool.failure(&out)
        );
    }
    // stdout holds the token: parse it here, never quote it.
    let shown = tool.display();
    let answer: Value = serde_json::from_slice(&out.stdout).map_err(|_| {
        anyhow!(
            "`{shown}` printed no TokenRequest: is kubectl 1.24 or later? Run `cargo xtask tools`"
        )
    })?;
    let Some(jwt) = answer["status"]["token"].as_str().filter(|t| !t.is_empty()) else {
        bail!("`{shown}` answered without a token; run `kubectl version` to see which API server answered");
    };
    let jwt = Secret::new(jwt.to_string());
    Ok(Minted::Token(jwt, strings(&answer["spec"]["audiences"])))
}

/// Names the cause of a refused login, reading with the caller's token.
struct Why<'a> {
    http: &'a VaultHttp,
    names: &'a EsoNames,
    context: &'a str,
    env: &'a str,
}

fn seed_fix(what: &str) -> String {
    format!("`cargo xtask secrets seed` {what}")
}

impl Why<'_> {
    fn refused(&self, login: &Reply, audiences: &[String]) -> Refused {
        let names = self.names;
        let said = login.errors();
        let role_path = format!("auth/{}/role/{}", names.auth_mount, names.role);
        let (store, role) = (&names.store, &names.role);
        if said.contains("invalid role name") {
            return Refused {
                cause: format!(
                    "{role_path} does not exist: ESO cannot log in to Vault (ClusterSecretStore/{store} names role \
                     {role}; Vault: {said})"
                ),
                fix: seed_fix("sets up ESO's access"),
            };
        }
        if said.contains("not authorized") {
            let bound = match self.read(&role_path) {
                Ok(Some(role)) => bindings(&role),
                _ => "another service account".into(),
            };
            return self.not_bound(&bound, &format!(" (Vault: {said})"));
        }
        if said.contains("invalid audience") {
            return self.audience(&role_path, audiences, &said);
        }
        if !said.contains("permission denied") {
            return Refused {
                cause: format!("Vault refused the login (HTTP {}: {said})", login.status),
                fix: "see docs/secrets.md#esos-login-to-vault".into(),
            };
        }
        self.denied(&role_path)
    }

    fn not_bound(&self, bound: &str, vault_said: &str) -> Refused {
        let (role, subject, store) = (&self.names.role, self.names.subject(), &self.names.store);
        Refused {
            cause: format!(
                "role {role} binds {bound}, not {subject}, the service account ClusterSecretStore/{store} logs in \
                 as{vault_said}"
            ),
            fix: seed_fix(&format!("binds the role to {subject} again, from the store's values")),
        }
    }

    /// A path's `data`: `Ok(None)` when it does not exist, `Err(why)` when not readable.
    fn read(&self, path: &str) -> Result<Option<Value>, String> {
        match self.http.try_call(Method::Get, path, None) {
            Ok(r) if r.status == 200 => Ok(Some(r.body["data"].clone())),
            Ok(r) if r.status == 404 => Ok(None),
            Ok(r) if matches!(r.status, 401 | 403) => Err(format!("the token may not read {path}")),
            Ok(r) => Err(format!("GET {path}: HTTP {}: {}", r.status, r.errors())),
            Err(e) => Err(format!("GET {path}: {e}")),
        }
    }

    fn audience(&self, role_path: &str, token: &[String], said: &str) -> Refused {
        let role = &self.names.role;
        let wanted = match self.read(role_path) {
            Ok(Some(role)) => format!("{:?}", role["audience"].as_str().unwrap_or("")),
            _ => "an audience (not readable with this token)".into(),
        };
        let set_to = token
            .iter()
            .find(|a| !a.starts_with("https://kubernetes.default.svc"))
            .map_or("", String::as_str);
        Refused {
            cause: format!(
                "audience mismatch: role {role} wants audience {wanted}, but the token ESO's controller gets \
                 carries {token:?} (Vault: {said})"
            ),
            fix: format!(
                "make the role accept the token's audience: `bao write {role_path} audience={set_to:?}` (with \
                 VAULT_ADDR and VAULT_TOKEN of this Vault), or give the store the role's audience in \
                 serviceAccount.audiences of {STORE_CHART_VALUES}"
            ),
        }
    }

    /// Vault said `permission denied`: checks auth method, role, config and reviewer, in order.
    fn denied(&self, role_path: &str) -> Refused {
        let names = self.names;
        let (mount, store) = (&names.auth_mount, &names.store);
        // What was checked and found right, and what could not be read.
        let (mut fine, mut unchecked) = (Vec::new(), Vec::new());
        match self.read(role_path) {
            Ok(Some(role)) => {
                let bound = |key: &str, want: &str| {
                    strings(&role[key]).iter().any(|n| n == "*" || n == want)
                };
                if !(bound("bound_service_account_names", &names.service_account)
                    && bound("bound_service_account_namespaces", &names.namespace))
                {
                    return self.not_bound(&bindings(&role), "");
                }
                fine.push(format!("role {} binds {}", names.role, names.subject()));
            }
            Ok(None) | Err(_) if self.mount_missing() => {
                return Refused {
                    cause: format!(
                        "no auth method is enabled at auth/{mount}/, where ClusterSecretStore/{store} logs in \
                         (Vault answers that login with permission denied)"
                    ),
                    fix: seed_fix("sets up ESO's access"),
                };
            }
            Ok(None) => {
                let cause = format!("{role_path} does not exist: ESO cannot log in to Vault");
                return Refused { cause, fix: seed_fix("sets up ESO's access") };
            }
            Err(why) => unchecked.push(why),
        }
        let config_path = format!("auth/{mount}/config");
        let reviewer = match self.read(&config_path) {
            Ok(Some(config)) => match self.config(&config_path, &config) {
                Ok(reviewer) => {
                    let host = config["kubernetes_host"].as_str().unwrap_or("");
                    fine.push(format!("{config_path} reviews at {host}"));
                    Some(reviewer)
                }
                Err(refused) => return refused,
            },
            Ok(None) => {
                return Refused {
                    cause: format!(
                        "{config_path} is not set: Vault has no API server to review tokens with"
                    ),
                    fix: seed_fix("writes it"),
                }
            }
            Err(why) => {
                unchecked.push(why);
                None
            }
        };
        if let Some((ns, name, in_pod)) = reviewer {
            match self.auth_delegator(&ns, &name) {
                Ok(true) => {
                    fine.push(format!("the reviewer {ns}/{name} holds system:auth-delegator"))
                }
                Ok(false) => return self.unbound(&ns, &name, in_pod),
                Err(why) => unchecked.push(why),
            }
        }
        let mut cause = "Vault refused the login (permission denied)".to_string();
        if !fine.is_empty() {
            cause.push_str(&format!(", though {}", fine.join(", ")));
        }
        if !unchecked.is_empty() {
            cause.push_str(&format!("; not checked: {}", unchecked.join("; ")));
        }
        let fix = if unchecked.is_empty() {
            "Vault's log says why (for the in-cluster Vault: `kubectl --namespace vault logs vault-0`); see \
             docs/secrets.md#esos-login-to-vault"
        } else {
            "run this with a token that may read ESO's role and auth config (the dev chart's root token) to have \
             the cause named; see docs/secrets.md#esos-login-to-vault"
        };
        Refused { cause, fix: fix.into() }
    }

    fn mount_missing(&self) -> bool {
        let path = format!("auth/{}/role/{}", self.names.auth_mount, self.names.role);
        matches!(self.http.try_call(Method::Get, &path, None),
                 Ok(r) if r.status == 404 && r.errors().contains("no handler for route"))
    }

    /// Checks the auth config against where Vault runs; answers who reviews (ns, name, in a pod).
    fn config(&self, config_path: &str, config: &Value) -> Result<(String, String, bool), Refused> {
        let names = self.names;
        let (context, want_host) = (self.context, &names.kubernetes_host);
        let host = config["kubernetes_host"].as_str().unwrap_or("");
        let ca = config["kubernetes_ca_cert"].as_str().unwrap_or("").trim();
        let jwt_set = config["token_reviewer_jwt_set"].as_bool().unwrap_or(false);
        let own_ca = !ca.is_empty() || config["disable_local_ca_jwt"].as_bool().unwrap_or(false);
        let wrong = |cause| {
            let fix = seed_fix(&format!(
                "writes {config_path} for where Vault runs (in a pod: {want_host}; outside: the kube context's \
                 API server and CA)"
            ));
            Err(Refused { cause, fix })
        };
        let reviewer = |ns: &str, name: &str, in_pod| {
            if !jwt_set {
                return Ok((ns.to_string(), name.to_string(), in_pod));
            }
            // A reviewer JWT whose service account Vault does not show.
            Err(Refused {
                cause: format!(
                    "Vault reviews ESO's token with the token_reviewer_jwt set in {config_path}, whose service \
                     account Vault does not show: it may lack system:auth-delegator, or the token may have expired"
                ),
                fix: seed_fix(
                    "writes the config without a reviewer JWT (Vault then reviews with its own service account in \
                     a pod, or with ESO's token outside one)",
                ),
            })
        };
        if !own_ca {
            // In a pod: Vault's own CA and service account (the vault chart's, vault/vault).
            if host != want_host {
                return wrong(format!(
                    "{config_path} has Vault review ESO's token at {host}, not at {want_host} (the API server as \
                     pods reach it)"
                ));
            }
            return reviewer("vault", "vault", true);
        }
        // Outside the cluster: the kube context's API server and CA.
        if let Ok(eso_access::ApiServer { server, ca_pem }) = eso_access::api_server_of_context() {
            let in_cluster = match host.contains(".svc") {
                true => " (an in-cluster address, which only pods resolve)",
                false => "",
            };
            if host.trim_end_matches('/') != server.trim_end_matches('/') {
                return wrong(format!(
                    "{config_path} has Vault review ESO's token at {host}{in_cluster}, but Vault runs outside the \
                     cluster (the config carries a CA of its own) and kube context {context} reaches the API \
                     server at {server}"
                ));
            }
            if ca != ca_pem.trim() {
                return wrong(format!(
                    "the CA in {config_path} is not the CA of kube context {context}'s API server ({server}): \
                     Vault cannot verify the server it sends ESO's token to"
                ));
            }
        }
        reviewer(&names.namespace, &names.service_account, false)
    }

    fn auth_delegator(&self, ns: &str, name: &str) -> Result<bool, String> {
        let text = kube::kubectl(&["get", "clusterrolebindings", "--output", "json"])
            .map_err(|e| format!("the ClusterRoleBindings ({e:#})"))?;
        let list: Value = serde_json::from_str(&text)
            .map_err(|_| "the ClusterRoleBindings (kubectl printed no JSON)".to_string())?;
        Ok(reviews(&list, ns, name))
    }

    fn unbound(&self, ns: &str, name: &str, in_pod: bool) -> Refused {
        let (who, fix) = if in_pod {
            let sync = helmfile::sync_display(self.env);
            (
                format!("Vault's own service account {ns}/{name}"),
                format!("`{sync}` (the vault chart binds {ns}/{name} to system:auth-delegator)"),
            )
        } else {
            (
                format!(
                    "service account {ns}/{name} (Vault runs outside the cluster with no reviewer JWT, so ESO's own \
                     token is the reviewer)"
                ),
                format!(
                    "`kubectl create clusterrolebinding {ns}-{name}-auth-delegator \
                     --clusterrole=system:auth-delegator --serviceaccount={ns}:{name}`"
                ),
            )
        };
        let cause = format!(
            "the reviewer, {who}, has no ClusterRoleBinding to system:auth-delegator, so the API server refuses \
             Vault's TokenReview of ESO's token and Vault answers permission denied"
        );
        Refused { cause, fix }
    }
}

fn bindings(role: &Value) -> String {
    let names = strings(&role["bound_service_account_names"]);
    let namespaces = strings(&role["bound_service_account_namespaces"]);
    format!("service account names {names:?} in namespaces {namespaces:?}")
}

/// Whether ClusterRoleBindings `list` bind `ns/name` (or its group) to a reviewing role.
fn reviews(list: &Value, ns: &str, name: &str) -> bool {
    let groups = ["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")];
    let each = |v: &Value| v.as_array().cloned().unwrap_or_default();
    each(&list["items"]).iter().any(|crb| {
        let role = &crb["roleRef"];
        role["kind"] == "ClusterRole"
            && (role["name"] == "system:auth-delegator" || role["name"] == "cluster-admin")
            && each(&crb["subjects"]).iter().any(|s| match s["kind"].as_str() {
                Some("ServiceAccount") => s["name"] == name && s["namespace"] == ns,
                Some("Group") => groups.iter().any(|g| s["name"] == g.as_str()),
                _ => false,
            })
    })
}

/// No cluster to log in through: reads with a token minted with the role's policies.
fn policy_only(http: &VaultHttp, names: &EsoNames, keys: &[String], why: String) -> Result<AsEso> {
    let (store, role_name) = (&names.store, &names.role);
    let role_path = format!("auth/{}/role/{role_name}", names.auth_mount);
    let role = http.try_call(Method::Get, &role_path, None)?;
    match role.status {
        200 => {}
        404 => bail!(
            "{role_path} does not exist: ESO cannot log in to Vault (ClusterSecretStore/{store} names role \
             {role_name}). Fix: `cargo xtask secrets seed` (it sets up ESO's access)"
        ),
        401 | 403 => bail!(
            "reading as ESO needs a token that may read {role_path} and create tokens with its policies \
             (auth/token/create; the dev chart's root token may): {}",
            role.errors()
        ),
        code => bail!("GET {role_path} failed with HTTP {code}: {}", role.errors()),
    }
    let data = &role.body["data"];
    let mut policies = strings(&data["token_policies"]);
    let no_default = data["token_no_default_policy"].as_bool().unwrap_or(false);
    let body = json!({"policies": policies, "no_default_policy": no_default, "ttl": "2m", "renewable": false,
                      "display_name": "xtask-as-eso"});
    let created = http.try_call(Method::Post, "auth/token/create", Some(&body))?;
    let (status, errors) = (created.status, created.errors());
    ensure!(
        status == 200,
        "auth/token/create refused a token with the policies of role {role_name} (HTTP {status}: {errors}): \
         reading as ESO needs a token that may create one (the dev chart's root token may)"
    );
    let Some(token) = created.body["auth"]["client_token"].as_str() else {
        bail!("auth/token/create answered without a token");
    };
    if created.body["auth"]["policies"].is_array() {
        policies = strings(&created.body["auth"]["policies"]);
    }
    let mut as_eso = AsEso::new(How::PolicyOnly, names, None);
    as_eso.policy_only_reason = Some(why);
    as_eso.policies = policies;
    probe(http, token, names, keys, as_eso)
}

/// Reads `keys` with `token` (ESO's), probes a write, then revokes the token.
fn probe(
    http: &VaultHttp,
    token: &str,
    names: &EsoNames,
    keys: &[String],
    mut into: AsEso,
) -> Result<AsEso> {
    let eso = http.with_token(Secret::new(token.to_string()));
    let answers = bounded(keys.to_vec(), 8, |key| {
        let path = names.data_path(&key);
        let verdict = match eso.try_call(Method::Get, &path, None) {
            Ok(r) if r.status == 200 => {
                let data = match names.kv_version.as_str() {
                    "v1" => &r.body["data"],
                    _ => &r.body["data"]["data"],
                };
                match data["value"].is_string() {
                    true => Ok(()),
                    false => Err(format!("{path} has no string property `value`")),
                }
            }
            Ok(r) if r.status == 404 => Err(format!("{path} is not in the store")),
            Ok(r) if matches!(r.status, 401 | 403) => Err(format!("permission denied on {path}")),
            Ok(r) => Err(format!("GET {path}: HTTP {}: {}", r.status, r.errors())),
            Err(e) => Err(e.to_string()),
        };
        (key, verdict)
    });
    for (key, verdict) in answers {
        match verdict {
            Ok(()) => into.read.push(key),
            Err(why) => into.unreadable.push((key, why)),
        }
    }
    into.read.sort();
    into.unreadable.sort();
    let target = keys.first().map_or("xtask-eso-write-probe", String::as_str);
    let written = write_probe(&eso, names, target);
    let _ = eso.try_call(Method::Post, "auth/token/revoke-self", None);
    (into.write_refused, into.write_answer) = written?;
    Ok(into)
}

/// Tries a write that cannot land; `true` when the policy refused it.
fn write_probe(eso: &VaultHttp, names: &EsoNames, key: &str) -> Result<(bool, String)> {
    let path = names.data_path(key);
    if names.kv_version == "v1" {
        // No check-and-set on KV v1: ask for the capabilities instead of writing.
        let body = json!({"paths": [path]});
        let reply = eso.try_call(Method::Post, "sys/capabilities-self", Some(&body))?;
        let caps = vault_checks::capabilities(&reply, &path);
        let writes =
            caps.iter().any(|c| ["create", "update", "root", "sudo"].contains(&c.as_str()));
        return Ok((!writes, format!("capabilities on {path}: {}", caps.join(", "))));
    }
    let body = json!({"options": {"cas": NO_SUCH_VERSION}, "data": {"value": ""}});
    let reply = eso.try_call(Method::Post, &path, Some(&body))?;
    Ok(match reply.status {
        401 | 403 => (true, format!("POST {path}: permission denied")),
        code => {
            let errors = reply.errors();
            (false, format!("POST {path} was allowed by the policy (HTTP {code}: {errors})"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_to_auth_delegator_lets_a_service_account_review() {
        let crb = |role: &str, subject: &Value| json!({"items": [{"roleRef": {"kind": "ClusterRole", "name": role}, "subjects": [subject]}]});
        let sa = json!({"kind": "ServiceAccount", "name": "eso", "namespace": "es"});
        let group = json!({"kind": "Group", "name": "system:serviceaccounts:es"});
        let delegator = "system:auth-delegator";
        for (list, ns, reviews_it) in [
            (crb(delegator, &sa), "es", true),
            (crb(delegator, &sa), "other", false),
            (crb("view", &sa), "es", false),
            (crb(delegator, &group), "es", true),
            (json!({"items": []}), "es", false),
        ] {
            assert_eq!(reviews(&list, ns, "eso"), reviews_it, "{list} {ns}");
        }
    }

    #[test]
    fn kubectl_that_never_reached_the_server_is_told_apart() {
        assert!(unreachable(
            "The connection to the server 127.0.0.1:1 was refused - did you specify the right host or port?"
        ));
        assert!(!unreachable("error: failed to create token: serviceaccounts \"x\" not found"));
    }
}
