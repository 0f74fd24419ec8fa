//! Finding the keys the charts need: every ExternalSecret in the infra tree.
//!
//! Two modes:
//! - static: parse values files and plain manifests, no rendering. Any
//!   `remoteRef`, `dataFrom.extract` or `dataFrom.find` counts; chart
//!   templates are not evaluated, so conditionals count as if enabled.
//! - rendered: the real `helmfile template` output of every layer for one
//!   environment, honouring `installed:` toggles.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::yaml::{parse_documents, Node};

/// The store every in-scope ExternalSecret must use.
pub const STORE_NAME: &str = "ameide-vault";
const STORE_KIND: &str = "ClusterSecretStore";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RefKind {
    /// `data[].remoteRef`.
    Data {
        property: Option<String>,
        secret_key: Option<String>,
    },
    /// `dataFrom[].extract`.
    Extract { property: Option<String> },
    /// `dataFrom[].find.name.regexp`: `key` holds the regexp.
    Find,
}

/// One reference to a store key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyRef {
    pub key: String,
    #[serde(flatten)]
    pub kind: RefKind,
    pub at: Location,
}

/// An ExternalSecret (or an entry in values that becomes one).
#[derive(Debug, Clone, Serialize)]
pub struct ExternalSecret {
    pub name: String,
    pub namespace: Option<String>,
    /// The Kubernetes Secret it produces.
    pub target: Option<String>,
    /// `Kind/name` of the store it reads.
    pub store: String,
    pub release: Option<String>,
    pub env: Option<String>,
    pub at: Location,
    pub refs: Vec<KeyRef>,
}

/// Whether `Kind/name` is the store every in-scope ExternalSecret uses.
pub fn is_our_store(store: &str) -> bool {
    store
        .strip_prefix(STORE_KIND)
        .and_then(|s| s.strip_prefix('/'))
        == Some(STORE_NAME)
}

impl ExternalSecret {
    pub fn in_scope(&self) -> bool {
        is_our_store(&self.store)
    }

    /// `namespace/name`, or the name alone.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Scan {
    pub mode: &'static str,
    pub files: usize,
    pub external_secrets: Vec<ExternalSecret>,
}

const ESO_GROUP: &str = "external-secrets.io/";
const ESO_VERSIONS: &[&str] = &["external-secrets.io/v1", "external-secrets.io/v1beta1"];
const ESO_KINDS: &[&str] = &[
    "ExternalSecret",
    "ClusterExternalSecret",
    "SecretStore",
    "ClusterSecretStore",
    "PushSecret",
    "ClusterPushSecret",
];

/// Static scan of `infra` (files relative to `base` in reports).
pub fn scan_static(infra: &Path, base: &Path) -> Result<Scan> {
    let mut files = Vec::new();
    collect_yaml(infra, &mut files).with_context(|| format!("listing {}", infra.display()))?;
    files.sort();
    let mut scan = Scan {
        mode: "static",
        files: files.len(),
        ..Scan::default()
    };
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let shown = file
            .strip_prefix(base)
            .unwrap_or(file)
            .display()
            .to_string();
        scan_text(&text, &shown, None, None, true, &mut scan.external_secrets)?;
    }
    Ok(scan)
}

/// YAML files below `dir`, skipping Go templates (`templates/`, `helmfiles/`)
/// that only rendering can read.
fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if name != "templates" && name != "helmfiles" && !name.starts_with('.') {
                collect_yaml(&path, out)?;
            }
        } else if ft.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            out.push(path);
        }
    }
    Ok(())
}

/// Scans one file's text. `values` also reads ExternalSecret-shaped entries
/// in Helm values (not only manifests).
pub fn scan_text(
    text: &str,
    file: &str,
    release: Option<&str>,
    env: Option<&str>,
    values: bool,
    out: &mut Vec<ExternalSecret>,
) -> Result<()> {
    let docs = parse_documents(text)
        .map_err(|e| anyhow::anyhow!("{file}:{e}: malformed YAML; fix the file"))?;
    for doc in docs {
        let ctx = Ctx { file, release, env };
        if let Some(api) = doc.str_at("apiVersion") {
            let kind = doc.str_at("kind").unwrap_or("");
            if api.starts_with(ESO_GROUP) {
                if !ESO_VERSIONS.contains(&api) {
                    bail!(
                        "{file}:{}: unknown apiVersion {api:?} for {kind}: use external-secrets.io/v1 (or v1beta1)",
                        doc.line()
                    );
                }
                if !ESO_KINDS.contains(&kind) {
                    bail!("{file}:{}: unknown kind {kind:?} in {api}", doc.line());
                }
                match kind {
                    "ExternalSecret" => out.push(manifest_es(&doc, doc.get("spec"), &ctx)?),
                    "ClusterExternalSecret" => {
                        let spec = doc.get("spec").and_then(|s| s.get("externalSecretSpec"));
                        out.push(manifest_es(&doc, spec, &ctx)?);
                    }
                    _ => {}
                }
                continue;
            }
            if doc.get("kind").is_some() {
                // Some other Kubernetes object.
                continue;
            }
        }
        if values {
            let store = doc.str_at("storeName").unwrap_or(STORE_NAME).to_string();
            let mut found = Vec::new();
            walk_values(&doc, &ctx, &store, &mut Vec::new(), &mut found);
            out.extend(found);
        }
    }
    Ok(())
}

struct Ctx<'a> {
    file: &'a str,
    release: Option<&'a str>,
    env: Option<&'a str>,
}

impl Ctx<'_> {
    fn at(&self, node: &Node) -> Location {
        Location {
            file: self.file.to_string(),
            line: node.line(),
        }
    }
}

fn manifest_es(doc: &Node, spec: Option<&Rc<Node>>, ctx: &Ctx<'_>) -> Result<ExternalSecret> {
    let meta = doc.get("metadata");
    let name = meta
        .and_then(|m| m.str_at("name"))
        .unwrap_or("(unnamed)")
        .to_string();
    let Some(spec) = spec else {
        bail!(
            "{}:{}: ExternalSecret {name} has no spec",
            ctx.file,
            doc.line()
        );
    };
    let store_ref = spec.get("secretStoreRef");
    let store = format!(
        "{}/{}",
        store_ref
            .and_then(|s| s.str_at("kind"))
            .unwrap_or("SecretStore"),
        store_ref.and_then(|s| s.str_at("name")).unwrap_or("(none)")
    );
    let mut refs = Vec::new();
    refs_of_spec(spec, ctx, &mut refs);
    Ok(ExternalSecret {
        name,
        namespace: meta.and_then(|m| m.str_at("namespace")).map(String::from),
        target: spec
            .get("target")
            .and_then(|t| t.str_at("name"))
            .map(String::from),
        store,
        release: ctx.release.map(String::from),
        env: ctx.env.map(String::from),
        at: ctx.at(doc),
        refs,
    })
}

fn refs_of_spec(spec: &Node, ctx: &Ctx<'_>, refs: &mut Vec<KeyRef>) {
    for item in spec.get("data").map(|d| d.as_seq()).unwrap_or_default() {
        if let Some(r) = data_ref(item, ctx) {
            refs.push(r);
        }
    }
    for item in spec.get("dataFrom").map(|d| d.as_seq()).unwrap_or_default() {
        refs.extend(extract_ref(item, ctx));
        refs.extend(find_ref(item, ctx));
    }
}

fn data_ref(item: &Node, ctx: &Ctx<'_>) -> Option<KeyRef> {
    let remote = item.get("remoteRef")?;
    let key = remote.get("key")?;
    Some(KeyRef {
        key: key.as_str()?.to_string(),
        kind: RefKind::Data {
            property: remote.str_at("property").map(String::from),
            secret_key: item.str_at("secretKey").map(String::from),
        },
        at: ctx.at(key),
    })
}

fn extract_ref(item: &Node, ctx: &Ctx<'_>) -> Option<KeyRef> {
    let extract = item.get("extract")?;
    let key = extract.get("key")?;
    Some(KeyRef {
        key: key.as_str()?.to_string(),
        kind: RefKind::Extract {
            property: extract.str_at("property").map(String::from),
        },
        at: ctx.at(key),
    })
}

fn find_ref(item: &Node, ctx: &Ctx<'_>) -> Option<KeyRef> {
    let regexp = item.get("find")?.get("name")?.get("regexp")?;
    Some(KeyRef {
        key: regexp.as_str()?.to_string(),
        kind: RefKind::Find,
        at: ctx.at(regexp),
    })
}

/// Walks Helm values for ExternalSecret-shaped entries. An entry is the
/// nearest mapping with a `name`; refs outside any entry are named by their
/// values path.
fn walk_values(
    node: &Rc<Node>,
    ctx: &Ctx<'_>,
    store: &str,
    path: &mut Vec<String>,
    out: &mut Vec<ExternalSecret>,
) {
    match &**node {
        Node::Map(entries, _) => {
            let is_entry = node.str_at("name").is_some()
                && (node.get("data").is_some() || node.get("dataFrom").is_some());
            if is_entry {
                let store_name = node
                    .get("secretStoreRef")
                    .and_then(|s| s.str_at("name"))
                    .unwrap_or(store);
                let kind = node
                    .get("secretStoreRef")
                    .and_then(|s| s.str_at("kind"))
                    .unwrap_or(STORE_KIND);
                let mut refs = Vec::new();
                refs_of_spec(node, ctx, &mut refs);
                out.push(ExternalSecret {
                    name: node.str_at("name").unwrap_or_default().to_string(),
                    namespace: node.str_at("namespace").map(String::from),
                    target: node
                        .str_at("target")
                        .or_else(|| node.get("target").and_then(|t| t.str_at("name")))
                        .map(String::from),
                    store: format!("{kind}/{store_name}"),
                    release: ctx.release.map(String::from),
                    env: ctx.env.map(String::from),
                    at: ctx.at(node),
                    refs,
                });
                return;
            }
            // Bare refs in values, like `realmImport.extract`.
            let mut refs = Vec::new();
            if let Some(r) = data_ref(node, ctx) {
                refs.push(r);
            }
            refs.extend(extract_ref(node, ctx));
            refs.extend(find_ref(node, ctx));
            if !refs.is_empty() {
                out.push(ExternalSecret {
                    name: if path.is_empty() {
                        "(values)".into()
                    } else {
                        path.join(".")
                    },
                    namespace: None,
                    target: None,
                    store: format!("{STORE_KIND}/{store}"),
                    release: ctx.release.map(String::from),
                    env: ctx.env.map(String::from),
                    at: ctx.at(node),
                    refs,
                });
                return;
            }
            for (k, v) in entries {
                path.push(k.as_str().unwrap_or("?").to_string());
                walk_values(v, ctx, store, path, out);
                path.pop();
            }
        }
        Node::Seq(items, _) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                walk_values(item, ctx, store, path, out);
                path.pop();
            }
        }
        Node::Scalar(..) => {}
    }
}

/// Renders every helmfile in `infra/helmfiles` for `env` with the real
/// helmfile (offline: local charts only) and scans the ExternalSecrets.
pub fn scan_rendered(
    infra: &Path,
    base: &Path,
    env: &str,
    path_env: &std::ffi::OsStr,
) -> Result<Scan> {
    let helmfiles_dir = infra.join("helmfiles");
    let mut helmfiles: Vec<PathBuf> = std::fs::read_dir(&helmfiles_dir)
        .with_context(|| format!("listing {}", helmfiles_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "yaml" || x == "yml" || x == "gotmpl")
        })
        .collect();
    helmfiles.sort();
    let out_dir = std::env::temp_dir().join(format!("xtask-render-{}-{env}", std::process::id()));
    let mut scan = Scan {
        mode: "rendered",
        ..Scan::default()
    };
    for helmfile in &helmfiles {
        let _ = std::fs::remove_dir_all(&out_dir);
        let shown = helmfile
            .strip_prefix(base)
            .unwrap_or(helmfile)
            .display()
            .to_string();
        crate::secrets::helmfile::template(helmfile, env, &out_dir, path_env)
            .with_context(|| format!("rendering {shown} for {env}"))?;
        let mut files = Vec::new();
        if out_dir.is_dir() {
            collect_all_yaml(&out_dir, &mut files)?;
        }
        files.sort();
        scan.files += files.len();
        for file in files {
            let rel = file.strip_prefix(&out_dir).unwrap_or(&file);
            let mut parts = rel.components();
            let release = parts
                .next()
                .map(|c| c.as_os_str().to_string_lossy().to_string())
                .unwrap_or_default();
            let template = parts.as_path().display().to_string();
            let text = std::fs::read_to_string(&file)?;
            let label = format!("{shown} {release}: {template}");
            scan_text(
                &text,
                &label,
                Some(&release),
                Some(env),
                false,
                &mut scan.external_secrets,
            )?;
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    Ok(scan)
}

fn collect_all_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_all_yaml(&path, out)?;
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str, values: bool) -> Result<Vec<ExternalSecret>> {
        let mut out = Vec::new();
        scan_text(text, "f.yaml", None, None, values, &mut out)?;
        Ok(out)
    }

    #[test]
    fn our_store_is_the_cluster_store_ameide_vault() {
        assert!(is_our_store("ClusterSecretStore/ameide-vault"));
        assert!(
            !is_our_store("SecretStore/ameide-vault") && !is_our_store("ClusterSecretStore/other")
        );
    }

    #[test]
    fn reads_manifest_refs_with_lines() {
        let text = "apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: graph-db
  namespace: ameide
spec:
  secretStoreRef:
    kind: ClusterSecretStore
    name: ameide-vault
  target:
    name: graph-db-credentials
  data:
    - secretKey: password
      remoteRef:
        key: graph-db-password
        property: value
  dataFrom:
    - extract:
        key: graph-config
    - find:
        name:
          regexp: \"^graph-\"
";
        let es = scan(text, false).unwrap();
        assert_eq!(es.len(), 1);
        let es = &es[0];
        assert!(es.in_scope());
        assert_eq!(es.display_name(), "ameide/graph-db");
        assert_eq!(es.target.as_deref(), Some("graph-db-credentials"));
        let keys: Vec<(&str, usize)> = es
            .refs
            .iter()
            .map(|r| (r.key.as_str(), r.at.line))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("graph-db-password", 15),
                ("graph-config", 19),
                ("^graph-", 22)
            ]
        );
        assert_eq!(
            es.refs[0].kind,
            RefKind::Data {
                property: Some("value".into()),
                secret_key: Some("password".into())
            }
        );
    }

    #[test]
    fn other_stores_are_out_of_scope() {
        let text = "apiVersion: external-secrets.io/v1beta1
kind: ExternalSecret
metadata: {name: x}
spec:
  secretStoreRef: {kind: SecretStore, name: team-store}
  data: [{secretKey: a, remoteRef: {key: k}}]
";
        assert!(!scan(text, false).unwrap()[0].in_scope());
    }

    #[test]
    fn unknown_api_versions_and_kinds_are_errors() {
        let e = scan(
            "apiVersion: external-secrets.io/v2alpha9\nkind: ExternalSecret\n",
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown apiVersion"), "{e}");
        let e = scan(
            "apiVersion: external-secrets.io/v1\nkind: ExternalSecrett\n",
            false,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("unknown kind \"ExternalSecrett\""),
            "{e}"
        );
        let e = scan("a: [\n", true).unwrap_err();
        assert!(e.to_string().starts_with("f.yaml:"), "{e}");
    }

    #[test]
    fn values_entries_and_bare_refs() {
        let text = "storeName: ameide-vault
externalSecrets:
  - name: app
    target: app-secret
    data:
      - secretKey: url
        remoteRef: {key: app-url, property: value}
  - name: elsewhere
    secretStoreRef: {kind: ClusterSecretStore, name: other}
    data:
      - secretKey: x
        remoteRef: {key: other-key}
realmImport:
  extract:
    key: realm-config
    property: value
";
        let es = scan(text, true).unwrap();
        let got: Vec<(&str, bool, Vec<&str>)> = es
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.in_scope(),
                    e.refs.iter().map(|r| r.key.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("app", true, vec!["app-url"]),
                ("elsewhere", false, vec!["other-key"]),
                ("realmImport", true, vec!["realm-config"]),
            ]
        );
        assert_eq!(es[0].target.as_deref(), Some("app-secret"));
    }
}
