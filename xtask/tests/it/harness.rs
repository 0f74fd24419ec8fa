//! The harness's promise: no test passes having done nothing. A test whose
//! tools are missing fails naming them, unless XTASK_SKIP_TOOL_TESTS=1
//! turns it into a skip that is printed and logged for `cargo xtask test`.

use std::process::Command;

use crate::support::TempDir;

/// Runs one test of this binary with no tools anywhere on its PATH.
fn without_tools(test: &str, skip: bool, log: &std::path::Path) -> (bool, String) {
    let empty = TempDir::new("no-tools");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("XTASK_TEST_TOOLS_BIN", &empty.0)
        .env("PATH", "/usr/bin:/bin")
        .env("XTASK_TOOL_SKIP_LOG", log)
        .env_remove("XTASK_SKIP_TOOL_TESTS");
    if skip {
        cmd.env("XTASK_SKIP_TOOL_TESTS", "1");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_test_without_its_tools_fails_naming_them_or_is_a_logged_skip() {
    // Only meaningful where /usr/bin has no bao of its own.
    assert!(
        !std::path::Path::new("/usr/bin/bao").exists()
            && !std::path::Path::new("/bin/bao").exists(),
        "this test needs a machine without a system-wide bao"
    );
    let dir = TempDir::new("skips");
    let log = dir.0.join("skips.txt");
    let test = "seed_vault::seeds_kv2_once_then_writes_nothing";

    let (ok, out) = without_tools(test, false, &log);
    assert!(!ok, "passed without bao:\n{out}");
    assert!(out.contains("needs bao") && out.contains("cargo xtask tools"), "{out}");
    assert!(out.contains("XTASK_SKIP_TOOL_TESTS=1"), "{out}");
    assert!(!log.exists(), "a failure is not a skip");

    let (ok, out) = without_tools(test, true, &log);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("SKIPPED {test}: needs bao")), "{out}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(logged, format!("{test}: needs bao\n"));
}
