//! What `doctor` and `status` ask a reachable Vault: does it still hold the fixtures (a dev-mode
//! Vault forgets them on a restart), and may the token write what the seed writes.

use std::collections::BTreeSet;

use anyhow::{ensure, Result};
use serde::Serialize;
use serde_json::json;

use crate::secrets::eso_access::{strings, EsoNames};
use crate::secrets::provider::vault_http::{Method, Reply, VaultHttp};
use crate::secrets::provider::RECORD_NAME;

/// The one command that puts back what a restarted dev-mode Vault forgot.
pub(crate) const RESEED: &str = "cargo xtask secrets seed";

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Held {
    pub present: usize,
    pub total: usize,
    pub missing: Vec<String>,
}

impl Held {
    pub(crate) fn count(fixtures: &[String], listed: &[String]) -> Held {
        let listed: BTreeSet<&String> = listed.iter().collect();
        let mut missing: Vec<String> =
            fixtures.iter().filter(|n| !listed.contains(n)).cloned().collect();
        missing.sort();
        Held { present: fixtures.len() - missing.len(), total: fixtures.len(), missing }
    }

    pub(crate) fn complete(&self) -> bool {
        self.missing.is_empty()
    }

    pub(crate) fn describe(&self) -> String {
        if self.complete() {
            return format!("holds all {} fixtures", self.total);
        }
        if self.present == 0 {
            return format!(
                "holds none of the {} fixtures: it forgot them (the local chart runs Vault in dev mode, in \
                 memory, so a pod restart, a laptop sleep or `k3d cluster stop/start` empties it; ESO keeps the old \
                 Secrets, but new ones and refreshes fail)",
                self.total
            );
        }
        let shown = self.missing[..self.missing.len().min(10)].join(", ");
        let more = match self.missing.len().saturating_sub(10) {
            0 => String::new(),
            n => format!(", and {n} more"),
        };
        let (present, total) = (self.present, self.total);
        format!("holds {present} of {total} fixtures; missing: {shown}{more}")
    }
}

/// Capabilities the seed needs on a path and the token lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Lack {
    pub path: String,
    pub missing: Vec<String>,
    pub why: &'static str,
}

/// One path the seed writes: (path, capabilities needed, why, whether it is KV's).
type SeedPath = (String, Vec<&'static str>, &'static str, bool);

/// The paths the seed writes, KV first, then ESO's access. `sample` is one fixture name.
pub(crate) fn seed_paths(
    mount: &str,
    kv_v2: bool,
    sample: &str,
    eso: Option<&EsoNames>,
) -> Vec<SeedPath> {
    const WRITE: &[&str] = &["create", "update", "read"];
    const SET: &[&str] = &["create", "update"];
    let list = "list what the store holds";
    let kv: [(String, &[&'static str], &'static str); 3] = if kv_v2 {
        [
            (format!("{mount}/data/{sample}"), WRITE, "write each secret"),
            (
                format!("{mount}/metadata/{sample}"),
                &["update", "read"],
                "record each secret's checksum",
            ),
            (format!("{mount}/metadata/"), &["list"], list),
        ]
    } else {
        [
            (format!("{mount}/{sample}"), WRITE, "write each secret"),
            (
                format!("{mount}/{RECORD_NAME}"),
                WRITE,
                "record what the seed wrote (KV v1 has no metadata)",
            ),
            (format!("{mount}/"), &["list"], list),
        ]
    };
    let mut paths: Vec<SeedPath> =
        kv.into_iter().map(|(p, caps, why)| (p, caps.to_vec(), why, true)).collect();
    if let Some(n) = eso {
        let (m, policy, role) = (&n.auth_mount, &n.policy, &n.role);
        let eso: [(String, &[&'static str], &'static str); 4] = [
            (format!("sys/auth/{m}"), &["create", "update", "sudo"], "enable ESO's auth method"),
            (format!("auth/{m}/config"), SET, "configure ESO's auth method"),
            (format!("sys/policies/acl/{policy}"), SET, "write ESO's policy"),
            (format!("auth/{m}/role/{role}"), SET, "write ESO's role"),
        ];
        paths.extend(eso.into_iter().map(|(p, caps, why)| (p, caps.to_vec(), why, false)));
    }
    paths
}

/// What the token lacks on the secrets' paths (the seed fails) and ESO's (the seed skips them).
pub(crate) fn lacking(
    http: &VaultHttp,
    mount: &str,
    kv_v2: bool,
    sample: &str,
    eso: Option<&EsoNames>,
) -> Result<(Vec<Lack>, Vec<Lack>)> {
    let paths = seed_paths(mount, kv_v2, sample, eso);
    let body = json!({ "paths": paths.iter().map(|p| &p.0).collect::<Vec<_>>() });
    let reply = http.try_call(Method::Post, "sys/capabilities-self", Some(&body))?;
    let (status, errors) = (reply.status, reply.errors());
    ensure!(status == 200, "POST sys/capabilities-self failed with HTTP {status}: {errors}");
    let (mut kv, mut eso_lacks) = (Vec::new(), Vec::new());
    for (path, needed, why, is_kv) in paths {
        let caps = capabilities(&reply, &path);
        let unheld = needed.iter().filter(|c| !caps.iter().any(|held| held == *c));
        let missing: Vec<String> = unheld.map(|c| c.to_string()).collect();
        if caps.iter().any(|c| c == "root") || missing.is_empty() {
            continue;
        }
        let lacks = if is_kv { &mut kv } else { &mut eso_lacks };
        lacks.push(Lack { path, missing, why });
    }
    Ok((kv, eso_lacks))
}

/// What a `sys/capabilities-self` answer grants on `path`: at the top level, else under `data`.
pub(crate) fn capabilities(reply: &Reply, path: &str) -> Vec<String> {
    match &reply.body[path] {
        list if list.is_array() => strings(list),
        _ => strings(&reply.body["data"][path]),
    }
}

/// `update on secret/data/x (write each secret); ...`
pub(crate) fn describe_lacks(lacks: &[Lack]) -> String {
    let each = lacks.iter().map(|l| format!("{} on {} ({})", l.missing.join("+"), l.path, l.why));
    each.collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_at_the_top_level_or_under_data() {
        let reply = |body| Reply { status: 200, body };
        let top = reply(json!({"kv/x": ["read", "list"], "data": {"kv/x": ["deny"]}}));
        assert_eq!(capabilities(&top, "kv/x"), ["read", "list"]);
        let nested = reply(json!({"kv/x": "not a list", "data": {"kv/x": ["update"]}}));
        assert_eq!(capabilities(&nested, "kv/x"), ["update"]);
        assert!(capabilities(&nested, "kv/y").is_empty());
    }

    #[test]
    fn only_fixtures_count_as_held() {
        let s = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let listed = s(&["c", "_cargo-xtask-secrets", "a", "not-a-fixture"]);
        let held = Held::count(&s(&["b", "a", "c"]), &listed);
        assert_eq!((held.present, held.total, held.missing), (2, 3, s(&["b"])));
    }

    #[test]
    fn kv1_seed_paths_include_the_record_entry() {
        let p = seed_paths("kv", false, "x", None);
        let got: Vec<(&str, &[&str])> = p.iter().map(|p| (p.0.as_str(), &p.1[..])).collect();
        let (write, list) = (&["create", "update", "read"][..], &["list"][..]);
        assert_eq!(got, [("kv/x", write), ("kv/_cargo-xtask-secrets", write), ("kv/", list)]);
        assert!(p.iter().all(|p| p.3), "every KV path is the seed's own");
    }
}
