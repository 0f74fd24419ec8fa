//! The fixtures (a JSON object of secret name to string value) and the git-ignored overrides on
//! top. Problems are reported with file:line:col; nothing is written unless all input is valid.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::fsutil::sha256_hex;
use crate::project::shown_from;
use crate::secrets::config::{Config, Source};

/// Azure Key Vault accepts values up to 25 KiB; keep parity.
pub const MAX_VALUE_BYTES: usize = 25 * 1024;
/// Larger fixture files are a mistake, not a fixture set.
pub(crate) const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Azure Key Vault's limit on a secret name.
pub(crate) const MAX_NAME_LEN: usize = 127;

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub value: String,
    pub sha256: String,
    /// The value comes from the overrides file.
    pub overridden: bool,
}

impl Entry {
    fn new(value: String, overridden: bool) -> Entry {
        let sha256 = sha256_hex(value.as_bytes());
        Entry { value, sha256, overridden }
    }
}

#[derive(Debug, Default, Clone)]
pub(crate) struct SecretSet {
    pub entries: BTreeMap<String, Entry>,
}

impl SecretSet {
    pub(crate) fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Fixtures from (name, value) pairs, none overridden.
    #[cfg(test)]
    pub(crate) fn of(pairs: &[(&str, &str)]) -> SecretSet {
        let entries = pairs.iter().map(|(n, v)| (n.to_string(), Entry::new(v.to_string(), false)));
        SecretSet { entries: entries.collect() }
    }
}

/// Is `name` a valid Azure Key Vault secret name (`^[0-9a-zA-Z-]{1,127}$`)?
pub fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The fixtures' path, and the desired set: the configured fixtures and the overrides, if any.
pub(crate) fn load_configured(cfg: &Config) -> Result<(PathBuf, SecretSet)> {
    let (root, fixtures) = (&cfg.root, cfg.abs(&cfg.fixtures.value));
    let overrides = &cfg.abs(&cfg.overrides.value);
    // Only an explicit `--fixtures` may point anywhere.
    if cfg.fixtures.source != Source::Flag("--fixtures") {
        refuse_escaping_symlink(root, &fixtures)?;
    }
    let mut set = SecretSet::default();
    let mut layers = vec![(parse_file(root, &fixtures, "fixtures file")?, false)];
    if overrides.exists() {
        crate::secrets::guard::require_git_ignored(root, overrides, "the overrides file")?;
        layers.push((parse_file(root, overrides, "overrides file")?, true));
    }
    for (pairs, overridden) in layers {
        for (name, value) in pairs {
            // Only an override can clash with another layer's spelling.
            let clash =
                || set.entries.keys().find(|k| *k != &name && k.eq_ignore_ascii_case(&name));
            if let Some(other) = overridden.then(clash).flatten() {
                bail!(
                    "{}: secret name {name:?} differs from the fixture {other:?} only in letter case; Azure Key \
                     Vault ignores case, so they are one secret. Spell it {other:?} in the overrides file.",
                    shown_from(root, overrides)
                );
            }
            set.entries.insert(name, Entry::new(value, overridden));
        }
    }
    Ok((fixtures, set))
}

/// The default fixtures stay in the repository: a symlink out of it could feed anything to a seed.
fn refuse_escaping_symlink(root: &Path, path: &Path) -> Result<()> {
    // Missing: reading it says so.
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("{} is a dangling symlink", path.display()))?;
    let real_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let escapes =
        !real.starts_with(&real_root) && (path.starts_with(root) || meta.file_type().is_symlink());
    ensure!(
        !escapes,
        "{} leads to {}, outside the repository, through a symlink (the file's or a folder's on the way). \
         Replace the symlink with the real file or folder, or pass the path explicitly with --fixtures if you \
         mean it.",
        shown_from(root, path),
        real.display()
    );
    Ok(())
}

/// Reads and validates one fixtures-format file; `what` names it in errors ("fixtures file").
pub(crate) fn parse_file(root: &Path, path: &Path, what: &str) -> Result<Vec<(String, String)>> {
    let shown = shown_from(root, path);
    let flag = if what == "overrides file" { "--overrides" } else { "--fixtures" };
    let meta = std::fs::metadata(path).with_context(|| {
        format!("cannot read {what} {shown}: check the path (see {flag}; a relative path is from the working directory)")
    })?;
    if meta.is_dir() {
        bail!("the {what} {shown} is a directory; it must be a JSON file (see {flag})");
    }
    let (len, limit) = (meta.len(), MAX_FILE_BYTES >> 20);
    if len > MAX_FILE_BYTES {
        bail!("{shown}: {len} bytes is larger than the {limit} MiB limit for a {what}");
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {what} {shown}"))?;
    parse(&bytes).map_err(|e| anyhow::anyhow!("{shown}:{e}"))
}

#[derive(Debug, PartialEq)]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// Parses fixture bytes into (name, value) pairs in file order.
pub fn parse(bytes: &[u8]) -> std::result::Result<Vec<(String, String)>, ParseError> {
    let at = |(line, col), message: &str| ParseError { line, col, message: message.into() };
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        let said =
            "the file starts with a UTF-8 byte order mark (BOM); save it as UTF-8 without BOM";
        return Err(at((1, 1), said));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        at(line_col(bytes, e.valid_up_to()), "the file is not valid UTF-8; save it as UTF-8")
    })?;
    if text.trim().is_empty() {
        let said = "the file is empty; it must hold a JSON object of secret name to string value";
        return Err(at((1, 1), said));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let pairs = de.deserialize_map(FixtureVisitor).and_then(|p| de.end().map(|()| p));
    let pairs = pairs.map_err(|e| {
        let msg = e.to_string();
        let msg = msg.rsplit_once(" at line ").map_or(msg.as_str(), |(m, _)| m);
        at((e.line(), e.column()), &in_words(msg))
    })?;
    if pairs.is_empty() {
        return Err(at((1, 1), "the object has no secrets"));
    }
    Ok(pairs)
}

/// serde_json's parser messages, said for a person editing the file; our own pass through.
fn in_words(msg: &str) -> String {
    let said = match msg {
        "EOF while parsing a value" | "EOF while parsing an object" | "EOF while parsing a list" => {
            "the file ends too early: a value or a closing `}` is missing"
        }
        "EOF while parsing a string" => "a string is not closed: its closing `\"` is missing",
        "expected `:`" => "expected `:` between a secret name and its value",
        "expected `,` or `}`" => {
            "expected `,` or `}` after a value: a comma is missing between two entries, or the object is not closed"
        }
        "expected `,` or `]`" => "expected `,` or `]` in a list",
        "trailing comma" => "trailing comma: remove the comma after the last entry",
        "key must be a string" => "a secret name must be a string in double quotes",
        "expected value" => "expected a value here: a string in double quotes",
        "expected ident" => "unknown word: write values as strings in double quotes",
        "trailing characters" => {
            "trailing characters after the closing `}`: the file must hold exactly one JSON object"
        }
        "recursion limit exceeded" => {
            "recursion limit exceeded: the value is nested too deep (every value must be a string)"
        }
        "invalid escape" => "invalid escape in a string: use \\\\, \\\", \\n, \\t or \\uXXXX",
        "invalid unicode code point" | "lone leading surrogate in hex escape" | "unexpected end of hex escape" => {
            "invalid \\u escape in a string"
        }
        m if m.starts_with("control character") => {
            "a raw control character (a line break or tab) inside a string: write it as \\n or \\t"
        }
        m if m.starts_with("invalid type: ") => {
            // serde_json quotes what it found, maybe a value: only its type is named.
            let found = &m["invalid type: ".len()..];
            let found = [
                ("sequence", "a list (JSON array)"),
                ("string", "a single JSON string"),
                ("integer", "a single JSON number"),
                ("floating point", "a single JSON number"),
                ("boolean", "a single JSON boolean"),
                ("null", "null"),
            ]
            .into_iter()
            .find(|(kind, _)| found.starts_with(kind))
            .map_or("something other than a JSON object", |(_, said)| said);
            return format!(
                "the file holds {found}; expected a JSON object of secret name to string value"
            );
        }
        other => return other.to_string(),
    };
    said.to_string()
}

fn line_col(bytes: &[u8], offset: usize) -> (usize, usize) {
    let before = &bytes[..offset];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    (line, col)
}

struct FixtureVisitor;

impl<'de> Visitor<'de> for FixtureVisitor {
    type Value = Vec<(String, String)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object of secret name to string value")
    }

    fn visit_map<A: MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let fail = |message: String| Err(de::Error::custom(message));
        // Lower-cased name to the name as written: Azure Key Vault ignores case.
        let mut folded: std::collections::HashMap<String, String> = Default::default();
        let mut out = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            match folded.insert(name.to_ascii_lowercase(), name.clone()) {
                Some(first) if first == name => {
                    return fail(format!("duplicate secret name {name:?}; each name may appear once"));
                }
                Some(first) => return fail(format!(
                    "secret names {first:?} and {name:?} differ only in letter case; Azure Key Vault ignores \
                     case, so they are one secret: keep one"
                )),
                None => {}
            }
            if !valid_name(&name) {
                let mut shown: String = name.chars().take(140).collect();
                if shown.len() < name.len() {
                    shown.push('…');
                }
                return fail(format!(
                    "invalid secret name {shown:?}: names must match ^[0-9a-zA-Z-]{{1,127}}$ (Azure Key Vault's \
                     rule)"
                ));
            }
            let value: serde_json::Value = map.next_value()?;
            let serde_json::Value::String(value) = value else {
                let kind = kind_of(&value);
                return fail(format!(
                    "the value of {name:?} is {kind}; every value must be a JSON string"
                ));
            };
            if value.len() > MAX_VALUE_BYTES {
                let len = value.len();
                return fail(format!(
                    "the value of {name:?} is {len} bytes; Azure Key Vault's limit is {MAX_VALUE_BYTES}"
                ));
            }
            out.push((name, value));
        }
        Ok(out)
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> String {
        parse(input.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn parses_names_and_values_in_order() {
        let pairs = parse(br#"{"b-key": "two", "a-key": "line1\nline2"}"#).unwrap();
        let want = [("b-key".into(), "two".into()), ("a-key".into(), "line1\nline2".into())];
        assert_eq!(pairs, want);
        assert!(valid_name(&"a".repeat(127)) && !valid_name("has.dot"));
    }

    /// The bad-input corpus (it/bad_input.rs) holds the rest.
    #[test]
    fn parser_errors_are_said_in_words_with_their_position() {
        for (input, said) in [
            ("{\"a\": \"x\"", "1:9: the file ends too early: a value or a closing `}` is missing"),
            ("{\"a\": \"x\" \"b\": \"y\"}", "a comma is missing between two entries"),
            ("{a: \"x\"}", "must be a string in double quotes"),
            ("[\"a\"]", "the file holds a list"),
            ("{\"a\": \"b\"} x", "trailing characters after the closing `}`"),
        ] {
            assert!(err(input).contains(said), "{input}: {}", err(input));
        }
        for raw in ["EOF while", "invalid type", "sequence,"] {
            for input in ["{\"a\": ", "[1]", "{\"a\": \"x\"", "\"s\""] {
                assert!(!err(input).contains(raw), "{input}: {}", err(input));
            }
        }
    }

    /// A file that is one string, number or boolean: it/fail_closed.rs.
    #[test]
    fn errors_never_echo_values() {
        let e = err(r#"{"name": "s3cr3t-value", "name": "s3cr3t-value"}"#);
        assert!(!e.contains("s3cr3t"), "{e}");
        assert!(err("null").contains("the file holds null"), "{}", err("null"));
    }
}
