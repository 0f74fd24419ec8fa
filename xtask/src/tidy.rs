//! Tidy: tests that hold this code's conventions (as rust-analyzer's
//! `tidy.rs`): commands imported by `secrets/mod.rs` alone, and a `//!`
//! line opening every module.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, sorted, as (path relative to src, text).
fn rust_files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p.strip_prefix(src()).unwrap().display().to_string();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_module_starts_with_a_doc_line() {
    let files = rust_files(&src());
    let missing: Vec<&str> = files
        .iter()
        .filter(|(_, text)| !text.starts_with("//! "))
        .map(|(rel, _)| rel.as_str())
        .collect();
    let missing = missing.join("\n  ");
    assert!(
        missing.is_empty(),
        "modules whose first line is not a `//! ` line saying what they hold:\n  {missing}"
    );
}

#[test]
fn only_the_dispatcher_imports_a_command() {
    // `migrate/journal.rs` is an operation: `status` and `doctor` read it.
    let commands = ["seed", "check", "status", "doctor", "migrate"];
    let mut offenders = Vec::new();
    for (rel, text) in rust_files(&src()) {
        if rel == "secrets/mod.rs" || rel.starts_with("secrets/migrate/") {
            continue;
        }
        let own = rel.trim_start_matches("secrets/").trim_end_matches(".rs");
        // Unit tests may name any command.
        let not_tests = text.find("\n#[cfg(test)]\nmod ").map_or(&text[..], |i| &text[..i]);
        for (n, line) in not_tests.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for cmd in commands.iter().filter(|c| **c != own) {
                let names =
                    [format!("secrets::{cmd}::"), format!("secrets::{{{cmd}"), format!(" {cmd}::")];
                let named = names.iter().any(|p| code.contains(p.as_str()));
                if named && !code.contains("migrate::journal") {
                    offenders.push(format!("{rel}:{}: {}", n + 1, code.trim()));
                }
            }
        }
    }
    let offenders = offenders.join("\n  ");
    assert!(
        offenders.is_empty(),
        "a command module imported outside secrets/mod.rs (move what is shared into an operation module):\n  {offenders}"
    );
}
