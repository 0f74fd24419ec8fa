//! What `doctor` and `status` ask a reachable Vault beyond "up and
//! unsealed": does it still hold the seeded fixtures (a dev-mode Vault
//! forgets everything when its pod restarts), and may the token write what
//! the seed writes (`sys/capabilities-self`).

use std::collections::BTreeSet;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use crate::secrets::eso_access::{strings, EsoNames};
use crate::secrets::provider::vault_http::{Method, Reply, VaultHttp};
use crate::secrets::provider::RECORD_NAME;

/// The one command that puts back what a restarted dev-mode Vault forgot:
/// the fixtures and ESO's access.
pub const RESEED: &str = "cargo xtask secrets seed";

/// How many of the fixtures the store holds.
#[derive(Debug, Clone, Serialize)]
pub struct Held {
    pub present: usize,
    pub total: usize,
    /// Fixture names the store lacks, sorted.
    pub missing: Vec<String>,
}

impl Held {
    /// Counts `fixtures` among `listed` (the store's names).
    pub fn count(fixtures: &[String], listed: &[String]) -> Held {
        let listed: BTreeSet<&str> = listed.iter().map(String::as_str).collect();
        let mut missing: Vec<String> = fixtures
            .iter()
            .filter(|n| !listed.contains(n.as_str()))
            .cloned()
            .collect();
        missing.sort();
        Held {
            present: fixtures.len() - missing.len(),
            total: fixtures.len(),
            missing,
        }
    }

    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// `holds 47 of 47 fixtures`, or what is missing and why it may be.
    pub fn describe(&self) -> String {
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
        let shown: Vec<&str> = self.missing.iter().take(10).map(String::as_str).collect();
        format!(
            "holds {} of {} fixtures; missing: {}{}",
            self.present,
            self.total,
            shown.join(", "),
            if self.missing.len() > shown.len() {
                format!(", and {} more", self.missing.len() - shown.len())
            } else {
                String::new()
            }
        )
    }
}

/// A capability the seed needs on a path, and whether the token has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lack {
    pub path: String,
    /// Capabilities needed and not granted.
    pub missing: Vec<String>,
    /// What the seed does there, for humans.
    pub why: &'static str,
}

/// The paths the seed writes, with the capabilities each needs: KV first,
/// then ESO's access. `sample` is one fixture name.
pub fn seed_paths(
    mount: &str,
    kv_v2: bool,
    sample: &str,
    eso: Option<&EsoNames>,
) -> Vec<(String, Vec<&'static str>, &'static str, bool)> {
    let mut paths = if kv_v2 {
        vec![
            (
                format!("{mount}/data/{sample}"),
                vec!["create", "update", "read"],
                "write each secret",
                true,
            ),
            (
                format!("{mount}/metadata/{sample}"),
                vec!["update", "read"],
                "record each secret's checksum",
                true,
            ),
            (
                format!("{mount}/metadata/"),
                vec!["list"],
                "list what the store holds",
                true,
            ),
        ]
    } else {
        vec![
            (
                format!("{mount}/{sample}"),
                vec!["create", "update", "read"],
                "write each secret",
                true,
            ),
            (
                format!("{mount}/{RECORD_NAME}"),
                vec!["create", "update", "read"],
                "record what the seed wrote (KV v1 has no metadata)",
                true,
            ),
            (
                format!("{mount}/"),
                vec!["list"],
                "list what the store holds",
                true,
            ),
        ]
    };
    if let Some(n) = eso {
        let m = &n.auth_mount;
        paths.push((
            format!("sys/auth/{m}"),
            vec!["create", "update", "sudo"],
            "enable ESO's auth method",
            false,
        ));
        paths.push((
            format!("auth/{m}/config"),
            vec!["create", "update"],
            "configure ESO's auth method",
            false,
        ));
        paths.push((
            format!("sys/policies/acl/{}", n.policy),
            vec!["create", "update"],
            "write ESO's policy",
            false,
        ));
        paths.push((
            format!("auth/{m}/role/{}", n.role),
            vec!["create", "update"],
            "write ESO's role",
            false,
        ));
    }
    paths
}

/// What the token lacks on the seed's paths, split into the secrets' paths
/// (the seed fails with 403) and ESO's (the seed skips them).
pub fn lacking(
    http: &VaultHttp,
    mount: &str,
    kv_v2: bool,
    sample: &str,
    eso: Option<&EsoNames>,
) -> Result<(Vec<Lack>, Vec<Lack>)> {
    let paths = seed_paths(mount, kv_v2, sample, eso);
    let body = json!({ "paths": paths.iter().map(|p| p.0.clone()).collect::<Vec<_>>() });
    let reply = http.try_call(Method::Post, "sys/capabilities-self", Some(&body))?;
    if reply.status != 200 {
        anyhow::bail!(
            "POST sys/capabilities-self failed with HTTP {}: {}",
            reply.status,
            reply.errors()
        );
    }
    let (mut kv, mut eso_lacks) = (Vec::new(), Vec::new());
    for (path, needed, why, is_kv) in paths {
        let caps = capabilities(&reply, &path);
        if caps.iter().any(|c| c == "root") {
            continue;
        }
        let missing: Vec<String> = needed
            .iter()
            .filter(|c| !caps.iter().any(|held| held == *c))
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            let lack = Lack { path, missing, why };
            if is_kv {
                kv.push(lack);
            } else {
                eso_lacks.push(lack);
            }
        }
    }
    Ok((kv, eso_lacks))
}

/// The capabilities a `sys/capabilities-self` answer grants on `path`:
/// the list keyed by the path at the top level of the body, else under
/// `data`; none when neither is a list.
pub fn capabilities(reply: &Reply, path: &str) -> Vec<String> {
    if reply.body[path].is_array() {
        strings(&reply.body[path])
    } else {
        strings(&reply.body["data"][path])
    }
}

/// `update on secret/data/x (write each secret); ...`
pub fn describe_lacks(lacks: &[Lack]) -> String {
    lacks
        .iter()
        .map(|l| format!("{} on {} ({})", l.missing.join("+"), l.path, l.why))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_what_the_store_still_holds() {
        let fixtures = names(&["a", "b", "c"]);
        let all = Held::count(&fixtures, &names(&["c", "a", "b", "extra"]));
        assert!(all.complete() && all.describe() == "holds all 3 fixtures");
        let none = Held::count(&fixtures, &[]);
        assert_eq!((none.present, none.total), (0, 3));
        assert!(none.describe().contains("forgot"), "{}", none.describe());
        let some = Held::count(&fixtures, &names(&["b"]));
        assert_eq!(some.describe(), "holds 1 of 3 fixtures; missing: a, c");
    }

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
    fn the_seed_paths_cover_kv_and_eso() {
        let p = seed_paths("secret", true, "x", None);
        let got: Vec<&str> = p.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            got,
            ["secret/data/x", "secret/metadata/x", "secret/metadata/"]
        );
        let eso = EsoNames::load(&crate::project_root(), "local").unwrap();
        let p = seed_paths("kv", false, "x", Some(&eso));
        assert!(p.iter().any(|p| p.0 == "sys/auth/kubernetes" && !p.3));
        assert_eq!(p[0].0, "kv/x");
    }

    #[test]
    fn kv1_seed_paths_include_the_record_entry() {
        let p = seed_paths("kv", false, "x", None);
        let got: Vec<(&str, &[&str])> = p.iter().map(|p| (p.0.as_str(), &p.1[..])).collect();
        assert_eq!(
            got,
            [
                ("kv/x", &["create", "update", "read"][..]),
                ("kv/_cargo-xtask-secrets", &["create", "update", "read"][..]),
                ("kv/", &["list"][..]),
            ]
        );
        assert!(p.iter().all(|p| p.3), "every KV path is the seed's own");
    }
}
