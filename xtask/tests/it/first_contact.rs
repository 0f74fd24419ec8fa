//! A cluster the tool meets for the first time, through the real kubectl
//! and the cluster stand-in: ESO missing or older than 0.16, a namespace
//! that layer 15's ExternalSecrets need and helm would not create. Each is
//! refused before anything changes, in words that say what to run, and
//! what they say to run works.

use serde_json::{json, Value};

use crate::migrate::{
    argvs, cluster, eso, healthy, journal, journal_bytes, local, objects, shell, start, steps,
    sync_ok, to_vault, xt, FLAG, LAYER15_NAMESPACES, MIGRATED,
};
use crate::support::assert_contains;

const INSTALL: &str = "helm repo add external-secrets https://charts.external-secrets.io && helm install \
     external-secrets external-secrets/external-secrets --namespace external-secrets --create-namespace --wait";

const UPGRADE: &str = "helm repo add external-secrets https://charts.external-secrets.io; helm repo update \
     external-secrets && helm upgrade external-secrets external-secrets/external-secrets --namespace \
     external-secrets --wait";

/// A local cluster without ESO: real kubectl answers `error: the server
/// doesn't have a resource type "externalsecrets"`. Preflight, doctor and
/// status say ESO is not installed and how to install it.
#[test]
fn a_cluster_without_eso_is_told_how_to_install_it() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    let objects: Vec<Value> = objects().into_iter().filter(|o| o["kind"] == "Namespace").collect();
    sb.scenario(json!({"kubectl": {"context": "k3d-ameide", "objects": objects}}));
    for crd in [crate::cluster::ESO_CRD, crate::cluster::STORE_CRD] {
        assert!(sb.cluster().object("CustomResourceDefinition", None, crd).is_none());
    }
    // What kubectl itself says.
    let raw = shell(&sb, "kubectl get externalsecrets --all-namespaces").code(1);
    assert_contains(
        &raw.stderr,
        "error: the server doesn't have a resource type \"externalsecrets\"",
    );

    let run = to_vault(&sb, &bao).code(1);
    assert_contains(
        &run.stderr,
        &format!(
            "External Secrets Operator is not installed: the cluster serves no external-secrets.io API. \
             Install it: {INSTALL}\nNothing in the cluster changed;"
        ),
    );
    assert_eq!(journal_bytes(&sb), None);
    assert_eq!(sb.read(FLAG), before);
    assert!(argvs(&sb, "helmfile").is_empty(), "nothing synced");

    let run = xt(&sb, &bao, &["secrets", "doctor"]).code(1);
    assert_contains(
        &run.stdout,
        "FAIL  eso        External Secrets Operator is not installed: the cluster serves no external-secrets.io \
         API\n",
    );
    assert_contains(&run.stdout, &format!("fix: install it: {INSTALL}\n"));
    for wrong in ["check kubectl access", "doesn't have a resource type"] {
        assert!(!run.stdout.contains(wrong), "{wrong}:\n{}", run.stdout);
    }

    let run = xt(&sb, &bao, &["secrets", "status"]).ok();
    assert_contains(
        &run.stdout,
        "external secrets: External Secrets Operator is not installed: the cluster serves no \
         external-secrets.io API (`kubectl get externalsecrets --all-namespaces --output json`: error: the \
         server doesn't have a resource type \"externalsecrets\"); install it: ",
    );
}

/// An ESO older than 0.16 serves only `external-secrets.io/v1beta1`; layer
/// 15's manifests are `v1`. It used to pass preflight and fail later;
/// now preflight and doctor name it with the upgrade.
#[test]
fn an_eso_older_than_0_16_is_told_to_upgrade() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    let mut sc = local(healthy());
    sc["kubectl"]["eso_version"] = json!("v1beta1");
    sb.scenario(sc);
    let versions = shell(&sb, "kubectl api-versions").ok();
    assert_contains(&versions.stdout, "external-secrets.io/v1beta1\n");
    assert!(!versions.stdout.contains("external-secrets.io/v1\n"));

    let run = to_vault(&sb, &bao).code(1);
    assert_contains(
        &run.stderr,
        &format!(
            "External Secrets Operator is older than 0.16: the cluster serves external-secrets.io/v1beta1 but \
             not external-secrets.io/v1, which layer 15's ClusterSecretStore and ExternalSecrets use. Upgrade it \
             to 0.16 or later: {UPGRADE}\nNothing in the cluster changed;"
        ),
    );
    assert_eq!(journal_bytes(&sb), None);
    assert_eq!(sb.read(FLAG), before);

    let run = xt(&sb, &bao, &["secrets", "doctor"]).code(1);
    assert_contains(
        &run.stdout,
        "FAIL  eso        External Secrets Operator is older than 0.16: the cluster serves \
         external-secrets.io/v1beta1 but not external-secrets.io/v1",
    );
    assert_contains(&run.stdout, &format!("fix: upgrade it to 0.16 or later: {UPGRADE}\n"));
}

/// Layer 15 puts ExternalSecrets in namespaces that helm does not create
/// (it makes only a release's own): `helmfile sync` would fail, and so
/// would the automatic rollback's. Preflight names them with the command
/// that creates them, before anything changes; that command works.
#[test]
fn a_namespace_layer_15_needs_is_named_with_the_command_that_creates_it() {
    let Some((bao, sb)) = start() else {
        return;
    };
    let before = sb.read(FLAG);
    let mut sc = cluster("k3d-ameide", eso(0, healthy()), sync_ok());
    sc["kubectl"]["objects"] =
        json!(objects().into_iter().filter(|o| o["kind"] != "Namespace").collect::<Vec<_>>());
    sb.scenario(sc);
    let run = to_vault(&sb, &bao).code(1);
    assert_contains(
        &run.stderr,
        "layer 15 puts ExternalSecrets in namespaces the cluster does not have: cert-manager (ExternalSecret \
         ameide-ca); keycloak (ExternalSecret keycloak-admin); minio (ExternalSecret minio-root-credentials). \
         helm creates only a release's own namespace, so `helmfile --file \
         infra/kubernetes/helmfiles/15-secrets-certificates.yaml --environment local sync` would fail, and so \
         would the rollback's. Create them first (`kubectl create namespace cert-manager && kubectl create \
         namespace keycloak && kubectl create namespace minio`), then run the same command again.\nNothing in \
         the cluster changed;",
    );
    assert_eq!(journal_bytes(&sb), None);
    assert_eq!(sb.read(FLAG), before);
    assert!(argvs(&sb, "helmfile").is_empty(), "nothing synced");

    // Follow the advice, then the same command.
    let start = run.stderr.find("(`kubectl create namespace").unwrap() + 2;
    let len = run.stderr[start..].find('`').unwrap();
    shell(&sb, &run.stderr[start..start + len]).ok();
    for ns in LAYER15_NAMESPACES {
        assert!(sb.cluster().object("Namespace", None, ns).is_some(), "{ns}");
    }
    let run = to_vault(&sb, &bao).ok();
    assert_contains(
        &run.stdout,
        "layer 15's namespaces exist (ameide, cert-manager, keycloak, minio)",
    );
    assert_eq!(steps(&journal(&sb)["migrations"][0]), MIGRATED);
}
