//! Parsing one rule string (`Tool` or `Tool(specifier)`) into a typed rule.

use std::fmt;

/// Tools whose calls edit files; `Edit(..)` rules apply to all of them.
pub(crate) const EDIT_TOOLS: [&str; 4] = ["Edit", "Write", "MultiEdit", "NotebookEdit"];
/// Tools whose calls read files; `Read(..)` rules apply to all of them.
pub(crate) const READ_TOOLS: [&str; 3] = ["Read", "Grep", "Glob"];
/// Claude Code tools whose rules take a specifier tetrarch does not judge (subagent and skill
/// names): such a rule loads, with a warning, and matches no call.
const UNJUDGED_SPECIFIER_TOOLS: [&str; 3] = ["Task", "Agent", "Skill"];

/// A rule after syntax checking, before compilation against a directory layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParsedRule {
    /// `Bash` / `Bash(*)` (`None`) or `Bash(spec)` with `:*` already rewritten as ` *`.
    Bash(Option<String>),
    /// `Read` (`None`) or `Read(path pattern)`.
    Read(Option<String>),
    /// `Edit` (`None`) or `Edit(path pattern)`.
    Edit(Option<String>),
    /// `WebFetch` (`None`) or `WebFetch(domain:host)`; the host is lower-cased.
    WebFetch(Option<String>),
    /// `mcp__server`, `mcp__server__*` (tool `None`) or `mcp__server__tool`.
    Mcp {
        /// Server name.
        server: String,
        /// Tool name, `None` for every tool of the server.
        tool: Option<String>,
    },
    /// Any other tool named without a specifier; matches calls of that tool.
    Tool(String),
}

impl fmt::Display for ParsedRule {
    /// The canonical text of the rule (what consolidation writes back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let with = |f: &mut fmt::Formatter<'_>, tool: &str, spec: &Option<String>| match spec {
            Some(s) => write!(f, "{tool}({s})"),
            None => write!(f, "{tool}"),
        };
        match self {
            ParsedRule::Bash(s) => with(f, "Bash", s),
            ParsedRule::Read(s) => with(f, "Read", s),
            ParsedRule::Edit(s) => with(f, "Edit", s),
            ParsedRule::WebFetch(s) => {
                with(f, "WebFetch", &s.as_ref().map(|d| format!("domain:{d}")))
            }
            ParsedRule::Mcp { server, tool: None } => write!(f, "mcp__{server}"),
            ParsedRule::Mcp {
                server,
                tool: Some(t),
            } => write!(f, "mcp__{server}__{t}"),
            ParsedRule::Tool(t) => write!(f, "{t}"),
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_mcp_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Parses one rule. The error is a human-readable reason; the caller adds
/// the list and index.
pub(crate) fn parse_rule(text: &str) -> Result<ParsedRule, String> {
    if text.trim() != text {
        return Err("leading or trailing whitespace".into());
    }
    let (tool, spec) = match text.find('(') {
        None => {
            if text.contains(')') {
                return Err("unbalanced parentheses: `)` without `(`".into());
            }
            (text, None)
        }
        Some(open) => {
            if !text.ends_with(')') {
                return Err(
                    "unbalanced parentheses: the specifier must end the rule with `)`".into(),
                );
            }
            let inner = &text[open + 1..text.len() - 1];
            if inner.trim().is_empty() {
                return Err("empty specifier `()`".into());
            }
            (&text[..open], Some(inner))
        }
    };
    if tool.is_empty() {
        return Err("missing tool name before `(`".into());
    }
    if let Some(rest) = tool.strip_prefix("mcp__") {
        if spec.is_some() {
            return Err("MCP rules take no specifier (write `mcp__server__tool`)".into());
        }
        let (server, tool) = match rest.split_once("__") {
            None => (rest, None),
            Some((server, "*")) => (server, None),
            Some((server, tool)) => (server, Some(tool)),
        };
        if !is_mcp_name(server) || tool.is_some_and(|t| !is_mcp_name(t)) {
            return Err("unknown tool name form: MCP rules are `mcp__server`, `mcp__server__*` or `mcp__server__tool`".into());
        }
        return Ok(ParsedRule::Mcp {
            server: server.to_string(),
            tool: tool.map(str::to_string),
        });
    }
    if !is_identifier(tool) {
        return Err(format!(
            "unknown tool name form `{tool}` (expected a tool name such as `Bash` or `mcp__server__tool`)"
        ));
    }
    match tool {
        "Bash" => Ok(ParsedRule::Bash(parse_bash_spec(spec)?)),
        "Read" => Ok(ParsedRule::Read(spec.map(str::to_string))),
        "Edit" => Ok(ParsedRule::Edit(spec.map(str::to_string))),
        "WebFetch" => match spec {
            None => Ok(ParsedRule::WebFetch(None)),
            Some(s) => {
                let domain = s
                    .strip_prefix("domain:")
                    .ok_or("WebFetch specifiers have the form `domain:example.com`")?;
                let valid = !domain.is_empty()
                    && domain
                        .strip_prefix("*.")
                        .unwrap_or(domain)
                        .split('.')
                        .all(|label| {
                            !label.is_empty()
                                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        });
                if !valid {
                    return Err(format!(
                        "`{domain}` is not a domain name (use `*.` only as a leading label)"
                    ));
                }
                Ok(ParsedRule::WebFetch(Some(domain.to_ascii_lowercase())))
            }
        },
        other => match spec {
            None => {
                // A by-name rule is matched exactly: `bash` would never match a `Bash` call.
                let known = ["Bash", "WebFetch", "WebSearch"]
                    .into_iter()
                    .chain(EDIT_TOOLS)
                    .chain(READ_TOOLS)
                    .find(|t| *t != other && t.eq_ignore_ascii_case(other));
                if let Some(known) = known {
                    return Err(format!(
                        "tool names are case-sensitive: `{other}` would never match; write `{known}`"
                    ));
                }
                Ok(ParsedRule::Tool(other.to_string()))
            }
            Some(_) if EDIT_TOOLS.contains(&other) => Err(format!(
                "`{other}` paths are written as `Edit(..)` rules, which cover every file-editing tool"
            )),
            Some(_) => {
                let known = ["Bash", "Read", "Edit", "WebFetch"]
                    .into_iter()
                    .find(|t| t.eq_ignore_ascii_case(other));
                if let Some(known) = known {
                    return Err(format!(
                        "tool names are case-sensitive: `{other}` would never match; write `{known}`"
                    ));
                }
                if UNJUDGED_SPECIFIER_TOOLS.contains(&other) {
                    // Claude Code's settings files carry these; a rule for a tool tetrarch
                    // never calls must not make the whole file unusable. Kept whole, it
                    // matches no call.
                    tracing::warn!(
                        "permission rule `{text}`: tetrarch does not judge `{other}` specifiers; \
                         the rule matches no call"
                    );
                    return Ok(ParsedRule::Tool(text.to_string()));
                }
                Err(format!("tool `{other}` does not take a specifier"))
            }
        },
    }
}

/// Normalises a Bash specifier: `*` alone means every command, a trailing
/// `:*` is the legacy spelling of ` *`.
fn parse_bash_spec(spec: Option<&str>) -> Result<Option<String>, String> {
    let Some(spec) = spec else { return Ok(None) };
    if spec == "*" {
        return Ok(None);
    }
    let spec = match spec.strip_suffix(":*") {
        Some(prefix) if prefix.trim().is_empty() => {
            return Err("`:*` needs a command prefix before it".into());
        }
        // `npm run :*` is `npm run *` (a `npm run  *` would never match).
        Some(prefix) => format!("{} *", prefix.trim_end()),
        None => spec.to_string(),
    };
    let spec = single_spaced(&spec);
    if spec.contains('\n') || spec.contains('\0') {
        return Err("a Bash specifier cannot contain a newline or NUL".into());
    }
    if spec.trim() != spec {
        // Commands are matched as their words joined by single spaces, trimmed.
        return Err("a Bash specifier with leading or trailing spaces would never match".into());
    }
    Ok(Some(spec))
}

/// `spec` with each run of spaces and tabs outside quotes made one space: commands are matched
/// as their words joined by single spaces, so `Bash(rm  -rf *)` would never match anything.
fn single_spaced(spec: &str) -> String {
    let mut out = String::with_capacity(spec.len());
    let mut quote = None;
    let mut escaped = false;
    for c in spec.chars() {
        let blank = quote.is_none() && !escaped && (c == ' ' || c == '\t');
        if blank {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            continue;
        }
        match (quote, c) {
            _ if escaped => escaped = false,
            (Some('\''), '\'') | (Some('"'), '"') => quote = None,
            (None, '\'' | '"') => quote = Some(c),
            (Some('"') | None, '\\') => escaped = true,
            _ => {}
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn legacy_colon_star_becomes_space_star() {
        assert_eq!(
            parse_rule("Bash(npm run:*)").unwrap(),
            ParsedRule::Bash(Some("npm run *".into()))
        );
        assert_eq!(parse_rule("Bash(*)").unwrap(), ParsedRule::Bash(None));
        // `:` elsewhere stays literal.
        assert_eq!(
            parse_rule("Bash(a:b *)").unwrap(),
            ParsedRule::Bash(Some("a:b *".into()))
        );
    }

    #[test]
    fn bad_rules_are_rejected_with_reason() {
        assert!(parse_rule("Bash(ls").unwrap_err().contains("unbalanced"));
        assert!(parse_rule("Bash)").unwrap_err().contains("unbalanced"));
        assert!(
            parse_rule("Bash()")
                .unwrap_err()
                .contains("empty specifier")
        );
        assert!(
            parse_rule("bash-tool")
                .unwrap_err()
                .contains("unknown tool name form")
        );
        assert!(
            parse_rule("WebFetch(example.com)")
                .unwrap_err()
                .contains("domain:")
        );
        assert!(parse_rule("mcp__").unwrap_err().contains("MCP"));
        assert!(
            parse_rule("Foo(x)")
                .unwrap_err()
                .contains("does not take a specifier")
        );
        assert!(
            parse_rule("bash(rm *)")
                .unwrap_err()
                .contains("write `Bash`")
        );
    }

    #[test]
    fn claude_code_subagent_and_skill_rules_load_and_match_nothing() {
        assert_eq!(
            parse_rule("Task(Explore)").unwrap(),
            ParsedRule::Tool("Task(Explore)".into())
        );
        assert_eq!(
            parse_rule("Skill(pdf)").unwrap(),
            ParsedRule::Tool("Skill(pdf)".into())
        );
    }

    #[test]
    fn blank_runs_in_bash_specifiers_are_one_space() {
        assert_eq!(
            parse_rule("Bash(rm  -rf\t*)").unwrap(),
            ParsedRule::Bash(Some("rm -rf *".into()))
        );
        assert_eq!(
            parse_rule("Bash(npm run :*)").unwrap(),
            ParsedRule::Bash(Some("npm run *".into()))
        );
        // Quoted text is matched as written.
        assert_eq!(
            parse_rule("Bash(echo 'a  b'  x)").unwrap(),
            ParsedRule::Bash(Some("echo 'a  b' x".into()))
        );
    }

    #[test]
    fn mcp_forms() {
        let server = ParsedRule::Mcp {
            server: "gh".into(),
            tool: None,
        };
        assert_eq!(parse_rule("mcp__gh").unwrap(), server);
        assert_eq!(parse_rule("mcp__gh__*").unwrap(), server);
        assert_eq!(
            parse_rule("mcp__gh__create_issue").unwrap(),
            ParsedRule::Mcp {
                server: "gh".into(),
                tool: Some("create_issue".into())
            }
        );
    }
}
