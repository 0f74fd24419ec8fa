//! Coverage: the keys the charts reference, against the fixtures and, with
//! `--live`, the store. `check` prints the [`Report`]; `doctor` and `migrate` read its failures.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde::Serialize;
use serde_json::Value;

use crate::flags::{FailClass, FailOn};
use crate::output::{count, xml_escape, NAMES_SHOWN};
use crate::secrets::fixtures::{self, Entry, SecretSet};
use crate::secrets::provider::{Currents, DigestKey, SecretProvider};
use crate::secrets::scan::{self, ExternalSecret, RefKind, Scan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Status {
    Missing,
    /// The reference reads a property the store does not keep, or extracts a non-object.
    WrongProperty,
    /// The store's entry has no string `value`.
    MissingProperty,
    Drift,
    FindEmpty,
    Unused,
    Ok,
}

impl Status {
    pub(crate) fn heading(self) -> &'static str {
        match self {
            Status::Missing => "MISSING",
            Status::WrongProperty => "WRONG PROPERTY",
            Status::MissingProperty => "MISSING PROPERTY (store)",
            Status::Drift => "DRIFT (store differs from fixtures)",
            Status::FindEmpty => "FIND MATCHES NOTHING (warning)",
            Status::Unused => "UNUSED FIXTURES (info)",
            Status::Ok => "OK",
        }
    }

    fn fails(self, fail_on: &FailOn) -> bool {
        let class = match self {
            Status::Missing | Status::WrongProperty | Status::MissingProperty => FailClass::Missing,
            Status::Drift => FailClass::Drift,
            Status::Unused => FailClass::Unused,
            Status::FindEmpty | Status::Ok => return false,
        };
        fail_on.0.contains(&class)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Site {
    pub file: String,
    pub line: usize,
    pub external_secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    pub status: Status,
    pub key: String,
    pub detail: String,
    pub sites: Vec<Site>,
}

#[derive(Debug, Serialize)]
pub(crate) struct OutOfScope {
    pub external_secret: String,
    pub store: String,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub mode: &'static str,
    pub env: String,
    pub live: Option<String>,
    pub files: usize,
    pub external_secrets: usize,
    pub required_keys: usize,
    pub findings: Vec<Finding>,
    pub out_of_scope: Vec<OutOfScope>,
}

impl Report {
    pub(crate) fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    pub(crate) fn failures(&self, fail_on: &FailOn) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.status.fails(fail_on)).collect()
    }
}

pub(crate) struct Live {
    pub target: String,
    pub entries: Currents,
    pub names: Vec<String>,
    /// The key of the checksums a drift shows.
    pub checksums: DigestKey,
}

/// The valid keys in-scope ExternalSecrets name (a `find` lists instead).
fn named_keys(scan: &Scan) -> impl Iterator<Item = &String> {
    let refs = scan.external_secrets.iter().filter(|e| e.in_scope());
    let refs = refs.flat_map(|e| e.refs.iter());
    let refs = refs.filter(|r| r.kind != RefKind::Find && fixtures::valid_name(&r.key));
    refs.map(|r| &r.key)
}

pub(crate) fn eso_keys(scan: &Scan) -> Vec<String> {
    let keys: BTreeSet<&String> = named_keys(scan).collect();
    keys.into_iter().cloned().collect()
}

/// Every fixture and named key in the store, plus the listing (for `dataFrom.find`).
pub(crate) fn read_live(
    store: &mut dyn SecretProvider,
    scan: &Scan,
    desired: &SecretSet,
    checksums: DigestKey,
) -> Result<Live> {
    let wanted: BTreeSet<&String> = desired.entries.keys().chain(named_keys(scan)).collect();
    let wanted: Vec<String> = wanted.into_iter().cloned().collect();
    let (entries, names) = (store.read(&wanted, desired)?, store.list()?);
    Ok(Live { target: store.target(), entries, names, checksums })
}

pub(crate) fn compare(scan: &Scan, env: &str, desired: &SecretSet, live: Option<&Live>) -> Report {
    // Sorted as the report lists them: by status, key, then detail.
    let mut by_key: BTreeMap<(Status, String, String), Vec<Site>> = BTreeMap::new();
    let (mut referenced, mut required): (BTreeSet<String>, BTreeSet<String>) = Default::default();
    let (in_scope, others): (Vec<&ExternalSecret>, Vec<&ExternalSecret>) =
        scan.external_secrets.iter().partition(|e| e.in_scope());
    for es in &in_scope {
        for r in &es.refs {
            let mut found: Vec<(Status, String)> = Vec::new();
            let find_empty = |what| (Status::FindEmpty, format!("dataFrom.find matches {what}"));
            let invalid = |e| (Status::WrongProperty, format!("invalid dataFrom.find regexp: {e}"));
            if r.kind == RefKind::Find {
                match regex_lite::Regex::new(&r.key) {
                    Err(e) => found.push(invalid(e)),
                    Ok(re) => {
                        let matched: Vec<&String> =
                            desired.entries.keys().filter(|n| re.is_match(n)).collect();
                        if matched.is_empty() {
                            found.push(find_empty("no fixture"));
                        }
                        referenced.extend(matched.into_iter().cloned());
                        if live.is_some_and(|l| !l.names.iter().any(|n| re.is_match(n))) {
                            found.push(find_empty("nothing in the store"));
                        }
                    }
                }
            } else {
                referenced.insert(r.key.clone());
                required.insert(r.key.clone());
                let fixture = desired.entries.get(&r.key);
                if fixture.is_none() {
                    found.push((Status::Missing, "not in the fixtures".into()));
                }
                let wrong = |what: &str, p: &str| {
                    format!("{what} property {p:?}; the store keeps each secret under \"value\"")
                };
                let object =
                    |f: &Entry| serde_json::from_str(&f.value).is_ok_and(|v: Value| v.is_object());
                let not_object = || fixture.is_some_and(|f| !object(f));
                let wrong = match &r.kind {
                    RefKind::Data { property: Some(p), .. } if p != "value" => Some(wrong("reads", p)),
                    RefKind::Data { property: None, .. } => Some(
                        "no remoteRef.property: ESO would return the whole entry as JSON; set property: value".into(),
                    ),
                    RefKind::Extract { property: Some(p) } if p != "value" => Some(wrong("extracts", p)),
                    RefKind::Extract { property: Some(_) } if not_object() => Some(
                        "dataFrom.extract with property value needs a JSON object as the value".into(),
                    ),
                    _ => None,
                };
                found.extend(wrong.map(|d| (Status::WrongProperty, d)));
                found.extend(live.and_then(|l| live_problem(l, &r.key, fixture)));
            }
            let site = Site {
                file: r.at.file.clone(),
                line: r.at.line,
                external_secret: es.display_name(),
                release: es.release.clone(),
                env: es.env.clone(),
            };
            for (status, detail) in found {
                by_key.entry((status, r.key.clone(), detail)).or_default().push(site.clone());
            }
        }
    }
    let problem_keys: BTreeSet<String> = by_key.keys().map(|(_, key, _)| key.clone()).collect();
    for name in desired.entries.keys().filter(|n| !referenced.contains(*n)) {
        let unused = "no ExternalSecret references it".to_string();
        by_key.insert((Status::Unused, name.clone(), unused), vec![]);
    }
    for key in required.difference(&problem_keys) {
        by_key.insert((Status::Ok, key.clone(), String::new()), vec![]);
    }
    let findings = by_key.into_iter().map(|((status, key, detail), mut sites)| {
        sites.sort();
        sites.dedup();
        Finding { status, key, detail, sites }
    });
    let out_of_scope = others.iter().map(|es| OutOfScope {
        external_secret: es.display_name(),
        store: es.store.clone(),
        at: format!("{}:{}", es.at.file, es.at.line),
    });
    Report {
        mode: scan.mode,
        env: env.to_string(),
        live: live.map(|l| l.target.clone()),
        files: scan.files,
        external_secrets: in_scope.len(),
        required_keys: required.len(),
        findings: findings.collect(),
        out_of_scope: out_of_scope.collect(),
    }
}

/// What the store holds for a referenced key, when that is a problem.
fn live_problem(live: &Live, key: &str, fixture: Option<&Entry>) -> Option<(Status, String)> {
    let Some(cur) = live.entries.get(key).and_then(Option::as_ref) else {
        let target = &live.target;
        return Some((Status::Missing, format!("not in the store ({target})")));
    };
    if cur.raw_sha256.is_some() {
        let said = "the store holds a bare value, not {\"value\": ...}, so the property lookup fails: re-seed to \
                    rewrite it";
        return Some((Status::MissingProperty, said.into()));
    }
    let Some(sha) = &cur.sha256 else {
        let has = cur.properties.join(", ");
        let said = format!("the store's entry has no string property \"value\" (has: {has})");
        return Some((Status::MissingProperty, said));
    };
    let f = fixture.filter(|f| f.sha256 != *sha)?;
    let (store, fixture) = (live.checksums.shown(sha), live.checksums.shown(&f.sha256));
    let said = format!(
        "store {store} != fixture {fixture}: changed by hand, or the seed is stale (re-seed)"
    );
    Some((Status::Drift, said))
}

pub(crate) fn render_text(
    report: &Report,
    fixtures: &str,
    fail_on: &FailOn,
    verbose: bool,
    quiet: bool,
    secs: f64,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if !quiet {
        let (mode, env) = (report.mode, &report.env);
        let files = count(report.files, "file", "files");
        let secrets = count(report.external_secrets, "ExternalSecret", "ExternalSecrets");
        let keys = count(report.required_keys, "required key", "required keys");
        let live = report.live.as_deref().map(|t| format!(" and {t}")).unwrap_or_default();
        let store = scan::STORE_NAME;
        let _ = writeln!(
            out,
            "check ({mode} scan, env {env}): {files}, {secrets} on ClusterSecretStore/{store}, {keys}; against \
             {fixtures}{live}"
        );
    }
    let mut status: Option<Status> = None;
    let (mut unused_seen, unused) = (0, report.count(Status::Unused));
    for f in &report.findings {
        if (f.status == Status::Ok && !verbose) || (f.status == Status::Unused && quiet) {
            continue;
        }
        if status != Some(f.status) {
            status = Some(f.status);
            let _ = writeln!(out, "\n{} ({})", f.status.heading(), report.count(f.status));
        }
        // Unused fixtures are information: at most NAMES_SHOWN without --verbose.
        if f.status == Status::Unused && !verbose {
            unused_seen += 1;
            if unused_seen == NAMES_SHOWN + 1 {
                let more = unused - NAMES_SHOWN;
                let _ = writeln!(out, "  (and {more} more; --verbose or --output json lists them)");
            }
            if unused_seen > NAMES_SHOWN {
                continue;
            }
        }
        let sep = if f.detail.is_empty() { "" } else { ": " };
        let _ = writeln!(out, "  {}{sep}{}", f.key, f.detail);
        for s in &f.sites {
            let env = s.env.as_deref().unwrap_or("?");
            let extra = s.release.as_ref().map(|r| format!(" [release {r}, env {env}]"));
            let (file, line, es) = (&s.file, s.line, &s.external_secret);
            let _ = writeln!(out, "      {file}:{line}  {es}{}", extra.unwrap_or_default());
        }
    }
    if !report.out_of_scope.is_empty() && !quiet {
        let n = report.out_of_scope.len();
        let _ = writeln!(out, "\nOUT OF SCOPE (other stores, not checked) ({n})");
        for o in &report.out_of_scope {
            let _ = writeln!(out, "  {}  uses {}  ({})", o.external_secret, o.store, o.at);
        }
    }
    let counts = [
        (Status::Ok, "ok"),
        (Status::Missing, "missing"),
        (Status::WrongProperty, "wrong property"),
        (Status::MissingProperty, "missing property"),
        (Status::Drift, "drift"),
        (Status::FindEmpty, "find-empty"),
        (Status::Unused, "unused"),
    ];
    let counts = counts.map(|(status, name)| format!("{} {name}", report.count(status)));
    let classes: Vec<&str> = fail_on.0.iter().map(|c| c.as_str()).collect();
    let verdict = if report.failures(fail_on).is_empty() { "PASS" } else { "FAIL" };
    let (counts, classes) = (counts.join(", "), classes.join(","));
    let _ = writeln!(out, "\nsummary: {counts}; fail on {classes}: {verdict} ({secs:.3}s)");
    out
}

/// JUnit XML: one test case per required key, plus one per other finding.
pub(crate) fn render_junit(report: &Report, fail_on: &FailOn) -> String {
    let listed =
        |f: &&Finding| f.status != Status::Unused || fail_on.0.contains(&FailClass::Unused);
    let cases: Vec<&Finding> = report.findings.iter().filter(listed).collect();
    let failures = cases.iter().filter(|f| f.status.fails(fail_on)).count();
    let (env, tests) = (xml_escape(&report.env), cases.len());
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites><testsuite name=\"secrets-coverage.{env}\" \
         tests=\"{tests}\" failures=\"{failures}\">\n"
    );
    for f in cases {
        let (key, detail) = (xml_escape(&f.key), xml_escape(&f.detail));
        let end = if f.status.fails(fail_on) {
            let site = |s: &Site| format!("{}:{} {}", s.file, s.line, s.external_secret);
            let sites: Vec<String> = f.sites.iter().map(site).collect();
            let (status, sites) = (f.status, xml_escape(&sites.join("\n")));
            format!(
                "><failure type=\"{status:?}\" message=\"{detail}\">{sites}</failure></testcase>"
            )
        } else if f.status != Status::Ok {
            let heading = f.status.heading();
            format!("><system-out>{heading}: {detail}</system-out></testcase>")
        } else {
            "/>".into()
        };
        let mode = report.mode;
        out += &format!("  <testcase classname=\"secrets.{env}.{mode}\" name=\"{key}\"{end}\n");
    }
    out + "</testsuite></testsuites>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUES: &str = "externalSecrets:
  - name: app
    namespace: ameide
    data:
      - secretKey: password
        remoteRef: {key: app-password, property: value}
      - secretKey: url
        remoteRef: {key: app-url, property: url}
  - name: other
    namespace: ameide
    data:
      - secretKey: password
        remoteRef: {key: app-password, property: value}
  - name: grafana
    dataFrom:
      - find: {name: {regexp: \"^grafana-\"}}
  - name: realm
    dataFrom:
      - extract: {key: realm, property: value}
";

    fn report(fixtures: &[(&str, &str)]) -> Report {
        let mut scan = Scan { mode: "static", files: 1, ..Scan::default() };
        let es = &mut scan.external_secrets;
        scan::scan_text(VALUES, "values.yaml", None, None, true, es).unwrap();
        compare(&scan, "local", &SecretSet::of(fixtures), None)
    }

    #[test]
    fn text_snapshot() {
        let report = report(&[("app-url", "u"), ("spare", "s"), ("realm", "not json")]);
        let fail_on = FailOn::default();
        let text = render_text(&report, "fixtures.json", &fail_on, true, false, 0.001);
        let expected = "check (static scan, env local): 1 file, 4 ExternalSecrets on ClusterSecretStore/ameide-vault, 3 required keys; against fixtures.json

MISSING (1)
  app-password: not in the fixtures
      values.yaml:6  ameide/app
      values.yaml:13  ameide/other

WRONG PROPERTY (2)
  app-url: reads property \"url\"; the store keeps each secret under \"value\"
      values.yaml:8  ameide/app
  realm: dataFrom.extract with property value needs a JSON object as the value
      values.yaml:19  realm

FIND MATCHES NOTHING (warning) (1)
  ^grafana-: dataFrom.find matches no fixture
      values.yaml:16  grafana

UNUSED FIXTURES (info) (1)
  spare: no ExternalSecret references it

summary: 0 ok, 1 missing, 2 wrong property, 0 missing property, 0 drift, 1 find-empty, 1 unused; fail on missing: FAIL (0.001s)
";
        assert_eq!(text, expected);
        assert!("missing,bogus".parse::<FailOn>().is_err());
        let junit = render_junit(&report, &fail_on);
        assert!(junit.contains("tests=\"4\" failures=\"3\""), "{junit}");
    }
}
