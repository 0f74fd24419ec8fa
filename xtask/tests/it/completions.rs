//! Bash completion, run in a real bash: values for flags, words after
//! valued flags, and cargo's own completer kept for everything else.

use crate::support::Sandbox;

/// Sources the generated script after a stand-in for rustup's `_cargo`
/// completion, then completes each line (the cursor at its end) and prints
/// one `COMPREPLY` per line, words separated by spaces.
fn complete(sb: &Sandbox, lines: &[&str]) -> (Vec<String>, String) {
    complete_after(
        sb,
        "_cargo() { COMPREPLY=(from-cargos-own-completer); }\n\
         complete -o bashdefault -o nospace -F _cargo cargo\n",
        lines,
    )
}

/// Like [`complete`], with `setup` run before the script is sourced.
fn complete_after(sb: &Sandbox, setup: &str, lines: &[&str]) -> (Vec<String>, String) {
    let script = sb.xtask(&["secrets", "completions", "bash"]).ok().stdout;
    let path = sb.path("completion.bash");
    std::fs::write(&path, script).unwrap();
    let mut program = String::from(setup);
    program.push_str(&format!("source '{}'\n", path.display()));
    program.push_str("echo \"spec: $(complete -p cargo)\"\n");
    for line in lines {
        program.push_str(&format!(
            "COMP_WORDS=({line}); [[ \"{line}\" == *' ' ]] && COMP_WORDS+=(''); \
             COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMPREPLY=(); _cargo_xtask; echo \"${{COMPREPLY[*]}}\"\n"
        ));
    }
    let out = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let spec = lines.next().unwrap_or_default().to_string();
    (lines.map(String::from).collect(), spec)
}

#[test]
fn bash_completes_values_and_words_after_valued_flags() {
    let sb = Sandbox::new();
    let (got, spec) = complete(
        &sb,
        &[
            "cargo xtask secrets seed --provider ",
            "cargo xtask secrets seed --output ",
            "cargo xtask secrets check --output ",
            "cargo xtask secrets check --env ",
            "cargo xtask secrets completions ",
            "cargo xtask secrets migrate --to ",
            "cargo xtask secrets seed --provider file --dry",
            "cargo xtask secrets seed --concurrency 4 --for",
            "cargo xtask secrets check --env local --li",
            "cargo xtask secrets sta",
            "cargo bui",
        ],
    );
    assert_eq!(
        got,
        [
            "vault file azure",
            "text json",
            "text json junit",
            "local production staging",
            "bash zsh fish --help",
            "vault azure",
            "--dry-run",
            "--force",
            "--live",
            "status",
            "from-cargos-own-completer",
        ]
    );
    // cargo's completion is wrapped with its own options, not replaced.
    assert_eq!(
        spec,
        "spec: complete -o bashdefault -o nospace -F _cargo_xtask cargo"
    );
}

/// With bash-completion 2, cargo's completion is loaded on first use by
/// `_completion_loader cargo`: the script loads it first, then wraps it.
#[test]
fn bash_loads_cargos_lazy_completion_before_wrapping_it() {
    let sb = Sandbox::new();
    let (got, spec) = complete_after(
        &sb,
        // What bash-completion's loader does: source the command's completion file.
        "_completion_loader() { [[ $1 == cargo ]] && { _cargo() { COMPREPLY=(loaded-lazily); }; complete -o bashdefault -o default -F _cargo cargo; }; }\n",
        &["cargo bui", "cargo xtask secrets completions z"],
    );
    assert_eq!(got, ["loaded-lazily", "zsh"]);
    assert_eq!(
        spec,
        "spec: complete -o bashdefault -o default -F _cargo_xtask cargo"
    );
}
