//! ESO's access to Vault against real OpenBao: what the seed sets up (and
//! that a second seed writes nothing), a token with the role's policies, a
//! real login through OpenBao's kubernetes auth method whose TokenReview
//! goes to a loopback stand-in of the API server, and what `check --as-eso`,
//! `status` and `doctor` say when something is missing.
//!
//! What OpenBao 2.7.2 does here (read from its source and checked below):
//! `kubernetes_host` may be plain http; outside a pod it refuses a config
//! without `kubernetes_ca_cert` ("open
//! /var/run/secrets/kubernetes.io/serviceaccount/ca.crt"); at login it
//! decodes the JWT without checking its signature (no `pem_keys`), matches
//! the role's bound names and namespaces against the JWT's claims, then
//! POSTs `{"spec": {"token": <jwt>, "audiences": <the JWT's aud>}}` to
//! `<host>/apis/authentication.k8s.io/v1/tokenreviews` with the login JWT
//! itself as the bearer (no reviewer JWT is set), and wants back the same
//! namespace, name and uid as `system:serviceaccount:<ns>:<name>`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::support::{
    assert_contains, block_on, fixtures, json as report, recording, vault_client, vault_seed,
    OpenBao, Sandbox,
};

fn tools() -> bool {
    crate::support::require_tools(&["bao", "kubectl"])
}

/// For tests that run `doctor`, which also checks helm and helmfile.
fn doctor_tools() -> bool {
    crate::support::require_tools(&["bao", "kubectl", "helm", "helmfile"])
}

/// Tokens the stand-in minted: JWT to (namespace, name, uid).
type Minted = Arc<Mutex<HashMap<String, (String, String, String)>>>;

/// One TokenReview the stand-in answered.
#[derive(Debug, Clone)]
struct Review {
    path: String,
    bearer: String,
    body: Value,
}

/// A loopback stand-in for the Kubernetes API's TokenReview endpoint. It
/// knows the tokens it minted, as an API server knows its service
/// accounts' tokens; any other token is not authenticated, and a caller
/// without a known bearer gets 401, as from an API server.
struct ApiServer {
    port: u16,
    minted: Minted,
    reviews: Arc<Mutex<Vec<Review>>>,
}

impl ApiServer {
    fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let minted: Minted = Arc::default();
        let reviews: Arc<Mutex<Vec<Review>>> = Arc::default();
        let (m, r) = (minted.clone(), reviews.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (m, r) = (m.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &m, &r);
                });
            }
        });
        ApiServer {
            port,
            minted,
            reviews,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A service-account JWT in the projected-token shape the kubelet
    /// mounts (`kubernetes.io.serviceaccount`), known to this server.
    fn mint(&self, namespace: &str, name: &str) -> String {
        let uid = format!("uid-{namespace}-{name}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "exp": now + 600, "iat": now, "nbf": now,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
        });
        let jwt = unsigned_jwt(&claims);
        self.minted
            .lock()
            .unwrap()
            .insert(jwt.clone(), (namespace.into(), name.into(), uid));
        jwt
    }

    fn reviews(&self) -> Vec<Review> {
        self.reviews.lock().unwrap().clone()
    }
}

/// A JWT with an RS256 header and a signature nobody checks: OpenBao
/// without `pem_keys` leaves that to the TokenReview.
fn unsigned_jwt(claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": "test", "typ": "JWT"});
    format!(
        "{}.{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(b"signature-not-checked-by-openbao")
    )
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn serve(
    conn: TcpStream,
    minted: &Mutex<HashMap<String, (String, String, String)>>,
    reviews: &Mutex<Vec<Review>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut conn = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let (mut length, mut bearer) = (0usize, String::new());
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap_or((line, ""));
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "authorization" => bearer = v.trim().trim_start_matches("Bearer ").to_string(),
                _ => {}
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        reviews.lock().unwrap().push(Review {
            path: path.to_string(),
            bearer: bearer.clone(),
            body: body.clone(),
        });
        let known = minted.lock().unwrap().clone();
        let (status, answer) = if method != "POST"
            || path != "/apis/authentication.k8s.io/v1/tokenreviews"
        {
            (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": "the server could not find the requested resource", "reason": "NotFound", "code": 404}),
            )
        } else if !known.contains_key(&bearer) {
            (
                401,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": "Unauthorized", "reason": "Unauthorized", "code": 401}),
            )
        } else {
            let token = body["spec"]["token"].as_str().unwrap_or_default();
            let audiences = body["spec"]["audiences"].clone();
            let status = match known.get(token) {
                Some((ns, name, uid)) => json!({
                    "authenticated": true,
                    "user": {"username": format!("system:serviceaccount:{ns}:{name}"), "uid": uid,
                             "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"]},
                    "audiences": audiences,
                }),
                None => {
                    json!({"user": {}, "error": "[invalid bearer token, service account token has been invalidated]"})
                }
            };
            (
                201,
                json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                          "metadata": {"creationTimestamp": null}, "spec": {"audiences": audiences}, "status": status}),
            )
        };
        let text = answer.to_string();
        write!(
            conn,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )?;
    }
}

/// The kube context's credential, which `kubectl config view --raw` prints
/// beside the CA the seed wants: it must never show.
const KUBE_CANARY: &str = "kube-credential-canary-5d41402a";

/// A sandbox whose kube context (fake kubectl) names `api` as its server.
fn sandbox_with_cluster(api: Option<&ApiServer>) -> Sandbox {
    let sb = Sandbox::new();
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Valid",
                                                  "message": "store validated"}]}});
    let mut kubectl = json!({"context": "k3d-eso", "crds": ["externalsecrets.external-secrets.io"],
                             "clustersecretstore": ready, "user": {"token": KUBE_CANARY}});
    if let Some(api) = api {
        let ca = std::fs::read(crate::support::fakes_dir().join("kube-ca.pem")).unwrap();
        kubectl["cluster"] = json!({"server": api.url(), "certificate-authority-data": b64(&ca)});
    }
    sb.scenario(json!({ "kubectl": kubectl }));
    sb
}

/// Standard base64 (padded), as kubeconfig holds CA data.
fn b64(bytes: &[u8]) -> String {
    let mut s = b64url(bytes).replace('-', "+").replace('_', "/");
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

/// `bao read -format=json <path>`'s `data`.
fn bao_read(bao: &OpenBao, path: &str) -> Value {
    let out = bao.bao(&["read", "-format=json", path]);
    assert!(
        out.status.success(),
        "bao read {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["data"].clone()
}

fn bao_ok(bao: &OpenBao, args: &[&str]) -> String {
    let out = bao.bao(args);
    assert!(
        out.status.success(),
        "bao {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_write(call: &str) -> bool {
    ["POST ", "PUT ", "PATCH ", "DELETE "]
        .iter()
        .any(|v| call.starts_with(v))
}

#[test]
fn a_seed_sets_up_esos_access_and_a_second_seed_writes_nothing() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let api = ApiServer::start();
    let sb = sandbox_with_cluster(Some(&api));

    // The dry run shows the four steps and changes nothing.
    let dry = sb.xtask_env(&["secrets", "seed", "--dry-run"], &bao.env());
    let dry = dry.ok();
    for line in [
        "ensure     auth kubernetes/",
        "ensure     config auth/kubernetes/config",
        "ensure     policy external-secrets",
        "ensure     role external-secrets",
    ] {
        assert!(dry.stdout.contains(line), "{line}:\n{}", dry.stdout);
    }
    assert!(
        !bao_ok(&bao, &["auth", "list"]).contains("kubernetes/"),
        "a dry run enables nothing"
    );

    let (proxy, seen) = recording(&bao);
    let seeded = vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok();
    let first = report(&seeded);
    let applied = &first["eso_access"]["applied"]["written"];
    assert!(
        !dry.all().contains(KUBE_CANARY) && !seeded.all().contains(KUBE_CANARY),
        "the kube context's credential leaked"
    );
    assert_eq!(
        applied,
        &json!([
            "auth kubernetes/",
            "config auth/kubernetes/config",
            "policy external-secrets",
            "role external-secrets"
        ]),
        "{first}"
    );

    // Read back with the bao CLI, not our code.
    let auths: Value =
        serde_json::from_str(&bao_ok(&bao, &["auth", "list", "-format=json"])).unwrap();
    assert_eq!(auths["kubernetes/"]["type"], "kubernetes", "{auths}");
    let config = bao_read(&bao, "auth/kubernetes/config");
    // Outside a pod (this is `bao server -dev`), the kube context's server and CA.
    assert_eq!(config["kubernetes_host"], api.url().as_str(), "{config}");
    assert!(config["kubernetes_ca_cert"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(
        config["token_reviewer_jwt_set"], false,
        "Vault's own reviewer"
    );
    let policy = bao_ok(&bao, &["policy", "read", "external-secrets"]);
    assert!(
        policy.contains("path \"secret/data/*\" {\n  capabilities = [\"read\"]\n}"),
        "{policy}"
    );
    assert!(
        policy.contains("path \"secret/metadata/*\" {\n  capabilities = [\"read\", \"list\"]\n}"),
        "{policy}"
    );
    let role = bao_read(&bao, "auth/kubernetes/role/external-secrets");
    assert_eq!(
        role["bound_service_account_names"],
        json!(["external-secrets"])
    );
    assert_eq!(
        role["bound_service_account_namespaces"],
        json!(["external-secrets"])
    );
    assert_eq!(role["token_policies"], json!(["external-secrets"]));
    assert_eq!(role["token_ttl"], 900, "15m from the store chart's values");

    // Second seed: every piece in place, and not one write on the wire.
    seen.lock().unwrap().clear();
    let again = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    let states: Vec<&str> = again["eso_access"]["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["state"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(states, ["in-place"; 4], "{again}");
    let calls = seen.lock().unwrap().clone();
    let writes: Vec<&String> = calls.iter().filter(|c| is_write(c)).collect();
    assert!(writes.is_empty(), "a second seed wrote: {writes:#?}");
    // The guardrail's seal-status answer is the one connecting uses.
    let seals = calls
        .iter()
        .filter(|c| c.contains("sys/seal-status"))
        .count();
    assert_eq!(seals, 1, "{calls:#?}");

    // Someone loosens the policy by hand: the next seed puts it back, and only it.
    std::fs::write(
        sb.path("loose.hcl"),
        "path \"secret/*\" { capabilities = [\"create\", \"read\", \"update\"] }\n",
    )
    .unwrap();
    bao_ok(
        &bao,
        &[
            "policy",
            "write",
            "external-secrets",
            sb.path("loose.hcl").to_str().unwrap(),
        ],
    );
    seen.lock().unwrap().clear();
    let fixed = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    assert_eq!(
        fixed["eso_access"]["applied"]["written"],
        json!(["policy external-secrets"])
    );
    let calls = seen.lock().unwrap().clone();
    let writes: Vec<&String> = calls.iter().filter(|c| is_write(c)).collect();
    assert_eq!(
        writes,
        ["POST /v1/sys/policies/acl/external-secrets"],
        "{calls:#?}"
    );
}

#[test]
fn names_come_from_the_values_not_the_code() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster(None);
    // Another auth mount and service account in the store chart, and
    // another role in layer 15 (which overrides the chart, as in helmfile).
    let chart = "infra/kubernetes/charts/platform/vault-secret-store/values.yaml";
    sb.write(
        chart,
        &sb.read(chart)
            .replace("mountPath: kubernetes", "mountPath: k8s-eso")
            .replace("  name: external-secrets\n", "  name: eso-sa\n"),
    );
    let layer = "infra/kubernetes/environments/local/platform/15-secrets.values.yaml";
    sb.write(
        layer,
        &sb.read(layer)
            .replace("    role: external-secrets\n", "    role: eso-reader\n"),
    );
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    let role = bao_read(&bao, "auth/k8s-eso/role/eso-reader");
    assert_eq!(role["bound_service_account_names"], json!(["eso-sa"]));
    assert_eq!(role["token_policies"], json!(["external-secrets"]));
}

#[test]
fn a_real_login_is_bound_to_esos_service_account_and_reads_only() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let api = ApiServer::start();
    let sb = sandbox_with_cluster(Some(&api));
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    bao_ok(&bao, &["secrets", "enable", "-path=other", "kv-v2"]);
    bao_ok(&bao, &["kv", "put", "other/elsewhere", "value=not-for-eso"]);
    let anon = vault_client(&bao.addr, "");

    let jwt = api.mint("external-secrets", "external-secrets");
    let auth = block_on(vaultrs::auth::kubernetes::login(
        &anon,
        "kubernetes",
        "external-secrets",
        &jwt,
    ))
    .expect("ESO's service account logs in");
    let mut policies = auth.policies.clone();
    policies.sort();
    assert_eq!(policies, ["default", "external-secrets"]);
    assert_eq!(auth.lease_duration, 900);
    // What OpenBao sent: the login JWT as bearer and as the token under review.
    let reviews = api.reviews();
    assert_eq!(reviews.len(), 1, "{reviews:#?}");
    assert_eq!(
        reviews[0].path,
        "/apis/authentication.k8s.io/v1/tokenreviews"
    );
    assert_eq!(reviews[0].bearer, jwt, "no reviewer JWT: the login JWT");
    assert_eq!(reviews[0].body["spec"]["token"], jwt.as_str());
    assert_eq!(
        reviews[0].body["spec"]["audiences"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );

    // ESO's token reads every fixture and nothing else, and writes nothing.
    let eso = vault_client(&bao.addr, &auth.client_token);
    for (name, value) in fixtures(&sb) {
        let got: HashMap<String, String> =
            block_on(vaultrs::kv2::read(&eso, "secret", &name)).unwrap();
        assert_eq!(got["value"], value.as_str().unwrap(), "{name}");
    }
    let keys = block_on(vaultrs::kv2::list(&eso, "secret", "")).expect("ESO may list");
    assert!(keys.len() >= 40, "{keys:?}");
    let mut data = HashMap::new();
    data.insert("value", "written-by-eso");
    let write = block_on(vaultrs::kv2::set(&eso, "secret", "redis-password", &data));
    assert_forbidden(&write, "a write of an existing key as ESO");
    let write = block_on(vaultrs::kv2::set(&eso, "secret", "brand-new", &data));
    assert!(write.is_err(), "{write:?}");
    let outside: Result<HashMap<String, String>, _> =
        block_on(vaultrs::kv2::read(&eso, "other", "elsewhere"));
    assert_forbidden(&outside, "a read outside the mount as ESO");
    let policies = block_on(vaultrs::sys::policy::list(&eso));
    assert!(policies.is_err(), "{policies:?}");

    // The role's bindings: another service account, or ESO's name in
    // another namespace, is refused, though the API server knows both.
    for (ns, name) in [
        ("external-secrets", "default"),
        ("ameide", "external-secrets"),
    ] {
        let other = api.mint(ns, name);
        let login = block_on(vaultrs::auth::kubernetes::login(
            &anon,
            "kubernetes",
            "external-secrets",
            &other,
        ));
        assert_forbidden(&login, &format!("a login as {ns}/{name}"));
    }
    // A token the API server does not know (forged claims) is refused at review.
    let before = api.reviews().len();
    let forged = unsigned_jwt(&json!({
        "kubernetes.io": {"namespace": "external-secrets",
                          "serviceaccount": {"name": "external-secrets", "uid": "uid-external-secrets-external-secrets"}},
        "sub": "system:serviceaccount:external-secrets:external-secrets",
    }));
    let login = block_on(vaultrs::auth::kubernetes::login(
        &anon,
        "kubernetes",
        "external-secrets",
        &forged,
    ));
    assert_forbidden(&login, "a login with a forged token");
    assert_eq!(
        api.reviews().len(),
        before + 1,
        "the forged token was reviewed"
    );
}

#[test]
fn check_as_eso_reads_every_key_and_fails_on_a_policy_that_writes() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster(None);
    let env = bao.env();
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    let check = |extra: &[&str]| {
        let mut args = vec!["secrets", "check", "--live", "--as-eso"];
        args.extend_from_slice(extra);
        sb.xtask_env(&args, &env)
    };
    let ok = check(&[]).ok();
    assert_contains(&ok.stdout, "as ESO (role external-secrets, policies default, external-secrets): 44 of 44 keys read, write refused");
    let j = report(&check(&["--output", "json"]).ok());
    assert_eq!(j["as_eso"]["write_refused"], true);
    assert_eq!(j["as_eso"]["read"].as_array().unwrap().len(), 44);

    // A policy that lets ESO write, and denies it one key.
    sb.write(
        "wide.hcl",
        "path \"secret/data/*\" { capabilities = [\"create\", \"read\", \"update\"] }\n\
         path \"secret/data/redis-password\" { capabilities = [\"deny\"] }\n",
    );
    bao_ok(
        &bao,
        &[
            "policy",
            "write",
            "external-secrets",
            sb.path("wide.hcl").to_str().unwrap(),
        ],
    );
    let before = block_on(vaultrs::kv2::read_metadata(
        &bao.client(),
        "secret",
        "agents-runtime-anthropic-api-key",
    ))
    .unwrap()
    .current_version;
    let bad = check(&[]).code(1);
    assert!(bad.stdout.contains("write NOT refused"), "{}", bad.stdout);
    assert!(
        bad.stdout.contains(
            "unreadable as ESO: redis-password: permission denied on secret/data/redis-password"
        ),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stderr
            .contains("1 keys ESO cannot read (redis-password)")
            && bad.stderr.contains("ESO's policy lets it write")
            && bad.stderr.contains("cargo xtask secrets seed"),
        "{}",
        bad.stderr
    );
    let after = block_on(vaultrs::kv2::read_metadata(
        &bao.client(),
        "secret",
        "agents-runtime-anthropic-api-key",
    ))
    .unwrap()
    .current_version;
    assert_eq!(before, after, "the write probe changed nothing");
    // No lingering tokens: the probe's token is revoked.
    let accessors = bao_ok(&bao, &["list", "-format=json", "auth/token/accessors"]);
    assert_eq!(
        serde_json::from_str::<Value>(&accessors)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1,
        "only the root token: {accessors}"
    );

    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    check(&[]).ok();

    // Without the role, ESO cannot log in, and the check says how to fix it.
    bao_ok(&bao, &["delete", "auth/kubernetes/role/external-secrets"]);
    let gone = check(&[]).code(1);
    assert!(
        gone.stderr
            .contains("auth/kubernetes/role/external-secrets does not exist")
            && gone.stderr.contains("cargo xtask secrets seed"),
        "{}",
        gone.stderr
    );
}

#[test]
fn a_token_that_may_not_manage_auth_still_seeds_and_says_what_it_skipped() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster(None);
    sb.write(
        "seeder.hcl",
        "path \"secret/data/*\" { capabilities = [\"create\", \"read\", \"update\"] }\n\
         path \"secret/metadata/*\" { capabilities = [\"create\", \"read\", \"update\", \"patch\", \"list\"] }\n",
    );
    bao_ok(
        &bao,
        &[
            "policy",
            "write",
            "seeder",
            sb.path("seeder.hcl").to_str().unwrap(),
        ],
    );
    let token = bao_ok(&bao, &["token", "create", "-policy=seeder", "-field=token"]);
    let run = sb
        .xtask_env(
            &["secrets", "seed"],
            &[
                ("VAULT_ADDR", bao.addr.as_str()),
                ("VAULT_TOKEN", token.trim()),
            ],
        )
        .ok();
    assert!(
        run.stdout.contains("skipped    auth kubernetes/")
            && run.stdout.contains("the token may not read sys/auth"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("47 written"), "{}", run.stdout);
}

#[test]
fn status_and_doctor_notice_a_vault_that_forgot_everything() {
    if !doctor_tools() {
        return;
    }
    let sb = sandbox_with_cluster(None);
    let bao = OpenBao::start();
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    let env = |b: &OpenBao| {
        [
            ("VAULT_ADDR", b.addr.clone()),
            ("VAULT_TOKEN", b.token.clone()),
        ]
    };
    let run = |args: &[&str], b: &OpenBao| {
        let e = env(b);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sb.xtask_env(args, &e)
    };
    let status = run(&["secrets", "status"], &bao).ok();
    assert_contains(&status.stdout, "secret/ holds all 47 fixtures");
    let doctor = run(&["secrets", "doctor"], &bao).ok();
    assert!(
        doctor
            .stdout
            .contains("ok    vault      secret/ holds all 47 fixtures"),
        "{}",
        doctor.stdout
    );
    assert_contains(&doctor.stdout, "ok    eso access as ESO");

    // Some entries gone (deleted by hand, or a partial restore).
    bao_ok(&bao, &["kv", "metadata", "delete", "secret/redis-password"]);
    bao_ok(&bao, &["kv", "metadata", "delete", "secret/graph-db-url"]);
    let doctor = run(&["secrets", "doctor"], &bao).code(1);
    assert!(
        doctor.stdout.contains(
            "FAIL  vault      secret/ holds 45 of 47 fixtures; missing: graph-db-url, redis-password\n                 fix: cargo xtask secrets seed"
        ),
        "{}",
        doctor.stdout
    );

    // A dev-mode Vault that restarted: reachable, unsealed, and empty.
    drop(bao);
    let restarted = OpenBao::start();
    let status = run(&["secrets", "status"], &restarted).ok();
    assert!(
        status
            .stdout
            .contains("secret/ holds none of the 47 fixtures: it forgot them")
            && status.stdout.contains("Fix: cargo xtask secrets seed"),
        "{}",
        status.stdout
    );
    let j = report(&run(&["secrets", "status", "--output", "json"], &restarted).ok());
    assert_eq!(j["vault"]["fixtures"]["present"], 0);
    assert_eq!(j["vault"]["fixtures"]["fix"], "cargo xtask secrets seed");
    let doctor = run(&["secrets", "doctor"], &restarted).code(1);
    assert!(
        doctor
            .stdout
            .contains("FAIL  vault      secret/ holds none of the 47 fixtures: it forgot them")
            && doctor
                .stdout
                .contains("FAIL  eso access ESO cannot log in to Vault")
            && doctor
                .stdout
                .matches("fix: cargo xtask secrets seed")
                .count()
                == 2,
        "{}",
        doctor.stdout
    );

    // The one command fixes both.
    run(&["secrets", "seed"], &restarted).ok();
    run(&["secrets", "doctor"], &restarted).ok();
}

#[test]
fn doctor_names_the_capabilities_a_read_only_token_lacks() {
    if !doctor_tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster(None);
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    sb.write(
        "reader.hcl",
        "path \"secret/data/*\" { capabilities = [\"read\"] }\n\
         path \"secret/metadata/*\" { capabilities = [\"read\", \"list\"] }\n",
    );
    bao_ok(
        &bao,
        &[
            "policy",
            "write",
            "reader",
            sb.path("reader.hcl").to_str().unwrap(),
        ],
    );
    let token = bao_ok(&bao, &["token", "create", "-policy=reader", "-field=token"]);
    let env = [
        ("VAULT_ADDR", bao.addr.as_str()),
        ("VAULT_TOKEN", token.trim()),
    ];
    let doctor = sb.xtask_env(&["secrets", "doctor"], &env).code(1);
    assert!(doctor.stdout.contains("token valid"), "{}", doctor.stdout);
    assert!(
        doctor.stdout.contains(
            "FAIL  vault      the token lacks create+update on secret/data/agents-runtime-anthropic-api-key (write each \
             secret); update on secret/metadata/agents-runtime-anthropic-api-key (record each secret's checksum): the \
             seed's writes would be refused (403)"
        ),
        "{}",
        doctor.stdout
    );
    assert!(
        doctor
            .stdout
            .contains("warn  vault      the token lacks create+update+sudo on sys/auth/kubernetes"),
        "{}",
        doctor.stdout
    );
    // And the seed does fail as doctor said it would, once it has a write to make.
    bao_ok(
        &bao,
        &["kv", "put", "secret/redis-password", "value=by-hand"],
    );
    let seed = sb.xtask_env(&["secrets", "seed", "--force"], &env).code(1);
    assert!(seed.stderr.contains("permission denied"), "{}", seed.stderr);
}

#[test]
fn doctor_reports_external_secrets_that_are_not_ready_with_esos_reason() {
    if !doctor_tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster(None);
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    let es = |ns: &str, name: &str, store: &str, ready: bool, reason: &str, message: &str| {
        json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
               "metadata": {"namespace": ns, "name": name},
               "spec": {"secretStoreRef": {"kind": "ClusterSecretStore", "name": store}},
               "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                          "reason": reason, "message": message}]}})
    };
    let ready_store = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Valid", "message": "store validated"}]}});
    sb.scenario(json!({"kubectl": {
        "context": "k3d-eso",
        "crds": ["externalsecrets.external-secrets.io"],
        "clustersecretstore": ready_store,
        "externalsecrets": [{"apiVersion": "v1", "kind": "List", "items": [
            es("ameide", "graph-db", "ameide-vault", true, "SecretSynced", "secret synced"),
            es("ameide", "keycloak-admin", "ameide-vault", false, "SecretSyncedError",
               "could not get secret data from provider: permission denied"),
            es("ameide", "threads-db", "ameide-vault", false, "SecretSyncedError",
               "could not get secret data from provider: Secret does not exist"),
            es("other", "elsewhere", "another-store", false, "SecretSyncedError", "not ours"),
        ]}],
    }}));
    let env = bao.env();
    let doctor = sb.xtask_env(&["secrets", "doctor"], &env).code(1);
    let out = &doctor.stdout;
    assert!(
        out.contains(
            "FAIL  eso        ExternalSecret ameide/keycloak-admin not Ready: SecretSyncedError: could not get secret \
             data from provider: permission denied\n                 fix: cargo xtask secrets seed (ESO's policy and role)"
        ),
        "{out}"
    );
    assert!(
        out.contains("ExternalSecret ameide/threads-db not Ready: SecretSyncedError")
            && out.contains("fix: cargo xtask secrets check --live names the key"),
        "{out}"
    );
    assert!(
        !out.contains("other/elsewhere"),
        "another store's is not ours:\n{out}"
    );
    assert_contains(&doctor.stderr, "2 checks failed");
}

#[test]
fn without_a_kubeconfig_the_seed_starts_no_kubectl() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster(None);
    let env = bao.env();
    let kubectl_calls = |sb: &Sandbox| sb.calls().iter().filter(|c| c.tool == "kubectl").count();

    // No ~/.kube/config and no KUBECONFIG: real kubectl has no context, so
    // the seed does not ask it (the fake would have answered one).
    std::fs::remove_file(sb.home.join(".kube/config")).unwrap();
    let run = sb.xtask_env(&["secrets", "seed", "--dry-run"], &env).ok();
    assert!(
        run.stdout
            .contains("skipped    config auth/kubernetes/config"),
        "{}",
        run.stdout
    );
    assert_eq!(kubectl_calls(&sb), 0, "{:?}", sb.calls());

    // A kubeconfig named by KUBECONFIG (a list; the first one missing): kubectl is asked.
    std::fs::write(sb.home.join("kc"), "# read by the fake's scenario\n").unwrap();
    let list = format!(
        "{}:{}",
        sb.home.join("missing").display(),
        sb.home.join("kc").display()
    );
    let mut env2 = env.to_vec();
    env2.push(("KUBECONFIG", list.as_str()));
    let run = sb.xtask_env(&["secrets", "seed", "--dry-run"], &env2).ok();
    assert!(
        run.stdout
            .contains("ensure     config auth/kubernetes/config"),
        "{}",
        run.stdout
    );
    assert!(kubectl_calls(&sb) > 0, "{:?}", sb.calls());
}

/// Vault answered 403: the call was refused by policy or by the role.
fn assert_forbidden<T: std::fmt::Debug>(
    result: &Result<T, vaultrs::error::ClientError>,
    what: &str,
) {
    assert!(
        matches!(
            result,
            Err(vaultrs::error::ClientError::APIError { code: 403, .. })
        ),
        "{what}: {result:?}"
    );
}
