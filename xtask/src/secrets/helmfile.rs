//! helmfile, the one place it is run: `template` for `check --render` and
//! `sync` of layer 15 for `migrate`, both on `process::Tool` with a
//! deadline, and helmfile's error output said once.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use crate::process::{exit_text, Tool};
use crate::project;

const INSTALL_HINT: &str = "run `cargo xtask tools` to install it into .tools/bin";

/// How long one `helmfile template` of a layer may take (offline, local charts).
const TEMPLATE_DEADLINE: Duration = Duration::from_secs(300);

/// `helmfile ... sync` of layer 15 for `env`, as plans show it.
pub fn sync_display(env: &str) -> String {
    format!(
        "helmfile --file {} --environment {env} sync",
        project::LAYER15_HELMFILE
    )
}

/// `helmfile sync` of layer 15 for `env`, killed after `deadline`.
pub fn sync(root: &Path, env: &str, deadline: Duration) -> Result<()> {
    let tool = Tool::new("helmfile")
        .arg("--file")
        .arg(root.join(project::LAYER15_HELMFILE))
        .args(["--environment", env, "sync"])
        .dir(root)
        .env("PATH", project::path_with_tools(root))
        .deadline(deadline)
        .install_hint(INSTALL_HINT)
        .timeout_hint("raise helmfile.sync_timeout_secs in .local/secrets.toml");
    // A hung sync is stopped with the command, its deadline and the
    // setting to raise (the timeout hint); a missing helmfile says how to
    // install it. Either says so once.
    let out = tool.output()?;
    if !out.status.success() {
        anyhow::bail!(
            "`{}` failed ({}):\n  {}",
            sync_display(env),
            exit_text(out.status),
            errors(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(())
}

/// The `HELM_CACHE_HOME` that [`template`] gives helm for `out_dir`: a
/// sibling, `<out_dir>.helm-cache`. The caller removes it with `out_dir`.
pub fn helm_cache_dir(out_dir: &Path) -> PathBuf {
    let mut name = out_dir.as_os_str().to_owned();
    name.push(".helm-cache");
    PathBuf::from(name)
}

/// `helmfile template` of one helmfile into one folder per release, with
/// helm's cache in [`helm_cache_dir`].
pub fn template(helmfile: &Path, env: &str, out_dir: &Path, path_env: &OsStr) -> Result<()> {
    let out = Tool::new("helmfile")
        .arg("--file")
        .arg(helmfile)
        .args([
            "--environment",
            env,
            "template",
            "--skip-deps",
            "--output-dir",
        ])
        .arg(out_dir)
        .args([
            "--output-dir-template",
            "{{ .OutputDir }}/{{ .Release.Name }}",
        ])
        .env("PATH", path_env)
        .env("HELM_CACHE_HOME", helm_cache_dir(out_dir))
        .deadline(TEMPLATE_DEADLINE)
        .install_hint(INSTALL_HINT)
        .timeout_hint(
            "Rendering uses local charts only; a template that waits on the network (a remote chart, a \
             `fetch`) hangs here.",
        )
        .output()?;
    if !out.status.success() {
        anyhow::bail!(
            "helmfile template failed ({}):\n  {}",
            exit_text(out.status),
            errors(&String::from_utf8_lossy(&out.stderr))
        );
    }
    Ok(())
}

/// helmfile's error output, each line once: it repeats helm's error under
/// STDERR and COMBINED OUTPUT. The last 8 lines, indented for a message.
pub fn errors(stderr: &str) -> String {
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
        assert_eq!(
            errors(stderr),
            "in ./x.yaml: release \"r\" failed\n  Error: boom"
        );
    }

    /// A project root in a temp folder named after `name`, with a fake
    /// `helmfile` in .tools/bin that runs `script`.
    fn fake_root(name: &str, script: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("xtask-helmfile-{name}-{}", std::process::id()));
        let bin = dir.join(".tools/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("helmfile");
        std::fs::write(&fake, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        dir
    }

    #[test]
    fn a_stopped_sync_names_the_setting_once() {
        let dir = fake_root("once", "exec sleep 30");
        let err = format!(
            "{:#}",
            sync(&dir, "local", Duration::from_millis(300)).unwrap_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            err.matches("helmfile.sync_timeout_secs").count(),
            1,
            "{err}"
        );
    }

    #[test]
    fn a_helmfile_killed_by_a_signal_says_so() {
        let dir = fake_root("signal", "echo 'Error: boom' >&2; kill -9 $$");
        let err = format!(
            "{:#}",
            sync(&dir, "local", Duration::from_secs(30)).unwrap_err()
        );
        assert!(err.contains("failed (killed by signal 9)"), "{err}");
        assert!(err.contains("Error: boom"), "{err}");
        let path = std::env::join_paths([dir.join(".tools/bin")]).unwrap();
        let out_dir = dir.join("out");
        let err = format!(
            "{:#}",
            template(&dir.join("h.yaml"), "local", &out_dir, &path).unwrap_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("helmfile template failed (killed by signal 9)"),
            "{err}"
        );
        assert!(!err.contains("exit -1"), "{err}");
    }

    #[test]
    fn an_exit_code_reads_as_before() {
        let dir = fake_root("exit", "echo 'Error: boom' >&2; exit 3");
        let err = format!(
            "{:#}",
            sync(&dir, "local", Duration::from_secs(30)).unwrap_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("sync` failed (exit 3):\n  Error: boom"),
            "{err}"
        );
    }

    #[test]
    fn the_helm_cache_sits_beside_the_output_folder() {
        assert_eq!(
            helm_cache_dir(Path::new("/tmp/xtask-render-1-dev.eu")),
            Path::new("/tmp/xtask-render-1-dev.eu.helm-cache")
        );
    }

    #[test]
    fn a_sync_past_its_deadline_is_stopped_and_says_which_setting_to_raise() {
        let dir = std::env::temp_dir().join(format!("xtask-helmfile-{}", std::process::id()));
        let bin = dir.join(".tools/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let fake = bin.join("helmfile");
        std::fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let t = std::time::Instant::now();
        let err = format!(
            "{:#}",
            sync(&dir, "local", Duration::from_millis(300)).unwrap_err()
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{err}");
        assert!(err.contains("did not finish within"), "{err}");
        assert!(err.contains("helmfile.sync_timeout_secs"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
