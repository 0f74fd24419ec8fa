//! The flag `secrets.provider` in `environments/<env>/platform/15-secrets.values.yaml`. An edit
//! changes the value's bytes only; a file that cannot be edited so is refused, never rewritten.

use anyhow::{bail, ensure, Context, Result};

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
    let secrets = entries(doc, "secrets");
    let secrets = match secrets.as_slice() {
        [(_, one)] if matches!(one, Node::Map(..)) => *one,
        [] => bail!(
            "{file}: no top-level `secrets:` mapping; add `secrets:` with `provider: vault|azure`"
        ),
        [_] => bail!("{file}: `secrets:` must be a mapping holding `provider: vault|azure`"),
        many => bail!("{file}: `secrets:` appears {} times; keep one", many.len()),
    };
    let (key, value) = match entries(secrets, "provider").as_slice() {
        [one] => *one,
        [] => bail!("{file}: `secrets.provider` is missing; add `provider: vault` (or azure) under `secrets:`"),
        many => {
            let lines: Vec<String> = many.iter().map(|(k, _)| k.line().to_string()).collect();
            let (n, lines) = (many.len(), lines.join(", "));
            bail!("{file}: `secrets.provider` appears {n} times (lines {lines}); keep exactly one")
        }
    };
    let line = key.line();
    let Some(parsed) = value.as_str() else {
        let at = value.line();
        bail!("{file}:{at}: `secrets.provider` must be a single scalar (vault or azure)");
    };
    if line != value.line() {
        bail!("{file}:{line}: keep `provider: <value>` on one line; the migration edits only the value");
    }
    let (line_start, line_end) = line_span(text, line);
    let Some(colon) = text[line_start..line_end].find("provider:") else {
        bail!("{file}:{line}: expected `provider: <value>` on this line");
    };
    let rest = text[line_start + colon + "provider:".len()..line_end].trim_start();
    // The value's bytes, inside its quotes if quoted.
    let mut start = line_end - rest.len();
    let len = match rest.chars().next() {
        Some(q @ ('"' | '\'')) => {
            start += 1;
            let close = rest[1..].find(q);
            close.with_context(|| format!("{file}:{line}: unterminated quote in `provider:`"))?
        }
        _ => rest.find([' ', '\t', '#', '\r']).unwrap_or(rest.len()),
    };
    let end = start + len;
    ensure!(
        &text[start..end] == parsed,
        "{file}:{line}: `provider:` uses YAML the editor does not change safely (escapes, block scalars); write it \
         as `provider: vault`"
    );
    Ok(Flag { value: parsed.to_string(), start, end, line })
}

/// The provider named by the flag.
pub(crate) fn provider(text: &str, file: &str) -> Result<ProviderKind> {
    let flag = find(text, file)?;
    match flag.value.parse::<ProviderKind>().ok() {
        Some(p @ (ProviderKind::Vault | ProviderKind::Azure)) => Ok(p),
        _ => {
            bail!("{file}:{}: `secrets.provider: {}` must be vault or azure", flag.line, flag.value)
        }
    }
}

/// The text with the flag set to `to`; every other byte unchanged.
pub fn set(text: &str, file: &str, to: ProviderKind) -> Result<String> {
    let flag = find(text, file)?;
    let (before, after, to) = (&text[..flag.start], &text[flag.end..], to.as_str());
    let out = format!("{before}{to}{after}");
    // The edit must read back as the new value and nothing else.
    let check = find(&out, file)?;
    if check.value != to || out[..check.start] != *before || out[check.end..] != *after {
        bail!("{file}: the edit did not read back as `provider: {to}`; nothing was written");
    }
    Ok(out)
}

/// A one-line unified diff of a flag change, for plans.
pub(crate) fn diff(text: &str, file: &str, to: ProviderKind) -> Result<String> {
    let flag = find(text, file)?;
    let (start, end) = line_span(text, flag.line);
    let (old, l, to) = (&text[start..end], flag.line, to.as_str());
    let new = format!("{}{to}{}", &text[start..flag.start], &text[flag.end..end]);
    Ok(format!("--- a/{file}\n+++ b/{file}\n@@ -{l},1 +{l},1 @@\n-{old}\n+{new}\n"))
}

/// The entries under `key` in a mapping, every one (YAML may repeat a key).
fn entries<'a>(map: &'a Node, key: &str) -> Vec<(&'a Node, &'a Node)> {
    let all = map.entries().iter().filter(|(k, _)| k.as_str() == Some(key));
    all.map(|(k, v)| (&**k, &**v)).collect()
}

/// The byte range of a 1-based line of `text` (a line the parser reported), without its `\n`.
fn line_span(text: &str, line: usize) -> (usize, usize) {
    let start: usize = text.split_inclusive('\n').take(line - 1).map(str::len).sum();
    let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# Layer 15.\nsecrets:\n  # The flag.\n  provider: azure   # feature flag\n  # after\nvault:\n  provider: not-this-one\n";

    #[test]
    fn edits_change_only_the_value_keeping_quotes_and_crlf() {
        let crlf = "secrets:\r\n  provider: \"azure\"\r\n";
        let flow = "secrets: {provider: 'vault'}\n";
        for (text, to) in
            [(FILE, ProviderKind::Vault), (crlf, ProviderKind::Vault), (flow, ProviderKind::Azure)]
        {
            let from = if to == ProviderKind::Vault { "azure" } else { "vault" };
            assert_eq!(set(text, "f", to).unwrap(), text.replacen(from, to.as_str(), 1));
        }
        let d = diff(FILE, "f.yaml", ProviderKind::Vault).unwrap();
        assert_eq!(d, "--- a/f.yaml\n+++ b/f.yaml\n@@ -4,1 +4,1 @@\n-  provider: azure   # feature flag\n+  provider: vault   # feature flag\n");
    }

    /// A missing or repeated flag: it/bad_input.rs.
    #[test]
    fn refuses_what_it_cannot_edit_minimally() {
        for (text, said) in [
            ("secrets:\n  provider:\n    vault\n", "on one line"),
            ("secrets:\n  provider: [vault]\n", "single scalar"),
            ("secrets:\n  provider: \"va\\u0075lt\"\n", "does not change safely"),
            ("secrets: [provider]\n", "must be a mapping"),
        ] {
            let err = find(text, "f").unwrap_err().to_string();
            assert!(err.contains(said), "{text:?}: {err}");
        }
        assert!(provider("secrets:\n  provider: consul\n", "f").is_err());
    }
}
