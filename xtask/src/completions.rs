//! `cargo xtask secrets completions bash|zsh|fish`, generated from the
//! same help tree as `--help`, so they cannot drift from the flags.

use std::collections::BTreeMap;

use anyhow::Result;

/// One command: its subcommands, its flags, and for each flag that takes a
/// value, the value's placeholder (`path`, `provider`, ...).
#[derive(Debug, Default, Clone)]
pub struct Command {
    pub subs: Vec<String>,
    pub flags: Vec<String>,
    pub valued: BTreeMap<String, Placeholder>,
    /// The doc line of each valued flag (it names the allowed values).
    docs: BTreeMap<String, String>,
    /// A positional argument, such as `<shell>`.
    pub positional: Option<String>,
}

pub type Placeholder = String;

/// Command path (without "xtask") to its command.
pub type Tree = BTreeMap<String, Command>;

fn tree() -> Tree {
    let help = match crate::flags::Xtask::from_vec(vec!["--help".into()]) {
        Err(e) => e.to_string(),
        Ok(_) => String::new(),
    };
    parse(&help)
}

pub fn parse(help: &str) -> Tree {
    let mut tree: Tree = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut last_valued: Option<String> = None;
    let mut in_args = false;
    for line in help.lines() {
        if let Some(rest) = line.strip_prefix("xtask") {
            let path = rest.trim().to_string();
            tree.entry(path.clone()).or_default();
            if let Some((parent, child)) = path
                .rsplit_once(' ')
                .or(Some(("", path.as_str())).filter(|_| !path.is_empty()))
            {
                tree.entry(parent.to_string())
                    .or_default()
                    .subs
                    .push(child.to_string());
            }
            current = Some(path);
            in_args = false;
            continue;
        }
        let Some(cur) = &current else { continue };
        let t = line.trim();
        let cmd = tree.get_mut(cur).expect("entered above");
        if t == "ARGS:" {
            in_args = true;
        } else if t == "OPTIONS:" {
            in_args = false;
        } else if in_args && t.starts_with('<') && cmd.positional.is_none() {
            cmd.positional = Some(t.trim_matches(['<', '>']).to_string());
        } else if t.starts_with('-') {
            last_valued = None;
            for part in t.split(", ") {
                let mut words = part.split_whitespace();
                let flag = words.next().unwrap_or_default();
                if flag.starts_with("--") && flag != "--help" {
                    cmd.flags.push(flag.to_string());
                    if let Some(value) = words.next() {
                        cmd.valued
                            .insert(flag.to_string(), value.trim_matches(['<', '>']).to_string());
                        last_valued = Some(flag.to_string());
                    }
                }
            }
        } else if let Some(flag) = last_valued.take() {
            if !t.is_empty() {
                cmd.docs.insert(flag, t.to_string());
            }
        }
    }
    tree
}

/// What completes the value of `flag` in `cmd`: a word list, or files.
#[derive(Debug, PartialEq, Eq)]
pub enum Values {
    Words(Vec<String>),
    Files,
    /// A number, a host, a mount: nothing to offer, but the words after it still complete.
    Free,
}

fn values(cmd: &Command, flag: &str, envs: &[String]) -> Values {
    let words = |w: &[&str]| Values::Words(w.iter().map(|s| s.to_string()).collect());
    let doc = cmd.docs.get(flag).map(String::as_str).unwrap_or_default();
    let named_in_doc = |candidates: &[&str]| {
        let found: Vec<&str> = candidates
            .iter()
            .copied()
            .filter(|c| {
                doc.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
                    .any(|w| w == *c)
            })
            .collect();
        words(&found)
    };
    match (flag, cmd.valued.get(flag).map(String::as_str)) {
        (_, Some("path")) => Values::Files,
        ("--provider" | "--to", _) => named_in_doc(&["vault", "file", "azure"]),
        ("--output", _) => named_in_doc(&["text", "json", "junit"]),
        ("--render", _) => named_in_doc(&["eso-fake", "secrets"]),
        ("--fail-on", _) => named_in_doc(&["missing", "drift", "unused"]),
        ("--target", _) => named_in_doc(&["fixtures", "manifests", "flag_editor"]),
        ("--env", _) => Values::Words(envs.to_vec()),
        _ => Values::Free,
    }
}

/// The values of a positional argument.
fn positional_values(name: &str) -> Vec<&'static str> {
    match name {
        "shell" => vec!["bash", "zsh", "fish"],
        _ => vec![],
    }
}

pub fn run(shell: &str) -> Result<()> {
    let tree = tree();
    let mut envs = crate::project::environments(&crate::project_root());
    if envs.is_empty() {
        envs = vec!["local".into()];
    }
    let script = match shell {
        "bash" => bash(&tree, &envs),
        "zsh" => format!(
            "#compdef cargo\nautoload -U +X bashcompinit && bashcompinit\n{}",
            bash(&tree, &envs)
        ),
        "fish" => fish(&tree, &envs),
        other => crate::usage!("unknown shell {other:?}: use bash, zsh or fish"),
    };
    print!("{script}");
    Ok(())
}

fn bash(tree: &Tree, envs: &[String]) -> String {
    let mut cases = String::new();
    let mut value_cases = String::new();
    let mut valued: Vec<&str> = Vec::new();
    for (path, cmd) in tree {
        let mut words: Vec<&str> = cmd.subs.iter().map(String::as_str).collect();
        if let Some(p) = &cmd.positional {
            words.extend(positional_values(p));
        }
        words.extend(cmd.flags.iter().map(String::as_str));
        words.push("--help");
        cases.push_str(&format!(
            "    \"{path}\") words=\"{}\" ;;\n",
            words.join(" ")
        ));
        for flag in cmd.valued.keys() {
            if !valued.contains(&flag.as_str()) {
                valued.push(flag);
            }
            let action = match values(cmd, flag, envs) {
                Values::Words(w) => format!("words=\"{}\"", w.join(" ")),
                Values::Files => "COMPREPLY=($(compgen -f -- \"$cur\")); return".to_string(),
                Values::Free => "COMPREPLY=(); return".to_string(),
            };
            value_cases.push_str(&format!("    \"{path} {flag}\") {action} ;;\n"));
        }
    }
    valued.sort();
    let valued = valued.join(" ");
    format!(
        r#"# cargo xtask completions (generated by `cargo xtask secrets completions bash`).
# Completes `cargo xtask ...` and hands every other cargo command to the
# completion cargo already had (rustup's `_cargo`), which it wraps, not replaces.
# Install: cargo xtask secrets completions bash > ~/.cargo-xtask.bash
#          echo 'source ~/.cargo-xtask.bash' >> ~/.bashrc
_cargo_xtask_valued=" {valued} "
_cargo_xtask() {{
  if [[ "${{COMP_WORDS[1]}}" != "xtask" || $COMP_CWORD -lt 2 ]]; then
    if [[ -n "$_cargo_xtask_orig" ]] && declare -F "$_cargo_xtask_orig" >/dev/null; then
      "$_cargo_xtask_orig" "$@"
    else
      COMPREPLY=()
      compopt -o default 2>/dev/null
    fi
    return
  fi
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" path="" i w skip=0 words=""
  for ((i = 2; i < COMP_CWORD; i++)); do
    w="${{COMP_WORDS[i]}}"
    if ((skip)); then skip=0; continue; fi
    if [[ "$w" == -* ]]; then
      [[ "$_cargo_xtask_valued" == *" $w "* ]] && skip=1
      continue
    fi
    path="${{path:+$path }}$w"
  done
  if ((skip)); then
    case "$path $prev" in
{value_cases}      *) COMPREPLY=(); return ;;
    esac
  else
    case "$path" in
{cases}      *) words="" ;;
    esac
  fi
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
# Wrap cargo's own completion: load it first if bash-completion loads lazily.
if ! complete -p cargo >/dev/null 2>&1 && declare -F _completion_loader >/dev/null; then
  _completion_loader cargo
fi
_cargo_xtask_spec="$(complete -p cargo 2>/dev/null)"
if [[ "$_cargo_xtask_spec" =~ -F\ ([^ ]+) && "${{BASH_REMATCH[1]}}" != _cargo_xtask ]]; then
  _cargo_xtask_orig="${{BASH_REMATCH[1]}}"
  eval "${{_cargo_xtask_spec/-F $_cargo_xtask_orig/-F _cargo_xtask}}"
elif [[ "${{BASH_REMATCH[1]}}" != _cargo_xtask ]]; then
  _cargo_xtask_orig=""
  complete -o default -F _cargo_xtask cargo
fi
unset _cargo_xtask_spec
"#
    )
}

fn fish(tree: &Tree, envs: &[String]) -> String {
    let mut out = String::from(
        "# cargo xtask completions (generated by `cargo xtask secrets completions fish`).\n",
    );
    for (path, cmd) in tree {
        let words: Vec<&str> = path.split_whitespace().collect();
        let mut cond = String::from("__fish_seen_subcommand_from xtask");
        for w in &words {
            cond.push_str(&format!("; and __fish_seen_subcommand_from {w}"));
        }
        let leaf_guard = if cmd.subs.is_empty() {
            String::new()
        } else {
            format!(
                "; and not __fish_seen_subcommand_from {}",
                cmd.subs.join(" ")
            )
        };
        for s in &cmd.subs {
            out.push_str(&format!(
                "complete -c cargo -f -n '{cond}{leaf_guard}' -a {s}\n"
            ));
        }
        if let Some(p) = &cmd.positional {
            for v in positional_values(p) {
                out.push_str(&format!("complete -c cargo -f -n '{cond}' -a {v}\n"));
            }
        }
        for f in &cmd.flags {
            let value = if cmd.valued.contains_key(f) {
                match values(cmd, f, envs) {
                    Values::Words(w) => format!(" -x -a '{}'", w.join(" ")),
                    Values::Files => " -r -F".to_string(),
                    Values::Free => " -x".to_string(),
                }
            } else {
                String::new()
            };
            out.push_str(&format!(
                "complete -c cargo -n '{cond}{leaf_guard}' -l {}{value}\n",
                f.trim_start_matches("--")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_matches_the_flags() {
        let tree = tree();
        assert_eq!(tree[""].subs, ["tools", "test", "fuzz", "bench", "secrets"]);
        assert_eq!(
            tree["secrets"].subs,
            [
                "seed",
                "check",
                "migrate",
                "rollback",
                "doctor",
                "completions",
                "status"
            ]
        );
        assert!(tree["secrets seed"]
            .flags
            .contains(&"--provider".to_string()));
        assert!(tree["secrets seed"].flags.contains(&"--quiet".to_string()));
        assert!(tree["secrets migrate"]
            .flags
            .contains(&"--no-rollback".to_string()));
        assert_eq!(tree["secrets seed"].valued["--fixtures"], "path");
        assert!(!tree["secrets seed"].valued.contains_key("--dry-run"));
        assert_eq!(
            tree["secrets completions"].positional.as_deref(),
            Some("shell")
        );
        let envs = ["local".to_string()];
        let w = |path: &str, flag: &str| values(&tree[path], flag, &envs);
        let words = |w: &[&str]| Values::Words(w.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            w("secrets seed", "--provider"),
            words(&["vault", "file", "azure"])
        );
        assert_eq!(w("secrets migrate", "--to"), words(&["vault", "azure"]));
        assert_eq!(w("secrets seed", "--output"), words(&["text", "json"]));
        assert_eq!(
            w("secrets check", "--output"),
            words(&["text", "json", "junit"])
        );
        assert_eq!(w("secrets check", "--env"), words(&["local"]));
        assert_eq!(w("secrets check", "--infra"), Values::Files);
        assert_eq!(w("secrets seed", "--concurrency"), Values::Free);
    }

    #[test]
    fn scripts_name_every_command() {
        let tree = tree();
        let envs = ["local".to_string(), "staging".to_string()];
        let b = bash(&tree, &envs);
        assert!(
            b.contains("\"secrets seed\") words=\"--provider --env"),
            "{b}"
        );
        assert!(b.contains("complete -o default -F _cargo_xtask cargo"));
        assert!(
            b.contains("\"secrets seed --env\") words=\"local staging\""),
            "{b}"
        );
        let f = fish(&tree, &envs);
        assert!(f.contains("__fish_seen_subcommand_from xtask; and __fish_seen_subcommand_from secrets; and not __fish_seen_subcommand_from seed check migrate rollback doctor completions status' -a migrate"), "{f}");
        assert!(f.contains("-l allow-non-local"));
    }
}
