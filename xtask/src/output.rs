//! Output rules shared by the commands, and types that keep secrets out of output.

use std::fmt;
use std::sync::LazyLock;

use regex_lite::Regex;

/// Collapses Vault's multi-error text (`1 error occurred:\n\t* a\n\n`) into `a`.
pub(crate) fn one_line_errors(text: &str) -> String {
    const MULTI: &str = r"\d+ errors? occurred:\s*\n((?:[ \t]*\* [^\n]*(?:\n|$))+)\n*";
    static RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(MULTI).expect("a valid regexp"));
    let one_line = |caps: &regex_lite::Captures<'_>| {
        let items = caps[1].lines().filter_map(|l| l.trim().strip_prefix("* "));
        let items: Vec<&str> = items.map(str::trim).filter(|l| !l.is_empty()).collect();
        items.join("; ")
    };
    RE.replace_all(text, one_line).into_owned()
}

pub(crate) fn count(n: usize, singular: &str, plural: &str) -> String {
    format!("{n} {}", if n == 1 { singular } else { plural })
}

/// At most this many names per list in text output; `--output json` has them all.
pub(crate) const NAMES_SHOWN: usize = 20;

/// A list of names for text output: the first [`NAMES_SHOWN`], then `and N more`.
pub(crate) fn capped<S: AsRef<str>>(names: &[S]) -> String {
    let shown: Vec<&str> = names.iter().take(NAMES_SHOWN).map(AsRef::as_ref).collect();
    let mut out = shown.join(", ");
    if names.len() > NAMES_SHOWN {
        out.push_str(&format!(", and {} more", names.len() - NAMES_SHOWN));
    }
    out
}

pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// A secret string: its Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(s: String) -> Secret {
        Secret(s)
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A Vault address, whose basic-auth user and password show as `***` ([`shown_addr`]).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct VaultAddr(String);

impl VaultAddr {
    pub(crate) fn new(addr: String) -> VaultAddr {
        VaultAddr(addr)
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for VaultAddr {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VaultAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&shown_addr(&self.0))
    }
}

impl fmt::Debug for VaultAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultAddr({self})")
    }
}

impl serde::Serialize for VaultAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// `addr` for messages: `http://user:pass@host` reads `http://***@host`.
pub(crate) fn shown_addr(addr: &str) -> String {
    let (scheme, rest) = match addr.split_once("://") {
        Some((scheme, rest)) => (&addr[..scheme.len() + 3], rest),
        None => ("", addr),
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_multi_errors_fit_on_one_line() {
        let one = "1 error occurred:\n\t* permission denied\n\n";
        assert_eq!(one_line_errors(one), "permission denied");
        let two = "denied for GET x (2 errors occurred:\n\t* a\n\t* b\n\n). Get a token.";
        assert_eq!(one_line_errors(two), "denied for GET x (a; b). Get a token.");
        let helm = "helmfile template failed:\n  Error: boom";
        assert_eq!(one_line_errors(helm), helm, "other text is kept");
    }

    #[test]
    fn counts_and_capped_lists() {
        assert_eq!(count(1, "secret", "secrets"), "1 secret");
        assert_eq!(count(0, "secret", "secrets"), "0 secrets");
        let names: Vec<String> = (0..25).map(|i| format!("n{i}")).collect();
        let text = capped(&names);
        assert!(text.starts_with("n0, n1,") && text.ends_with("n19, and 5 more"), "{text}");
        assert_eq!(capped(&["a", "b"]), "a, b");
        assert_eq!(xml_escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }
}
