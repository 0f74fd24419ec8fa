//! `secrets seed --provider file`: the README's first command.

use std::os::unix::fs::PermissionsExt;

use crate::support::{assert_contains, Sandbox};

fn mode(sb: &Sandbox, rel: &str) -> u32 {
    std::fs::metadata(sb.path(rel)).unwrap().permissions().mode() & 0o777
}

#[test]
fn seeds_a_private_store_idempotently() {
    let sb = Sandbox::new();
    let run = sb.seed_file(&[]).ok();
    assert_contains(&run.stdout, "-> file .local/secrets/store.json");
    assert_contains(&run.stdout, "plan: 47 create, 0 update, 0 unchanged, 0 restamp, 0 conflict");
    assert_eq!(mode(&sb, ".local/secrets/store.json"), 0o600);
    let store: serde_json::Value =
        serde_json::from_str(&sb.read(".local/secrets/store.json")).unwrap();
    let fixtures = serde_json::Value::Object(crate::support::fixtures(&sb));
    for (name, value) in fixtures.as_object().unwrap() {
        assert_eq!(&store["secrets"][name]["value"], value, "{name}");
        assert_eq!(store["secrets"][name]["version"], 1);
    }
    let before = sb.read(".local/secrets/store.json");
    let again = sb.seed_file(&[]).ok();
    assert_contains(&again.stdout, "0 written, 47 unchanged");
    assert_eq!(
        before,
        sb.read(".local/secrets/store.json"),
        "a no-op seed leaves the store byte for byte"
    );
}

#[test]
fn refuses_a_store_git_would_commit() {
    let sb = Sandbox::new();
    sb.write(".gitignore", "/target/\n");
    let run = sb.seed_file(&[]).code(1);
    assert_contains(&run.stderr, "is not ignored by git");
    assert!(!sb.path(".local/secrets/store.json").exists());
}

#[test]
fn hand_edits_conflict_and_corrupt_stores_are_kept() {
    let sb = Sandbox::new();
    sb.seed_file(&[]).ok();
    let mut store: serde_json::Value =
        serde_json::from_str(&sb.read(".local/secrets/store.json")).unwrap();
    store["secrets"]["redis-password"]["value"] = "mine".into();
    sb.write(".local/secrets/store.json", &store.to_string());
    let run = sb.seed_file(&[]).code(1);
    assert_contains(&run.stdout, "conflict   redis-password");
    assert!(!run.all().contains("mine"));

    sb.write(
        ".local/secrets/store.json",
        "{\"format\": \"ameide-local-secrets/v1\", \"secrets\": {",
    );
    let run = sb.seed_file(&[]).code(1);
    assert_contains(&run.stderr, ".local/secrets/store.json:1:");
    assert_contains(&run.stderr, "is corrupt");
    assert!(
        sb.read(".local/secrets/store.json").ends_with("{\"secrets\": {")
            || sb.read(".local/secrets/store.json").len() < 80
    );
}

#[test]
fn bad_fixtures_are_reported_with_position_and_nothing_is_written() {
    let sb = Sandbox::new();
    let cases: &[(&str, &[u8], &str)] = &[
        (
            "malformed.json",
            b"{\n  \"a-key\": \"x\",\n  \"b-key\" \"y\"\n}\n",
            "malformed.json:3:11: expected `:`",
        ),
        (
            "dup.json",
            b"{\"a\": \"1\",\n \"a\": \"2\"}",
            "dup.json:2:4: duplicate secret name \"a\"",
        ),
        ("number.json", b"{\"port\": 5432}", "the value of \"port\" is a number"),
        ("name.json", b"{\"db_password\": \"x\"}", "invalid secret name \"db_password\""),
        ("empty.json", b"", "empty.json:1:1: the file is empty"),
        ("bom.json", b"\xEF\xBB\xBF{\"a\": \"b\"}", "byte order mark"),
        ("latin1.json", b"{\"a\": \"caf\xe9\"}", "not valid UTF-8"),
    ];
    for (file, bytes, expected) in cases {
        let path = sb.path(&format!("bad/{file}"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let run = sb.seed_file(&["--fixtures", path.to_str().unwrap()]).code(1);
        assert!(run.stderr.contains(expected), "{file}: {}", run.stderr);
        assert!(!sb.path(".local/secrets/store.json").exists(), "{file}: nothing is written");
    }
    let run = sb.seed_file(&["--fixtures", "does/not/exist.json"]).code(1);
    assert_contains(&run.stderr, "cannot read fixtures file");
}

#[test]
fn default_fixtures_may_not_link_outside_the_repo() {
    let sb = Sandbox::new();
    let outside = sb.root.parent().unwrap().join("outside.json");
    std::fs::write(&outside, "{\"a\": \"b\"}").unwrap();
    let fixtures = sb.path("scripts/azure/default-local-keyvault-secrets.json");
    std::fs::remove_file(&fixtures).unwrap();
    std::os::unix::fs::symlink(&outside, &fixtures).unwrap();
    let run = sb.seed_file(&[]).code(1);
    assert_contains(&run.stderr, "outside the repository");
    // An explicit path may be anywhere.
    sb.seed_file(&["--fixtures", outside.to_str().unwrap()]).ok();
}

#[test]
fn overrides_are_layered_and_reported() {
    let sb = Sandbox::new();
    sb.write(
        ".local/secrets/overrides.json",
        "{\"redis-password\": \"my-own\", \"my-extra-key\": \"x\"}",
    );
    // --verbose: the plan lists every entry (without it, 20 per action).
    let run = sb.seed_file(&["--verbose"]).ok();
    assert!(
        run.stdout.contains(
            "48 secrets from scripts/azure/default-local-keyvault-secrets.json (2 overridden)"
        ),
        "{}",
        run.stdout
    );
    assert_contains(&run.stdout, "redis-password (override)");
    let store: serde_json::Value =
        serde_json::from_str(&sb.read(".local/secrets/store.json")).unwrap();
    assert_eq!(store["secrets"]["redis-password"]["value"], "my-own");
}

#[test]
fn renders_eso_fake_and_plain_secrets() {
    if !crate::support::require_tools(&["helm", "helmfile"]) {
        return;
    }
    let sb = Sandbox::new();
    sb.seed_file(&["--render", "eso-fake", "--out", ".local/eso-fake.yaml"]).ok();
    assert_eq!(mode(&sb, ".local/eso-fake.yaml"), 0o600);
    let text = sb.read(".local/eso-fake.yaml");
    assert!(text.contains("kind: ClusterSecretStore") && text.contains("name: ameide-vault"));
    assert!(text.contains("- key: \"graph-db-url\""), "{text}");

    let run = sb.seed_file(&["--render", "secrets", "--out", "-"]).ok();
    assert_contains(&run.stdout, "name: \"graph-db-credentials\"");
    assert!(run.stdout.contains("\"realm\": \"ameide\""), "extracted JSON keys become Secret keys");

    let run = sb.seed_file(&["--render", "eso-fake", "--out", "committed.yaml"]).code(1);
    assert_contains(&run.stderr, "is not ignored by git");
    let run = sb.seed_file(&["--render", "eso-fake"]).code(2);
    assert_contains(&run.stderr, "--render needs --out");
}

#[test]
fn a_held_lock_is_refused_and_names_its_holder() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path(".local/secrets")).unwrap();
    let lock = sb.path(".local/secrets/store.json.lock");
    let mut holder = std::process::Command::new("python3")
        .args(["-c", "import fcntl,sys,time\nf=open(sys.argv[1],'w')\nfcntl.flock(f, fcntl.LOCK_EX)\nf.write('pid 4242 `xtask secrets seed` since then')\nf.flush()\nprint('locked', flush=True)\ntime.sleep(30)"])
        .arg(&lock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let run = sb.seed_file(&[]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(run.code, 1, "{}", run.all());
    assert_contains(&run.stderr, "another seed of the file store is running (pid 4242");
    sb.seed_file(&[]).ok();
}
