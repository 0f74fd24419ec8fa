//! Randomised robustness tests with fixed seeds, run on every `cargo test`:
//! the parsers never panic on mangled input, and the flag editor keeps every
//! byte but the value or refuses.

use crate::secrets::config::ProviderKind;
use crate::secrets::{fixtures, flagfile, scan};
use fastrand::Rng;

/// Pieces of YAML and JSON to insert, and words the parsers look for.
const PIECES: &[&str] = &[
    "\n", " ", "  ", ":", "#", "\"", "'", "{", "}", "[", "]", ",", "-", "&a", "*a", "<<: *a",
    "\r\n", "\t", "\u{feff}", "é", "\\u0041", "value", "null", "0", "---\n",
];
const WORDS: &[&str] = &["provider: vault", "provider:", "secrets:"];

/// `seed` text with random cuts, duplications and insertions.
fn mangle(rng: &mut Rng, seed: &str) -> String {
    let mut s: Vec<char> = seed.chars().collect();
    for _ in 0..rng.usize(1..=4) {
        let at = rng.usize(..=s.len());
        match rng.u8(..5) {
            0 => {
                let end = (at + rng.usize(..8)).min(s.len());
                s.drain(at..end);
            }
            1 if !s.is_empty() => {
                let from = rng.usize(..s.len());
                let end = (from + rng.usize(..12)).min(s.len());
                s.splice(at..at, s[from..end].to_vec());
            }
            2 => drop(s.splice(at..at, WORDS[rng.usize(..WORDS.len())].chars())),
            _ => drop(s.splice(at..at, PIECES[rng.usize(..PIECES.len())].chars())),
        }
    }
    s.into_iter().collect()
}

const FLAG: &str = "# Layer 15 values.\nsecrets:\n  # flag\n  provider: azure   # comment\n  other: 1\nvault:\n  installed: true\n";

#[test]
fn flag_editor_keeps_every_other_byte_or_refuses() {
    let mut rng = Rng::with_seed(0x5eed_f1a9);
    let mut edited = 0;
    for _ in 0..4000 {
        let text = mangle(&mut rng, FLAG);
        let Ok(flag) = flagfile::find(&text, "f") else { continue };
        for to in [ProviderKind::Vault, ProviderKind::Azure] {
            if let Ok(out) = flagfile::set(&text, "f", to) {
                let (prefix, suffix) = out.split_at(flag.start);
                assert_eq!(prefix, &text[..flag.start], "prefix changed for {text:?}");
                let suffix = &suffix[to.as_str().len()..];
                assert_eq!(suffix, &text[flag.end..], "suffix changed for {text:?}");
                assert_eq!(flagfile::find(&out, "f").unwrap().value, to.as_str());
                edited += 1;
            }
        }
    }
    assert!(edited > 1000, "the mangler still produces editable files ({edited})");
}

#[test]
fn fixture_parser_never_panics_and_only_accepts_valid_sets() {
    let seed = "{\n  \"platform-db-password\": \"p@ss:word\",\n  \"keycloak-realm-config\": \"{\\\"realm\\\": \\\"x\\\"}\"\n}\n";
    let mut rng = Rng::with_seed(0xf1c5_7e55);
    for _ in 0..4000 {
        let text = mangle(&mut rng, seed);
        if let Ok(pairs) = fixtures::parse(text.as_bytes()) {
            assert!(!pairs.is_empty());
            for (name, value) in &pairs {
                assert!(fixtures::valid_name(name), "{name:?} accepted from {text:?}");
                assert!(value.len() <= fixtures::MAX_VALUE_BYTES);
            }
        }
    }
    for _ in 0..2000 {
        let bytes: Vec<u8> = (0..rng.usize(..64)).map(|_| rng.u8(..)).collect();
        let _ = fixtures::parse(&bytes);
    }
}

#[test]
fn manifest_scanner_never_panics() {
    let seed = "apiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: {name: a, namespace: b}\nspec:\n  secretStoreRef: {kind: ClusterSecretStore, name: ameide-vault}\n  data:\n    - secretKey: k\n      remoteRef: {key: graph-db-url, property: value}\n  dataFrom:\n    - extract: {key: x}\n    - find: {name: {regexp: \"^a\"}}\n---\nexternalSecrets:\n  - name: v\n    data:\n      - {secretKey: s, remoteRef: {key: k2}}\n";
    let mut rng = Rng::with_seed(0x5ca_77e2);
    for _ in 0..3000 {
        let text = mangle(&mut rng, seed);
        let mut out = Vec::new();
        let _ = scan::scan_text(&text, "f.yaml", None, None, true, &mut out);
    }
}
