//! Tidy: tests that hold the conventions that keep this code easy to
//! change (in the spirit of rust-analyzer's `xtask/src/tidy.rs`): child
//! processes only through `process.rs`, and a `//!` line opening every
//! module.

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

/// The text before the file's `#[cfg(test)]` module, if it has one.
fn without_tests(text: &str) -> &str {
    text.find("\n#[cfg(test)]\nmod ")
        .map_or(text, |i| &text[..i])
}

/// The numbers of the lines whose code (before any `//`) holds one of
/// `needles`.
fn lines_with(text: &str, needles: &[&str]) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let code = l.split("//").next().unwrap_or_default();
            needles.iter().any(|n| code.contains(n))
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// Lines that start a child process without `process::Tool`: std's
/// `Command`, or duct (which `process.rs` is built on).
fn command_uses(text: &str) -> Vec<usize> {
    let mut lines = lines_with(
        text,
        &[
            concat!("process", "::", "Command"),
            concat!("Command", "::", "new("),
            concat!("duct", "::"),
        ],
    );
    lines.extend(
        text.lines()
            .enumerate()
            .filter(|(_, l)| {
                let code = l.split("//").next().unwrap_or_default();
                code.contains(concat!("use std::process::", "{")) && code.contains("Command")
            })
            .map(|(i, _)| i + 1),
    );
    lines.sort_unstable();
    lines.dedup();
    lines
}

/// Lines that run a child through xshell: fine for the developer
/// commands (`test`, `tools`, `fuzz`), not under `secrets/`, where every
/// child must lose the Vault token and keep a deadline.
fn shell_uses(text: &str) -> Vec<usize> {
    lines_with(text, &[concat!("cmd", "!("), concat!("xshell", "::")])
}

#[test]
fn child_processes_go_through_the_process_module() {
    // `process.rs` is the one way; this file names what it looks for.
    let allowed = ["process.rs", "tidy.rs"];
    let offenders: Vec<String> = rust_files(&src())
        .into_iter()
        .filter(|(rel, _)| !allowed.contains(&rel.as_str()))
        .flat_map(|(rel, text)| {
            let mut lines = command_uses(&text);
            if rel.starts_with("secrets/") {
                lines.extend(shell_uses(&text));
            }
            lines.sort_unstable();
            lines.dedup();
            lines.into_iter().map(move |line| format!("{rel}:{line}"))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "a child process outside process.rs (std::process::Command or duct anywhere, xshell under secrets/; \
         use process::Tool, or Tool::spawn for a long-running child):\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn every_module_starts_with_a_doc_line() {
    let missing: Vec<String> = rust_files(&src())
        .into_iter()
        .filter(|(_, text)| !text.starts_with("//! "))
        .map(|(rel, _)| rel)
        .collect();
    assert!(
        missing.is_empty(),
        "modules whose first line is not a `//! ` line saying what they hold:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    let bad = concat!("let x = std::process::", "Command::new(\"kubectl\");");
    assert_eq!(command_uses(bad), [1]);
    assert_eq!(
        command_uses(concat!("use std::process::{", "Command, Stdio};")),
        [1]
    );
    assert!(command_uses("let code = std::process::ExitCode::SUCCESS;").is_empty());
    assert!(command_uses("// see std::process::Command").is_empty());
    assert_eq!(
        command_uses(concat!(
            "let out = duct",
            "::cmd(\"kubectl\", args).read()?;"
        )),
        [1]
    );
    assert_eq!(command_uses(concat!("x\nuse duct", "::cmd;")), [2]);
    assert!(command_uses("// duct::cmd is what process.rs uses").is_empty());
    assert_eq!(
        shell_uses(concat!(
            "let v = c",
            "md!(sh, \"kubectl version\").read()?;"
        )),
        [1]
    );
    assert_eq!(shell_uses(concat!("use xshell", "::{cmd, Shell};")), [1]);
    assert!(shell_uses("// cmd!(sh, \"git\") in tools.rs").is_empty());
    assert!(shell_uses("let c = kube::cmd(&args);").is_empty());
    assert_eq!(without_tests("a\n#[cfg(test)]\nmod tests {}"), "a");
}
