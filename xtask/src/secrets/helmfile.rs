//! helmfile, the one place it is run (`template` for `check --render`, `sync`
//! of layer 15 for `migrate`): with a deadline, its error output said once.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::process::{exit_text, Tool};
use crate::project;
use crate::secrets::config::Config;

const INSTALL_HINT: &str = "run `cargo xtask tools` to install it into .tools/bin";

/// How long one `helmfile template` of a layer may take (offline, local charts).
const TEMPLATE_DEADLINE: Duration = Duration::from_secs(300);

/// `helmfile ... sync` of layer 15 for `env`, as plans show it.
pub(crate) fn sync_display(env: &str) -> String {
    format!("helmfile --file {} --environment {env} sync", project::LAYER15_HELMFILE)
}

/// `helmfile sync` of layer 15 for `env`, killed after its deadline.
pub(crate) fn sync(cfg: &Config, env: &str) -> Result<()> {
    let tool = Tool::new("helmfile")
        .arg("--file")
        .arg(cfg.root.join(project::LAYER15_HELMFILE))
        .args(["--environment", env, "sync"])
        .dir(&cfg.root)
        .env("PATH", &cfg.tools_path)
        .deadline(cfg.helmfile_sync_timeout)
        .timeout_hint("raise helmfile.sync_timeout_secs in .local/secrets.toml");
    run(tool, &format!("`{}`", sync_display(env)))
}

/// The `HELM_CACHE_HOME` [`template`] gives helm: `<out_dir>.helm-cache`, for the caller to remove.
pub(crate) fn helm_cache_dir(out_dir: &Path) -> PathBuf {
    let mut name = out_dir.as_os_str().to_owned();
    name.push(".helm-cache");
    PathBuf::from(name)
}

/// `helmfile template` of one helmfile into one folder per release.
pub(crate) fn template(helmfile: &Path, env: &str, out_dir: &Path, path_env: &OsStr) -> Result<()> {
    let tool = Tool::new("helmfile")
        .arg("--file")
        .arg(helmfile)
        .args(["--environment", env, "template", "--skip-deps"])
        .arg("--output-dir")
        .arg(out_dir)
        .args(["--output-dir-template", "{{ .OutputDir }}/{{ .Release.Name }}"])
        .env("PATH", path_env)
        .env("HELM_CACHE_HOME", helm_cache_dir(out_dir))
        .deadline(TEMPLATE_DEADLINE)
        .timeout_hint(
            "Rendering uses local charts only; a template that waits on the network (a remote chart, a \
             `fetch`) hangs here.",
        );
    run(tool, "helmfile template")
}

/// Runs helmfile; a failure says `what` failed, how, and helmfile's errors.
fn run(tool: Tool, what: &str) -> Result<()> {
    let out = tool.install_hint(INSTALL_HINT).output()?;
    if !out.status.success() {
        let errors = errors(&String::from_utf8_lossy(&out.stderr));
        anyhow::bail!("{what} failed ({}):\n  {errors}", exit_text(out.status));
    }
    Ok(())
}

/// The last 8 lines of helmfile's error output, each once (it repeats helm's
/// error under STDERR and COMBINED OUTPUT), indented for a message.
pub(crate) fn errors(stderr: &str) -> String {
    let mut lines: Vec<&str> = Vec::new();
    for line in stderr.lines().map(str::trim) {
        let noise = line.is_empty()
            || line == "EXIT STATUS"
            || line.ends_with("OUTPUT:")
            || line == "STDERR:"
            || line.parse::<i32>().is_ok();
        if !noise && !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines[lines.len().saturating_sub(8)..].join("\n  ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_said_once() {
        let stderr = "in ./x.yaml: release \"r\" failed\nEXIT STATUS\n  1\nSTDERR:\n  Error: boom\nCOMBINED OUTPUT:\n  Error: boom\n";
        assert_eq!(errors(stderr), "in ./x.yaml: release \"r\" failed\n  Error: boom");
    }

    /// A project root with a fake `helmfile` in .tools/bin that runs `script`.
    fn fake_root(script: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join(".tools/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("helmfile"), format!("#!/bin/sh\n{script}\n")).unwrap();
        let exec = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(bin.join("helmfile"), exec).unwrap();
        dir
    }

    fn cfg(root: &Path) -> Config {
        let path = std::env::var("PATH").unwrap_or_default();
        let process = crate::project::Process::with(root, root, &[("PATH", &path)]);
        Config::load(&process, &Default::default()).unwrap()
    }

    #[test]
    fn a_failed_helmfile_says_how_it_ended_and_its_error() {
        for (end, said) in [("kill -9 $$", "killed by signal 9"), ("exit 3", "exit 3")] {
            let dir = fake_root(&format!("echo 'Error: boom' >&2; {end}"));
            let err = sync(&cfg(dir.path()), "local").unwrap_err();
            let want = format!("sync` failed ({said}):\n  Error: boom");
            assert!(format!("{err:#}").contains(&want), "{err:#}");
            let path = std::env::join_paths([dir.path().join(".tools/bin")]).unwrap();
            let out_dir = dir.path().join("out");
            let err = template(&dir.path().join("h.yaml"), "local", &out_dir, &path).unwrap_err();
            let want = format!("helmfile template failed ({said})");
            assert!(format!("{err:#}").contains(&want), "{err:#}");
        }
    }
}
