//! `--help` focused on the command asked about: of the whole tree xflags
//! renders, the requested command's section, its subcommands one line each.

/// `full`: xflags' help; `path`: the command words before `--help`.
pub(crate) fn focused(full: &str, path: &[String]) -> String {
    let sections = sections(full);
    let want = std::iter::once("xtask").chain(path.iter().map(String::as_str));
    let want = want.collect::<Vec<_>>().join(" ");
    let Some((_, body)) = sections.iter().find(|(head, _)| *head == want) else {
        return with_newline(full.to_string());
    };
    let mut out = format!("{want}\n{}", body.trim_end_matches('\n'));
    let child = |(head, body): &(String, String)| {
        let name = head.strip_prefix(&want)?.strip_prefix(' ')?;
        if name.contains(' ') {
            return None;
        }
        let first_line = body.lines().map(str::trim).find(|l| !l.is_empty());
        Some((name.to_string(), first_line.unwrap_or("").to_string()))
    };
    let children: Vec<(String, String)> = sections.iter().filter_map(child).collect();
    if !children.is_empty() {
        out = out.trim_end().trim_end_matches("SUBCOMMANDS:").trim_end().to_string();
        out.push_str("\n\nCOMMANDS:\n");
        let width = children.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, line) in children {
            out.push_str(&format!("    {name:<width$}  {line}\n"));
        }
        out.push_str(&format!(
            "\nRun `cargo {want} <command> --help` for a command's flags and examples.\n"
        ));
    }
    with_newline(out)
}

/// Help ends with exactly one newline, so the shell prompt starts on its own line.
fn with_newline(mut text: String) -> String {
    text.truncate(text.trim_end().len());
    text.push('\n');
    text
}

/// Splits the help into (command path, text) sections.
fn sections(full: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in full.lines() {
        if line.starts_with("xtask") {
            out.push((line.trim().to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = "xtask\n  Root.\n\nSUBCOMMANDS:\n\nxtask secrets\n  Secrets.\n\n\nxtask secrets seed\n  Seed it.\n\n  OPTIONS:\n    --x\n\nxtask secrets check\n  Check it.\n";

    #[test]
    fn lists_children_one_line_each() {
        let help = focused(FULL, &["secrets".to_string()]);
        assert_eq!(
            help,
            "xtask secrets\n  Secrets.\n\nCOMMANDS:\n    seed   Seed it.\n    check  Check it.\n\nRun `cargo xtask secrets <command> --help` for a command's flags and examples.\n"
        );
        let leaf = focused(FULL, &["secrets".to_string(), "seed".to_string()]);
        assert!(leaf.starts_with("xtask secrets seed\n  Seed it."), "{leaf:?}");
        assert!(leaf.ends_with("--x\n") && !leaf.ends_with("\n\n"), "{leaf:?}");
        assert!(focused(FULL, &[]).contains("    secrets  Secrets."));
    }
}
