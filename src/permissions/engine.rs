//! The compiled rule lists and the decision procedure.

use std::collections::HashMap;
use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::RegexSet;

use super::bash::{
    BashPattern, CommandPart, EXPANDED, MAX_OPEN_FORM_CHARS, VANISHING, may_match, split_parts,
};
use super::path::{Anchors, anchored_globs, has_glob_meta, normalise};
use super::rule::{EDIT_TOOLS, ParsedRule, READ_TOOLS, parse_rule};
use super::{Decision, DefaultMode, List, MatchedRule, PermissionError, ToolCall, Verdict};

/// The three rule lists of a settings file as written, plus the parsed
/// `defaultMode`.
#[derive(Debug, Clone)]
pub(crate) struct RuleLists {
    pub deny: Vec<String>,
    pub ask: Vec<String>,
    pub allow: Vec<String>,
    pub mode: DefaultMode,
}

/// Reads `permissions` from settings text. A missing key is an empty list.
pub(crate) fn read_lists(
    text: &str,
    settings_path: &Path,
) -> Result<(serde_json::Value, RuleLists), PermissionError> {
    let path = settings_path.display().to_string();
    let root: serde_json::Value =
        serde_json::from_str(text).map_err(|source| PermissionError::InvalidJson {
            path: path.clone(),
            source,
        })?;
    let wrong = |key: &str, expected| PermissionError::WrongType {
        path: path.clone(),
        key: key.into(),
        expected,
    };
    let Some(object) = root.as_object() else {
        return Err(wrong("<root>", "a JSON object"));
    };
    let permissions = match object.get("permissions") {
        None => None,
        Some(serde_json::Value::Object(p)) => Some(p),
        Some(_) => return Err(wrong("permissions", "a JSON object")),
    };
    // Claude Code's keys: those this engine does not use (additionalDirectories,
    // disableBypassPermissionsMode) are accepted and left alone.
    const KNOWN_KEYS: [&str; 6] = [
        "allow",
        "ask",
        "deny",
        "defaultMode",
        "additionalDirectories",
        "disableBypassPermissionsMode",
    ];
    if let Some(key) = permissions
        .into_iter()
        .flat_map(|p| p.keys())
        .find(|key| !KNOWN_KEYS.contains(&key.as_str()))
    {
        return Err(PermissionError::UnknownKey {
            path: path.clone(),
            key: key.clone(),
        });
    }
    let list = |name: &str| -> Result<Vec<String>, PermissionError> {
        let key = format!("permissions.{name}");
        match permissions.and_then(|p| p.get(name)) {
            None => Ok(Vec::new()),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    item.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| wrong(&format!("{key}[{i}]"), "a string"))
                })
                .collect(),
            Some(_) => Err(wrong(&key, "an array of strings")),
        }
    };
    let mode = match permissions.and_then(|p| p.get("defaultMode")) {
        None => DefaultMode::Default,
        Some(serde_json::Value::String(m)) => {
            DefaultMode::parse(m).ok_or_else(|| PermissionError::UnknownMode {
                path: path.clone(),
                mode: m.clone(),
            })?
        }
        Some(_) => return Err(wrong("permissions.defaultMode", "a string")),
    };
    let lists = RuleLists {
        deny: list("deny")?,
        ask: list("ask")?,
        allow: list("allow")?,
        mode,
    };
    Ok((root, lists))
}

/// First-index maps: a rule list keeps the lowest index for each key.
fn first<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, index: usize) {
    map.entry(key).or_insert(index);
}

fn min_opt(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Globs of one tool class, compiled into one set.
#[derive(Default)]
struct PathSet {
    any: Option<usize>,
    set: GlobSet,
    owner: Vec<usize>,
}

impl PathSet {
    fn build(rules: Vec<(usize, String)>, any: Option<usize>) -> Result<Self, (usize, String)> {
        let mut compiled = Vec::new();
        let mut owner = Vec::new();
        for (index, glob) in rules {
            compiled.push(
                GlobBuilder::new(&glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| (index, format!("invalid path pattern: {e}")))?,
            );
            owner.push(index);
        }
        let build = |globs: &[globset::Glob]| {
            let mut builder = GlobSetBuilder::new();
            for glob in globs {
                builder.add(glob.clone());
            }
            builder.build()
        };
        let set = build(&compiled).map_err(|e| {
            // Each compiles alone, so the set is too large together: name the rule that tips
            // it over (found only on this failing path).
            // A set only grows: the prefixes that build come first (binary search).
            let tipping = (1..=compiled.len())
                .collect::<Vec<_>>()
                .partition_point(|&n| build(&compiled[..n]).is_ok());
            (
                owner.get(tipping).copied().unwrap_or(0),
                format!("the list's path patterns are too large together from this one: {e}"),
            )
        })?;
        Ok(PathSet { any, set, owner })
    }

    /// The first rule of the set, whatever path it names.
    fn first_rule(&self) -> Option<usize> {
        min_opt(self.any, self.owner.iter().copied().min())
    }

    fn find(&self, path: Option<&str>) -> Option<usize> {
        let globbed = path.and_then(|p| {
            self.set
                .matches(p)
                .into_iter()
                .map(|i| self.owner.get(i).copied().unwrap_or(usize::MAX))
                .min()
        });
        min_opt(self.any, globbed)
    }
}

/// One list (deny, ask or allow) compiled for fast lookup.
struct CompiledList {
    texts: Vec<String>,
    tools: HashMap<String, usize>,
    bash_any: Option<usize>,
    bash_exact: HashMap<String, usize>,
    bash_set: RegexSet,
    bash_owner: Vec<usize>,
    /// Every Bash specifier with its rule's index, for forms holding [`EXPANDED`] slots.
    bash_specs: Vec<(usize, String)>,
    read: PathSet,
    edit: PathSet,
    web_any: Option<usize>,
    web_exact: HashMap<String, usize>,
    web_suffix: Vec<(String, usize)>,
    mcp_server: HashMap<String, usize>,
    mcp_tool: HashMap<String, usize>,
}

impl CompiledList {
    fn compile(list: List, texts: &[String], anchors: &Anchors) -> Result<Self, PermissionError> {
        let invalid = |index: usize, reason: String| PermissionError::InvalidRule {
            list,
            index,
            rule: texts.get(index).cloned().unwrap_or_default(),
            reason,
        };
        let mut tools = HashMap::new();
        let (mut bash_any, mut bash_exact, mut bash_res, mut bash_owner) =
            (None, HashMap::new(), Vec::new(), Vec::new());
        let mut bash_specs = Vec::new();
        let (mut read_any, mut read_globs, mut edit_any, mut edit_globs) =
            (None, Vec::new(), None, Vec::new());
        let (mut web_any, mut web_exact, mut web_suffix) = (None, HashMap::new(), Vec::new());
        let (mut mcp_server, mut mcp_tool) = (HashMap::new(), HashMap::new());
        for (index, text) in texts.iter().enumerate() {
            let parsed = parse_rule(text).map_err(|reason| invalid(index, reason))?;
            match parsed {
                ParsedRule::Bash(None) => bash_any = bash_any.or(Some(index)),
                ParsedRule::Bash(Some(spec)) => {
                    match BashPattern::new(&spec) {
                        BashPattern::Exact(exact) => first(&mut bash_exact, exact, index),
                        BashPattern::Wildcard(re) => {
                            bash_res.push(re);
                            bash_owner.push(index);
                        }
                    }
                    bash_specs.push((index, spec));
                }
                ParsedRule::Read(None) => read_any = read_any.or(Some(index)),
                ParsedRule::Read(Some(spec)) => read_globs.extend(
                    anchored_globs(&spec, anchors)
                        .map_err(|reason| invalid(index, reason))?
                        .into_iter()
                        .map(|g| (index, g)),
                ),
                ParsedRule::Edit(None) => edit_any = edit_any.or(Some(index)),
                ParsedRule::Edit(Some(spec)) => edit_globs.extend(
                    anchored_globs(&spec, anchors)
                        .map_err(|reason| invalid(index, reason))?
                        .into_iter()
                        .map(|g| (index, g)),
                ),
                ParsedRule::WebFetch(None) => web_any = web_any.or(Some(index)),
                ParsedRule::WebFetch(Some(domain)) => match domain.strip_prefix('*') {
                    Some(suffix) => web_suffix.push((suffix.to_string(), index)),
                    None => first(&mut web_exact, domain, index),
                },
                ParsedRule::Mcp { server, tool: None } => first(&mut mcp_server, server, index),
                ParsedRule::Mcp {
                    server,
                    tool: Some(tool),
                } => first(&mut mcp_tool, format!("mcp__{server}__{tool}"), index),
                ParsedRule::Tool(name) => first(&mut tools, name, index),
            }
        }
        let bash_set = RegexSet::new(&bash_res).map_err(|e| {
            // Name the rule that fails: alone, or as the one that makes the set too large
            // (searched only on this failing path).
            let tipping = (1..=bash_res.len())
                .collect::<Vec<_>>()
                .partition_point(|&n| RegexSet::new(&bash_res[..n]).is_ok());
            invalid(
                bash_owner.get(tipping).copied().unwrap_or(0),
                format!("pattern does not compile: {e}"),
            )
        })?;
        Ok(CompiledList {
            texts: texts.to_vec(),
            tools,
            bash_any,
            bash_exact,
            bash_set,
            bash_owner,
            bash_specs,
            read: PathSet::build(read_globs, read_any).map_err(|(i, r)| invalid(i, r))?,
            edit: PathSet::build(edit_globs, edit_any).map_err(|(i, r)| invalid(i, r))?,
            web_any,
            web_exact,
            web_suffix,
            mcp_server,
            mcp_tool,
        })
    }

    fn bash(&self, part: &str) -> Option<usize> {
        let exact = self.bash_exact.get(part).copied();
        let wild = if self.bash_set.is_empty() {
            None
        } else {
            self.bash_set
                .matches(part)
                .iter()
                .map(|i| self.bash_owner.get(i).copied().unwrap_or(usize::MAX))
                .min()
        };
        min_opt(self.bash_any, min_opt(exact, wild))
    }

    /// The first rule some text of `form` would match, each [`EXPANDED`] or [`VANISHING`] slot
    /// in it any text.
    fn bash_open(&self, form: &str) -> Option<usize> {
        // Too long to work out (a form `find` or `xargs` made, or slots typed in): taken as
        // matching the list's first Bash rule, so it is never allowed.
        if form.chars().count() > MAX_OPEN_FORM_CHARS {
            let first = self.bash_specs.first().map(|&(index, _)| index);
            return min_opt(self.bash_any, first);
        }
        let specific = self
            .bash_specs
            .iter()
            .filter(|(_, spec)| may_match(spec, form))
            .map(|&(index, _)| index)
            .min();
        min_opt(self.bash_any, specific)
    }

    fn web(&self, host: Option<&str>) -> Option<usize> {
        let matched = host.and_then(|host| {
            let exact = self.web_exact.get(host).copied();
            let suffix = self
                .web_suffix
                .iter()
                .filter(|(s, _)| host.ends_with(s.as_str()))
                .map(|(_, i)| *i)
                .min();
            min_opt(exact, suffix)
        });
        min_opt(self.web_any, matched)
    }

    fn mcp(&self, name: &str) -> Option<usize> {
        let server = name
            .strip_prefix("mcp__")
            .map(|rest| rest.split_once("__").map_or(rest, |(s, _)| s));
        let by_server = server.and_then(|s| self.mcp_server.get(s).copied());
        min_opt(by_server, self.mcp_tool.get(name).copied())
    }

    fn rule(&self, list: List, index: usize) -> MatchedRule {
        MatchedRule {
            list,
            index,
            text: self.texts.get(index).cloned().unwrap_or_default(),
        }
    }
}

/// A loaded, precompiled permission policy.
///
/// Build it once per settings file with
/// [`from_settings_json`](PermissionEngine::from_settings_json); call
/// [`decide`](PermissionEngine::decide) before every tool call.
pub struct PermissionEngine {
    deny: CompiledList,
    ask: CompiledList,
    allow: CompiledList,
    mode: DefaultMode,
    anchors: Anchors,
}

/// What a tool call is, for matching.
enum Subject<'a> {
    Bash(Option<&'a str>),
    Read(Option<String>),
    Edit(Option<String>),
    Web(Option<String>),
    Mcp,
    Other,
}

impl PermissionEngine {
    /// Loads the `permissions` object of a Claude Code `settings.json`.
    ///
    /// `settings_path` anchors `/path` rules (its project root: the parent of
    /// a `.claude` folder, else the file's directory); `cwd` anchors relative
    /// rules and relative tool paths; `home` anchors `~/` rules. A relative
    /// `settings_path` or `cwd` is taken from the process's working directory,
    /// as a shell would (where the file was read from), not from each other.
    /// Any rule that does not parse fails the load with its list and index.
    pub fn from_settings_json(
        text: &str,
        settings_path: &Path,
        cwd: &Path,
        home: &Path,
    ) -> Result<Self, PermissionError> {
        let (_, lists) = read_lists(text, settings_path)?;
        let from_process = |path: &Path| std::path::absolute(path).unwrap_or_else(|_| path.into());
        let cwd = normalise_dir(&from_process(cwd), Path::new("/"));
        let root = project_root(&from_process(settings_path));
        let anchors = Anchors {
            root: normalise_dir(&root, &cwd),
            home: normalise_dir(home, &cwd),
            cwd,
        };
        Self::from_lists(&lists, anchors)
    }

    pub(crate) fn from_lists(lists: &RuleLists, anchors: Anchors) -> Result<Self, PermissionError> {
        Ok(PermissionEngine {
            deny: CompiledList::compile(List::Deny, &lists.deny, &anchors)?,
            ask: CompiledList::compile(List::Ask, &lists.ask, &anchors)?,
            allow: CompiledList::compile(List::Allow, &lists.allow, &anchors)?,
            mode: lists.mode,
            anchors,
        })
    }

    /// The settings file's `defaultMode`.
    pub fn default_mode(&self) -> DefaultMode {
        self.mode
    }

    /// Decides a tool call from the rules alone: deny, then ask, then allow;
    /// the first list with a match decides. `Ask` means a person (or an
    /// [`ApprovalHandler`](super::ApprovalHandler)) must decide; see
    /// [`resolve`](Self::resolve).
    pub fn decide(&self, call: &ToolCall) -> Decision {
        let decision = self.decide_by_rules(call);
        // Plan mode is read-only: what reads (a file, a search, a fetch) goes by the rules;
        // anything else an allow rule or the mode would let through is asked instead.
        if self.mode == DefaultMode::Plan
            && decision.verdict == Verdict::Allow
            && !matches!(self.subject(call), Subject::Read(_) | Subject::Web(_))
        {
            // Asked for plan mode; the allow rule that would have let it through is named.
            return Decision {
                verdict: Verdict::Ask,
                ..decision
            };
        }
        decision
    }

    fn decide_by_rules(&self, call: &ToolCall) -> Decision {
        let subject = self.subject(call);
        match subject {
            Subject::Bash(Some(command)) => return self.decide_bash(command),
            // A Bash call without a command string cannot be judged.
            Subject::Bash(None) => return self.decide_unanalysable(""),
            _ => {}
        }
        let deny = self.find(&self.deny, call, &subject);
        // A Read deny also blocks editing the same path.
        let deny = match (&subject, deny) {
            (Subject::Edit(path), None) => self.deny.read.find(path.as_deref()),
            (Subject::Read(Some(dir)), None) if call.tool != "Read" => {
                self.search_reaches(&self.deny, dir, call)
            }
            (_, d) => d,
        };
        if let Some(index) = deny {
            return Decision {
                verdict: Verdict::Deny,
                rule: Some(self.deny.rule(List::Deny, index)),
            };
        }
        let ask = self.find(&self.ask, call, &subject);
        // A search reaches what an ask rule covers as it reaches what a deny rule covers.
        let ask = match &subject {
            Subject::Read(Some(dir)) if call.tool != "Read" => {
                min_opt(ask, self.search_reaches(&self.ask, dir, call))
            }
            _ => ask,
        };
        if matches!(
            subject,
            Subject::Read(None) | Subject::Edit(None) | Subject::Web(None)
        ) {
            // No path, or a URL without a host: nothing a rule could judge (as a Bash call
            // without a command).
            return self.never_allowed(ask);
        }
        let allow = self.find(&self.allow, call, &subject);
        let edits_inside_cwd = matches!(&subject, Subject::Edit(Some(p)) if Path::new(p).starts_with(&self.anchors.cwd));
        self.conclude(ask, allow, edits_inside_cwd)
    }

    /// The Read rule of `list` (deny or ask) a `Grep`/`Glob` over `dir` reaches although
    /// `dir` itself is not covered: one covering every file in it (`Read(./secrets/**)` for a
    /// search of `secrets`), or the files its name filter picks (a Grep `glob` or Glob
    /// `pattern` such as `.env`). A pattern that is absolute or climbs out with `..` searches
    /// where it points: it is judged there (normalised like a path), and so is the folder
    /// before its first wildcard. A search over a folder with only some covered files inside
    /// stays the rules' `dir` decision (the tool is expected to skip those files, as Claude
    /// Code's does).
    fn search_reaches(&self, list: &CompiledList, dir: &str, call: &ToolCall) -> Option<usize> {
        // A name no specific pattern (`*.key`, `.env`) matches: only `*`/`**` reach it.
        let any_file_in = |folder: &str| format!("{}/\u{10FFFF}", folder.trim_end_matches('/'));
        let grep = call.tool == "Grep";
        let raw = call
            .input
            .get(if grep { "glob" } else { "pattern" })
            .and_then(|v| v.as_str())
            .filter(|f| !f.is_empty());
        // A pattern whose reach no lexical reading bounds: a `..` after a wildcard (`**` may
        // match no folder, so `**/../x` may be `../x`), or braces holding `/` or `..`
        // (`{../../etc,src}/*`). It is judged as reaching every file: any rule of the list
        // may cover one it finds.
        let unbounded = raw.is_some_and(|f| {
            let after_wild = f
                .split('/')
                .skip_while(|part| !has_glob_meta(part))
                .any(|part| part == "..");
            // Inside braces only (an unclosed `{` counts as open to the end).
            let mut depth = 0usize;
            let mut previous = '\0';
            let braces = f.chars().any(|c| {
                let climbs = depth > 0 && (c == '/' || (c == '.' && previous == '.'));
                match c {
                    '{' => depth += 1,
                    '}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                previous = c;
                climbs
            });
            !grep && (after_wild || braces)
        });
        let filter = raw.map(|f| {
            // A Grep `glob` filters names under the searched folder (ripgrep ties a leading
            // `/` to it); a Glob pattern may be absolute or climb out with `..`.
            let joined = match f.strip_prefix('/') {
                Some(rest) if grep => format!("{}/{rest}", dir.trim_end_matches('/')),
                Some(_) => f.to_owned(),
                None => format!("{}/{f}", dir.trim_end_matches('/')),
            };
            normalise(&joined, &self.anchors)
        });
        if unbounded {
            return list.read.first_rule();
        }
        // The folder a pattern's literal start names, where it leaves `dir`.
        let elsewhere = filter.as_deref().and_then(|f| {
            let parts: Vec<&str> = f.split('/').collect();
            let literal = parts.iter().take_while(|part| !has_glob_meta(part)).count();
            // A pattern without a wildcard names a file: its folder is the one before it.
            let folder = parts[..literal.min(parts.len().saturating_sub(1))].join("/");
            (!Path::new(&folder).starts_with(dir)).then_some(folder)
        });
        let reached = [
            list.read.find(Some(&any_file_in(dir))),
            elsewhere.and_then(|folder| list.read.find(Some(&any_file_in(&folder)))),
            filter.and_then(|f| list.read.find(Some(&f))),
        ];
        reached.into_iter().fold(None, min_opt)
    }

    /// Decides a call and settles `Ask` with `handler`: approved becomes
    /// `Allow`, refused becomes `Deny` (the rule, if any, is kept).
    pub fn resolve(&self, call: &ToolCall, handler: &dyn super::ApprovalHandler) -> Decision {
        let mut decision = self.decide(call);
        if decision.verdict == Verdict::Ask {
            decision.verdict = if handler.approve(call, &decision) {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
        }
        decision
    }

    /// The verdict once no deny rule matched.
    fn conclude(
        &self,
        ask: Option<usize>,
        allow: Option<usize>,
        edits_inside_cwd: bool,
    ) -> Decision {
        if let Some(i) = ask {
            // `dontAsk` asks no one: what an ask rule holds back is denied.
            let verdict = if self.mode == DefaultMode::DontAsk {
                Verdict::Deny
            } else {
                Verdict::Ask
            };
            return Decision {
                verdict,
                rule: Some(self.ask.rule(List::Ask, i)),
            };
        }
        if let Some(i) = allow {
            return Decision {
                verdict: Verdict::Allow,
                rule: Some(self.allow.rule(List::Allow, i)),
            };
        }
        let verdict = match self.mode {
            DefaultMode::BypassPermissions => Verdict::Allow,
            DefaultMode::AcceptEdits if edits_inside_cwd => Verdict::Allow,
            DefaultMode::DontAsk => Verdict::Deny,
            DefaultMode::Default | DefaultMode::AcceptEdits | DefaultMode::Plan => Verdict::Ask,
        };
        Decision {
            verdict,
            rule: None,
        }
    }

    /// A command that cannot be analysed is never allowed: a deny rule
    /// matching the raw text still denies; otherwise a person is asked
    /// (`dontAsk`: denied).
    fn decide_unanalysable(&self, command: &str) -> Decision {
        let raw = command.trim();
        if let Some(i) = self.deny.bash(raw) {
            return Decision {
                verdict: Verdict::Deny,
                rule: Some(self.deny.rule(List::Deny, i)),
            };
        }
        self.never_allowed(self.ask.bash(raw))
    }

    /// The verdict on a call no rule can judge, once no deny rule matched: a person is asked
    /// (`dontAsk`: denied), whatever the default mode, reporting the ask rule that matched.
    fn never_allowed(&self, ask: Option<usize>) -> Decision {
        let verdict = if self.mode == DefaultMode::DontAsk {
            Verdict::Deny
        } else {
            Verdict::Ask
        };
        Decision {
            verdict,
            rule: ask.map(|i| self.ask.rule(List::Ask, i)),
        }
    }

    fn decide_bash(&self, command: &str) -> Decision {
        /// How many shells deep (`bash -c "sh -c '…'"`) scripts are judged; deeper is asked.
        const MAX_SCRIPT_DEPTH: usize = 4;
        let parts = match split_parts(command) {
            Ok(parts) if !parts.is_empty() => parts,
            Ok(_) => {
                let text = command.trim().to_string();
                vec![CommandPart {
                    restrictive: vec![text.clone()],
                    permissive: text,
                    dynamic_name: false,
                    inner_script: None,
                    hidden_code: false,
                    spawned: Vec::new(),
                    writes_variables: false,
                    evaluates_names: false,
                }]
            }
            Err(_) => return self.decide_unanalysable(command),
        };
        // Deny and ask rules see every form of a part (any match counts); allow rules only
        // the form that keeps what stripping would hide (see `bash::CommandPart`).
        // A form with open slots (what the shell computes) matches when some value of them
        // would. Such a match on a deny rule is not a deny: the command is never allowed (a
        // person is asked), as for a computed name; `rm "$f"` is not `rm -rf /` for certain.
        let restricted_by = |list: &CompiledList, part: &CommandPart, open: bool| {
            part.restrictive
                .iter()
                .filter(|form| form.contains([EXPANDED, VANISHING]) == open)
                .filter_map(|form| {
                    if open {
                        list.bash_open(form)
                    } else {
                        list.bash(form)
                    }
                })
                .min()
        };
        let matched_by = |list: &CompiledList, part: &CommandPart| {
            min_opt(
                restricted_by(list, part, false),
                restricted_by(list, part, true),
            )
        };
        let mut maybe_denied: Option<usize> = None;
        let mut first_ask = None;
        let mut unmatched = false;
        let mut computed_name = false;
        let mut first_allow = None;
        for part in &parts {
            if let Some(i) = restricted_by(&self.deny, part, false) {
                return Decision {
                    verdict: Verdict::Deny,
                    rule: Some(self.deny.rule(List::Deny, i)),
                };
            }
            maybe_denied = min_opt(maybe_denied, restricted_by(&self.deny, part, true));
            if let Some(i) = matched_by(&self.ask, part) {
                first_ask = first_ask.or(Some(i));
            } else if part.dynamic_name || part.hidden_code {
                computed_name = true;
            } else if let Some(i) = self.allow.bash(&part.permissive) {
                first_allow = first_allow.or(Some(i));
            } else {
                unmatched = true;
            }
        }
        // Commands a part hands on: scripts for another shell (`bash -c '…'`, `eval …`) and
        // commands `xargs` and `find -exec` start. Deny and ask rules judge them too (a deny
        // rule was dodged by wrapping the command in `sh -c`). They add no allow: what the
        // outer command's rule allows stands.
        enum Handed {
            Script(String),
            Part(CommandPart),
        }
        let handed_by = |part: &CommandPart| {
            let scripts = part.inner_script.clone().map(Handed::Script);
            scripts
                .into_iter()
                .chain(part.spawned.iter().cloned().map(Handed::Part))
                .collect::<Vec<_>>()
        };
        let mut handed: Vec<(Handed, usize)> =
            parts.iter().flat_map(handed_by).map(|h| (h, 1)).collect();
        // Too deep, or not analysable: judged whole, and never allowed, once every other
        // script has been seen by the deny rules (one that names a denied command still denies).
        let mut unanalysable: Option<String> = None;
        while let Some((next, depth)) = handed.pop() {
            let inner = match next {
                Handed::Part(part) if depth <= MAX_SCRIPT_DEPTH => vec![part],
                Handed::Script(script) => match split_parts(&script) {
                    Ok(inner) if depth <= MAX_SCRIPT_DEPTH => inner,
                    _ => {
                        unanalysable.get_or_insert(script);
                        continue;
                    }
                },
                Handed::Part(mut part) => {
                    unanalysable.get_or_insert(part.restrictive.swap_remove(0));
                    continue;
                }
            };
            for part in inner {
                if let Some(i) = restricted_by(&self.deny, &part, false) {
                    return Decision {
                        verdict: Verdict::Deny,
                        rule: Some(self.deny.rule(List::Deny, i)),
                    };
                }
                maybe_denied = min_opt(maybe_denied, restricted_by(&self.deny, &part, true));
                if let Some(i) = matched_by(&self.ask, &part) {
                    first_ask = first_ask.or(Some(i));
                }
                computed_name |= part.dynamic_name || part.hidden_code;
                handed.extend(handed_by(&part).into_iter().map(|h| (h, depth + 1)));
            }
        }
        if let Some(script) = unanalysable {
            return self.decide_unanalysable(&script);
        }
        if let Some(i) = maybe_denied {
            // Asked (`dontAsk`: denied), naming the deny rule some value would meet.
            return Decision {
                rule: Some(self.deny.rule(List::Deny, i)),
                ..self.never_allowed(None)
            };
        }
        if computed_name {
            // No rule can say what a computed command name runs (as a command that cannot
            // be parsed).
            return self.never_allowed(first_ask);
        }
        if first_ask.is_some() || unmatched {
            return self.conclude(first_ask, None, false);
        }
        self.conclude(None, first_allow, false)
    }

    fn subject<'a>(&self, call: &'a ToolCall) -> Subject<'a> {
        let tool = call.tool.as_str();
        // Only the tool's own field: another one beside it is not what the tool acts on.
        let own = call
            .input
            .get(super::subject_field(tool))
            .and_then(|v| v.as_str());
        if tool == "Bash" {
            Subject::Bash(own)
        } else if READ_TOOLS.contains(&tool) {
            // Grep and Glob without a path search the working directory.
            let path = own.or_else(|| (tool != "Read").then_some("."));
            Subject::Read(path.map(|p| normalise(p, &self.anchors)))
        } else if EDIT_TOOLS.contains(&tool) {
            Subject::Edit(own.map(|p| normalise(p, &self.anchors)))
        } else if tool == "WebFetch" {
            let host = own.and_then(|u| url::Url::parse(u).ok()).and_then(|u| {
                u.host_str()
                    .map(|h| h.trim_end_matches('.').to_ascii_lowercase())
            });
            Subject::Web(host)
        } else if tool.starts_with("mcp__") {
            Subject::Mcp
        } else {
            Subject::Other
        }
    }

    fn find(&self, list: &CompiledList, call: &ToolCall, subject: &Subject<'_>) -> Option<usize> {
        let by_name = list.tools.get(&call.tool).copied();
        let by_kind = match subject {
            Subject::Bash(command) => command.and_then(|c| list.bash(c)),
            Subject::Read(path) => list.read.find(path.as_deref()),
            Subject::Edit(path) => list.edit.find(path.as_deref()),
            Subject::Web(host) => list.web(host.as_deref()),
            Subject::Mcp => list.mcp(&call.tool),
            Subject::Other => None,
        };
        min_opt(by_name, by_kind)
    }
}

/// The directory `/path` rules are anchored to: the parent of a `.claude`
/// folder holding the settings file, else the settings file's own folder.
pub(crate) fn project_root(settings_path: &Path) -> std::path::PathBuf {
    let parent = settings_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if parent.file_name().is_some_and(|n| n == ".claude") {
        parent.parent().map(Path::to_path_buf).unwrap_or(parent)
    } else {
        parent
    }
}

fn normalise_dir(dir: &Path, base: &Path) -> std::path::PathBuf {
    let anchors = Anchors {
        root: base.into(),
        cwd: base.into(),
        home: base.into(),
    };
    normalise(&dir.to_string_lossy(), &anchors).into()
}
