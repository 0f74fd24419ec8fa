//! The feature flag `secrets.provider` in
//! `infra/kubernetes/environments/<env>/platform/15-secrets.values.yaml`.
//!
//! Edits are minimal: the only bytes that change are the value's. Comments,
//! order, spacing, quoting style and line endings stay as they were; a file
//! the editor cannot change that way is refused, never rewritten.

use anyhow::{bail, Result};

use crate::secrets::config::ProviderKind;
use crate::yaml::{parse_documents, Node};

/// Where the flag's value sits in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub value: String,
    /// Byte range of the value (inside quotes, if quoted).
    pub start: usize,
    pub end: usize,
    pub line: usize,
}

/// Finds `secrets.provider`, refusing a missing, duplicated, or non-scalar key.
pub fn find(text: &str, file: &str) -> Result<Flag> {
    let docs = parse_documents(text).map_err(|e| anyhow::anyhow!("{file}:{e}: malformed YAML"))?;
    let [doc] = docs.as_slice() else {
        bail!("{file}: expected one YAML document, found {}", docs.len());
    };
    let secrets: Vec<&Node> = doc
        .entries()
        .iter()
        .filter(|(k, _)| k.as_str() == Some("secrets"))
        .map(|(_, v)| &**v)
        .collect();
    let secrets = match secrets.as_slice() {
        [one] if one.is_map() => *one,
        [] => bail!(
            "{file}: no top-level `secrets:` mapping; add `secrets:` with `provider: vault|azure`"
        ),
        [_] => bail!("{file}: `secrets:` must be a mapping holding `provider: vault|azure`"),
        _ => bail!(
            "{file}: `secrets:` appears {} times; keep one",
            secrets.len()
        ),
    };
    let providers: Vec<(&Node, &Node)> = secrets
        .entries()
        .iter()
        .filter(|(k, _)| k.as_str() == Some("provider"))
        .map(|(k, v)| (&**k, &**v))
        .collect();
    let (key, value) = match providers.as_slice() {
        [one] => *one,
        [] => bail!("{file}: `secrets.provider` is missing; add `provider: vault` (or azure) under `secrets:`"),
        many => bail!(
            "{file}: `secrets.provider` appears {} times (lines {}); keep exactly one",
            many.len(),
            many.iter().map(|(k, _)| k.line().to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let Some(parsed) = value.as_str() else {
        bail!(
            "{file}:{}: `secrets.provider` must be a single scalar (vault or azure)",
            value.line()
        );
    };
    if key.line() != value.line() {
        bail!(
            "{file}:{}: keep `provider: <value>` on one line; the migration edits only the value",
            key.line()
        );
    }
    let line_start = line_offset(text, key.line())
        .ok_or_else(|| anyhow::anyhow!("{file}:{}: cannot locate the line", key.line()))?;
    let line_end = text[line_start..]
        .find('\n')
        .map(|i| line_start + i)
        .unwrap_or(text.len());
    let line = &text[line_start..line_end];
    let Some(colon) = line.find("provider:").map(|i| i + "provider:".len()) else {
        bail!(
            "{file}:{}: expected `provider: <value>` on this line",
            key.line()
        );
    };
    let rest = &line[colon..];
    let lead = rest.len() - rest.trim_start().len();
    let rest_trim = rest.trim_start();
    let (start, len) = match rest_trim.chars().next() {
        Some(q @ ('"' | '\'')) => {
            let Some(close) = rest_trim[1..].find(q) else {
                bail!("{file}:{}: unterminated quote in `provider:`", key.line());
            };
            (colon + lead + 1, close)
        }
        _ => {
            let len = rest_trim
                .find([' ', '\t', '#', '\r'])
                .unwrap_or(rest_trim.len());
            (colon + lead, len)
        }
    };
    let (start, end) = (line_start + start, line_start + start + len);
    if &text[start..end] != parsed {
        bail!(
            "{file}:{}: `provider:` uses YAML the editor does not change safely (escapes, block scalars); write it as \
             `provider: vault`",
            key.line()
        );
    }
    Ok(Flag {
        value: parsed.to_string(),
        start,
        end,
        line: key.line(),
    })
}

/// The provider named by the flag.
pub fn provider(text: &str, file: &str) -> Result<ProviderKind> {
    let flag = find(text, file)?;
    match flag.value.parse::<ProviderKind>().ok() {
        Some(p @ (ProviderKind::Vault | ProviderKind::Azure)) => Ok(p),
        _ => bail!(
            "{file}:{}: `secrets.provider: {}` must be vault or azure",
            flag.line,
            flag.value
        ),
    }
}

/// The text with the flag set to `to`; every other byte unchanged.
pub fn set(text: &str, file: &str, to: ProviderKind) -> Result<String> {
    let flag = find(text, file)?;
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..flag.start]);
    out.push_str(to.as_str());
    out.push_str(&text[flag.end..]);
    // The edit must read back as the new value and nothing else.
    let check = find(&out, file)?;
    if check.value != to.as_str()
        || out[..check.start] != text[..flag.start]
        || out[check.end..] != text[flag.end..]
    {
        bail!(
            "{file}: the edit did not read back as `provider: {}`; nothing was written",
            to.as_str()
        );
    }
    Ok(out)
}

/// A one-line unified diff of a flag change, for plans.
pub fn diff(text: &str, file: &str, to: ProviderKind) -> Result<String> {
    let flag = find(text, file)?;
    let start = line_offset(text, flag.line).unwrap_or(0);
    let end = text[start..]
        .find('\n')
        .map(|i| start + i)
        .unwrap_or(text.len());
    let old = &text[start..end];
    let new = format!(
        "{}{}{}",
        &text[start..flag.start],
        to.as_str(),
        &text[flag.end..end]
    );
    Ok(format!(
        "--- a/{file}\n+++ b/{file}\n@@ -{l},1 +{l},1 @@\n-{old}\n+{new}\n",
        l = flag.line
    ))
}

fn line_offset(text: &str, line: usize) -> Option<usize> {
    if line == 1 {
        return Some(0);
    }
    text.match_indices('\n').nth(line - 2).map(|(i, _)| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# Layer 15.\nsecrets:\n  # The flag.\n  provider: azure   # feature flag\n  # after\nvault:\n  provider: not-this-one\n";

    #[test]
    fn golden_edit_changes_only_the_value() {
        let out = set(FILE, "f", ProviderKind::Vault).unwrap();
        assert_eq!(out, FILE.replace("provider: azure ", "provider: vault "));
        assert_eq!(out.len(), FILE.len());
        let back = set(&out, "f", ProviderKind::Azure).unwrap();
        assert_eq!(back, FILE, "flipping back restores the file byte for byte");
    }

    #[test]
    fn keeps_quotes_and_crlf() {
        let crlf = "secrets:\r\n  provider: \"azure\"\r\n  x: 1\r\n";
        let out = set(crlf, "f", ProviderKind::Vault).unwrap();
        assert_eq!(out, "secrets:\r\n  provider: \"vault\"\r\n  x: 1\r\n");
        let single = "secrets: {provider: 'vault'}\n";
        assert_eq!(
            set(single, "f", ProviderKind::Azure).unwrap(),
            "secrets: {provider: 'azure'}\n"
        );
    }

    #[test]
    fn refuses_what_it_cannot_edit_minimally() {
        let missing = find("secrets:\n  other: 1\n", "f").unwrap_err().to_string();
        assert!(
            missing.contains("`secrets.provider` is missing"),
            "{missing}"
        );
        let dup = find("secrets:\n  provider: vault\n  provider: azure\n", "f")
            .unwrap_err()
            .to_string();
        assert!(dup.contains("appears 2 times (lines 2, 3)"), "{dup}");
        let split = find("secrets:\n  provider:\n    vault\n", "f")
            .unwrap_err()
            .to_string();
        assert!(split.contains("on one line"), "{split}");
        let nested = find("secrets:\n  provider: [vault]\n", "f")
            .unwrap_err()
            .to_string();
        assert!(nested.contains("single scalar"), "{nested}");
        let escaped = find("secrets:\n  provider: \"va\\u0075lt\"\n", "f")
            .unwrap_err()
            .to_string();
        assert!(escaped.contains("does not change safely"), "{escaped}");
        assert!(provider("secrets:\n  provider: consul\n", "f").is_err());
    }

    #[test]
    fn diff_shows_one_line() {
        let d = diff(FILE, "f.yaml", ProviderKind::Vault).unwrap();
        assert_eq!(d, "--- a/f.yaml\n+++ b/f.yaml\n@@ -4,1 +4,1 @@\n-  provider: azure   # feature flag\n+  provider: vault   # feature flag\n");
    }
}
