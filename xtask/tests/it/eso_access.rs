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

/// A token for service account `ns/name`, minted by the cluster stand-in
/// through the real `kubectl create token` (the TokenRequest ESO's
/// controller makes); the API server reviews it as its own.
fn mint(sb: &Sandbox, ns: &str, name: &str) -> String {
    let kubectl = crate::support::find_on(&crate::support::tools_path(), "kubectl").unwrap();
    let out =
        sb.command_of(&kubectl, &["create", "token", name, "--namespace", ns]).output().unwrap();
    assert!(out.status.success(), "kubectl create token: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The TokenReviews the API server answered, from its request log.
fn reviews(sb: &Sandbox) -> usize {
    sb.cluster()
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews"))
        .count()
}

/// ClusterRoleBinding of service account `ns/name` to
/// `system:auth-delegator`: it may review other tokens.
fn auth_delegator(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
           "metadata": {"name": format!("{name}-auth-delegator")},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
           "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]})
}

/// A JWT with an RS256 header and a signature nobody made: OpenBao
/// without `pem_keys` leaves checking it to the TokenReview.
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

/// The kube context's credential, which `kubectl config view --raw` prints
/// beside the CA the seed wants: it must never show.
const KUBE_CANARY: &str = "kube-credential-canary-5d41402a";

/// A sandbox whose kube context reaches the cluster stand-in (ESO
/// installed, its store Ready) with [`KUBE_CANARY`] as its credential.
fn sandbox_with_cluster() -> Sandbox {
    let sb = Sandbox::new();
    let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Valid",
                                                  "message": "store validated"}]}});
    sb.cluster().knobs(json!({"admin_tokens": [KUBE_CANARY]}));
    sb.scenario(
        json!({"kubectl": {"context": "k3d-eso", "crds": ["externalsecrets.external-secrets.io"],
                                   "clustersecretstore": ready, "user": {"token": KUBE_CANARY}}}),
    );
    sb
}

/// `bao read -format=json <path>`'s `data`.
fn bao_read(bao: &OpenBao, path: &str) -> Value {
    let out = bao.bao(&["read", "-format=json", path]);
    assert!(out.status.success(), "bao read {path}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["data"].clone()
}

fn bao_ok(bao: &OpenBao, args: &[&str]) -> String {
    let out = bao.bao(args);
    assert!(out.status.success(), "bao {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_write(call: &str) -> bool {
    ["POST ", "PUT ", "PATCH ", "DELETE "].iter().any(|v| call.starts_with(v))
}

#[test]
fn a_seed_sets_up_esos_access_and_a_second_seed_writes_nothing() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster();

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
    assert!(!bao_ok(&bao, &["auth", "list"]).contains("kubernetes/"), "a dry run enables nothing");

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
    assert_eq!(config["kubernetes_host"], sb.cluster().url.as_str(), "{config}");
    assert!(config["kubernetes_ca_cert"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert_eq!(config["token_reviewer_jwt_set"], false, "Vault's own reviewer");
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
    assert_eq!(role["bound_service_account_names"], json!(["external-secrets"]));
    assert_eq!(role["bound_service_account_namespaces"], json!(["external-secrets"]));
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
    let seals = calls.iter().filter(|c| c.contains("sys/seal-status")).count();
    assert_eq!(seals, 1, "{calls:#?}");

    // Someone loosens the policy by hand: the next seed puts it back, and only it.
    std::fs::write(
        sb.path("loose.hcl"),
        "path \"secret/*\" { capabilities = [\"create\", \"read\", \"update\"] }\n",
    )
    .unwrap();
    bao_ok(&bao, &["policy", "write", "external-secrets", sb.path("loose.hcl").to_str().unwrap()]);
    seen.lock().unwrap().clear();
    let fixed = report(&vault_seed(&sb, &proxy.addr(), &bao.token, &[]).ok());
    assert_eq!(fixed["eso_access"]["applied"]["written"], json!(["policy external-secrets"]));
    let calls = seen.lock().unwrap().clone();
    let writes: Vec<&String> = calls.iter().filter(|c| is_write(c)).collect();
    assert_eq!(writes, ["POST /v1/sys/policies/acl/external-secrets"], "{calls:#?}");
}

#[test]
fn names_come_from_the_values_not_the_code() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster();
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
        &sb.read(layer).replace("    role: external-secrets\n", "    role: eso-reader\n"),
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
    let sb = sandbox_with_cluster();
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    bao_ok(&bao, &["secrets", "enable", "-path=other", "kv-v2"]);
    bao_ok(&bao, &["kv", "put", "other/elsewhere", "value=not-for-eso"]);
    let anon = vault_client(&bao.addr, "");

    // Vault runs outside the cluster: ESO's own token is the reviewer, so
    // without system:auth-delegator every login is refused at review.
    let jwt = mint(&sb, "external-secrets", "external-secrets");
    let login =
        block_on(vaultrs::auth::kubernetes::login(&anon, "kubernetes", "external-secrets", &jwt));
    assert_forbidden(&login, "a login whose reviewer may not review");
    assert_eq!(reviews(&sb), 1, "OpenBao asked the API server");
    sb.cluster().put(&[auth_delegator("external-secrets", "external-secrets")]);
    let auth =
        block_on(vaultrs::auth::kubernetes::login(&anon, "kubernetes", "external-secrets", &jwt))
            .expect("ESO's service account logs in");
    let mut policies = auth.policies.clone();
    policies.sort();
    assert_eq!(policies, ["default", "external-secrets"]);
    assert_eq!(auth.lease_duration, 900);
    assert_eq!(reviews(&sb), 2);

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
    sb.cluster().put(&[crate::cluster::service_account("ameide", "external-secrets")]);
    for (ns, name) in [("external-secrets", "default"), ("ameide", "external-secrets")] {
        let other = mint(&sb, ns, name);
        let login = block_on(vaultrs::auth::kubernetes::login(
            &anon,
            "kubernetes",
            "external-secrets",
            &other,
        ));
        assert_forbidden(&login, &format!("a login as {ns}/{name}"));
    }
    // A token the API server does not know (forged claims) is refused at review.
    let before = reviews(&sb);
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
    assert_eq!(reviews(&sb), before + 1, "the forged token was reviewed");
}

#[test]
fn check_as_eso_reads_every_key_and_fails_on_a_policy_that_writes() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster();
    let env = bao.env();
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    // ESO's own token reviews itself (OpenBao runs outside the cluster).
    sb.cluster().put(&[auth_delegator("external-secrets", "external-secrets")]);
    let check = |extra: &[&str]| {
        let mut args = vec!["secrets", "check", "--live", "--as-eso"];
        args.extend_from_slice(extra);
        sb.xtask_env(&args, &env)
    };
    let ok = check(&[]).ok();
    assert_contains(&ok.stdout, "as ESO (logged in as external-secrets/external-secrets through auth/kubernetes in kube context k3d-eso, role external-secrets, policies default, external-secrets): 44 of 44 keys read, write refused");
    let j = report(&check(&["--output", "json"]).ok());
    assert_eq!(j["as_eso"]["write_refused"], true);
    assert_eq!(j["as_eso"]["read"].as_array().unwrap().len(), 44);

    // A policy that lets ESO write, and denies it one key.
    sb.write(
        "wide.hcl",
        "path \"secret/data/*\" { capabilities = [\"create\", \"read\", \"update\"] }\n\
         path \"secret/data/redis-password\" { capabilities = [\"deny\"] }\n",
    );
    bao_ok(&bao, &["policy", "write", "external-secrets", sb.path("wide.hcl").to_str().unwrap()]);
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
        bad.stderr.contains("1 keys ESO cannot read (redis-password)")
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
        serde_json::from_str::<Value>(&accessors).unwrap().as_array().unwrap().len(),
        1,
        "only the root token: {accessors}"
    );

    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    check(&[]).ok();

    // Without the role, ESO cannot log in, and the check says how to fix it.
    bao_ok(&bao, &["delete", "auth/kubernetes/role/external-secrets"]);
    let gone = check(&[]).code(1);
    assert!(
        gone.stderr.contains("auth/kubernetes/role/external-secrets does not exist")
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
    let sb = sandbox_with_cluster();
    sb.write(
        "seeder.hcl",
        "path \"secret/data/*\" { capabilities = [\"create\", \"read\", \"update\"] }\n\
         path \"secret/metadata/*\" { capabilities = [\"create\", \"read\", \"update\", \"patch\", \"list\"] }\n",
    );
    bao_ok(&bao, &["policy", "write", "seeder", sb.path("seeder.hcl").to_str().unwrap()]);
    let token = bao_ok(&bao, &["token", "create", "-policy=seeder", "-field=token"]);
    let run = sb
        .xtask_env(
            &["secrets", "seed"],
            &[("VAULT_ADDR", bao.addr.as_str()), ("VAULT_TOKEN", token.trim())],
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
    let sb = sandbox_with_cluster();
    let bao = OpenBao::start();
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    // ESO's own token reviews itself (OpenBao runs outside the cluster).
    sb.cluster().put(&[auth_delegator("external-secrets", "external-secrets")]);
    let env = |b: &OpenBao| [("VAULT_ADDR", b.addr.clone()), ("VAULT_TOKEN", b.token.clone())];
    let run = |args: &[&str], b: &OpenBao| {
        let e = env(b);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        sb.xtask_env(args, &e)
    };
    let status = run(&["secrets", "status"], &bao).ok();
    assert_contains(&status.stdout, "secret/ holds all 47 fixtures");
    let doctor = run(&["secrets", "doctor"], &bao).ok();
    assert!(
        doctor.stdout.contains("ok    vault      secret/ holds all 47 fixtures"),
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
        status.stdout.contains("secret/ holds none of the 47 fixtures: it forgot them")
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
            && doctor.stdout.contains("FAIL  eso access ESO cannot log in to Vault")
            && doctor.stdout.matches("fix: cargo xtask secrets seed").count() == 2,
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
    let sb = sandbox_with_cluster();
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    sb.write(
        "reader.hcl",
        "path \"secret/data/*\" { capabilities = [\"read\"] }\n\
         path \"secret/metadata/*\" { capabilities = [\"read\", \"list\"] }\n",
    );
    bao_ok(&bao, &["policy", "write", "reader", sb.path("reader.hcl").to_str().unwrap()]);
    let token = bao_ok(&bao, &["token", "create", "-policy=reader", "-field=token"]);
    let env = [("VAULT_ADDR", bao.addr.as_str()), ("VAULT_TOKEN", token.trim())];
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
    bao_ok(&bao, &["kv", "put", "secret/redis-password", "value=by-hand"]);
    let seed = sb.xtask_env(&["secrets", "seed", "--force"], &env).code(1);
    assert!(seed.stderr.contains("permission denied"), "{}", seed.stderr);
}

#[test]
fn doctor_reports_external_secrets_that_are_not_ready_with_esos_reason() {
    if !doctor_tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster();
    vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    // ESO's own token reviews itself (OpenBao runs outside the cluster).
    sb.cluster().put(&[auth_delegator("external-secrets", "external-secrets")]);
    // As ESO leaves them: a generic condition, the cause in a Warning
    // Event on the ExternalSecret. Frozen, so the stand-in's ESO keeps them.
    let es = |ns: &str, name: &str, store: &str, ready: bool| {
        json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
               "metadata": {"namespace": ns, "name": name},
               "spec": {"refreshInterval": "1h", "secretStoreRef": {"kind": "ClusterSecretStore", "name": store},
                        "target": {"name": name}, "data": [{"secretKey": "value", "remoteRef": {"key": name}}]},
               "status": {"refreshTime": "2026-12-03T08:00:00Z", "syncedResourceVersion": "current",
                          "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                                          "reason": if ready { "SecretSynced" } else { "SecretSyncedError" },
                                          "message": if ready { "secret synced" } else { "could not get secret data from provider" }}]}})
    };
    let event = |ns: &str, name: &str, message: &str| {
        json!({"apiVersion": "v1", "kind": "Event", "metadata": {"namespace": ns, "name": format!("{name}.17e2")},
               "involvedObject": {"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
                                  "namespace": ns, "name": name},
               "type": "Warning", "reason": "UpdateFailed", "message": message, "count": 3,
               "firstTimestamp": "2026-12-03T08:00:00Z", "lastTimestamp": "2026-12-03T08:05:00Z",
               "source": {"component": "external-secrets"}})
    };
    sb.cluster().knobs(json!({"eso": {"running": true, "frozen": [
        "ameide/graph-db", "ameide/keycloak-admin", "ameide/threads-db", "other/elsewhere"]}}));
    sb.cluster().put(&[
        es("ameide", "graph-db", "ameide-vault", true),
        es("ameide", "keycloak-admin", "ameide-vault", false),
        event("ameide", "keycloak-admin",
              "error processing spec.data[0] (key: keycloak-admin), err: Error making API request.\n\nCode: 403. Errors:\n\n* permission denied"),
        es("ameide", "threads-db", "ameide-vault", false),
        event("ameide", "threads-db",
              "error processing spec.data[0] (key: threads-db), err: Secret does not exist"),
        es("other", "elsewhere", "another-store", false),
    ]);
    let env = bao.env();
    let doctor = sb.xtask_env(&["secrets", "doctor"], &env).code(1);
    let out = &doctor.stdout;
    // ESO's generic condition, then the cause from its newest Warning Event,
    // and for Vault's `permission denied` the checks that explain it.
    assert!(
        out.contains(
            "FAIL  eso        ExternalSecret ameide/keycloak-admin not Ready: SecretSyncedError: could not get secret \
             data from provider; ESO's last warning (UpdateFailed): error processing spec.data[0] (key: keycloak-admin), \
             err: Error making API request. Code: 403. Errors: * permission denied\n                 fix: "
        ),
        "{out}"
    );
    let fix = out.lines().skip_while(|l| !l.contains("ameide/keycloak-admin")).nth(1).unwrap();
    for needle in [
        "auth/kubernetes/role/external-secrets",
        "external-secrets/external-secrets",
        "system:auth-delegator",
    ] {
        assert_contains(fix, needle);
    }
    assert!(
        out.contains("ExternalSecret ameide/threads-db not Ready: SecretSyncedError")
            && out.contains("fix: cargo xtask secrets check --live names the key"),
        "{out}"
    );
    assert!(!out.contains("other/elsewhere"), "another store's is not ours:\n{out}");
    assert_contains(&doctor.stderr, "2 checks failed");
}

#[test]
fn without_a_kubeconfig_the_seed_starts_no_kubectl() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster();
    let env = bao.env();
    let kubectl_calls = |sb: &Sandbox| sb.calls().iter().filter(|c| c.tool == "kubectl").count();

    // No ~/.kube/config and no KUBECONFIG: kubectl has no context, so the
    // seed does not ask it.
    let config = std::fs::read_to_string(sb.home.join(".kube/config")).unwrap();
    std::fs::remove_file(sb.home.join(".kube/config")).unwrap();
    let run = sb.xtask_env(&["secrets", "seed", "--dry-run"], &env).ok();
    assert!(run.stdout.contains("skipped    config auth/kubernetes/config"), "{}", run.stdout);
    assert_eq!(kubectl_calls(&sb), 0, "{:?}", sb.calls());

    // A kubeconfig named by KUBECONFIG (a list; the first one missing): kubectl is asked.
    std::fs::write(sb.home.join("kc"), config).unwrap();
    let list = format!("{}:{}", sb.home.join("missing").display(), sb.home.join("kc").display());
    let mut env2 = env.to_vec();
    env2.push(("KUBECONFIG", list.as_str()));
    let run = sb.xtask_env(&["secrets", "seed", "--dry-run"], &env2).ok();
    assert!(run.stdout.contains("ensure     config auth/kubernetes/config"), "{}", run.stdout);
    assert!(kubectl_calls(&sb) > 0, "{:?}", sb.calls());
}

/// Vault answered 403: the call was refused by policy or by the role.
fn assert_forbidden<T: std::fmt::Debug>(
    result: &Result<T, vaultrs::error::ClientError>,
    what: &str,
) {
    assert!(
        matches!(result, Err(vaultrs::error::ClientError::APIError { code: 403, .. })),
        "{what}: {result:?}"
    );
}

#[test]
fn a_relative_certificate_authority_is_read_from_the_kubeconfigs_folder() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster();
    // kubectl resolves a relative `certificate-authority` from the
    // kubeconfig's folder, not from where the seed runs.
    let ca = std::fs::read_to_string(&sb.cluster().ca_file).unwrap();
    std::fs::write(sb.home.join(".kube/cluster-ca.pem"), &ca).unwrap();
    let path = sb.home.join(".kube/config");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["clusters"][0]["cluster"]["certificate-authority"] = json!("cluster-ca.pem");
    std::fs::write(&path, config.to_string()).unwrap();

    let seeded = vault_seed(&sb, &bao.addr, &bao.token, &[]).ok();
    assert!(!seeded.all().contains("not set up"), "ESO's access is set up: {}", seeded.all());
    let written = bao_read(&bao, "auth/kubernetes/config");
    assert_eq!(written["kubernetes_ca_cert"].as_str().unwrap().trim(), ca.trim());
    assert_eq!(written["kubernetes_host"], sb.cluster().url.as_str());
}

#[test]
fn the_seed_names_esos_service_account_when_the_cluster_lacks_it() {
    if !tools() {
        return;
    }
    let bao = OpenBao::start();
    let sb = sandbox_with_cluster();
    let note = "service account external-secrets/external-secrets is not in the cluster";
    sb.cluster().delete("v1", "ServiceAccount", Some("external-secrets"), "external-secrets");
    let run = sb.xtask_env(&["secrets", "seed", "--provider", "vault"], &bao.env()).ok();
    assert_contains(&run.stdout, note);
    assert_contains(
        &run.stdout,
        "set serviceAccount.name and serviceAccount.namespace in \
         infra/kubernetes/charts/platform/vault-secret-store/values.yaml, and seed again",
    );

    // ESO installed under another name: following the advice binds the
    // role to it, and the note goes.
    sb.cluster()
        .put(&[crate::cluster::service_account("foundation", "foundation-external-secrets")]);
    let values = "infra/kubernetes/charts/platform/vault-secret-store/values.yaml";
    let text = sb.read(values).replace(
        "serviceAccount:\n  name: external-secrets\n  namespace: external-secrets\n",
        "serviceAccount:\n  name: foundation-external-secrets\n  namespace: foundation\n",
    );
    assert!(text.contains("foundation-external-secrets"));
    sb.write(values, &text);
    let run = sb.xtask_env(&["secrets", "seed", "--provider", "vault"], &bao.env()).ok();
    assert!(!run.stdout.contains("is not in the cluster"), "{}", run.stdout);
    let role = bao_read(&bao, "auth/kubernetes/role/external-secrets");
    assert_eq!(role["bound_service_account_names"], json!(["foundation-external-secrets"]));
    assert_eq!(role["bound_service_account_namespaces"], json!(["foundation"]));
}
