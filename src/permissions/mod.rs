//! Permission rules: decides allow / ask / deny for every tool call, from
//! the `permissions` object of a Claude Code `settings.json`, and rewrites
//! such files into smaller equivalent ones ([`consolidate`]).
//!
//! # Semantics
//!
//! * Rules are `Tool` or `Tool(specifier)`. The lists are tried in the order
//!   deny, ask, allow; the first list holding a matching rule decides,
//!   however specific the rule (`deny Bash(aws *)` beats
//!   `allow Bash(aws s3 ls)`). No match: `defaultMode` decides — `default`,
//!   `plan` and `acceptEdits` ask (`acceptEdits` allows edits inside the
//!   working directory), `dontAsk` denies, `bypassPermissions` allows.
//!   `dontAsk` also denies what an ask rule matches (it asks no one), and
//!   `plan` is read-only: a call that is not a read (`Read`, `Grep`, `Glob`,
//!   `WebFetch`) is asked even where an allow rule matches.
//!   An `Ask` is settled by an [`ApprovalHandler`]; headless runs use
//!   [`DenyAll`].
//! * **Bash.** The command line is parsed with `brush-parser` and split into
//!   every simple command it would run (lists, pipelines, `&`, newlines,
//!   subshells, groups, loops, functions, command and process
//!   substitutions). Leading `VAR=value` assignments and the wrappers
//!   `timeout`, `time`, `nice`, `nohup`, `stdbuf`, `command`, `builtin`,
//!   `noglob` and bare `xargs` (with their options) are stripped, and the
//!   part is matched as its words joined by single spaces, quotes kept as
//!   written. That is the text deny and ask rules see, and they also see it
//!   with quotes and escapes removed and with `env`, `exec` and `sudo`
//!   stripped (any form matching counts); allow rules see leading
//!   assignments kept unless each sets a harmless variable, and a bare
//!   `xargs CMD` as `CMD …` (see `bash::CommandPart`). A command name the
//!   shell computes (an expansion, a glob, `{a,b}`) is never allowed, as
//!   for a command that cannot be analysed. An argument it computes may be
//!   any text: a part an ask rule, or a deny rule naming its command, would
//!   match for some value of it is never allowed, naming that rule
//!   (`git pu${x}sh` is held back by `Bash(git push *)`; see `bash::may_match`). **Redirections are not part of that text**: `Bash(echo *)`
//!   also allows `echo x > file` and `echo x >> ~/.bashrc`; the redirection
//!   target is not checked against `Edit` rules (substitutions inside
//!   targets, `> $(cmd)`, are split out and checked like any other part). A
//!   policy that must stop writes through the shell has to deny or ask the
//!   commands themselves. Any part denied: deny (with that rule). Else any
//!   part asked or unmatched: ask. Else allow (the rule reported is the one
//!   that allowed the first part). A specifier without `*` must equal the part; `*` is
//!   any run of characters, spaces included; a trailing ` *` (or its legacy
//!   spelling `:*`) also requires a word boundary, so `ls *` matches `ls`
//!   and `ls -la` but not `lsof`.
//! * **Commands that cannot be analysed are never allowed**: a parse error,
//!   `[[ .. ]]`, arithmetic commands, substitutions hidden in parameter
//!   expansions (`${x:-$(cmd)}`), and five input shapes on which fuzzing
//!   made `brush-parser` 0.4 panic, loop or backtrack exponentially
//!   (oversized descriptor numbers; here-documents that are not a plain,
//!   closed `<<WORD`; parentheses nested deeper than 8; an array subscript
//!   in a `${…}` that is not a plain, closed index like `${a[$i]}`; a word
//!   holding more than 8 unquoted, unescaped `[`) make the call
//!   `Ask` (`Deny` under `dontAsk`) unless a deny rule matches the raw
//!   text, which denies. A panic inside the parser is caught and treated
//!   the same way (this needs `panic = "unwind"`, the default), and so is
//!   a parse that takes longer than [`PARSE_DEADLINE`] (500 ms):
//!   refusing shapes one by one cannot catch every input on which the
//!   backtracking parser takes exponential time, so each parse runs on a
//!   thread of its own and the caller stops waiting at the deadline.
//! * **Read / Edit.** gitignore-style patterns: `//p` is absolute, `~/p` is
//!   under the home directory, `/p` under the project root (the folder
//!   holding `.claude/`, else the settings file's folder), `./p` and `a/p`
//!   under the working directory, and a bare name (`.env`, `*.key`) at any
//!   depth under the working directory (as Claude Code documents `Read(*.env)`:
//!   relative to it). A pattern also covers everything under a directory it
//!   names; a trailing `/` matches directories only. Globs use `globset`
//!   with `literal_separator(true)`. Tool paths and rule patterns alike are
//!   made absolute with `.`, `..` and doubled slashes resolved lexically
//!   (symlinks are not followed). `Read` rules apply
//!   to `Read`, `Grep` and `Glob`; `Edit` rules to `Edit`, `Write`,
//!   `MultiEdit` and `NotebookEdit`; a Read deny also denies those edits.
//!   A `Grep`/`Glob` over a directory is judged on the directory's own path
//!   (`Read(src/**)` names what is inside `src`; `Read(src)` names both), and
//!   is also denied (or asked) when a Read deny (or ask) rule covers every file in
//!   it (`Read(./secrets/**)` denies `Grep secrets`) or the files its name filter
//!   picks (a Grep `glob`, tied to the searched folder; a Glob `pattern`: `.env`).
//!   A Glob pattern that is absolute or climbs out with `..` is judged where it
//!   points, and one no lexical reading bounds (a `..` after a wildcard, braces
//!   holding `/` or `..`) as reaching every file. A search of a folder holding
//!   only some denied files is decided on the folder: the tool must skip those
//!   files itself.
//!   Each tool is judged on its own field (`file_path`; `path` for Grep
//!   and Glob; `notebook_path` for NotebookEdit; `url` for WebFetch), and a
//!   call without it, or with a URL that has no host, is never allowed
//!   (a whole-tool deny rule still denies it).
//! * **WebFetch**: `domain:host` matches that host; `domain:*.host` matches
//!   its subdomains, not `host` itself. **MCP**: `mcp__server` and
//!   `mcp__server__*` match every tool of the server, `mcp__server__tool`
//!   one tool. Any other tool is matched by bare name only; a specifier on
//!   such a tool is rejected at load.
//! * **What is checked.** The Executor checks every call to a process pool
//!   (as `Bash`, the command line it will run) and to an MCP pool (as
//!   `mcp__POOL__TOOL`). Calls to **native** pools and to the **scorer** are
//!   *not* checked: native functions are in-process code the embedding
//!   program registered itself (it already decided they may run, and a rule
//!   could not restrict what they do inside), and the scorer is the
//!   runtime's own image scoring, not a tool an agent picks. Both are
//!   trusted by construction; a plan can only reach them by name.
//! * **Bad rules fail the load** with the list and index of the rule
//!   ([`PermissionError::InvalidRule`]): the engine never runs with a rule
//!   it could not read, so a broken rule can never allow anything. Rules
//!   that would load but never match fail the same way: a Bash specifier
//!   with leading or trailing spaces, a by-name rule whose tool name differs
//!   from a known tool only in case (`bash`), a path pattern with spaces
//!   around it, and a `..` after a wildcard in one; so does a key under
//!   `permissions` other than Claude Code's. `Read(/)` names the whole
//!   project root and `Edit(//)` the whole filesystem. A rule
//!   whose glob or pattern does not compile (`Read(src/[)`) fails the same
//!   way, and [`consolidate`] fails on exactly what loading fails on.
//!
//! # Why `brush-parser`
//!
//! Splitting shell text with regular expressions is how quoting bypasses
//! happen, so a real parser is used. `brush-parser` (MIT, the parser of the
//! actively released `brush` shell) parses bash syntax — `|&`, `$(..)`,
//! process substitution, here-docs — and exposes word pieces, which is
//! where command substitutions are found. `yash-syntax` was the other
//! candidate; it is POSIX-only (no `|&`), async-first and GPL-3.0, which
//! this crate cannot ship.

mod approval;
mod bash;
pub mod consolidate;
mod engine;
mod error;
mod path;
mod rule;

use std::fmt;

pub use approval::{ApprovalHandler, CallbackApproval, DenyAll, TerminalPrompt, abandon_prompts};
pub use bash::{PARSE_DEADLINE, SplitError, is_harmless_variable, split_command};
pub use engine::PermissionEngine;
pub use error::PermissionError;

/// One of the three rule lists of a settings file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum List {
    /// `permissions.deny`
    Deny,
    /// `permissions.ask`
    Ask,
    /// `permissions.allow`
    Allow,
}

impl fmt::Display for List {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            List::Deny => "deny",
            List::Ask => "ask",
            List::Allow => "allow",
        })
    }
}

/// The outcome for one tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Run the tool.
    Allow,
    /// A person (or an [`ApprovalHandler`]) must decide.
    Ask,
    /// Refuse the call.
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Ask => "ask",
            Verdict::Deny => "deny",
        })
    }
}

/// The rule that decided a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRule {
    /// The list holding the rule.
    pub list: List,
    /// Its position in that list (0-based).
    pub index: usize,
    /// The rule as written in the settings file.
    pub text: String,
}

/// A verdict with the rule behind it (`None` when no rule matched and
/// `defaultMode` decided). A `Deny` from rules always names its rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow, ask or deny.
    pub verdict: Verdict,
    /// The deciding rule.
    pub rule: Option<MatchedRule>,
}

/// `permissions.defaultMode`: what happens when no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultMode {
    /// Ask (`"default"`, or no key).
    #[default]
    Default,
    /// Allow unmatched edits inside the working directory; ask otherwise.
    AcceptEdits,
    /// Read-only: ask for unmatched calls, and for every call that is not a read (`Read`,
    /// `Grep`, `Glob`, `WebFetch`) even where an allow rule matches.
    Plan,
    /// Allow unmatched calls (deny and ask rules still apply).
    BypassPermissions,
    /// Deny unmatched calls.
    DontAsk,
}

impl DefaultMode {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "default" => DefaultMode::Default,
            "acceptEdits" => DefaultMode::AcceptEdits,
            "plan" => DefaultMode::Plan,
            "bypassPermissions" => DefaultMode::BypassPermissions,
            "dontAsk" => DefaultMode::DontAsk,
            _ => return None,
        })
    }
}

/// A tool call as the runtime sees it: the tool's name and its JSON input
/// (`{"command": ..}` for Bash, `{"file_path": ..}` for Read/Edit/Write,
/// `{"path": ..}` for Grep/Glob, `{"url": ..}` for WebFetch).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    /// Tool name, e.g. `Bash`, `Read`, `mcp__github__create_issue`.
    pub tool: String,
    /// The tool's input object.
    pub input: serde_json::Value,
}

impl ToolCall {
    /// Builds a call from a tool name and its main argument as text: the
    /// command for Bash, the path for file tools, the URL for WebFetch.
    /// (Never parsed as JSON: a command may look like JSON.)
    pub fn from_text(tool: &str, text: &str) -> Self {
        ToolCall {
            tool: tool.to_string(),
            input: serde_json::json!({ subject_field(tool): text }),
        }
    }
}

/// The input field that holds what a tool acts on: the command, the URL or the path. The engine
/// reads only that field (a `file_path` beside a Grep's `path` is not what the Grep searches).
pub(crate) fn subject_field(tool: &str) -> &'static str {
    match tool {
        "Bash" => "command",
        "WebFetch" => "url",
        "Grep" | "Glob" => "path",
        "NotebookEdit" => "notebook_path",
        _ => "file_path",
    }
}

/// A syntax-checked rule, for tools that validate rules without loading a
/// whole settings file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule(rule::ParsedRule);

impl Rule {
    /// Parses `Tool` or `Tool(specifier)`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        rule::parse_rule(text).map(Rule)
    }
}

impl fmt::Display for Rule {
    /// The rule's canonical text (`:*` written as ` *`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
