//! The peer rows of `cargo xtask bench`: what a user would run instead of
//! the seed. The legacy shell loop (`bao kv put` per secret), and hvac, the
//! Python Vault client, one request at a time and on 16 threads. hvac is
//! pinned and installed from PyPI into a git-ignored venv under `target/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The hvac release the peer rows use.
pub(crate) const HVAC: &str = "hvac==2.4.0";

/// The Python script of the hvac rows: the same secrets and the same two
/// writes per secret as a cold seed (the value with `cas: 0`, then the
/// record in `custom_metadata`). hvac 2.4 has no metadata PATCH, so the
/// record is its `update_metadata` POST, which the server treats alike.
/// Each thread has its own client (its own keep-alive connection).
const HVAC_SCRIPT: &str = r#"
import os, sys, threading
from concurrent.futures import ThreadPoolExecutor
import hvac

addr, token, mount = os.environ["VAULT_ADDR"], os.environ["VAULT_TOKEN"], sys.argv[1]
n, threads = int(sys.argv[2]), int(sys.argv[3])
local = threading.local()

def client():
    if not hasattr(local, "c"):
        local.c = hvac.Client(url=addr, token=token)
    return local.c

def one(i):
    c, name = client(), "bench-secret-%06d" % i
    value = "bench-value-%06d-v1-%s" % (i, "x" * 48)
    c.secrets.kv.v2.create_or_update_secret(path=name, secret={"value": value}, cas=0, mount_point=mount)
    c.secrets.kv.v2.update_metadata(path=name, mount_point=mount, custom_metadata={
        "fixture-hmac": "0" * 32, "fixture-version": "1", "managed-by": "cargo-xtask-secrets"})

if threads == 1:
    for i in range(n):
        one(i)
else:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
"#;

/// A venv with the pinned hvac, made on first use; its python.
pub(crate) fn hvac_python(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/bench-peers/venv");
    let python = venv.join("bin/python");
    let stamp = venv.join("installed.txt");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == HVAC) {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(&venv);
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context(
        "creating the hvac venv (needs Python 3 with venv; Debian: apt-get install python3-venv)",
    )?;
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        HVAC,
    ]))
    .with_context(|| format!("installing {HVAC} from PyPI into {}", venv.display()))?;
    std::fs::write(&stamp, HVAC)?;
    Ok(python)
}

/// Runs `cmd` to its end; a failure quotes its stderr.
fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The hvac run: `n` secrets into `mount` on `threads`.
pub(crate) fn hvac_command(
    python: &Path,
    dir: &Path,
    mount: &str,
    n: usize,
    threads: usize,
) -> Result<Command> {
    let script = dir.join("hvac_peer.py");
    std::fs::write(&script, HVAC_SCRIPT)?;
    let mut cmd = Command::new(python);
    cmd.arg(&script).args([mount.to_string(), n.to_string(), threads.to_string()]);
    Ok(cmd)
}
