//! Rewriting a settings file's rules into a smaller set.
//!
//! Without widening every change keeps every decision: legacy `:*` is
//! written as ` *`, duplicates go, and an allow rule goes when another allow
//! rule covers it or a deny/ask rule always overrides it. "Covers" is
//! decided symbolically on the patterns (a wildcard of the wider rule may
//! absorb any piece of the narrower one, literals must meet literals), which
//! is sound: when in doubt a rule is kept. With widening, allow rules that
//! share a command prefix, a directory, a parent domain or an MCP server are
//! merged into one broader rule, and each merge is reported as a newly
//! allowed family. Rules never move between lists and `X *` never becomes
//! `X*`.

use std::collections::BTreeMap;
use std::path::Path;

use super::engine::{PermissionEngine, project_root, read_lists};
use super::path::{Anchors, resolve};
use super::rule::{ParsedRule, parse_rule};
use super::{List, PermissionError};

/// One rule dropped or rewritten, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The list the rule is in.
    pub list: List,
    /// The rule as written before.
    pub rule: String,
    /// What happened to it.
    pub action: String,
}

/// A broader allow rule that replaced several narrower ones (widening only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WidenedFamily {
    /// The new rule, e.g. `Bash(cargo *)`.
    pub rule: String,
    /// The rules it replaced.
    pub replaces: Vec<String>,
}

/// The result of consolidating one settings file.
#[derive(Debug, Clone)]
pub struct Consolidation {
    /// The whole settings document with only `permissions.{allow,ask,deny}` rewritten.
    pub settings: serde_json::Value,
    /// Rule count (all three lists) before.
    pub rules_before: usize,
    /// Rule count after.
    pub rules_after: usize,
    /// Every dropped or rewritten rule.
    pub changes: Vec<Change>,
    /// Families newly allowed by widening (empty without it).
    pub widened: Vec<WidenedFamily>,
}

impl Consolidation {
    /// A human-readable report (Markdown).
    pub fn report(&self) -> String {
        let mut out = format!(
            "# Permission rules consolidated\n\nRules: {} before, {} after.\n",
            self.rules_before, self.rules_after
        );
        if !self.widened.is_empty() {
            out.push_str("\n## Newly allowed command families (review these)\n\n");
            for family in &self.widened {
                out.push_str(&format!(
                    "- `{}` replaces: {}\n",
                    family.rule,
                    quoted(&family.replaces)
                ));
            }
        }
        out.push_str("\n## Changes\n\n");
        for change in &self.changes {
            out.push_str(&format!(
                "- {} `{}`: {}\n",
                change.list, change.rule, change.action
            ));
        }
        out
    }
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Consolidates the rules of a settings file (see the module doc).
///
/// # Errors
/// Fails exactly as
/// [`PermissionEngine::from_settings_json`](super::PermissionEngine::from_settings_json)
/// does: on a file that is not a settings object, and on any rule the engine
/// cannot parse *or compile* (such as the glob of `Read(src/[)`), naming its
/// list, index and text. A rule that would not load is never dropped as
/// "covered".
pub fn consolidate(
    text: &str,
    settings_path: &Path,
    widen: bool,
) -> Result<Consolidation, PermissionError> {
    let (mut root, lists) = read_lists(text, settings_path)?;
    // Compile every rule as loading does (globs and patterns too, not only the
    // syntax): a rule the engine would reject must fail here with the same
    // error, not be dropped as "covered" and so vanish from the file. Whether
    // a glob compiles does not depend on the anchors; these read naturally in
    // the error (the working directory taken as the project root).
    let project = project_root(settings_path);
    let anchors = Anchors {
        cwd: project.clone(),
        root: project,
        home: "~".into(),
    };
    PermissionEngine::from_lists(&lists, anchors)?;
    let parse = |list: List, rules: &[String]| -> Result<Vec<Entry>, PermissionError> {
        rules
            .iter()
            .enumerate()
            .map(|(index, text)| {
                parse_rule(text)
                    .map(|parsed| Entry::new(text.clone(), parsed))
                    .map_err(|reason| PermissionError::InvalidRule {
                        list,
                        index,
                        rule: text.clone(),
                        reason,
                    })
            })
            .collect()
    };
    let mut deny = parse(List::Deny, &lists.deny)?;
    let mut ask = parse(List::Ask, &lists.ask)?;
    let mut allow = parse(List::Allow, &lists.allow)?;
    let rules_before = deny.len() + ask.len() + allow.len();
    let mut changes = Vec::new();

    for (list, entries) in [
        (List::Deny, &mut deny),
        (List::Ask, &mut ask),
        (List::Allow, &mut allow),
    ] {
        normalise_and_dedup(list, entries, &mut changes);
    }
    drop_redundant_allow(&mut allow, &deny, &ask, &mut changes);
    let mut widened = Vec::new();
    if widen {
        widened = widen_allow(&mut allow, &mut changes, Level::Prefix);
        widened.extend(widen_allow(&mut allow, &mut changes, Level::Project));
        drop_redundant_allow(&mut allow, &deny, &ask, &mut changes);
    }

    let rules_after = deny.len() + ask.len() + allow.len();
    if let Some(permissions) = root.get_mut("permissions").and_then(|p| p.as_object_mut()) {
        for (key, entries) in [("deny", &deny), ("ask", &ask), ("allow", &allow)] {
            if permissions.contains_key(key) {
                let texts = entries
                    .iter()
                    .map(|e| serde_json::Value::String(e.text.clone()))
                    .collect();
                permissions.insert(key.to_string(), serde_json::Value::Array(texts));
            }
        }
    }
    Ok(Consolidation {
        settings: root,
        rules_before,
        rules_after,
        changes,
        widened,
    })
}

/// A rule with its canonical text (for duplicate detection) and its
/// pattern language (for coverage).
#[derive(Debug, Clone)]
struct Entry {
    text: String,
    canonical: String,
    parsed: ParsedRule,
}

impl Entry {
    fn new(text: String, parsed: ParsedRule) -> Self {
        Entry {
            canonical: parsed.to_string(),
            text,
            parsed,
        }
    }
}

fn normalise_and_dedup(list: List, entries: &mut Vec<Entry>, changes: &mut Vec<Change>) {
    let mut seen = std::collections::HashSet::new();
    entries.retain_mut(|entry| {
        if !seen.insert(entry.canonical.clone()) {
            changes.push(Change {
                list,
                rule: entry.text.clone(),
                action: format!("dropped: duplicate of `{}`", entry.canonical),
            });
            return false;
        }
        // Only the legacy `:*` spelling is rewritten; other texts stay as written.
        if let ParsedRule::Bash(Some(spec)) = &entry.parsed
            && entry.text.ends_with(":*)")
        {
            let new_text = format!("Bash({spec})");
            changes.push(Change {
                list,
                rule: entry.text.clone(),
                action: format!("rewritten as `{new_text}`"),
            });
            entry.text = new_text;
        }
        true
    });
}

fn drop_redundant_allow(
    allow: &mut Vec<Entry>,
    deny: &[Entry],
    ask: &[Entry],
    changes: &mut Vec<Change>,
) {
    // Overridden: a deny or ask rule matches everything this allow rule does.
    allow.retain(|entry| {
        let overriding = deny
            .iter()
            .map(|d| (List::Deny, d))
            .chain(ask.iter().map(|a| (List::Ask, a)))
            .find(|(list, other)| {
                covers(&other.parsed, &entry.parsed)
                    || (*list == List::Deny && read_deny_blocks_edit(&other.parsed, &entry.parsed))
            });
        match overriding {
            Some((list, other)) => {
                changes.push(Change {
                    list: List::Allow,
                    rule: entry.text.clone(),
                    action: format!("dropped: always overridden by {list} rule `{}`", other.text),
                });
                false
            }
            None => true,
        }
    });
    // Covered: another allow rule matches everything this one does. Rules are
    // tested against the survivors so that two equivalent rules keep one.
    let mut index = 0;
    while index < allow.len() {
        let cover = allow
            .iter()
            .enumerate()
            .find(|(other, e)| *other != index && covers(&e.parsed, &allow[index].parsed));
        if let Some((_, by)) = cover {
            let by = by.text.clone();
            let removed = allow.remove(index);
            changes.push(Change {
                list: List::Allow,
                rule: removed.text,
                action: format!("dropped: covered by allow rule `{by}`"),
            });
        } else {
            index += 1;
        }
    }
}

fn read_deny_blocks_edit(deny: &ParsedRule, allow: &ParsedRule) -> bool {
    match (deny, allow) {
        (ParsedRule::Read(d), ParsedRule::Edit(a)) => {
            covers(&ParsedRule::Edit(d.clone()), &ParsedRule::Edit(a.clone()))
        }
        _ => false,
    }
}

/// Does every call matched by `narrow` also match `wide`? `false` when unsure.
fn covers(wide: &ParsedRule, narrow: &ParsedRule) -> bool {
    match (wide, narrow) {
        (ParsedRule::Bash(None), ParsedRule::Bash(_))
        | (ParsedRule::Read(None), ParsedRule::Read(_))
        | (ParsedRule::Edit(None), ParsedRule::Edit(_))
        | (ParsedRule::WebFetch(None), ParsedRule::WebFetch(_)) => true,
        (ParsedRule::Bash(Some(w)), ParsedRule::Bash(Some(n))) => {
            let wide = bash_language(w);
            bash_language(n)
                .iter()
                .all(|n| wide.iter().any(|w| symbolic_match(w, n)))
        }
        (ParsedRule::Read(Some(w)), ParsedRule::Read(Some(n)))
        | (ParsedRule::Edit(Some(w)), ParsedRule::Edit(Some(n))) => {
            // A rule whose `..` leaves its anchor (or that does not load) is compared with
            // none: the symbolic anchors cannot say where it lands.
            let (Some(wide), Some(narrow)) = (symbolic_globs(w), symbolic_globs(n)) else {
                return false;
            };
            narrow
                .iter()
                .all(|n| wide.iter().any(|w| symbolic_match(w, n)))
        }
        (ParsedRule::WebFetch(Some(w)), ParsedRule::WebFetch(Some(n))) => {
            match (w.strip_prefix("*."), n.strip_prefix("*.")) {
                (None, None) => w == n,
                (Some(suffix), None) => n.ends_with(&format!(".{suffix}")),
                (Some(ws), Some(ns)) => ns == ws || ns.ends_with(&format!(".{ws}")),
                (None, Some(_)) => false,
            }
        }
        (
            ParsedRule::Mcp {
                server: ws,
                tool: wt,
            },
            ParsedRule::Mcp {
                server: ns,
                tool: nt,
            },
        ) => ws == ns && (wt.is_none() || wt == nt),
        (ParsedRule::Tool(w), ParsedRule::Tool(n)) => w == n,
        _ => false,
    }
}

/// A pattern token for coverage checks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// Glob `*`: anything within one path component.
    Star,
    /// Glob `**` as a whole component, or Bash `*`: anything.
    GlobStar,
    /// Glob `?`.
    Quest,
    /// Glob `[..]` or `{..}`, compared only for identity.
    Set(String),
    /// A directory the pattern is anchored to (project root, cwd, home),
    /// unknown at consolidation time.
    Anchor(u8),
}

/// A Bash specifier as a union of star patterns (`*` = any text).
fn bash_language(spec: &str) -> Vec<Vec<Tok>> {
    // A Bash `*` matches any text, `/` included: the same as a glob `**`.
    let tokens = |s: &str| {
        s.chars()
            .map(|c| if c == '*' { Tok::GlobStar } else { Tok::Lit(c) })
            .collect::<Vec<_>>()
    };
    match spec.strip_suffix(" *") {
        Some(body) => vec![tokens(body), tokens(spec)],
        None => vec![tokens(spec)],
    }
}

const ANCHOR_NAMES: [&str; 3] = ["\u{1}root", "\u{1}cwd", "\u{1}home"];

/// Anchor directories standing for "whatever the project root, working
/// directory and home turn out to be".
fn symbolic_anchors() -> Anchors {
    Anchors {
        root: format!("/{}", ANCHOR_NAMES[0]).into(),
        cwd: format!("/{}", ANCHOR_NAMES[1]).into(),
        home: format!("/{}", ANCHOR_NAMES[2]).into(),
    }
}

/// A path specifier's globs with its anchor directories kept symbolic, so
/// coverage holds for every working directory.
fn symbolic_globs(spec: &str) -> Option<Vec<Vec<Tok>>> {
    let (globs, above_anchor) = resolve(spec, &symbolic_anchors()).ok()?;
    if above_anchor {
        return None;
    }
    Some(globs.iter().map(|g| glob_tokens(g)).collect())
}

fn glob_tokens(glob: &str) -> Vec<Tok> {
    let chars: Vec<char> = glob.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let rest: String = chars[i..].iter().collect();
        if let Some((n, name)) = ANCHOR_NAMES
            .iter()
            .enumerate()
            .find(|(_, name)| rest.starts_with(*name))
        {
            out.push(Tok::Anchor(n as u8));
            i += name.chars().count();
            continue;
        }
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                out.push(Tok::Lit(chars[i + 1]));
                i += 2;
            }
            '*' if chars.get(i + 1) == Some(&'*') => {
                let at_start = i == 0 || chars[i - 1] == '/';
                let at_end = i + 2 == chars.len() || chars[i + 2] == '/';
                out.push(if at_start && at_end {
                    Tok::GlobStar
                } else {
                    Tok::Star
                });
                i += 2;
            }
            '*' => {
                out.push(Tok::Star);
                i += 1;
            }
            '?' => {
                out.push(Tok::Quest);
                i += 1;
            }
            open @ ('[' | '{') => {
                let close = if open == '[' { ']' } else { '}' };
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| c == close)
                    .map_or(chars.len(), |p| i + 1 + p + 1);
                // `/` inside a set could match across components: treat the
                // set as unknown text that only `**` absorbs.
                let text: String = chars[i..end].iter().collect();
                out.push(Tok::Set(text));
                i = end;
            }
            c => {
                out.push(Tok::Lit(c));
                i += 1;
            }
        }
    }
    out
}

/// Can pattern `wide` match every string pattern `narrow` stands for?
/// `wide`'s wildcards absorb pieces of `narrow`; literals meet literals.
fn symbolic_match(wide: &[Tok], narrow: &[Tok]) -> bool {
    let (w, n) = (wide.len(), narrow.len());
    // reach[i][j]: wide[..i] can produce narrow[..j].
    let mut reach = vec![vec![false; n + 1]; w + 1];
    reach[0][0] = true;
    for i in 0..w {
        for j in 0..=n {
            if !reach[i][j] {
                continue;
            }
            match &wide[i] {
                Tok::GlobStar => (j..=n).for_each(|k| reach[i + 1][k] = true),
                Tok::Star => {
                    reach[i + 1][j] = true;
                    let mut k = j;
                    // A glob `*` never crosses `/` nor absorbs a `**` or an anchor.
                    while k < n && star_absorbs(&narrow[k]) {
                        k += 1;
                        reach[i + 1][k] = true;
                    }
                }
                Tok::Quest => {
                    if j < n && matches!(&narrow[j], Tok::Quest)
                        || matches!(narrow.get(j), Some(Tok::Lit(c)) if *c != '/')
                    {
                        reach[i + 1][j + 1] = true;
                    }
                }
                token => {
                    if narrow.get(j) == Some(token) {
                        reach[i + 1][j + 1] = true;
                    }
                }
            }
        }
    }
    reach[w][n]
}

fn star_absorbs(token: &Tok) -> bool {
    match token {
        Tok::Lit(c) => *c != '/',
        Tok::Star | Tok::Quest => true,
        Tok::Set(text) => set_excludes_slash(text),
        Tok::GlobStar | Tok::Anchor(_) => false,
    }
}

/// Whether a `[..]` or `{..}` set can never match `/` (only then can a `*` stand for it). A
/// negated class (`[!x]`, `[^x]`) matches `/`, and so does a range spanning it (`[+-0]`).
fn set_excludes_slash(text: &str) -> bool {
    if text.contains('/') {
        return false;
    }
    let Some(body) = text.strip_prefix('[') else {
        // `{a,b}`: alternatives of literal text.
        return true;
    };
    let body: Vec<char> = body.strip_suffix(']').unwrap_or(body).chars().collect();
    if matches!(body.first(), Some('!' | '^')) {
        return false;
    }
    !body
        .windows(3)
        .any(|w| w[1] == '-' && w[0] <= '/' && '/' <= w[2])
}

/// How far widening reaches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    /// Rules sharing a program, top directory, parent domain or MCP server.
    Prefix,
    /// Read rules under three or more top directories of the working
    /// directory become `Read(./**)` (reading the project is what Claude Code
    /// does unprompted anyway; Edit is never widened this far).
    Project,
}

/// Merges allow rules sharing a prefix into broader ones.
fn widen_allow(
    allow: &mut Vec<Entry>,
    changes: &mut Vec<Change>,
    level: Level,
) -> Vec<WidenedFamily> {
    // Family key -> (new rule, indices of members).
    let mut families: BTreeMap<String, (ParsedRule, Vec<usize>)> = BTreeMap::new();
    for (index, entry) in allow.iter().enumerate() {
        let family = match level {
            Level::Prefix => family_of(&entry.parsed),
            Level::Project => project_family(&entry.parsed),
        };
        if let Some((key, rule)) = family {
            families
                .entry(key)
                .or_insert_with(|| (rule, Vec::new()))
                .1
                .push(index);
        }
    }
    let mut replace_at: BTreeMap<usize, Entry> = BTreeMap::new();
    let mut removed = vec![false; allow.len()];
    let mut widened = Vec::new();
    for (_, (rule, members)) in families {
        let needed = if level == Level::Project { 3 } else { 2 };
        if members.len() < needed {
            continue;
        }
        // Narrow the family to the members' longest common word prefix
        // (Bash) or directory (paths).
        let specs = || {
            members.iter().filter_map(|&i| match &allow[i].parsed {
                ParsedRule::Bash(Some(spec))
                | ParsedRule::Read(Some(spec))
                | ParsedRule::Edit(Some(spec)) => Some(spec.as_str()),
                _ => None,
            })
        };
        let rule = match &rule {
            ParsedRule::Bash(Some(_)) => common_bash_family(specs()).unwrap_or(rule),
            ParsedRule::Read(_) if level == Level::Project => rule,
            ParsedRule::Read(_) => match common_directory(specs()) {
                Some(dir) => ParsedRule::Read(Some(dir)),
                None => continue,
            },
            ParsedRule::Edit(_) => match common_directory(specs()) {
                Some(dir) => ParsedRule::Edit(Some(dir)),
                None => continue,
            },
            _ => rule,
        };
        // A family whose broader rule adds nothing was handled as coverage.
        if members.iter().any(|&i| covers(&allow[i].parsed, &rule)) {
            continue;
        }
        let entry = Entry::new(rule.to_string(), rule);
        let replaces: Vec<String> = members.iter().map(|&i| allow[i].text.clone()).collect();
        for &i in &members {
            removed[i] = true;
            changes.push(Change {
                list: List::Allow,
                rule: allow[i].text.clone(),
                action: format!("widened into `{}`", entry.text),
            });
        }
        widened.push(WidenedFamily {
            rule: entry.text.clone(),
            replaces,
        });
        if let Some(&first) = members.first() {
            replace_at.insert(first, entry);
        }
    }
    let old = std::mem::take(allow);
    for (index, entry) in old.into_iter().enumerate() {
        if let Some(new) = replace_at.remove(&index) {
            allow.push(new);
        } else if !removed[index] {
            allow.push(entry);
        }
    }
    widened
}

/// Read rules relative to the working directory, for [`Level::Project`].
fn project_family(rule: &ParsedRule) -> Option<(String, ParsedRule)> {
    match rule {
        ParsedRule::Read(Some(spec)) => {
            let (anchor, _) = path_components(spec)?;
            anchor.is_empty().then(|| {
                (
                    "Read ./".to_string(),
                    ParsedRule::Read(Some("./**".to_string())),
                )
            })
        }
        _ => None,
    }
}

/// The family a rule widens into: its program, directory, parent domain or MCP server.
fn family_of(rule: &ParsedRule) -> Option<(String, ParsedRule)> {
    match rule {
        ParsedRule::Bash(Some(spec)) => {
            let program = spec.split_whitespace().next()?;
            // A program name holding a wildcard is already a family of its own.
            (!program.contains('*')).then(|| {
                (
                    format!("Bash {program}"),
                    ParsedRule::Bash(Some(format!("{program} *"))),
                )
            })
        }
        ParsedRule::Read(Some(spec)) | ParsedRule::Edit(Some(spec)) => {
            let (anchor, components) = path_components(spec)?;
            let top = components.first()?;
            let tool = if matches!(rule, ParsedRule::Read(_)) {
                "Read"
            } else {
                "Edit"
            };
            Some((format!("{tool} {anchor}{top}"), rule.clone()))
        }
        ParsedRule::WebFetch(Some(domain)) => {
            let domain = domain.strip_prefix("*.").unwrap_or(domain);
            let labels: Vec<&str> = domain.split('.').collect();
            // Only subdomains of a registrable-looking parent (two labels or more) merge.
            if labels.len() < 3 {
                return None;
            }
            // A registrable parent is two labels, or three under a country's second level
            // (`example.co.uk`); `*.co.uk` would allow every British company's site.
            let second_level = [
                "co", "com", "org", "net", "gov", "ac", "edu", "ne", "or", "go",
            ];
            let country = labels[labels.len() - 1].len() == 2;
            let keep = if country && second_level.contains(&labels[labels.len() - 2]) {
                3
            } else {
                2
            };
            if labels.len() <= keep {
                return None;
            }
            let parent = labels[labels.len() - keep..].join(".");
            // Hosts where every subdomain is someone else's site: never merged.
            const SHARED_HOSTING: [&str; 14] = [
                "github.io",
                "gitlab.io",
                "herokuapp.com",
                "vercel.app",
                "netlify.app",
                "pages.dev",
                "workers.dev",
                "appspot.com",
                "azurewebsites.net",
                "cloudfront.net",
                "amazonaws.com",
                "blogspot.com",
                "web.app",
                "firebaseapp.com",
            ];
            if SHARED_HOSTING.contains(&parent.as_str()) {
                return None;
            }
            Some((
                format!("WebFetch {parent}"),
                ParsedRule::WebFetch(Some(format!("*.{parent}"))),
            ))
        }
        ParsedRule::Mcp {
            server,
            tool: Some(_),
        } => Some((
            format!("mcp {server}"),
            ParsedRule::Mcp {
                server: server.clone(),
                tool: None,
            },
        )),
        _ => None,
    }
}

/// Splits a path specifier into its anchor (`//`, `~/`, `/` or empty for the
/// working directory) and the directory components before its last one.
/// Bare names (any depth) and wildcard directories have no family.
fn path_components(spec: &str) -> Option<(&'static str, Vec<&str>)> {
    let (anchor, rest) = if let Some(r) = spec.strip_prefix("//") {
        ("//", r)
    } else if let Some(r) = spec.strip_prefix("~/") {
        ("~/", r)
    } else if let Some(r) = spec.strip_prefix('/') {
        ("/", r)
    } else {
        ("", spec.strip_prefix("./").unwrap_or(spec))
    };
    let (dir, _) = rest.trim_end_matches('/').rsplit_once('/')?;
    let components: Vec<&str> = dir
        .split('/')
        .take_while(|c| !c.contains(['*', '?', '[', '{']))
        .collect();
    (!components.is_empty()
        && components
            .iter()
            .all(|c| !c.is_empty() && *c != "." && *c != ".."))
    .then_some((anchor, components))
}

/// The deepest directory shared by path specifiers of one anchor, as `dir/**`.
fn common_directory<'a>(specs: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut common: Option<(&'static str, Vec<&str>)> = None;
    for spec in specs {
        let (anchor, components) = path_components(spec)?;
        common = Some(match common {
            None => (anchor, components),
            Some((a, c)) if a == anchor => (
                a,
                c.iter()
                    .zip(&components)
                    .take_while(|(x, y)| x == y)
                    .map(|(x, _)| *x)
                    .collect(),
            ),
            Some(_) => return None,
        });
    }
    let (anchor, components) = common?;
    (!components.is_empty()).then(|| format!("{anchor}{}/**", components.join("/")))
}

/// `a b c`, `a b d *` -> `a b *`: the longest common whole-word prefix
/// (at least the program) followed by ` *`.
fn common_bash_family<'a>(specs: impl Iterator<Item = &'a str>) -> Option<ParsedRule> {
    let mut prefix: Option<Vec<&str>> = None;
    for spec in specs {
        // Words holding `*` end the usable prefix.
        let words: Vec<&str> = spec
            .split_whitespace()
            .take_while(|w| !w.contains('*'))
            .collect();
        prefix = Some(match prefix {
            None => words,
            Some(p) => p
                .iter()
                .zip(&words)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| *a)
                .collect(),
        });
    }
    let prefix = prefix?;
    // A one-member prefix equal to a whole rule would not widen; the caller
    // only passes families of two or more distinct rules.
    (!prefix.is_empty()).then(|| ParsedRule::Bash(Some(format!("{} *", prefix.join(" ")))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rule(s: &str) -> ParsedRule {
        parse_rule(s).unwrap()
    }

    #[test]
    fn bash_coverage() {
        assert!(covers(&rule("Bash(git *)"), &rule("Bash(git status)")));
        assert!(covers(&rule("Bash(git *)"), &rule("Bash(git log *)")));
        assert!(covers(&rule("Bash(git*)"), &rule("Bash(git *)")));
        // `X*` does not lose to `X *` the other way round: `git *` misses `gitk`.
        assert!(!covers(&rule("Bash(git *)"), &rule("Bash(git*)")));
        assert!(!covers(&rule("Bash(git status)"), &rule("Bash(git *)")));
        assert!(covers(&rule("Bash(npm run *)"), &rule("Bash(npm run:*)")));
        assert!(covers(&rule("Bash(* --help)"), &rule("Bash(cargo --help)")));
    }

    #[test]
    fn path_coverage() {
        assert!(covers(&rule("Read(src/**)"), &rule("Read(src/a/b.rs)")));
        assert!(covers(&rule("Read(src/**)"), &rule("Read(./src/*.rs)")));
        // gitignore semantics: `src/*` names every entry of `src`, directories included.
        assert!(covers(&rule("Read(src/*)"), &rule("Read(src/a/b.rs)")));
        assert!(!covers(&rule("Read(src/*.rs)"), &rule("Read(src/a/b.rs)")));
        assert!(covers(&rule("Read(//**)"), &rule("Read(~/x)")));
        // cwd and project root may differ: no coverage across anchors.
        assert!(!covers(&rule("Read(/src/**)"), &rule("Read(src/a.rs)")));
        assert!(!covers(&rule("Read(~/*)"), &rule("Read(./x)")));
        // A bare name is anywhere under the working directory, not anywhere at all.
        assert!(covers(&rule("Read(.env)"), &rule("Read(./sub/.env)")));
        assert!(!covers(&rule("Read(.env)"), &rule("Read(//proj/.env)")));
    }

    #[test]
    fn a_star_covers_only_sets_that_cannot_match_a_slash() {
        assert!(covers(
            &rule("Read(src/*.rs)"),
            &rule("Read(src/a[bc]d.rs)")
        ));
        assert!(covers(
            &rule("Read(src/*.rs)"),
            &rule("Read(src/a[a-z].rs)")
        ));
        // Negated classes and ranges across `/` match `src/a/b.rs`, which `*.rs` does not.
        assert!(!covers(
            &rule("Read(src/*.rs)"),
            &rule("Read(src/a[!x]b.rs)")
        ));
        assert!(!covers(
            &rule("Read(src/*.rs)"),
            &rule("Read(src/a[^x]b.rs)")
        ));
        assert!(!covers(
            &rule("Read(src/*.rs)"),
            &rule("Read(src/a[+-0]b.rs)")
        ));
    }

    #[test]
    fn web_and_mcp_coverage() {
        assert!(covers(
            &rule("WebFetch(domain:*.rs)"),
            &rule("WebFetch(domain:docs.rs)")
        ));
        assert!(!covers(
            &rule("WebFetch(domain:*.docs.rs)"),
            &rule("WebFetch(domain:docs.rs)")
        ));
        assert!(covers(&rule("mcp__gh"), &rule("mcp__gh__x")));
        // Widening stops at a registrable parent, and never merges shared hosting.
        let family = |d: &str| family_of(&rule(&format!("WebFetch(domain:{d})"))).map(|f| f.1);
        assert_eq!(
            family("docs.example.co.uk"),
            Some(rule("WebFetch(domain:*.example.co.uk)"))
        );
        assert_eq!(family("example.co.uk"), None);
        assert_eq!(family("alice.github.io"), None);
        assert_eq!(
            family("api.docs.rs"),
            Some(rule("WebFetch(domain:*.docs.rs)"))
        );
        assert!(!covers(&rule("mcp__gh__x"), &rule("mcp__gh")));
    }
}
