//! Reading Vault as ESO would (`check --live --as-eso`, `doctor`): a
//! short-lived token holding exactly the role's policies (minted with the
//! caller's token through `auth/token/create`) reads every key the
//! ExternalSecrets need, and a write with it must be refused.
//!
//! The write probe cannot change anything: it is a KV v2 write with a
//! check-and-set version no entry has, so a policy that allowed writes gets
//! "check-and-set parameter did not match" (400) instead of 403.

use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::json;

use crate::pool::bounded;
use crate::secrets::config::Secret;
use crate::secrets::eso_access::{strings, EsoNames};
use crate::secrets::provider::vault_http::{Method, VaultHttp};
use crate::secrets::vault_checks;

/// A check-and-set version no KV entry reaches (2^53 - 1, exact in JSON).
const NO_SUCH_VERSION: u64 = (1 << 53) - 1;

/// What a token with the role's policies could do.
#[derive(Debug, Clone, Serialize)]
pub struct AsEso {
    pub role: String,
    /// The policies the token held (the role's, plus `default` unless the role drops it).
    pub policies: Vec<String>,
    /// Keys read back with a string `value`.
    pub read: Vec<String>,
    /// Keys not read, with why (refused, missing, no `value`).
    pub unreadable: Vec<(String, String)>,
    /// The write probe was refused, as it must be.
    pub write_refused: bool,
    /// What the write probe got.
    pub write_answer: String,
}

impl AsEso {
    pub fn ok(&self) -> bool {
        self.unreadable.is_empty() && self.write_refused
    }

    /// One line for humans.
    pub fn summary(&self) -> String {
        format!(
            "as ESO (role {}, policies {}): {} of {} keys read, write {}",
            self.role,
            self.policies.join(", "),
            self.read.len(),
            self.read.len() + self.unreadable.len(),
            if self.write_refused {
                "refused".to_string()
            } else {
                format!("NOT refused ({})", self.write_answer)
            }
        )
    }
}

/// Mints a token with the role's policies, reads `keys` with it, probes a
/// write, and revokes the token.
pub fn read_as_eso(http: &VaultHttp, names: &EsoNames, keys: &[String]) -> Result<AsEso> {
    let role_path = format!("auth/{}/role/{}", names.auth_mount, names.role);
    let role = http.try_call(Method::Get, &role_path, None)?;
    match role.status {
        200 => {}
        404 => bail!(
            "{role_path} does not exist: ESO cannot log in to Vault (ClusterSecretStore/{} names role {}). \
             Fix: `cargo xtask secrets seed` (it sets up ESO's access)",
            names.store,
            names.role
        ),
        401 | 403 => bail!(
            "reading as ESO needs a token that may read {role_path} and create tokens with its policies \
             (auth/token/create; the dev chart's root token may): {}",
            role.errors()
        ),
        code => bail!("GET {role_path} failed with HTTP {code}: {}", role.errors()),
    }
    let data = &role.body["data"];
    let mut policies = strings(&data["token_policies"]);
    let no_default = data["token_no_default_policy"].as_bool().unwrap_or(false);
    let created = http.try_call(
        Method::Post,
        "auth/token/create",
        Some(&json!({
            "policies": policies,
            "no_default_policy": no_default,
            "ttl": "2m",
            "renewable": false,
            "display_name": "xtask-as-eso",
        })),
    )?;
    if created.status != 200 {
        bail!(
            "auth/token/create refused a token with the policies of role {} (HTTP {}: {}): reading as ESO needs \
             a token that may create one (the dev chart's root token may)",
            names.role,
            created.status,
            created.errors()
        );
    }
    let Some(token) = created.body["auth"]["client_token"].as_str() else {
        bail!("auth/token/create answered without a token");
    };
    if created.body["auth"]["policies"].is_array() {
        policies = strings(&created.body["auth"]["policies"]);
    }
    let eso = http.with_token(Secret::new(token.to_string()));
    let result = probe(&eso, names, keys);
    let _ = eso.try_call(Method::Post, "auth/token/revoke-self", None);
    let (read, unreadable, write_refused, write_answer) = result?;
    Ok(AsEso {
        role: names.role.clone(),
        policies,
        read,
        unreadable,
        write_refused,
        write_answer,
    })
}

type Probe = (Vec<String>, Vec<(String, String)>, bool, String);

fn probe(eso: &VaultHttp, names: &EsoNames, keys: &[String]) -> Result<Probe> {
    let answers = bounded(keys.to_vec(), 8, |key| {
        let path = names.data_path(&key);
        let verdict = match eso.try_call(Method::Get, &path, None) {
            Ok(r) if r.status == 200 => {
                let data = if names.kv_version == "v1" {
                    &r.body["data"]
                } else {
                    &r.body["data"]["data"]
                };
                if data["value"].is_string() {
                    Ok(())
                } else {
                    Err(format!("{path} has no string property `value`"))
                }
            }
            Ok(r) if r.status == 404 => Err(format!("{path} is not in the store")),
            Ok(r) if matches!(r.status, 401 | 403) => Err(format!("permission denied on {path}")),
            Ok(r) => Err(format!("GET {path}: HTTP {}: {}", r.status, r.errors())),
            Err(e) => Err(e.to_string()),
        };
        (key, verdict)
    });
    let mut read = Vec::new();
    let mut unreadable = Vec::new();
    for (key, verdict) in answers {
        match verdict {
            Ok(()) => read.push(key),
            Err(why) => unreadable.push((key, why)),
        }
    }
    read.sort();
    unreadable.sort();
    let target = keys
        .first()
        .map(String::as_str)
        .unwrap_or("xtask-eso-write-probe");
    let (write_refused, write_answer) = write_probe(eso, names, target)?;
    Ok((read, unreadable, write_refused, write_answer))
}

/// Tries a write that cannot land; `true` when the policy refused it.
fn write_probe(eso: &VaultHttp, names: &EsoNames, key: &str) -> Result<(bool, String)> {
    let path = names.data_path(key);
    if names.kv_version == "v1" {
        // No check-and-set on KV v1: ask for the capabilities instead of writing.
        let reply = eso.try_call(
            Method::Post,
            "sys/capabilities-self",
            Some(&json!({"paths": [path]})),
        )?;
        let caps = vault_checks::capabilities(&reply, &path);
        let writes = caps
            .iter()
            .any(|c| ["create", "update", "root", "sudo"].contains(&c.as_str()));
        return Ok((
            !writes,
            format!("capabilities on {path}: {}", caps.join(", ")),
        ));
    }
    let body = json!({"options": {"cas": NO_SUCH_VERSION}, "data": {"value": ""}});
    let reply = eso.try_call(Method::Post, &path, Some(&body))?;
    Ok(match reply.status {
        401 | 403 => (true, format!("POST {path}: permission denied")),
        code => (
            false,
            format!(
                "POST {path} was allowed by the policy (HTTP {code}: {})",
                reply.errors()
            ),
        ),
    })
}
