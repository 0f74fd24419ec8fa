//! Every ExternalSecret in the infra tree. Static: values, manifests and literal keys in chart
//! templates, unrendered. Rendered: `helmfile template` of every layer for one environment.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::LazyLock;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Serialize;

use crate::project;
use crate::secrets::config::Config;
use crate::yaml::{parse_documents, Node};

pub(crate) const STORE_NAME: &str = "ameide-vault";
const STORE_KIND: &str = "ClusterSecretStore";

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RefKind {
    /// `data[].remoteRef`.
    Data { property: Option<String>, secret_key: Option<String> },
    /// `dataFrom[].extract`.
    Extract { property: Option<String> },
    /// `dataFrom[].find.name.regexp`: `key` holds the regexp.
    Find,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyRef {
    pub key: String,
    #[serde(flatten)]
    pub kind: RefKind,
    pub at: Location,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExternalSecret {
    pub name: String,
    pub namespace: Option<String>,
    pub target: Option<String>,
    /// `Kind/name` of the store it reads.
    pub store: String,
    pub release: Option<String>,
    pub env: Option<String>,
    pub at: Location,
    pub refs: Vec<KeyRef>,
}

pub(crate) fn is_our_store(store: &str) -> bool {
    store == our_store()
}

fn our_store() -> String {
    format!("{STORE_KIND}/{STORE_NAME}")
}

impl ExternalSecret {
    pub fn in_scope(&self) -> bool {
        is_our_store(&self.store)
    }

    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Scan {
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

fn shown(file: &Path, base: &Path) -> String {
    file.strip_prefix(base).unwrap_or(file).display().to_string()
}

fn read(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

pub(crate) fn scan_static(infra: &Path, base: &Path) -> Result<Scan> {
    let (mut files, mut templates) = (Vec::new(), Vec::new());
    collect_yaml(infra, false, &mut files, &mut templates)
        .with_context(|| format!("listing {}", infra.display()))?;
    files.sort();
    templates.sort();
    let mut found = Vec::new();
    for file in &files {
        scan_docs(&read(file)?, &Ctx::file(&shown(file, base)), true, &mut found)?;
    }
    for file in &templates {
        scan_template(&read(file)?, &shown(file, base), &mut found);
    }
    Ok(Scan { mode: "static", files: files.len() + templates.len(), external_secrets: found })
}

/// YAML files below `dir` into `out`, a chart's `templates/` files (`.yaml`, `.yml`, `.tpl`)
/// into `templates`. `helmfiles/` (Go templates of releases, not manifests) is skipped.
fn collect_yaml(
    dir: &Path,
    in_templates: bool,
    out: &mut Vec<PathBuf>,
    templates: &mut Vec<PathBuf>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        let ft = entry.file_type()?;
        if ft.is_dir() && name != "helmfiles" && !name.starts_with('.') {
            let is_templates =
                in_templates || (name == "templates" && dir.join("Chart.yaml").is_file());
            collect_yaml(&path, is_templates, out, templates)?;
        } else if ft.is_file() && in_templates && (yaml || name.ends_with(".tpl")) {
            templates.push(path);
        } else if ft.is_file() && !in_templates && yaml {
            out.push(path);
        }
    }
    Ok(())
}

/// A template action read as YAML: a word no key contains, so built keys are recognised.
const TEMPLATED: &str = "__templated__";

fn templated(s: &str) -> bool {
    s.contains(TEMPLATED)
}

/// A chart template's ExternalSecrets with literal keys; never fails (the rest is for `--render`).
pub(crate) fn scan_template(text: &str, file: &str, out: &mut Vec<ExternalSecret>) {
    let yaml = blank_actions(text);
    let mut found = Vec::new();
    match scan_docs(&yaml, &Ctx::file(file), false, &mut found) {
        Ok(()) => out.extend(found.into_iter().filter_map(literal_only)),
        Err(_) => out.extend(literal_refs(&yaml, file)),
    }
}

/// Drops the references with built keys (`None` if none is left); a built store counts as ours.
fn literal_only(mut es: ExternalSecret) -> Option<ExternalSecret> {
    es.refs.retain(|r| !templated(&r.key) && !r.key.is_empty());
    if es.refs.is_empty() {
        return None;
    }
    if templated(&es.store) {
        es.store = our_store();
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

/// Every action blanked, keeping line numbers: a line of only actions becomes empty, an action
/// inside a line [`TEMPLATED`].
fn blank_actions(text: &str) -> String {
    const MARK: char = '\u{1}';
    static ACTION: LazyLock<regex_lite::Regex> =
        LazyLock::new(|| regex_lite::Regex::new(r"(?s)\{\{.*?(?:\}\}|\z)").unwrap());
    // Each action becomes MARK, followed by the line breaks inside it.
    let marked = ACTION.replace_all(text, |c: &regex_lite::Captures| {
        format!("{MARK}{}", "\n".repeat(c[0].matches('\n').count()))
    });
    let blank = |line: &str| line.chars().all(|c| c.is_whitespace() || c == MARK);
    (marked.split_inclusive('\n'))
        .map(|line| match blank(line) {
            true => if line.ends_with('\n') { "\n" } else { "" }.to_string(),
            false => line.replace(MARK, TEMPLATED),
        })
        .collect()
}

/// An open block `remoteRef:`: its indent, its key (with its line) and its property.
struct Block {
    indent: usize,
    key: Option<(String, usize)>,
    property: Option<String>,
}

impl Block {
    fn into_ref(self, ctx: &Ctx) -> Option<KeyRef> {
        let (key, line) = self.key?;
        Some(ctx.data_ref(key, self.property, line))
    }
}

/// Where a blanked template is not YAML: every literal `remoteRef.key` (block or flow form), one
/// ExternalSecret per document; properties read as the YAML path reads them.
fn literal_refs(text: &str, file: &str) -> Vec<ExternalSecret> {
    let ctx = Ctx::file(file);
    let unquote = |v: &str| {
        let v = v.trim().split(" #").next().unwrap_or("").trim();
        v.trim_matches(|c| c == '"' || c == '\'').to_string()
    };
    let property_of = |p: String| match p {
        p if templated(&p) => Some("value".to_string()),
        p => Some(p).filter(|p| !p.is_empty()),
    };
    let literal = |k: &String| !k.is_empty() && !templated(k);
    let (mut out, mut refs, mut doc_line) = (Vec::new(), Vec::new(), 1);
    let mut block: Option<Block> = None;
    let end_doc = |refs: &mut Vec<KeyRef>, out: &mut Vec<ExternalSecret>, line| {
        if !refs.is_empty() {
            out.push(ctx.es("(template)".into(), our_store(), line, std::mem::take(refs)));
        }
    };
    for (n, line) in (1..).zip(text.lines()) {
        let body = line.trim_start();
        let indent = line.len() - body.len();
        let body = body.strip_prefix("- ").map_or(body, str::trim_start);
        let remote = body.strip_prefix("remoteRef:").map(str::trim);
        let dedent = block.as_ref().is_some_and(|b| !body.is_empty() && indent <= b.indent);
        if dedent || remote.is_some() {
            refs.extend(block.take().and_then(|b| b.into_ref(&ctx)));
        }
        if line.starts_with("---") {
            end_doc(&mut refs, &mut out, doc_line);
            doc_line = n + 1;
        } else if let Some(inner) = remote.and_then(|r| r.strip_prefix('{')) {
            // Flow form: remoteRef: {key: k, property: value}
            let inner = inner.trim_end_matches('}');
            let field = |name: &str| {
                (inner.split(',').filter_map(|kv| kv.split_once(':')))
                    .find(|(k, _)| k.trim() == name)
                    .map(|(_, v)| unquote(v))
            };
            if let Some(key) = field("key").filter(literal) {
                refs.push(ctx.data_ref(key, field("property").and_then(property_of), n));
            }
        } else if remote.is_some() {
            block = Some(Block { indent, key: None, property: None });
        } else if let Some(Block { key, property, .. }) = &mut block {
            if let Some(k) = body.strip_prefix("key:").map(unquote).filter(literal) {
                *key = Some((k, n));
            } else if let Some(p) = body.strip_prefix("property:") {
                *property = property_of(unquote(p));
            }
        }
    }
    refs.extend(block.take().and_then(|b| b.into_ref(&ctx)));
    end_doc(&mut refs, &mut out, doc_line);
    out
}

/// Scans one file's text; `values` also reads ExternalSecret-shaped entries in Helm values.
pub fn scan_text(
    text: &str,
    file: &str,
    release: Option<&str>,
    env: Option<&str>,
    values: bool,
    out: &mut Vec<ExternalSecret>,
) -> Result<()> {
    scan_docs(text, &Ctx { file, release, env }, values, out)
}

fn scan_docs(text: &str, ctx: &Ctx, values: bool, out: &mut Vec<ExternalSecret>) -> Result<()> {
    let file = ctx.file;
    let docs =
        parse_documents(text).map_err(|e| anyhow!("{file}:{e}: malformed YAML; fix the file"))?;
    for doc in docs {
        let (line, kind) = (doc.line(), doc.str_at("kind").unwrap_or(""));
        match doc.str_at("apiVersion") {
            Some(api) if api.starts_with(ESO_GROUP) => {
                ensure!(
                    ESO_VERSIONS.contains(&api),
                    "{file}:{line}: unknown apiVersion {api:?} for {kind}: use external-secrets.io/v1 (or v1beta1)"
                );
                ensure!(ESO_KINDS.contains(&kind), "{file}:{line}: unknown kind {kind:?} in {api}");
                let spec = match kind {
                    "ExternalSecret" => doc.get("spec"),
                    "ClusterExternalSecret" => {
                        doc.get("spec").and_then(|s| s.get("externalSecretSpec"))
                    }
                    _ => continue,
                };
                out.push(manifest_es(&doc, spec, ctx)?);
            }
            // Some other Kubernetes object.
            Some(_) if doc.get("kind").is_some() => {}
            _ if values => {
                let store = doc.str_at("storeName").unwrap_or(STORE_NAME);
                walk_values(&doc, ctx, store, &mut Vec::new(), out);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Where references are read: the file as shown, and a rendered one's release and environment.
struct Ctx<'a> {
    file: &'a str,
    release: Option<&'a str>,
    env: Option<&'a str>,
}

impl<'a> Ctx<'a> {
    fn file(file: &'a str) -> Self {
        Ctx { file, release: None, env: None }
    }

    fn loc(&self, line: usize) -> Location {
        Location { file: self.file.to_string(), line }
    }

    fn data_ref(&self, key: String, property: Option<String>, line: usize) -> KeyRef {
        KeyRef { key, kind: RefKind::Data { property, secret_key: None }, at: self.loc(line) }
    }

    fn es(&self, name: String, store: String, line: usize, refs: Vec<KeyRef>) -> ExternalSecret {
        ExternalSecret {
            name,
            namespace: None,
            target: None,
            store,
            release: self.release.map(String::from),
            env: self.env.map(String::from),
            at: self.loc(line),
            refs,
        }
    }
}

fn string(node: &Node, key: &str) -> Option<String> {
    node.str_at(key).map(String::from)
}

fn store_of(node: &Node, default_kind: &str, default_name: &str) -> String {
    let field = |name: &str| node.get("secretStoreRef").and_then(|s| s.str_at(name));
    format!("{}/{}", field("kind").unwrap_or(default_kind), field("name").unwrap_or(default_name))
}

fn manifest_es(doc: &Node, spec: Option<&Rc<Node>>, ctx: &Ctx) -> Result<ExternalSecret> {
    let (meta, line) = (doc.get("metadata"), doc.line());
    let name = meta.and_then(|m| m.str_at("name")).unwrap_or("(unnamed)");
    let Some(spec) = spec else { bail!("{}:{line}: ExternalSecret {name} has no spec", ctx.file) };
    let store = store_of(spec, "SecretStore", "(none)");
    let mut es = ctx.es(name.into(), store, line, spec_refs(spec, ctx));
    es.namespace = meta.and_then(|m| string(m, "namespace"));
    es.target = spec.get("target").and_then(|t| string(t, "name"));
    Ok(es)
}

fn spec_refs(spec: &Node, ctx: &Ctx) -> Vec<KeyRef> {
    let items = |key| spec.get(key).map(|d| d.as_seq()).unwrap_or_default();
    let items = items("data").iter().chain(items("dataFrom"));
    items.flat_map(|item| item_refs(item, ctx)).collect()
}

/// The references of one `data[]` or `dataFrom[]` item, or of a bare mapping in values.
fn item_refs(item: &Node, ctx: &Ctx) -> Vec<KeyRef> {
    let mut refs = Vec::new();
    let mut add = |key: Option<&Rc<Node>>, kind| {
        if let Some((node, key)) = key.and_then(|k| Some((k, k.as_str()?))) {
            let (key, at) = (key.into(), ctx.loc(node.line()));
            refs.push(KeyRef { key, kind, at });
        }
    };
    if let Some(remote) = item.get("remoteRef") {
        let (property, secret_key) = (string(remote, "property"), string(item, "secretKey"));
        add(remote.get("key"), RefKind::Data { property, secret_key });
    }
    if let Some(extract) = item.get("extract") {
        let property = string(extract, "property");
        add(extract.get("key"), RefKind::Extract { property });
    }
    let find = item.get("find").and_then(|f| f.get("name"));
    add(find.and_then(|n| n.get("regexp")), RefKind::Find);
    refs
}

/// Walks Helm values for ExternalSecret-shaped entries (the nearest mapping with a `name`); refs
/// outside any entry are named by their values path.
fn walk_values(
    node: &Rc<Node>,
    ctx: &Ctx,
    store: &str,
    path: &mut Vec<String>,
    out: &mut Vec<ExternalSecret>,
) {
    let children: Vec<(String, &Rc<Node>)> = match &**node {
        Node::Map(entries, _) => {
            let shaped = node.get("data").is_some() || node.get("dataFrom").is_some();
            if let Some(name) = node.str_at("name").filter(|_| shaped) {
                let store = store_of(node, STORE_KIND, store);
                let mut es = ctx.es(name.into(), store, node.line(), spec_refs(node, ctx));
                es.namespace = string(node, "namespace");
                es.target = string(node, "target")
                    .or_else(|| node.get("target").and_then(|t| string(t, "name")));
                out.push(es);
                return;
            }
            // Bare refs in values, like `realmImport.extract`.
            let refs = item_refs(node, ctx);
            if !refs.is_empty() {
                let name = if path.is_empty() { "(values)".into() } else { path.join(".") };
                out.push(ctx.es(name, format!("{STORE_KIND}/{store}"), node.line(), refs));
                return;
            }
            let key = |k: &Rc<Node>| k.as_str().unwrap_or("?").to_string();
            entries.iter().map(|(k, v)| (key(k), v)).collect()
        }
        Node::Seq(items, _) => {
            (items.iter().enumerate()).map(|(i, v)| (i.to_string(), v)).collect()
        }
        Node::Scalar(..) => Vec::new(),
    };
    for (key, child) in children {
        path.push(key);
        walk_values(child, ctx, store, path, out);
        path.pop();
    }
}

/// Renders every helmfile in `infra/helmfiles` for `env` (local charts only) and scans the result.
pub(crate) fn scan_rendered(
    infra: &Path,
    base: &Path,
    env: &str,
    path_env: &OsStr,
) -> Result<Scan> {
    let helmfiles_dir = infra.join("helmfiles");
    let mut helmfiles: Vec<PathBuf> = std::fs::read_dir(&helmfiles_dir)
        .with_context(|| format!("listing {}", helmfiles_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "gotmpl"))
        .collect();
    helmfiles.sort();
    // The rendered manifests and helm's cache (beside them), removed however this ends.
    let scratch = tempfile::Builder::new().prefix("xtask-render-").tempdir();
    let scratch = scratch.context("creating a temp folder to render into")?;
    let out_dir = scratch.path().join("out");
    let mut scan = Scan { mode: "rendered", ..Scan::default() };
    for helmfile in &helmfiles {
        let _ = std::fs::remove_dir_all(&out_dir);
        let shown = shown(helmfile, base);
        crate::secrets::helmfile::template(helmfile, env, &out_dir, path_env)
            .with_context(|| format!("rendering {shown} for {env}"))?;
        let (mut files, mut none) = (Vec::new(), Vec::new());
        if out_dir.is_dir() {
            collect_yaml(&out_dir, false, &mut files, &mut none)?;
        }
        files.sort();
        scan.files += files.len();
        for file in files {
            // <out_dir>/<release>/<the chart's template path>
            let rel = file.strip_prefix(&out_dir).unwrap_or(&file);
            let mut parts = rel.components();
            let release = parts.next().map(|c| c.as_os_str().to_string_lossy());
            let release = release.unwrap_or_default().to_string();
            let label = format!("{shown} {release}: {}", parts.as_path().display());
            let ctx = Ctx { file: &label, release: Some(&release), env: Some(env) };
            scan_docs(&read(&file)?, &ctx, false, &mut scan.external_secrets)?;
        }
    }
    Ok(scan)
}

/// The ExternalSecrets to check: static or rendered, plus the contract, which always counts.
pub(crate) fn collect(cfg: &Config, infra: &Path, env: &str, render: bool) -> Result<Scan> {
    let root = &cfg.root;
    if !render {
        return scan_static(infra, root);
    }
    let mut scan = scan_rendered(infra, root, env, &cfg.tools_path)?;
    let contract = infra.join(project::CONTRACT_IN_INFRA);
    if contract.is_file() {
        let shown = shown(&contract, root);
        let ctx = Ctx { env: Some(env), ..Ctx::file(&shown) };
        scan_docs(&read(&contract)?, &ctx, true, &mut scan.external_secrets)?;
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

    fn keys(es: &[ExternalSecret]) -> Vec<(&str, usize)> {
        let refs = es.iter().flat_map(|e| &e.refs);
        refs.map(|r| (r.key.as_str(), r.at.line)).collect()
    }

    #[test]
    fn unknown_kinds_of_external_secrets_io_are_errors() {
        for (api, kind, said) in [
            ("v2alpha9", "ExternalSecret", "unknown apiVersion"),
            ("v1", "ExternalSecrett", "unknown kind \"ExternalSecrett\""),
        ] {
            let text = format!("apiVersion: external-secrets.io/{api}\nkind: {kind}\n");
            let e = scan(&text, false).unwrap_err().to_string();
            assert!(e.starts_with("f.yaml:1: ") && e.contains(said), "{e}");
        }
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
        let got: Vec<(&str, bool)> = es.iter().map(|e| (e.name.as_str(), e.in_scope())).collect();
        let want = [("app", true), ("elsewhere", false), ("realmImport", true)];
        assert_eq!(got, want);
        assert_eq!(keys(&es), [("app-url", 7), ("other-key", 12), ("realm-config", 15)]);
        assert_eq!(es[0].target.as_deref(), Some("app-secret"));
    }

    #[test]
    fn the_line_by_line_search_reads_properties_as_the_yaml_path_does() {
        // Not YAML, so searched line by line: a missing property is none, a templated one `value`,
        // in either order and form; a templated key is left for --render.
        let text = "kind: ExternalSecret\nspec:\n  data:\n    - secretKey: a\n      remoteRef:\n        key: no-property\n    - secretKey: b\n      remoteRef:\n        key: \"templated-property\"\n        property: {{ .p }}\n    - secretKey: c\n      remoteRef:\n        property: first\n        key: property-first\n    - secretKey: d\n      remoteRef:\n        key: {{ .k }}\n        property: not-for-another-key\n    - secretKey: e\n      remoteRef: {key: flow-no-property}\n    - secretKey: f\n      remoteRef: {key: flow-templated, property: {{ .p }}}\n  broken: [unclosed\n";
        let mut out = Vec::new();
        scan_template(text, "t.yaml", &mut out);
        let props: Vec<(&str, usize, Option<&str>)> = (out.iter().flat_map(|e| &e.refs))
            .map(|r| match &r.kind {
                RefKind::Data { property, .. } => (r.key.as_str(), r.at.line, property.as_deref()),
                other => panic!("{other:?}"),
            })
            .collect();
        let want = [
            ("no-property", 6, None),
            ("templated-property", 9, Some("value")),
            ("property-first", 14, Some("first")),
            ("flow-no-property", 20, None),
            ("flow-templated", 22, Some("value")),
        ];
        assert_eq!(props, want);
    }
}
