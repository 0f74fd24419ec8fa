//! Coverage: the keys the charts reference, against the fixtures and,
//! with `--live`, the store. `check` prints the [`Report`]; `doctor` and
//! `migrate`'s coverage step read its failures.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde::Serialize;

use crate::fsutil;
use crate::output::{count, xml_escape};
use crate::secrets::fixtures::{self, SecretSet};
use crate::secrets::provider::{Current, SecretProvider};
use crate::secrets::scan::{self, ExternalSecret, RefKind, Scan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The key is not in the fixtures or the store.
    Missing,
    /// The reference reads a property the store does not keep, or extracts a non-object.
    WrongProperty,
    /// The store's entry has no string `value`.
    MissingProperty,
    /// The store's value differs from the fixture's.
    Drift,
    /// A `dataFrom.find` regexp matches nothing (warning).
    FindEmpty,
    /// A fixture nothing references (info).
    Unused,
    Ok,
}

impl Status {
    pub fn heading(self) -> &'static str {
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

    /// The `--fail-on` class this status belongs to.
    fn class(self) -> Option<&'static str> {
        match self {
            Status::Missing | Status::WrongProperty | Status::MissingProperty => Some("missing"),
            Status::Drift => Some("drift"),
            Status::Unused => Some("unused"),
            Status::FindEmpty | Status::Ok => None,
        }
    }
}

/// Where a key is referenced.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Site {
    pub file: String,
    pub line: usize,
    pub external_secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub status: Status,
    pub key: String,
    pub detail: String,
    pub sites: Vec<Site>,
}

#[derive(Debug, Serialize)]
pub struct OutOfScope {
    pub external_secret: String,
    pub store: String,
    pub at: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
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
    pub fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// Findings that fail under `fail_on`.
    pub fn failures(&self, fail_on: &BTreeSet<String>) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|f| f.status.class().is_some_and(|c| fail_on.contains(c)))
            .collect()
    }
}

/// What `--live` read from the store.
pub struct Live {
    pub target: String,
    pub entries: BTreeMap<String, Option<Current>>,
    pub names: Vec<String>,
}

/// The keys ESO reads by name: every `remoteRef.key` and `extract` of an
/// in-scope ExternalSecret (a `find` lists instead).
pub fn eso_keys(scan: &Scan) -> Vec<String> {
    let keys: BTreeSet<String> = scan
        .external_secrets
        .iter()
        .filter(|e| e.in_scope())
        .flat_map(|e| e.refs.iter())
        .filter(|r| r.kind != RefKind::Find && fixtures::valid_name(&r.key))
        .map(|r| r.key.clone())
        .collect();
    keys.into_iter().collect()
}

/// Reads what `compare` needs from the store: every fixture and every key
/// an in-scope ExternalSecret names, plus the store's listing (for
/// `dataFrom.find`).
pub fn read_live(store: &mut dyn SecretProvider, scan: &Scan, desired: &SecretSet) -> Result<Live> {
    let mut wanted: BTreeSet<String> = desired.entries.keys().cloned().collect();
    for es in scan.external_secrets.iter().filter(|e| e.in_scope()) {
        for r in es
            .refs
            .iter()
            .filter(|r| r.kind != RefKind::Find && fixtures::valid_name(&r.key))
        {
            wanted.insert(r.key.clone());
        }
    }
    let wanted: Vec<String> = wanted.into_iter().collect();
    Ok(Live {
        target: store.target(),
        entries: store.read(&wanted)?,
        names: store.list()?,
    })
}

pub fn parse_fail_on(value: Option<&str>) -> Result<BTreeSet<String>> {
    let mut set = BTreeSet::new();
    for part in value
        .unwrap_or("missing")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if !["missing", "drift", "unused"].contains(&part) {
            crate::usage!(
                "unknown --fail-on {part:?}: use missing, drift and/or unused, comma-separated"
            );
        }
        set.insert(part.to_string());
    }
    Ok(set)
}

fn site(es: &ExternalSecret, at: &scan::Location) -> Site {
    Site {
        file: at.file.clone(),
        line: at.line,
        external_secret: es.display_name(),
        release: es.release.clone(),
        env: es.env.clone(),
    }
}

/// Compares the references with the fixtures and, if given, the live store.
pub fn compare(scan: &Scan, env: &str, desired: &SecretSet, live: Option<&Live>) -> Report {
    let mut by_key: BTreeMap<(Status, String, String), Vec<Site>> = BTreeMap::new();
    let mut add = |status: Status, key: &str, detail: String, s: Site| {
        by_key
            .entry((status, key.to_string(), detail))
            .or_default()
            .push(s);
    };
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    let mut required: BTreeSet<String> = BTreeSet::new();
    let mut out_of_scope = Vec::new();
    let in_scope: Vec<&ExternalSecret> = scan
        .external_secrets
        .iter()
        .filter(|e| e.in_scope())
        .collect();
    for es in &scan.external_secrets {
        if !es.in_scope() {
            out_of_scope.push(OutOfScope {
                external_secret: es.display_name(),
                store: es.store.clone(),
                at: es.at.to_string(),
            });
        }
    }
    let live_names: Option<&[String]> = live.map(|l| l.names.as_slice());
    for es in &in_scope {
        for r in &es.refs {
            let s = site(es, &r.at);
            if r.kind == RefKind::Find {
                match regex::Regex::new(&r.key) {
                    Err(e) => add(
                        Status::WrongProperty,
                        &r.key,
                        format!("invalid dataFrom.find regexp: {e}"),
                        s,
                    ),
                    Ok(re) => {
                        let matched: Vec<&String> =
                            desired.entries.keys().filter(|n| re.is_match(n)).collect();
                        referenced.extend(matched.iter().map(|n| n.to_string()));
                        if matched.is_empty() {
                            add(
                                Status::FindEmpty,
                                &r.key,
                                "dataFrom.find matches no fixture".into(),
                                s.clone(),
                            );
                        }
                        if let Some(names) = live_names {
                            if !names.iter().any(|n| re.is_match(n)) {
                                add(
                                    Status::FindEmpty,
                                    &r.key,
                                    "dataFrom.find matches nothing in the store".into(),
                                    s,
                                );
                            }
                        }
                    }
                }
                continue;
            }
            referenced.insert(r.key.clone());
            required.insert(r.key.clone());
            let fixture = desired.entries.get(&r.key);
            if fixture.is_none() {
                add(
                    Status::Missing,
                    &r.key,
                    "not in the fixtures".into(),
                    s.clone(),
                );
            }
            match &r.kind {
                RefKind::Data { property: Some(p), .. } if p == "value" => {}
                RefKind::Data { property: Some(p), .. } => add(
                    Status::WrongProperty,
                    &r.key,
                    format!("reads property {p:?}; the store keeps each secret under \"value\""),
                    s.clone(),
                ),
                RefKind::Data { property: None, .. } => add(
                    Status::WrongProperty,
                    &r.key,
                    "no remoteRef.property: ESO would return the whole entry as JSON; set property: value".into(),
                    s.clone(),
                ),
                RefKind::Extract { property: Some(p) } if p == "value" => {
                    let is_object = fixture.is_none_or(|f| {
                        serde_json::from_str::<serde_json::Value>(&f.value).is_ok_and(|v| v.is_object())
                    });
                    if !is_object {
                        add(
                            Status::WrongProperty,
                            &r.key,
                            "dataFrom.extract with property value needs a JSON object as the value".into(),
                            s.clone(),
                        );
                    }
                }
                RefKind::Extract { property: Some(p) } => add(
                    Status::WrongProperty,
                    &r.key,
                    format!("extracts property {p:?}; the store keeps each secret under \"value\""),
                    s.clone(),
                ),
                RefKind::Extract { property: None } | RefKind::Find => {}
            }
            if let Some(live) = live {
                match live.entries.get(&r.key).cloned().flatten() {
                    None => add(
                        Status::Missing,
                        &r.key,
                        format!("not in the store ({})", live.target),
                        s,
                    ),
                    Some(cur) if cur.raw_sha256.is_some() => add(
                        Status::MissingProperty,
                        &r.key,
                        "the store holds a bare value, not {\"value\": ...}, so the property lookup fails: re-seed \
                         to rewrite it"
                            .to_string(),
                        s,
                    ),
                    Some(cur) if cur.sha256.is_none() => add(
                        Status::MissingProperty,
                        &r.key,
                        format!(
                            "the store's entry has no string property \"value\" (has: {})",
                            cur.properties.join(", ")
                        ),
                        s,
                    ),
                    Some(cur) => {
                        if let Some(f) = fixture {
                            if cur.sha256.as_deref() != Some(f.sha256.as_str()) {
                                add(
                                    Status::Drift,
                                    &r.key,
                                    format!(
                                        "store {} != fixture {}: changed by hand, or the seed is stale (re-seed)",
                                        fsutil::short(cur.sha256.as_deref().unwrap_or_default()),
                                        fsutil::short(&f.sha256)
                                    ),
                                    s,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    let mut findings: Vec<Finding> = by_key
        .into_iter()
        .map(|((status, key, detail), mut sites)| {
            sites.sort();
            sites.dedup();
            Finding {
                status,
                key,
                detail,
                sites,
            }
        })
        .collect();
    let problem_keys: BTreeSet<&str> = findings.iter().map(|f| f.key.as_str()).collect();
    let mut ok: Vec<Finding> = required
        .iter()
        .filter(|k| !problem_keys.contains(k.as_str()))
        .map(|k| Finding {
            status: Status::Ok,
            key: k.clone(),
            detail: String::new(),
            sites: Vec::new(),
        })
        .collect();
    for name in desired.entries.keys().filter(|n| !referenced.contains(*n)) {
        findings.push(Finding {
            status: Status::Unused,
            key: name.clone(),
            detail: "no ExternalSecret references it".into(),
            sites: Vec::new(),
        });
    }
    findings.append(&mut ok);
    findings.sort_by(|a, b| (a.status, &a.key).cmp(&(b.status, &b.key)));
    Report {
        mode: scan.mode,
        env: env.to_string(),
        live: live.map(|l| l.target.clone()),
        files: scan.files,
        external_secrets: in_scope.len(),
        required_keys: required.len(),
        findings,
        out_of_scope,
    }
}

/// The human report: grouped by status, each key with every place it is referenced.
pub fn render_text(
    report: &Report,
    fixtures: &str,
    fail_on: &BTreeSet<String>,
    verbose: bool,
    quiet: bool,
    secs: f64,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if !quiet {
        let _ =
            writeln!(
            out,
            "check ({} scan, env {}): {}, {} on ClusterSecretStore/{}, {}; against {fixtures}{}",
            report.mode,
            report.env,
            count(report.files, "file", "files"),
            count(report.external_secrets, "ExternalSecret", "ExternalSecrets"),
            scan::STORE_NAME,
            count(report.required_keys, "required key", "required keys"),
            report.live.as_deref().map(|t| format!(" and {t}")).unwrap_or_default()
        );
    }
    let mut status: Option<Status> = None;
    let mut unused_shown = 0;
    let unused = report.count(Status::Unused);
    for f in &report.findings {
        let show = match f.status {
            Status::Ok => verbose,
            Status::Unused => !quiet,
            _ => true,
        };
        if !show {
            continue;
        }
        if status != Some(f.status) {
            status = Some(f.status);
            let _ = writeln!(out, "\n{} ({})", f.status.heading(), report.count(f.status));
        }
        // Unused fixtures are information: at most NAMES_SHOWN without --verbose.
        if f.status == Status::Unused && !verbose {
            unused_shown += 1;
            if unused_shown > crate::output::NAMES_SHOWN {
                if unused_shown == unused {
                    let _ = writeln!(
                        out,
                        "  (and {} more; --verbose or --output json lists them)",
                        unused - crate::output::NAMES_SHOWN
                    );
                }
                continue;
            }
        }
        if f.detail.is_empty() {
            let _ = writeln!(out, "  {}", f.key);
        } else {
            let _ = writeln!(out, "  {}: {}", f.key, f.detail);
        }
        for s in &f.sites {
            let mut extra = String::new();
            if let Some(r) = &s.release {
                extra = format!(" [release {r}, env {}]", s.env.as_deref().unwrap_or("?"));
            }
            let _ = writeln!(
                out,
                "      {}:{}  {}{extra}",
                s.file, s.line, s.external_secret
            );
        }
    }
    if !report.out_of_scope.is_empty() && !quiet {
        let _ = writeln!(
            out,
            "\nOUT OF SCOPE (other stores, not checked) ({})",
            report.out_of_scope.len()
        );
        for o in &report.out_of_scope {
            let _ = writeln!(out, "  {}  uses {}  ({})", o.external_secret, o.store, o.at);
        }
    }
    let failed = !report.failures(fail_on).is_empty();
    let _ = writeln!(
        out,
        "\nsummary: {} ok, {} missing, {} wrong property, {} missing property, {} drift, {} find-empty, {} unused; \
         fail on {}: {} ({secs:.3}s)",
        report.count(Status::Ok),
        report.count(Status::Missing),
        report.count(Status::WrongProperty),
        report.count(Status::MissingProperty),
        report.count(Status::Drift),
        report.count(Status::FindEmpty),
        report.count(Status::Unused),
        fail_on.iter().cloned().collect::<Vec<_>>().join(","),
        if failed { "FAIL" } else { "PASS" }
    );
    out
}

/// JUnit XML: one test case per required key, plus one per other finding.
pub fn render_junit(report: &Report, fail_on: &BTreeSet<String>) -> String {
    use std::fmt::Write;
    let cases: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.status != Status::Unused || fail_on.contains("unused"))
        .collect();
    let failures = cases
        .iter()
        .filter(|f| f.status.class().is_some_and(|c| fail_on.contains(c)))
        .count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites><testsuite name=\"secrets-coverage.{}\" tests=\"{}\" failures=\"{failures}\">",
        xml_escape(&report.env),
        cases.len()
    );
    for f in cases {
        let _ = write!(
            out,
            "  <testcase classname=\"secrets.{}.{}\" name=\"{}\"",
            xml_escape(&report.env),
            report.mode,
            xml_escape(&f.key)
        );
        let sites: Vec<String> = f
            .sites
            .iter()
            .map(|s| format!("{}:{} {}", s.file, s.line, s.external_secret))
            .collect();
        let fails = f.status.class().is_some_and(|c| fail_on.contains(c));
        if fails {
            let _ = writeln!(
                out,
                "><failure type=\"{:?}\" message=\"{}\">{}</failure></testcase>",
                f.status,
                xml_escape(&f.detail),
                xml_escape(&sites.join("\n"))
            );
        } else if f.status != Status::Ok {
            let _ = writeln!(
                out,
                "><system-out>{}: {}</system-out></testcase>",
                f.status.heading(),
                xml_escape(&f.detail)
            );
        } else {
            let _ = writeln!(out, "/>");
        }
    }
    out.push_str("</testsuite></testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsutil::sha256_hex;
    use crate::secrets::fixtures::Entry;

    fn fixtures(pairs: &[(&str, &str)]) -> SecretSet {
        let mut s = SecretSet::default();
        for (n, v) in pairs {
            s.entries.insert(
                n.to_string(),
                Entry {
                    value: v.to_string(),
                    sha256: sha256_hex(v.as_bytes()),
                    overridden: false,
                },
            );
        }
        s
    }

    fn scan_of(text: &str) -> Scan {
        let mut scan = Scan {
            mode: "static",
            files: 1,
            ..Scan::default()
        };
        scan::scan_text(
            text,
            "values.yaml",
            None,
            None,
            true,
            &mut scan.external_secrets,
        )
        .unwrap();
        scan
    }

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

    #[test]
    fn finds_missing_wrong_property_empty_find_and_unused() {
        let report = compare(
            &scan_of(VALUES),
            "local",
            &fixtures(&[("app-url", "u"), ("spare", "s"), ("realm", "not json")]),
            None,
        );
        let got: Vec<(Status, &str, usize)> = report
            .findings
            .iter()
            .map(|f| (f.status, f.key.as_str(), f.sites.len()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Status::Missing, "app-password", 2),
                (Status::WrongProperty, "app-url", 1),
                (Status::WrongProperty, "realm", 1),
                (Status::FindEmpty, "^grafana-", 1),
                (Status::Unused, "spare", 0),
            ]
        );
        let missing = &report.findings[0];
        assert_eq!(missing.sites[0].line, 6);
        assert_eq!(missing.sites[0].external_secret, "ameide/app");
        assert_eq!(missing.sites[1].external_secret, "ameide/other");
        let fail_on = parse_fail_on(None).unwrap();
        assert_eq!(report.failures(&fail_on).len(), 3);
    }

    #[test]
    fn live_reports_drift_and_missing_property() {
        let text = "externalSecrets:\n  - name: a\n    data:\n      - {secretKey: x, remoteRef: {key: k1, property: value}}\n      - {secretKey: y, remoteRef: {key: k2, property: value}}\n      - {secretKey: z, remoteRef: {key: k3, property: value}}\n";
        let desired = fixtures(&[("k1", "v1"), ("k2", "v2"), ("k3", "v3")]);
        let mut entries = BTreeMap::new();
        entries.insert(
            "k1".to_string(),
            Some(Current {
                sha256: Some(sha256_hex(b"v1")),
                properties: vec!["value".into()],
                ..Default::default()
            }),
        );
        entries.insert(
            "k2".to_string(),
            Some(Current {
                sha256: Some(sha256_hex(b"edited")),
                properties: vec!["value".into()],
                ..Default::default()
            }),
        );
        entries.insert(
            "k3".to_string(),
            Some(Current {
                sha256: None,
                properties: vec!["password".into()],
                ..Default::default()
            }),
        );
        let live = Live {
            target: "vault test".into(),
            entries,
            names: vec!["k1".into(), "k2".into(), "k3".into()],
        };
        let report = compare(&scan_of(text), "local", &desired, Some(&live));
        let got: Vec<(Status, &str)> = report
            .findings
            .iter()
            .map(|f| (f.status, f.key.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Status::MissingProperty, "k3"),
                (Status::Drift, "k2"),
                (Status::Ok, "k1")
            ]
        );
        let drift = parse_fail_on(Some("drift")).unwrap();
        assert_eq!(report.failures(&drift).len(), 1);
        assert!(parse_fail_on(Some("missing,bogus")).is_err());
    }

    /// Snapshot of the human report.
    #[test]
    fn text_snapshot() {
        let report = compare(
            &scan_of(VALUES),
            "local",
            &fixtures(&[
                ("app-url", "u"),
                ("realm", "{\"a\":\"b\"}"),
                ("grafana-admin", "g"),
            ]),
            None,
        );
        let text = render_text(
            &report,
            "fixtures.json",
            &parse_fail_on(None).unwrap(),
            false,
            false,
            0.001,
        );
        let expected = "check (static scan, env local): 1 file, 4 ExternalSecrets on ClusterSecretStore/ameide-vault, 3 required keys; against fixtures.json

MISSING (1)
  app-password: not in the fixtures
      values.yaml:6  ameide/app
      values.yaml:13  ameide/other

WRONG PROPERTY (1)
  app-url: reads property \"url\"; the store keeps each secret under \"value\"
      values.yaml:8  ameide/app

summary: 1 ok, 1 missing, 1 wrong property, 0 missing property, 0 drift, 0 find-empty, 0 unused; fail on missing: FAIL (0.001s)
";
        assert_eq!(text, expected);
        let junit = render_junit(&report, &parse_fail_on(None).unwrap());
        assert!(junit.contains("tests=\"3\" failures=\"2\""), "{junit}");
        assert!(
            junit.contains("<testcase classname=\"secrets.local.static\" name=\"realm\"/>"),
            "{junit}"
        );
    }
}
