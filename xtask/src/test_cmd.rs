//! `cargo xtask test`: what CI runs. Installs the pinned tools, then checks
//! formatting and lints, fuzzes each target briefly (with CI=true a missing
//! fuzz toolchain fails), then runs every test with the tools first on PATH.

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::{flags, project, project_root, tools};

pub fn run(flags: &flags::Test) -> Result<()> {
    let root = project_root();
    tools::ensure_all(&root).context("the tests need bao, helm and helmfile")?;
    let sh = Shell::new()?;
    sh.change_dir(&root);
    sh.set_var("PATH", project::path_with_tools(&root));
    cmd!(sh, "cargo fmt --all -- --check")
        .run()
        .context("formatting differs: run `cargo fmt --all`")?;
    cmd!(
        sh,
        "cargo clippy --workspace --all-targets --quiet -- -D warnings"
    )
    .run()
    .context("clippy found problems (see above)")?;
    let args = &flags.args;
    cmd!(sh, "cargo test --workspace {args...}")
        .run()
        .context("tests failed (see above)")?;
    Ok(())
}
