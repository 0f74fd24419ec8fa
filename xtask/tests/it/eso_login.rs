//! `check --live --as-eso` and `doctor` log in as ESO does, against real
//! OpenBao and the cluster stand-in: a TokenRequest for ESO's service
//! account through the real kubectl, OpenBao's kubernetes login, and its
//! TokenReview at the stand-in (allowed only to a reviewer bound to
//! `system:auth-delegator`). Every refused login is named with its fix, and
//! each test follows that fix to a passing run. Without a cluster the check
//! falls back to the policy alone and says so. No token shows anywhere.
//!
//! The seed runs OpenBao outside the cluster (`bao server -dev`): its auth
//! config is the kube context's API server and CA, and ESO's own token is
//! the reviewer of itself.

use serde_json::{json, Value};

use crate::support::{assert_contains, json as report, vault_seed, OpenBao, Run, Sandbox};

fn tools() -> bool {
    crate::support::require_tools(&["bao", "kubectl"])
}

/// For tests that run `doctor`, which also checks helm and helmfile.
fn doctor_tools() -> bool {
    crate::support::require_tools(&["bao", "kubectl", "helm", "helmfile"])
}

/// A sandbox whose kube context `k3d-eso` reaches the cluster stand-in
/// (ESO installed, its store Ready, its service account there).
fn sandbox_with_cluster() -> Sandbox {
    let sb = Sandbox::new();
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Valid",
                                                  "message": "store validated"}]}});
    sb.scenario(
        json!({"kubectl": {"context": "k3d-eso", "crds": ["externalsecrets.external-secrets.io"],
                                   "clustersecretstore": ready}}),
    );
    sb
}

/// ClusterRoleBinding of service account `ns/name` to `system:auth-delegator`.
fn auth_delegator(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": format!("{name}-auth-delegator")},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
           "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})
}

fn bao_ok(bao: &OpenBao, args: &[&str]) -> String {
    let out = bao.bao(args);
    assert!(out.status.success(), "bao {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `secrets check --live --as-eso` against `bao`, with `extra` flags.
fn check(sb: &Sandbox, bao: &OpenBao, extra: &[&str]) -> Run {
    let mut args = vec!["secrets", "check", "--live", "--as-eso"];
    args.extend_from_slice(extra);
    sb.xtask_env(&args, &bao.env())
}

/// A seeded OpenBao and a sandbox on the stand-in, ESO's service account
/// bound to `system:auth-delegator` when `bound`.
fn seeded(bound: bool) -> (OpenBao, Sandbox) {
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster();
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    if bound {
        sb.cluster().put(&[auth_delegator("external-secrets", "external-secrets")]);
    }
    (bao, sb)
}

/// The line a passing login prints.
const LOGGED_IN: &str = "as ESO (logged in as external-secrets/external-secrets through auth/kubernetes in kube \
                         context k3d-eso, role external-secrets, policies default, external-secrets): 44 of 44 keys \
                         read, write refused";

/// The command between the backticks that follow `Fix: ` in `text`.
fn fix_command(text: &str) -> Vec<String> {
    let after =
        text.split_once("Fix: `").unwrap_or_else(|| panic!("no `Fix: ` command in:\n{text}")).1;
    let command = after.split_once('`').unwrap().0;
    command.split_whitespace().map(String::from).collect()
}

/// Runs `kubectl <args>` in the sandbox as a person following the advice
/// would (`args` may start with `kubectl`).
fn run_kubectl(sb: &Sandbox, args: &[String]) {
    let kubectl = crate::support::find_on(&crate::support::tools_path(), "kubectl").unwrap();
    let args: Vec<&str> = args.iter().map(String::as_str).skip_while(|a| *a == "kubectl").collect();
    let out = sb.command_of(&kubectl, &args).output().unwrap();
    assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The stand-in's request log: how many TokenRequests and TokenReviews.
fn token_calls(sb: &Sandbox) -> (usize, usize) {
    let log = sb.cluster().requests();
    let count = |p: &str| log.iter().filter(|r| r.starts_with(p)).count();
    (
        count("POST /api/v1/namespaces/external-secrets/serviceaccounts/external-secrets/token"),
        count("POST /apis/authentication.k8s.io/v1/tokenreviews"),
    )
}

#[test]
fn a_login_through_the_cluster_reads_every_key_and_revokes_its_token() {
    if !tools() {
        return;
    }
    let (bao, sb) = seeded(true);
    let run = check(&sb, &bao, &[]).ok();
    assert_contains(&run.stdout, LOGGED_IN);
    assert_eq!(token_calls(&sb), (1, 1), "one TokenRequest, one TokenReview");
    let j = report(&check(&sb, &bao, &["--output", "json"]).ok());
    let a = &j["as_eso"];
    assert_eq!(a["method"], "login", "{a}");
    assert_eq!(a["service_account"], "external-secrets/external-secrets");
    assert_eq!(a["kube_context"], "k3d-eso");
    assert_eq!(a["login_refused"], Value::Null);
    assert_eq!(a["read"].as_array().unwrap().len(), 44);
    assert_eq!(a["write_refused"], true);
    // ESO's Vault tokens were revoked: only the root token is left.
    let accessors: Value =
        serde_json::from_str(&bao_ok(&bao, &["list", "-format=json", "auth/token/accessors"]))
            .unwrap();
    assert_eq!(accessors.as_array().unwrap().len(), 1, "{accessors}");
}

#[test]
fn an_unbound_reviewer_is_named_with_the_binding_to_create_and_doctor_agrees() {
    if !doctor_tools() {
        return;
    }
    let (bao, sb) = seeded(false);
    let run = check(&sb, &bao, &[]).code(1);
    let cause = "the reviewer, service account external-secrets/external-secrets (Vault runs outside the cluster \
                 with no reviewer JWT, so ESO's own token is the reviewer), has no ClusterRoleBinding to \
                 system:auth-delegator, so the API server refuses Vault's TokenReview of ESO's token and Vault \
                 answers permission denied";
    let fix = "`kubectl create clusterrolebinding external-secrets-external-secrets-auth-delegator \
               --clusterrole=system:auth-delegator --serviceaccount=external-secrets:external-secrets`";
    assert_contains(
        &run.stdout,
        &format!(
            "as ESO: the login as external-secrets/external-secrets through auth/kubernetes (role \
             external-secrets) fails: {cause}"
        ),
    );
    assert_contains(
        &run.stderr,
        &format!("error: ESO cannot log in to Vault: {cause}. Fix: {fix}"),
    );
    assert!(!run.all().contains("keys read"), "nothing was read:\n{}", run.all());
    let j = report(&check(&sb, &bao, &["--output", "json"]).code(1));
    assert_eq!(j["as_eso"]["method"], "login");
    assert_eq!(j["as_eso"]["login_refused"]["cause"], cause);

    let doctor = sb.xtask_env(&["secrets", "doctor"], &bao.env()).code(1);
    assert_contains(
        &doctor.stdout,
        &format!(
            "FAIL  eso access as ESO: the login as external-secrets/external-secrets through auth/kubernetes \
             (role external-secrets) fails: {cause}\n                 fix: {fix}"
        ),
    );

    // Following the advice: the command as printed, then both pass.
    run_kubectl(&sb, &fix_command(&run.stderr));
    assert_contains(&check(&sb, &bao, &[]).ok().stdout, LOGGED_IN);
    let doctor = sb.xtask_env(&["secrets", "doctor"], &bao.env()).ok();
    assert_contains(&doctor.stdout, &format!("ok    eso access {LOGGED_IN}"));
}

#[test]
fn a_token_that_may_not_read_esos_role_says_what_it_could_not_check() {
    if !tools() {
        return;
    }
    let (bao, sb) = seeded(false);
    // The developer policy of docs/secrets.md: the secrets, not ESO's access.
    sb.write(
        "developer.hcl",
        "path \"secret/data/*\" { capabilities = [\"create\", \"read\", \"update\"] }\n\
         path \"secret/metadata/*\" { capabilities = [\"create\", \"read\", \"update\", \"patch\", \"list\"] }\n\
         path \"secret/metadata/\" { capabilities = [\"list\"] }\n",
    );
    let policy = sb.path("developer.hcl");
    bao_ok(&bao, &["policy", "write", "developer", policy.to_str().unwrap()]);
    let token = bao_ok(&bao, &["token", "create", "-policy=developer", "-field=token"]);
    let env = [("VAULT_ADDR", bao.addr.as_str()), ("VAULT_TOKEN", token.trim())];
    let run = sb.xtask_env(&["secrets", "check", "--live", "--as-eso"], &env).code(1);
    assert_contains(
        &run.stderr,
        "error: ESO cannot log in to Vault: Vault refused the login (permission denied); not checked: the token \
         may not read auth/kubernetes/role/external-secrets; the token may not read auth/kubernetes/config. Fix: \
         run this with a token that may read ESO's role and auth config (the dev chart's root token) to have the \
         cause named",
    );
    // With the root token, the cause.
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "error: ESO cannot log in to Vault: the reviewer, service account external-secrets/external-secrets",
    );
}

#[test]
fn a_missing_service_account_is_named_and_following_the_fix_logs_in() {
    if !tools() {
        return;
    }
    let (bao, sb) = seeded(true);
    sb.cluster().delete("v1", "ServiceAccount", Some("external-secrets"), "external-secrets");
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "error: ESO cannot log in to Vault: service account external-secrets/external-secrets is not in the \
         cluster of kube context k3d-eso (kubectl: error: failed to create token: serviceaccounts \
         \"external-secrets\" not found), so ESO's controller gets no token to log in with. Fix: if ESO runs \
         under another service account, find it (`kubectl get serviceaccounts --all-namespaces | grep \
         external-secrets`), set serviceAccount.name and serviceAccount.namespace in \
         infra/kubernetes/charts/platform/vault-secret-store/values.yaml, and run `cargo xtask secrets seed`",
    );

    // ESO runs as foundation/foundation-external-secrets: the values name
    // it, the seed binds the role to it, and it reviews itself once bound.
    sb.cluster()
        .put(&[crate::cluster::service_account("foundation", "foundation-external-secrets")]);
    let values = "infra/kubernetes/charts/platform/vault-secret-store/values.yaml";
    let text = sb.read(values).replace(
        "serviceAccount:\n  name: external-secrets\n  namespace: external-secrets\n",
        "serviceAccount:\n  name: foundation-external-secrets\n  namespace: foundation\n",
    );
    assert!(text.contains("foundation-external-secrets"));
    sb.write(values, &text);
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "the reviewer, service account foundation/foundation-external-secrets (",
    );
    run_kubectl(&sb, &fix_command(&run.stderr));
    let run = check(&sb, &bao, &[]).ok();
    assert_contains(
        &run.stdout,
        "as ESO (logged in as foundation/foundation-external-secrets through auth/kubernetes",
    );
}

#[test]
fn a_role_bound_elsewhere_is_named_and_the_seed_binds_it_back() {
    if !tools() {
        return;
    }
    let (bao, sb) = seeded(true);
    bao_ok(
        &bao,
        &[
            "write",
            "auth/kubernetes/role/external-secrets",
            "bound_service_account_names=eso-elsewhere",
        ],
    );
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "error: ESO cannot log in to Vault: role external-secrets binds service account names \
         [\"eso-elsewhere\"] in namespaces [\"external-secrets\"], not external-secrets/external-secrets, the \
         service account ClusterSecretStore/ameide-vault logs in as (Vault: service account name not \
         authorized). Fix: `cargo xtask secrets seed` binds the role to external-secrets/external-secrets \
         again, from the store's values",
    );
    bao_ok(
        &bao,
        &[
            "write",
            "auth/kubernetes/role/external-secrets",
            "bound_service_account_names=external-secrets",
            "bound_service_account_namespaces=ameide",
        ],
    );
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "role external-secrets binds service account names [\"external-secrets\"] in namespaces [\"ameide\"], \
         not external-secrets/external-secrets, the service account ClusterSecretStore/ameide-vault logs in as \
         (Vault: namespace not authorized)",
    );
    sb.xtask_env(&["secrets", "seed"], &bao.env()).ok();
    assert_contains(&check(&sb, &bao, &[]).ok().stdout, LOGGED_IN);

    // Without the role at all.
    bao_ok(&bao, &["delete", "auth/kubernetes/role/external-secrets"]);
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "error: ESO cannot log in to Vault: auth/kubernetes/role/external-secrets does not exist: ESO cannot \
         log in to Vault (ClusterSecretStore/ameide-vault names role external-secrets; Vault: invalid role name \
         \"external-secrets\"). Fix: `cargo xtask secrets seed` sets up ESO's access",
    );
    sb.xtask_env(&["secrets", "seed"], &bao.env()).ok();
    check(&sb, &bao, &[]).ok();

    // Without the auth method: Vault answers the login with permission denied.
    bao_ok(&bao, &["auth", "disable", "kubernetes"]);
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "error: ESO cannot log in to Vault: no auth method is enabled at auth/kubernetes/, where \
         ClusterSecretStore/ameide-vault logs in (Vault answers that login with permission denied). Fix: `cargo \
         xtask secrets seed` sets up ESO's access",
    );
    sb.xtask_env(&["secrets", "seed"], &bao.env()).ok();
    assert_contains(&check(&sb, &bao, &[]).ok().stdout, LOGGED_IN);
}

#[test]
fn an_auth_config_vault_cannot_use_is_named_and_the_seed_writes_it_again() {
    if !tools() {
        return;
    }
    let (bao, sb) = seeded(true);
    let ca = format!("kubernetes_ca_cert=@{}", sb.cluster().ca_file.display());
    let server = sb.cluster().url.clone();
    let fix = "Fix: `cargo xtask secrets seed` writes auth/kubernetes/config for where Vault runs (in a pod: \
               https://kubernetes.default.svc; outside: the kube context's API server and CA)";
    // The right API server with a CA that is not its own. (First: OpenBao
    // keeps its connection to the API server across a config change, so
    // a CA changed after a login would not be used until it reconnects.)
    let other = sb.path("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other"])
        .arg("-keyout")
        .arg(sb.path("other-ca.key"))
        .arg("-out")
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    bao_ok(
        &bao,
        &[
            "write",
            "auth/kubernetes/config",
            &format!("kubernetes_host={server}"),
            &format!("kubernetes_ca_cert=@{}", other.display()),
        ],
    );
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        &format!(
            "error: ESO cannot log in to Vault: the CA in auth/kubernetes/config is not the CA of kube context \
             k3d-eso's API server ({server}): Vault cannot verify the server it sends ESO's token to. {fix}"
        ),
    );
    sb.xtask_env(&["secrets", "seed"], &bao.env()).ok();
    assert_contains(&check(&sb, &bao, &[]).ok().stdout, LOGGED_IN);

    for (host, note) in [
        ("https://127.0.0.1:1", ""),
        ("https://kubernetes.default.svc", " (an in-cluster address, which only pods resolve)"),
    ] {
        bao_ok(&bao, &["write", "auth/kubernetes/config", &format!("kubernetes_host={host}"), &ca]);
        let run = check(&sb, &bao, &[]).code(1);
        assert_contains(
            &run.stderr,
            &format!(
                "error: ESO cannot log in to Vault: auth/kubernetes/config has Vault review ESO's token at \
                 {host}{note}, but Vault runs outside the cluster (the config carries a CA of its own) and kube \
                 context k3d-eso reaches the API server at {server}. {fix}"
            ),
        );
        sb.xtask_env(&["secrets", "seed"], &bao.env()).ok();
        assert_contains(&check(&sb, &bao, &[]).ok().stdout, LOGGED_IN);
    }

    // A reviewer JWT set by hand, of a service account that may not review.
    let kubectl = crate::support::find_on(&crate::support::tools_path(), "kubectl").unwrap();
    let out = sb
        .command_of(&kubectl, &["create", "token", "default", "--namespace", "ameide"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let reviewer = String::from_utf8(out.stdout).unwrap();
    bao_ok(
        &bao,
        &[
            "write",
            "auth/kubernetes/config",
            &format!("kubernetes_host={server}"),
            &ca,
            &format!("token_reviewer_jwt={}", reviewer.trim()),
        ],
    );
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "error: ESO cannot log in to Vault: Vault reviews ESO's token with the token_reviewer_jwt set in \
         auth/kubernetes/config, whose service account Vault does not show: it may lack system:auth-delegator, \
         or the token may have expired. Fix: `cargo xtask secrets seed` writes the config without a reviewer JWT",
    );
    sb.xtask_env(&["secrets", "seed"], &bao.env()).ok();
    assert_contains(&check(&sb, &bao, &[]).ok().stdout, LOGGED_IN);
}

#[test]
fn an_audience_mismatch_is_named_with_both_audiences() {
    if !tools() {
        return;
    }
    let (bao, sb) = seeded(true);
    bao_ok(&bao, &["write", "auth/kubernetes/role/external-secrets", "audience=vault"]);
    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "error: ESO cannot log in to Vault: audience mismatch: role external-secrets wants audience \"vault\", \
         but the token ESO's controller gets carries [\"https://kubernetes.default.svc.cluster.local\"] (Vault: \
         invalid audience (aud) claim: audience claim does not match any expected audience). Fix: make the role \
         accept the token's audience: `bao write auth/kubernetes/role/external-secrets audience=\"\"`",
    );
    // `audience=""` in a shell is an empty value.
    bao_ok(&bao, &["write", "auth/kubernetes/role/external-secrets", "audience="]);
    assert_contains(&check(&sb, &bao, &[]).ok().stdout, LOGGED_IN);
}

#[test]
fn a_kube_context_that_may_not_create_tokens_is_named_and_switching_context_logs_in() {
    if !tools() {
        return;
    }
    let (bao, sb) = seeded(true);
    // A second context whose user is a service account: it may create
    // TokenReviews at most, not tokens.
    sb.cluster().put(&[crate::cluster::service_account("ameide", "reader")]);
    let kubectl = crate::support::find_on(&crate::support::tools_path(), "kubectl").unwrap();
    let out = sb
        .command_of(&kubectl, &["create", "token", "reader", "--namespace", "ameide"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let reader_token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let path = sb.home.join(".kube/config");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["users"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "reader", "user": {"token": reader_token}}));
    config["contexts"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "k3d-reader", "context": {"cluster": "k3d-eso", "user": "reader"}}));
    config["current-context"] = json!("k3d-reader");
    std::fs::write(&path, config.to_string()).unwrap();

    let run = check(&sb, &bao, &[]).code(1);
    assert_contains(
        &run.stderr,
        "error: ESO cannot log in to Vault: kube context k3d-reader may not create a token for service account \
         external-secrets/external-secrets (kubectl: error: failed to create token: serviceaccounts \
         \"external-secrets\" is forbidden: User \"system:serviceaccount:ameide:reader\" cannot create resource \
         \"serviceaccounts/token\" in API group \"\" in the namespace \"external-secrets\"), so the login ESO's \
         controller makes cannot be tried from here. Fix: switch to a kube context whose user may create \
         service-account tokens, such as the cluster's admin context (`kubectl config get-contexts` lists them, \
         `kubectl config use-context <name>` picks one), and run this again",
    );
    assert!(!run.all().contains(&reader_token));
    run_kubectl(&sb, &["config".into(), "use-context".into(), "k3d-eso".into()]);
    assert_contains(&check(&sb, &bao, &[]).ok().stdout, LOGGED_IN);
}

#[test]
fn without_a_cluster_only_the_policy_is_checked_and_it_says_so() {
    if !tools() {
        return;
    }
    let (bao, sb) = seeded(false);
    let config = std::fs::read_to_string(sb.home.join(".kube/config")).unwrap();

    // No kube context at all.
    std::fs::remove_file(sb.home.join(".kube/config")).unwrap();
    let run = check(&sb, &bao, &[]).ok();
    assert_contains(
        &run.stdout,
        "as ESO, policy only: no cluster to log in through (no kube context) — this does not prove ESO's login \
         (role external-secrets, policies default, external-secrets): 44 of 44 keys read, write refused",
    );
    let j = report(&check(&sb, &bao, &["--output", "json"]).ok());
    assert_eq!(j["as_eso"]["method"], "policy-only", "{}", j["as_eso"]);
    assert_eq!(j["as_eso"]["policy_only_reason"], "no kube context");
    let (requests, reviews) = token_calls(&sb);
    assert_eq!((requests, reviews), (0, 0), "no login was tried");

    // A kube context whose API server is gone.
    let mut config: Value = serde_json::from_str(&config).unwrap();
    let gone = format!("https://127.0.0.1:{}", crate::support::free_port());
    config["clusters"][0]["cluster"]["server"] = json!(gone);
    std::fs::write(sb.home.join(".kube/config"), config.to_string()).unwrap();
    let run = check(&sb, &bao, &[]).ok();
    let port = gone.rsplit(':').next().unwrap();
    assert_contains(
        &run.stdout,
        &format!(
            "as ESO, policy only: no cluster to log in through (kubectl cannot reach the cluster of kube context \
             k3d-eso: error: failed to create token: Post \"{gone}/api/v1/namespaces/external-secrets/\
             serviceaccounts/external-secrets/token\": dial tcp 127.0.0.1:{port}: connect: connection refused) — \
             this does not prove ESO's login"
        ),
    );
}

/// Whether `text` holds something shaped like a JWT or a Vault token.
fn holds_a_token(text: &str) -> Option<String> {
    let jwt = regex_lite::Regex::new(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}").unwrap();
    let vault = regex_lite::Regex::new(r"\b[sbhr]\.[A-Za-z0-9]{24}\b").unwrap();
    jwt.find(text).or_else(|| vault.find(text)).map(|m| m.as_str().to_string())
}

#[test]
fn no_token_reaches_any_output_or_kubectls_argv() {
    if !doctor_tools() {
        return;
    }
    let (bao, sb) = seeded(false);
    // The patterns catch the real thing: a JWT from the stand-in, a token from OpenBao.
    let kubectl = crate::support::find_on(&crate::support::tools_path(), "kubectl").unwrap();
    let jwt = sb
        .command_of(&kubectl, &["create", "token", "default", "--namespace", "ameide"])
        .output()
        .unwrap()
        .stdout;
    assert!(holds_a_token(&String::from_utf8_lossy(&jwt)).is_some());
    let vault_token = bao_ok(&bao, &["token", "create", "-field=token", "-ttl=1m"]);
    assert!(holds_a_token(&vault_token).is_some(), "{vault_token}");
    let before = sb.calls().len();
    let mut outputs = Vec::new();
    // Refused (no binding), then logged in; text, JSON, verbose, doctor.
    for bound in [false, true] {
        if bound {
            sb.cluster().put(&[auth_delegator("external-secrets", "external-secrets")]);
        }
        for extra in [&[][..], &["--output", "json"], &["--verbose"]] {
            outputs.push(check(&sb, &bao, extra).all());
        }
        outputs.push(sb.xtask_env(&["secrets", "doctor"], &bao.env()).all());
    }
    assert!(outputs[3].contains("FAIL  eso access as ESO: the login"));
    assert!(outputs[4].contains(LOGGED_IN));
    for text in &outputs {
        assert_eq!(holds_a_token(text), None, "a token in:\n{text}");
        assert!(!text.contains(&bao.token), "the root token in:\n{text}");
    }
    let calls: Vec<_> = sb.calls().into_iter().skip(before).collect();
    let minted: Vec<_> = calls
        .iter()
        .filter(|c| c.tool == "kubectl" && c.argv.iter().any(|a| a == "token"))
        .collect();
    assert_eq!(minted.len(), 8, "a TokenRequest per run: {minted:?}");
    for call in &calls {
        let seen = format!("{} {}", call.argv.join(" "), call.stdin);
        assert_eq!(holds_a_token(&seen), None, "{call:?}");
        assert!(call.env.is_empty(), "{call:?}");
    }
}
