//! Finding the keys the charts need: every ExternalSecret in the infra tree.
//!
//! Two modes:
//! - static: parse values files and plain manifests, no rendering. Any
//!   `remoteRef`, `dataFrom.extract` or `dataFrom.find` counts; chart
//!   templates are not evaluated, so conditionals count as if enabled.
//!   ExternalSecrets written literally in chart templates count too: a
//!   template is read as YAML with its `{{ ... }}` actions blanked out, or,
//!   where that does not parse, searched for literal `remoteRef.key` lines.
//!   A key the template language builds is left for `--render`.
//! - rendered: the real `helmfile template` output of every layer for one
//!   environment, honouring `installed:` toggles.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::project;
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
    let mut templates = Vec::new();
    collect_yaml(infra, false, &mut files, &mut templates)
        .with_context(|| format!("listing {}", infra.display()))?;
    files.sort();
    templates.sort();
    let mut scan = Scan {
        mode: "static",
        files: files.len() + templates.len(),
        ..Scan::default()
    };
    let shown = |file: &Path| {
        file.strip_prefix(base)
            .unwrap_or(file)
            .display()
            .to_string()
    };
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        scan_text(
            &text,
            &shown(file),
            None,
            None,
            true,
            &mut scan.external_secrets,
        )?;
    }
    for file in &templates {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        scan_template(&text, &shown(file), &mut scan.external_secrets);
    }
    Ok(scan)
}

/// YAML files below `dir` into `out`, and chart template files (`.yaml`,
/// `.yml`, `.tpl` below a chart's `templates/`) into `templates`. Helmfiles
/// (`helmfiles/`) are Go templates of releases, not of manifests: skipped.
fn collect_yaml(
    dir: &Path,
    in_templates: bool,
    out: &mut Vec<PathBuf>,
    templates: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if name != "helmfiles" && !name.starts_with('.') {
                let is_templates =
                    in_templates || (name == "templates" && dir.join("Chart.yaml").is_file());
                collect_yaml(&path, is_templates, out, templates)?;
            }
        } else if ft.is_file() && in_templates {
            if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".tpl") {
                templates.push(path);
            }
        } else if ft.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
            out.push(path);
        }
    }
    Ok(())
}

/// What a template action (`{{ ... }}`) becomes when a template is read as
/// YAML: a plain word no key can contain, so a key built by the template
/// language is recognised and left for `--render`.
const TEMPLATED: &str = "__templated__";

fn templated(s: &str) -> bool {
    s.contains(TEMPLATED)
}

/// Reads a chart template statically: the ExternalSecrets written in it
/// with literal keys. Never fails: what cannot be read is left for `--render`.
pub fn scan_template(text: &str, file: &str, out: &mut Vec<ExternalSecret>) {
    let yaml = blank_actions(text);
    let Ok(docs) = parse_documents(&yaml) else {
        out.extend(literal_refs(&yaml, file));
        return;
    };
    let ctx = Ctx {
        file,
        release: None,
        env: None,
    };
    for doc in docs {
        let spec = match doc.str_at("kind") {
            Some("ExternalSecret") => doc.get("spec"),
            Some("ClusterExternalSecret") => {
                doc.get("spec").and_then(|s| s.get("externalSecretSpec"))
            }
            _ => continue,
        };
        if !doc
            .str_at("apiVersion")
            .is_some_and(|a| a.starts_with(ESO_GROUP))
        {
            continue;
        }
        let Ok(mut es) = manifest_es(&doc, spec, &ctx) else {
            continue;
        };
        if let Some(es) = literal_only(&mut es) {
            out.push(es.clone());
        }
    }
}

/// Drops the references whose key the template builds; `None` when none
/// is left. A store the template names counts as ours (conservative).
fn literal_only(es: &mut ExternalSecret) -> Option<&ExternalSecret> {
    es.refs.retain(|r| !templated(&r.key) && !r.key.is_empty());
    if es.refs.is_empty() {
        return None;
    }
    if templated(&es.store) {
        es.store = format!("{STORE_KIND}/{STORE_NAME}");
    }
    if templated(&es.name) {
        es.name = "(templated name)".into();
    }
    if es.namespace.as_deref().is_some_and(templated) {
        es.namespace = None;
    }
    for r in &mut es.refs {
        if let RefKind::Data { property, .. } | RefKind::Extract { property } = &mut r.kind {
            // `property: {{ .p | default "value" }}`: unknown until rendered; assume value.
            if property.as_deref().is_some_and(templated) {
                *property = Some("value".into());
            }
        }
    }
    Some(es)
}

/// The template with every action blanked, keeping line numbers: a line
/// holding only actions (`{{- range }}`, `{{- end }}`) becomes empty, an
/// action inside a line becomes [`TEMPLATED`].
fn blank_actions(text: &str) -> String {
    let mut in_action = vec![false; text.len()];
    let mut starts = vec![false; text.len()];
    let mut i = 0;
    while let Some(open) = text[i..].find("{{") {
        let open = i + open;
        let close = text[open + 2..]
            .find("}}")
            .map(|c| open + 2 + c + 2)
            .unwrap_or(text.len());
        starts[open] = true;
        for b in &mut in_action[open..close] {
            *b = true;
        }
        i = close;
        if i >= text.len() {
            break;
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let range = offset..offset + line.len();
        offset += line.len();
        let only_actions = line
            .char_indices()
            .all(|(j, c)| c.is_whitespace() || in_action[range.start + j]);
        if only_actions {
            if line.ends_with('\n') {
                out.push('\n');
            }
            continue;
        }
        for (j, c) in line.char_indices() {
            let at = range.start + j;
            if starts[at] {
                out.push_str(TEMPLATED);
            } else if !in_action[at] {
                out.push(c);
            }
        }
    }
    out
}

/// Where a blanked template is still not YAML: every literal
/// `remoteRef.key` (block or flow form), one ExternalSecret per document.
/// The property reads as the YAML path reads it: `None` when the
/// `remoteRef` has none, `value` when the template builds it (as
/// [`literal_only`] assumes).
fn literal_refs(text: &str, file: &str) -> Vec<ExternalSecret> {
    let mut out: Vec<ExternalSecret> = Vec::new();
    let mut doc_refs: Vec<KeyRef> = Vec::new();
    let mut doc_line = 1;
    let mut remote_indent: Option<usize> = None;
    // In a block `remoteRef`: the index of its ref in `doc_refs` once its
    // key is read, and its property if that came first.
    let mut block_ref: Option<usize> = None;
    let mut block_property: Option<String> = None;
    let unquote = |v: &str| {
        let v = v.trim().split(" #").next().unwrap_or("").trim();
        v.trim_matches(|c| c == '"' || c == '\'').to_string()
    };
    let property_of = |p: String| {
        if templated(&p) {
            Some("value".to_string())
        } else {
            Some(p).filter(|p| !p.is_empty())
        }
    };
    let flush = |refs: &mut Vec<KeyRef>, line: usize, out: &mut Vec<ExternalSecret>| {
        if !refs.is_empty() {
            out.push(ExternalSecret {
                name: "(template)".into(),
                namespace: None,
                target: None,
                store: format!("{STORE_KIND}/{STORE_NAME}"),
                release: None,
                env: None,
                at: Location {
                    file: file.to_string(),
                    line,
                },
                refs: std::mem::take(refs),
            });
        }
    };
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.starts_with("---") {
            flush(&mut doc_refs, doc_line, &mut out);
            doc_line = n + 1;
            remote_indent = None;
            continue;
        }
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let body = body.strip_prefix("- ").map(str::trim_start).unwrap_or(body);
        if let Some(rest) = body.strip_prefix("remoteRef:") {
            let rest = rest.trim();
            if rest.starts_with('{') {
                // Flow form: remoteRef: {key: k, property: value}
                let inner = rest.trim_start_matches('{').trim_end_matches('}');
                let field = |name: &str| {
                    inner
                        .split(',')
                        .filter_map(|kv| kv.split_once(':'))
                        .find(|(k, _)| k.trim() == name)
                        .map(|(_, v)| unquote(v))
                };
                if let Some(key) = field("key").filter(|k| !k.is_empty() && !templated(k)) {
                    doc_refs.push(KeyRef {
                        key,
                        kind: RefKind::Data {
                            property: field("property").and_then(property_of),
                            secret_key: None,
                        },
                        at: Location {
                            file: file.to_string(),
                            line: n,
                        },
                    });
                }
                remote_indent = None;
            } else {
                remote_indent = Some(indent);
                block_ref = None;
                block_property = None;
            }
            continue;
        }
        match remote_indent {
            Some(r) if indent > r && !body.is_empty() => {
                if let Some(v) = body.strip_prefix("key:") {
                    let key = unquote(v);
                    if !key.is_empty() && !templated(&key) {
                        doc_refs.push(KeyRef {
                            key,
                            kind: RefKind::Data {
                                property: block_property.take(),
                                secret_key: None,
                            },
                            at: Location {
                                file: file.to_string(),
                                line: n,
                            },
                        });
                        block_ref = Some(doc_refs.len() - 1);
                    }
                } else if let Some(v) = body.strip_prefix("property:") {
                    let p = property_of(unquote(v));
                    match block_ref.and_then(|i| doc_refs.get_mut(i)) {
                        Some(KeyRef {
                            kind: RefKind::Data { property, .. },
                            ..
                        }) => *property = p,
                        _ => block_property = p,
                    }
                }
            }
            Some(_) if !body.is_empty() => remote_indent = None,
            _ => {}
        }
    }
    flush(&mut doc_refs, doc_line, &mut out);
    out
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
    // Removed however this ends: rendered manifests and helm's cache.
    let _dirs = RenderDirs::new(&out_dir);
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
    Ok(scan)
}

/// The folders `helmfile template` writes (its output and helm's cache),
/// removed on drop: after the scan, and when rendering fails.
struct RenderDirs {
    dirs: [PathBuf; 2],
}

impl RenderDirs {
    fn new(out_dir: &Path) -> RenderDirs {
        RenderDirs {
            dirs: [
                out_dir.to_path_buf(),
                crate::secrets::helmfile::helm_cache_dir(out_dir),
            ],
        }
    }
}

impl Drop for RenderDirs {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
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

/// The ExternalSecrets to check: static or rendered, plus the contract,
/// which always counts.
pub fn collect(root: &Path, infra: &Path, env: &str, render: bool) -> Result<Scan> {
    if !render {
        return scan_static(infra, root);
    }
    let mut scan = scan_rendered(infra, root, env, &project::path_with_tools(root))?;
    let contract: PathBuf = infra.join(project::CONTRACT_IN_INFRA);
    if contract.is_file() {
        let text = std::fs::read_to_string(&contract)?;
        let shown = contract
            .strip_prefix(root)
            .unwrap_or(&contract)
            .display()
            .to_string();
        scan_text(
            &text,
            &shown,
            None,
            Some(env),
            true,
            &mut scan.external_secrets,
        )?;
        scan.files += 1;
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str, values: bool) -> Result<Vec<ExternalSecret>> {
        let mut out = Vec::new();
        scan_text(text, "f.yaml", None, None, values, &mut out)?;
        Ok(out)
    }

    /// Renders a tree of one helmfile with a fake `helmfile` that writes an
    /// output folder and helm's cache, then exits with `code`.
    fn render_with_fake_helmfile(env: &str, code: i32) -> (Result<Scan>, PathBuf) {
        let root = std::env::temp_dir().join(format!("xtask-scan-{env}-{}", std::process::id()));
        let infra = root.join("infra");
        std::fs::create_dir_all(infra.join("helmfiles")).unwrap();
        std::fs::write(infra.join("helmfiles/a.yaml"), "releases: []\n").unwrap();
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("helmfile");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nwhile [ \"$1\" != --output-dir ]; do shift; done\n\
                 mkdir -p \"$2/r\" \"$HELM_CACHE_HOME/repo\"\n\
                 echo 'kind: ConfigMap' > \"$2/r/cm.yaml\"\n\
                 echo cached > \"$HELM_CACHE_HOME/repo/index.yaml\"\nexit {code}\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = std::env::join_paths([bin.as_path(), Path::new("/usr/bin"), Path::new("/bin")])
            .unwrap();
        let result = scan_rendered(&infra, &root, env, &path);
        std::fs::remove_dir_all(&root).unwrap();
        let out_dir =
            std::env::temp_dir().join(format!("xtask-render-{}-{env}", std::process::id()));
        (result, out_dir)
    }

    #[test]
    fn rendering_leaves_no_output_or_helm_cache_behind() {
        for (env, code) in [("scan-ok", 0), ("scan-fails", 1)] {
            let (result, out_dir) = render_with_fake_helmfile(env, code);
            assert_eq!(result.is_ok(), code == 0, "{env}: {:?}", result.err());
            if let Ok(scan) = result {
                assert_eq!(scan.files, 1, "the fake rendered one file");
            }
            let cache = crate::secrets::helmfile::helm_cache_dir(&out_dir);
            assert!(
                !out_dir.exists(),
                "{env}: {} left behind",
                out_dir.display()
            );
            assert!(!cache.exists(), "{env}: {} left behind", cache.display());
        }
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

    const TEMPLATE: &str = "{{- range .Values.externalSecrets }}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: {{ .name }}
spec:
  secretStoreRef: {kind: ClusterSecretStore, name: ameide-vault}
  data:
    {{- range .data }}
    - secretKey: {{ .secretKey }}
      remoteRef:
        key: {{ .remoteRef.key }}
        property: {{ .remoteRef.property | default \"value\" }}
    {{- end }}
{{- end }}
{{- if .Values.extra.enabled }}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: {{ .Release.Name }}-extra
  namespace: {{ .Release.Namespace }}
spec:
  secretStoreRef:
    kind: ClusterSecretStore
    name: ameide-vault
  data:
    - secretKey: token
      remoteRef:
        key: literal-extra-token
        property: value
    - secretKey: built
      remoteRef:
        key: {{ printf \"%s-key\" .Release.Name }}
        property: value
{{- end }}
";

    #[test]
    fn templates_yield_their_literal_keys_only() {
        let mut out = Vec::new();
        scan_template(TEMPLATE, "t.yaml", &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let es = &out[0];
        assert!(es.in_scope());
        let keys: Vec<(&str, usize)> = es
            .refs
            .iter()
            .map(|r| (r.key.as_str(), r.at.line))
            .collect();
        assert_eq!(keys, vec![("literal-extra-token", 31)]);
        assert_eq!(
            es.refs[0].kind,
            RefKind::Data {
                property: Some("value".into()),
                secret_key: Some("token".into())
            }
        );
    }

    #[test]
    fn templates_that_are_not_yaml_are_searched_line_by_line() {
        // A flow mapping cut by an action: not YAML even with actions blanked.
        let text = "apiVersion: external-secrets.io/v1\nkind: ExternalSecret\nspec:\n  data:\n    - secretKey: a\n      remoteRef:\n        key: \"line-key\"\n        property: value\n    - secretKey: b\n      remoteRef: {key: flow-key, property: value}\n    - secretKey: c\n      remoteRef:\n        key: {{ .k }}\n  broken: [unclosed\n";
        let mut out = Vec::new();
        scan_template(text, "t.yaml", &mut out);
        let keys: Vec<(&str, usize)> = out
            .iter()
            .flat_map(|e| e.refs.iter().map(|r| (r.key.as_str(), r.at.line)))
            .collect();
        assert_eq!(keys, vec![("line-key", 7), ("flow-key", 10)]);
    }

    #[test]
    fn the_line_by_line_search_reads_properties_as_the_yaml_path_does() {
        // Not YAML (an unclosed flow sequence): searched line by line. A
        // remoteRef without a property has none (check reports it), a
        // templated one is assumed `value`, a literal one is kept, in either
        // order and either form.
        let text = "kind: ExternalSecret\nspec:\n  data:\n    - secretKey: a\n      remoteRef:\n        key: no-property\n    - secretKey: b\n      remoteRef:\n        key: templated-property\n        property: {{ .p }}\n    - secretKey: c\n      remoteRef:\n        property: first\n        key: property-first\n    - secretKey: d\n      remoteRef:\n        key: {{ .k }}\n        property: not-for-another-key\n    - secretKey: e\n      remoteRef: {key: flow-no-property}\n    - secretKey: f\n      remoteRef: {key: flow-templated, property: {{ .p }}}\n  broken: [unclosed\n";
        let mut out = Vec::new();
        scan_template(text, "t.yaml", &mut out);
        let props: Vec<(&str, Option<&str>)> = out
            .iter()
            .flat_map(|e| e.refs.iter())
            .map(|r| match &r.kind {
                RefKind::Data { property, .. } => (r.key.as_str(), property.as_deref()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            props,
            vec![
                ("no-property", None),
                ("templated-property", Some("value")),
                ("property-first", Some("first")),
                ("flow-no-property", None),
                ("flow-templated", Some("value")),
            ]
        );
    }

    #[test]
    fn blanking_keeps_line_numbers() {
        let blanked =
            blank_actions("a: 1\n{{- if x }}\nb: {{ .v }}-x\n{{/* multi\nline */}}\nc: 3\n");
        assert_eq!(blanked, "a: 1\n\nb: __templated__-x\n\n\nc: 3\n");
    }
}
