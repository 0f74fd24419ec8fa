//! Output formats shared by the commands.

use anyhow::Result;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Junit,
}

/// Parses `--output`, allowing only the formats a command supports.
pub fn parse_format(value: Option<&str>, allowed: &[Format]) -> Result<Format> {
    let format = match value.unwrap_or("text") {
        "text" => Format::Text,
        "json" => Format::Json,
        "junit" => Format::Junit,
        other => crate::usage!("unknown --output {other:?}: use {}", names(allowed)),
    };
    if !allowed.contains(&format) {
        crate::usage!(
            "--output {} is not supported here: use {}",
            value.unwrap_or_default(),
            names(allowed)
        );
    }
    Ok(format)
}

fn names(allowed: &[Format]) -> String {
    allowed
        .iter()
        .map(|f| match f {
            Format::Text => "text",
            Format::Json => "json",
            Format::Junit => "junit",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Escapes text for XML attributes and content.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_checked() {
        assert_eq!(parse_format(None, &[Format::Text]).unwrap(), Format::Text);
        assert_eq!(
            parse_format(Some("json"), &[Format::Text, Format::Json]).unwrap(),
            Format::Json
        );
        let e = parse_format(Some("junit"), &[Format::Text, Format::Json]).unwrap_err();
        assert!(e.downcast_ref::<crate::UsageError>().is_some());
        assert!(parse_format(Some("yaml"), &[Format::Text]).is_err());
        assert_eq!(xml_escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
    }
}
