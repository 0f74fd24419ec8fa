//! The fixtures: a JSON object of secret name to string value, plus the
//! developer's git-ignored overrides layered on top.
//!
//! Every problem is reported with file:line:col and nothing is written
//! unless the whole input is valid.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::fsutil::sha256_hex;
use crate::project::shown;

/// Azure Key Vault accepts values up to 25 KiB; keep parity.
pub const MAX_VALUE_BYTES: usize = 25 * 1024;
/// Larger fixture files are a mistake, not a fixture set.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Azure Key Vault's limit on a secret name.
pub const MAX_NAME_LEN: usize = 127;

#[derive(Debug, Clone)]
pub struct Entry {
    pub value: String,
    pub sha256: String,
    /// The value comes from the overrides file.
    pub overridden: bool,
}

/// The desired state: secret name to value, sorted by name.
#[derive(Debug, Default, Clone)]
pub struct SecretSet {
    pub entries: BTreeMap<String, Entry>,
    /// Names the overrides file added that the fixtures do not have.
    pub added_by_overrides: Vec<String>,
}

impl SecretSet {
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Is `name` a valid Azure Key Vault secret name (`^[0-9a-zA-Z-]{1,127}$`)?
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Loads the fixtures and, if the file exists, the overrides.
pub fn load(root: &Path, fixtures: &Path, guarded: bool, overrides: &Path) -> Result<SecretSet> {
    if guarded {
        refuse_escaping_symlink(root, fixtures)?;
    }
    let base = parse_file(fixtures, "fixtures file")?;
    let mut set = SecretSet::default();
    for (name, value) in base {
        let sha256 = sha256_hex(value.as_bytes());
        set.entries.insert(
            name,
            Entry {
                value,
                sha256,
                overridden: false,
            },
        );
    }
    if overrides.exists() {
        crate::secrets::guard::require_git_ignored(root, overrides, "the overrides file")?;
        for (name, value) in parse_file(overrides, "overrides file")? {
            if let Some(other) = set
                .entries
                .keys()
                .find(|k| *k != &name && k.eq_ignore_ascii_case(&name))
            {
                bail!(
                    "{}: secret name {name:?} differs from the fixture {other:?} only in letter case; Azure Key \
                     Vault ignores case, so they are one secret. Spell it {other:?} in the overrides file.",
                    shown(overrides)
                );
            }
            let sha256 = sha256_hex(value.as_bytes());
            if !set.entries.contains_key(&name) {
                set.added_by_overrides.push(name.clone());
            }
            set.entries.insert(
                name,
                Entry {
                    value,
                    sha256,
                    overridden: true,
                },
            );
        }
    }
    Ok(set)
}

/// The default fixtures must be a file in the repository: a symlink that
/// leads outside it (the file's own, or a folder's on the way, such as a
/// symlinked `scripts/azure`) could feed anything to a seed. (An explicit
/// --fixtures path may be anywhere.)
fn refuse_escaping_symlink(root: &Path, path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // missing: reading it says so
    };
    let real = std::fs::canonicalize(path)
        .with_context(|| format!("{} is a dangling symlink", path.display()))?;
    let real_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let escapes =
        !real.starts_with(&real_root) && (path.starts_with(root) || meta.file_type().is_symlink());
    if escapes {
        bail!(
            "{} leads to {}, outside the repository, through a symlink (the file's or a folder's on the way). \
             Replace the symlink with the real file or folder, or pass the path explicitly with --fixtures if you \
             mean it.",
            shown(path),
            real.display()
        );
    }
    Ok(())
}

/// Reads and validates one fixtures-format file; `what` names it in errors
/// ("fixtures file", "overrides file").
pub fn parse_file(path: &Path, what: &str) -> Result<Vec<(String, String)>> {
    let flag = if what == "overrides file" {
        "--overrides"
    } else {
        "--fixtures"
    };
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot read {what} {}: check the path (see {flag}; a relative path is from the working directory)",
            shown(path)
        )
    })?;
    if meta.is_dir() {
        bail!(
            "the {what} {} is a directory; it must be a JSON file (see {flag})",
            shown(path)
        );
    }
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "{}: {} bytes is larger than the {} MiB limit for a {what}",
            shown(path),
            meta.len(),
            MAX_FILE_BYTES >> 20
        );
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", shown(path)))?;
    parse(&bytes).map_err(|e| anyhow::anyhow!("{}:{e}", shown(path)))
}

/// A parse problem at a position: `line:col: message`.
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
    let at = |line, col, message: String| ParseError { line, col, message };
    if bytes.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Err(at(
            1,
            1,
            "the file starts with a UTF-8 byte order mark (BOM); save it as UTF-8 without BOM"
                .into(),
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let (line, col) = line_col(bytes, e.valid_up_to());
            return Err(at(
                line,
                col,
                "the file is not valid UTF-8; save it as UTF-8".into(),
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(at(
            1,
            1,
            "the file is empty; it must hold a JSON object of secret name to string value".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let pairs = match de
        .deserialize_map(FixtureVisitor)
        .and_then(|p| de.end().map(|()| p))
    {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            let msg = msg
                .rsplit_once(" at line ")
                .map(|(m, _)| m.to_string())
                .unwrap_or(msg);
            return Err(at(e.line(), e.column(), in_words(&msg)));
        }
    };
    if pairs.is_empty() {
        return Err(at(1, 1, "the object has no secrets".into()));
    }
    Ok(pairs)
}

/// serde_json's parser messages, said for a person editing the file. Our
/// own messages (duplicate or invalid names, non-string values) pass through.
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
            // serde_json quotes what it found (`string "..."`, `integer `5``):
            // it may be a value, so only its type is named.
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
    let before = &bytes[..offset.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = offset
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|p| p + 1)
            .unwrap_or(0)
        + 1;
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
        // Lower-cased name to the name as written: Azure Key Vault ignores
        // case. The same name twice is a duplicate; two spellings of one
        // name differ only in case.
        let mut folded: std::collections::HashMap<String, String> = Default::default();
        let mut out = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if let Some(first) = folded.insert(name.to_ascii_lowercase(), name.clone()) {
                if first == name {
                    return Err(de::Error::custom(format_args!(
                        "duplicate secret name {name:?}; each name may appear once"
                    )));
                }
                return Err(de::Error::custom(format_args!(
                    "secret names {first:?} and {name:?} differ only in letter case; Azure Key Vault ignores \
                     case, so they are one secret: keep one"
                )));
            }
            if !valid_name(&name) {
                return Err(de::Error::custom(format_args!(
                    "invalid secret name {:?}: names must match ^[0-9a-zA-Z-]{{1,127}}$ (Azure Key Vault's rule)",
                    truncate(&name, 140)
                )));
            }
            let value: serde_json::Value = map.next_value()?;
            let serde_json::Value::String(value) = value else {
                return Err(de::Error::custom(format_args!(
                    "the value of {name:?} is {}; every value must be a JSON string",
                    kind_of(&value)
                )));
            };
            if value.len() > MAX_VALUE_BYTES {
                return Err(de::Error::custom(format_args!(
                    "the value of {name:?} is {} bytes; Azure Key Vault's limit is {MAX_VALUE_BYTES}",
                    value.len()
                )));
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

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// The configured fixtures and overrides: the path and the desired set.
pub fn load_configured(cfg: &crate::secrets::config::Config) -> Result<(PathBuf, SecretSet)> {
    let (path, guarded) = resolve(cfg);
    let set = load(&cfg.root, &path, guarded, &cfg.abs(&cfg.overrides.value))?;
    Ok((path, set))
}

/// The fixtures path as configured, and whether the symlink guard applies:
/// only an explicit `--fixtures` may point anywhere.
pub fn resolve(cfg: &crate::secrets::config::Config) -> (PathBuf, bool) {
    let guarded = cfg.fixtures.source != crate::secrets::config::Source::Flag("--fixtures");
    (cfg.abs(&cfg.fixtures.value), guarded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> ParseError {
        parse(input.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_names_and_values_in_order() {
        let pairs = parse(br#"{"b-key": "two", "a-key": "line1\nline2"}"#).unwrap();
        assert_eq!(
            pairs,
            vec![
                ("b-key".into(), "two".into()),
                ("a-key".into(), "line1\nline2".into())
            ]
        );
    }

    #[test]
    fn reports_position_of_malformed_json() {
        let e = err("{\n  \"a\": \"x\",\n  \"b\": \n}");
        assert_eq!((e.line, e.col), (4, 1), "{e}");
    }

    #[test]
    fn duplicate_names_are_refused_at_their_line() {
        let e = err("{\n\"dup\": \"1\",\n\"dup\": \"2\"\n}");
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("duplicate secret name \"dup\""), "{e}");
    }

    #[test]
    fn non_string_values_name_the_key() {
        let e = err(r#"{"port": 5432}"#);
        assert!(e.message.contains("\"port\" is a number"), "{e}");
        let e = err(r#"{"nested": {"a": "b"}}"#);
        assert!(e.message.contains("is an object"), "{e}");
    }

    #[test]
    fn names_follow_azure_rules() {
        assert!(valid_name("platform-db-password"));
        assert!(!valid_name("has_underscore"));
        assert!(!valid_name("has.dot"));
        assert!(!valid_name(&"a".repeat(128)));
        assert!(valid_name(&"a".repeat(127)));
        let e = err(r#"{"bad name": "x"}"#);
        assert!(
            e.message.contains("invalid secret name \"bad name\""),
            "{e}"
        );
    }

    #[test]
    fn refuses_empty_bom_non_utf8_and_oversized_values() {
        assert!(err("  \n").message.contains("empty"));
        assert!(err("{}").message.contains("no secrets"));
        assert!(parse(b"\xEF\xBB\xBF{\"a\":\"b\"}")
            .unwrap_err()
            .message
            .contains("byte order mark"));
        let e = parse(b"{\"a\":\n\"\xff\"}").unwrap_err();
        assert_eq!((e.line, e.col), (2, 2));
        assert!(e.message.contains("not valid UTF-8"));
        let big = format!("{{\"big\": \"{}\"}}", "x".repeat(MAX_VALUE_BYTES + 1));
        assert!(err(&big).message.contains("limit is 25600"));
        assert!(err("[\"a\"]").message.contains("JSON object"));
        assert!(err("{\"a\": \"b\"} trailing").message.contains("trailing"));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(err(&deep).message.contains("recursion limit"));
    }

    #[test]
    fn names_differing_only_in_case_are_refused_naming_both() {
        let e = err("{\n\"Caps-Name\": \"a\",\n\"caps-name\": \"b\"\n}");
        assert_eq!(e.line, 3, "{e}");
        assert!(
            e.message
                .contains("\"Caps-Name\" and \"caps-name\" differ only in letter case"),
            "{e}"
        );
    }

    #[test]
    fn parser_errors_are_said_in_words_with_their_position() {
        let e = err("{\"a\": \"x\"");
        assert_eq!(
            e.to_string(),
            "1:9: the file ends too early: a value or a closing `}` is missing"
        );
        let e = err("{\"a\": \"x\" \"b\": \"y\"}");
        assert!(
            e.message.contains("a comma is missing between two entries"),
            "{e}"
        );
        let e = err("{\"a\": \"x");
        assert!(e.message.contains("its closing `\"` is missing"), "{e}");
        let e = err("{a: \"x\"}");
        assert!(
            e.message.contains("must be a string in double quotes"),
            "{e}"
        );
        let e = err("[\"a\"]");
        assert!(e.message.starts_with("the file holds a list"), "{e}");
        for raw in ["EOF while", "invalid type", "sequence,"] {
            for input in ["{\"a\": ", "[1]", "{\"a\": \"x\"", "\"s\""] {
                assert!(!err(input).message.contains(raw), "{input}: {}", err(input));
            }
        }
    }

    #[test]
    fn a_directory_is_named_by_what_it_stands_for() {
        let dir = std::env::temp_dir().join(format!("xtask-fixtures-dir-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = parse_file(&dir, "overrides file").unwrap_err().to_string();
        assert!(
            e.contains("the overrides file") && e.contains("is a directory"),
            "{e}"
        );
        assert!(!e.contains("fixtures file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_never_echo_values() {
        let e = err(r#"{"name": "s3cr3t-value", "name": "s3cr3t-value"}"#);
        assert!(!e.to_string().contains("s3cr3t"), "{e}");
        // A file that is one value: its type is named, never its content.
        for (input, said) in [
            ("\"s3cr3t-value\"", "a single JSON string"),
            ("31415926", "a single JSON number"),
            ("-3.1415926", "a single JSON number"),
            ("false", "a single JSON boolean"),
            ("null", "the file holds null"),
        ] {
            let e = err(input).to_string();
            assert!(e.contains(said), "{input}: {e}");
            assert!(
                !e.contains("s3cr3t") && !e.contains("1415926"),
                "{input}: {e}"
            );
        }
    }
}
