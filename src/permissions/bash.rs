//! Bash command splitting (with `brush-parser`) and Bash rule patterns.
//!
//! A command line is parsed into a syntax tree and flattened into the simple
//! commands it would run: the parts of `&&`, `||`, `;`, `|`, `|&`, `&` and
//! newline lists, the bodies of subshells, groups, loops, conditionals and
//! function definitions, and every command substitution (`$(..)`, backquotes)
//! and process substitution (`<(..)`) found in words, assignments and
//! redirections, at any depth. Each part is then stripped of leading
//! environment assignments and of the wrappers `timeout`, `time`, `nice`,
//! `nohup`, `stdbuf`, `command`, `builtin`, `noglob` and bare `xargs`
//! (with their options) and rendered as its words joined by single spaces
//! (redirections are not part of that text).
//!
//! Deny/ask rules and allow rules see a part differently ([`CommandPart`]):
//! a rule that restricts must not be dodged by spelling, and a rule that
//! permits must not be stretched by what the stripping hides. So deny and
//! ask rules also see the part with its quotes and escapes removed (`\rm`,
//! `'rm'`, `r""m` are `rm`) and with `env`, `exec` and `sudo` stripped too,
//! while allow rules see leading assignments kept (unless every one sets a
//! variable from a short harmless list: `LD_PRELOAD=…`, `GIT_CONFIG_…=…`,
//! `PAGER=…` can make an allowed program run other code) and a bare `xargs`
//! kept as its command followed by ` …`, the arguments it will read (an
//! exact `Bash(git push)` does not allow `… | xargs git push`; `Bash(git
//! push *)` does). A command name that the shell computes (`$x`, a glob,
//! `{a,b}`) is never allowed.

use brush_parser::ast::{
    self, Command, CommandPrefixOrSuffixItem, CompoundCommand, CompoundList, IoFileRedirectTarget,
    IoRedirect, Pipeline,
};
use brush_parser::word::{self, WordPiece, WordPieceWithSource};
use brush_parser::{Parser, ParserOptions};
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// Why a command line could not be split. Such a command is never allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse the command: {0}")]
pub struct SplitError(pub String);

/// How deep command substitutions may nest before the splitter gives up
/// (and the command is treated as unparseable).
const MAX_DEPTH: usize = 32;

fn parser_options() -> ParserOptions {
    ParserOptions {
        // Extended globs make `!(..)` and `@(..)` words, which is what bash does
        // with `extglob`; tilde expansion does not matter for splitting.
        ..ParserOptions::default()
    }
}

/// Splits a command line into the simple commands it runs, each with
/// environment assignments and wrappers stripped.
///
/// A command the parser does not finish within [`PARSE_DEADLINE`] is
/// refused (the module's `ParseGuard` says why).
pub fn split_command(command: &str) -> Result<Vec<String>, SplitError> {
    let parts = split_parts(command)?;
    Ok(parts
        .into_iter()
        .filter_map(|p| p.restrictive.into_iter().next())
        .collect())
}

/// Splits a command line into its simple commands, each in the forms the rule lists see.
pub(crate) fn split_parts(command: &str) -> Result<Vec<CommandPart>, SplitError> {
    if let Some(part) = plain_simple_command(command) {
        return Ok(part.into_iter().collect());
    }
    let mut parts = PARSE_GUARD.run(command)?;
    // A variable written from text and evaluated arithmetically on one line (`printf -v x
    // 'a[%s(cmd)]' '$'; echo $((x))`) runs code no rule sees.
    if parts.iter().any(|p| p.writes_variables) && parts.iter().any(|p| p.evaluates_names) {
        for part in &mut parts {
            part.hidden_code = true;
        }
    }
    Ok(parts)
}

/// How long the parser may take over one command line (every nested
/// substitution included) before the command is refused. Real commands,
/// scripts of a few kilobytes included, parse in well under a millisecond.
pub const PARSE_DEADLINE: Duration = Duration::from_millis(500);

/// How many parses that overran their deadline may still be running before
/// the splitter refuses every command that needs the parser.
const MAX_OVERRUNNING_PARSES: usize = 2;

static PARSE_GUARD: ParseGuard = ParseGuard::new(PARSE_DEADLINE, MAX_OVERRUNNING_PARSES);

/// Bounds the time a command's parse may take.
///
/// `brush-parser` 0.4 is a backtracking PEG parser without memoisation:
/// fuzzing keeps finding short inputs on which it takes exponential time
/// (each shape below that is refused before parsing was one; `@($("))#`
/// repeated 20 times, 174 bytes, takes 22 s). Refusing shapes one by one
/// cannot be complete, so every parse also runs on a thread of its own and
/// the caller waits at most the deadline; a command not parsed by then is
/// refused (never allowed). A thread cannot be stopped from outside, so an
/// overrunning parse runs on until it ends; while `max_overrunning` of them
/// are still running, commands that need the parser are refused at once, so
/// hostile input cannot pile up threads. This bounds how long a caller
/// waits, not what the overrunning parse costs: one of the parser's infinite
/// loops also allocates until the process runs out of memory, which is why
/// the shapes known to loop are still refused before parsing. The cost is a
/// thread start and two cross-thread wake-ups per parsed command: 84–88 µs on
/// a 2-vCPU VM where the parse itself takes 5 µs (reusing parked threads
/// saved nothing there: a bare channel ping-pong between two threads took
/// 58 µs). Plain commands skip the parser entirely.
///
/// At most [`MAX_PARSING`] parses run at once; a caller waits for a free one before its deadline
/// starts. A thousand permission checks at once (a wide plan's first level) each started a
/// thread, and on 2 cores dozens of plain `echo` commands then missed the deadline and were
/// refused as unanalysable.
struct ParseGuard {
    deadline: Duration,
    max_overrunning: usize,
    overrunning: AtomicUsize,
    /// Parses running now (overrunning ones included), and the signal that one ended.
    parsing: parking_lot::Mutex<usize>,
    ended: parking_lot::Condvar,
}

/// Parses that may run at once.
const MAX_PARSING: usize = 4;

/// How long a caller waits for a parse to end when [`MAX_PARSING`] are running.
const PARSE_SLOT_WAIT: Duration = Duration::from_secs(30);

/// A parse's progress, shared by the waiting caller and the parsing thread,
/// so exactly one of them decides whether the parse counts as overrunning.
const PARSING: u8 = 0;
const PARSED: u8 = 1;
const ABANDONED: u8 = 2;

impl ParseGuard {
    const fn new(deadline: Duration, max_overrunning: usize) -> Self {
        Self {
            deadline,
            max_overrunning,
            overrunning: AtomicUsize::new(0),
            parsing: parking_lot::const_mutex(0),
            ended: parking_lot::Condvar::new(),
        }
    }

    /// Takes one of the [`MAX_PARSING`] places, waiting for one to free up.
    fn take_place(&self) -> Result<(), SplitError> {
        let mut parsing = self.parsing.lock();
        let until = std::time::Instant::now() + PARSE_SLOT_WAIT;
        while *parsing >= MAX_PARSING {
            if self.ended.wait_until(&mut parsing, until).timed_out() && *parsing >= MAX_PARSING {
                return Err(SplitError(format!(
                    "no shell parse ended within {} s ({MAX_PARSING} running)",
                    PARSE_SLOT_WAIT.as_secs()
                )));
            }
        }
        *parsing += 1;
        Ok(())
    }

    /// Gives a place back (the parse ended, or its thread could not start).
    fn free_place(&self) {
        let mut parsing = self.parsing.lock();
        *parsing = parsing.saturating_sub(1);
        self.ended.notify_one();
    }

    fn run(&'static self, command: &str) -> Result<Vec<CommandPart>, SplitError> {
        let command = command.to_owned();
        self.within_deadline(move || {
            let mut parts = Vec::new();
            split_into(&command, 0, &mut parts)?;
            Ok(parts)
        })
    }

    fn within_deadline<T: Send + 'static>(
        &'static self,
        parse: impl FnOnce() -> Result<T, SplitError> + Send + 'static,
    ) -> Result<T, SplitError> {
        let overrunning = self.overrunning.load(Ordering::Acquire);
        if overrunning >= self.max_overrunning {
            return Err(SplitError(format!(
                "{overrunning} earlier commands are still being parsed past their deadline"
            )));
        }
        self.take_place()?;
        let progress = Arc::new(AtomicU8::new(PARSING));
        let (sender, receiver) = mpsc::sync_channel(1);
        let parser_progress = Arc::clone(&progress);
        let spawned = std::thread::Builder::new()
            .name("tetrarch-sh-parse".into())
            // The parser recurses per nesting level; give it a main thread's stack.
            .stack_size(8 << 20)
            .spawn(move || {
                // A panic while parsing fails this command, and the place is freed all the
                // same: a place kept by a dead parse would be lost for good (after a few, every
                // command waited out its deadline and was refused).
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse))
                    .unwrap_or_else(|panic| {
                        Err(SplitError(format!(
                            "the shell parser failed: {}",
                            crate::session::panic_message(panic.as_ref())
                        )))
                    });
                self.free_place();
                if parser_progress
                    .compare_exchange(PARSING, PARSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // The caller gave up on this parse and counted it.
                    self.overrunning.fetch_sub(1, Ordering::AcqRel);
                }
                let _ = sender.send(result);
            });
        if let Err(e) = spawned {
            self.free_place();
            return Err(SplitError(format!("could not start the shell parser: {e}")));
        }
        match receiver.recv_timeout(self.deadline) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                self.overrunning.fetch_add(1, Ordering::AcqRel);
                if progress
                    .compare_exchange(PARSING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Err(SplitError(format!(
                        "the shell parser did not finish within {} ms",
                        self.deadline.as_millis()
                    )));
                }
                // It finished just now: take its answer after all.
                self.overrunning.fetch_sub(1, Ordering::AcqRel);
                receiver
                    .recv()
                    .unwrap_or_else(|_| Err(SplitError("the shell parser stopped".into())))
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(SplitError("the shell parser stopped".into()))
            }
        }
    }
}

/// Words of a command with nothing for a shell to interpret: no quotes,
/// expansions, operators, globs, comments or reserved words. Parsing such
/// a command would give the same words, so the parser (the bulk of a
/// decision's cost) is skipped. `None`: use the parser.
fn plain_simple_command(command: &str) -> Option<Option<CommandPart>> {
    let plain = |c: char| c.is_ascii_alphanumeric() || " \t_-./=:,@%+^~".contains(c);
    if !command.chars().all(plain) {
        return None;
    }
    // `~user`, `~+`, `~-`, `~2` name folders the shell computes (only `~` and `~/…` are kept as
    // written): the parser sees those.
    if command.match_indices('~').any(|(at, _)| {
        !matches!(
            command[at + 1..].chars().next(),
            None | Some('/' | ' ' | '\t')
        )
    }) {
        return None;
    }
    let words: Vec<&str> = command.split_whitespace().collect();
    let command_at = words
        .iter()
        .position(|w| !is_assignment(w))
        .unwrap_or(words.len());
    const RESERVED: [&str; 17] = [
        "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for",
        "in", "function", "select", "coproc", "time",
    ];
    if words.get(command_at).is_some_and(|w| RESERVED.contains(w)) {
        return None;
    }
    // No quotes or expansions: every word's value is its text.
    Some(CommandPart::new(
        &words[..command_at],
        &words[command_at..],
        &[],
        &[],
    ))
}

/// One simple command of a command line, in the forms the rule lists see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandPart {
    /// What deny and ask rules are matched against; a match on any form counts. The first is
    /// the part with its assignments and wrappers stripped, as written (what
    /// [`split_command`] returns); then, where they differ, the same with `env`, `exec` and
    /// `sudo` stripped too, and both again with quotes and escapes removed, and with what the
    /// shell computes in a word as [`EXPANDED`] (such a form matches a rule when some value of
    /// those slots would: [`may_match`]).
    pub restrictive: Vec<String>,
    /// What allow rules are matched against: assignments kept unless all are harmless, only
    /// the wrappers that change nothing about what runs stripped, a bare `xargs CMD` as
    /// `CMD …`.
    pub permissive: String,
    /// The command name is computed by the shell (an expansion, a glob or a brace expansion
    /// in it), or the arguments it computes are too long to judge slot by slot
    /// ([`MAX_OPEN_FORM_CHARS`]), so no rule can say what runs: never allowed.
    pub dynamic_name: bool,
    /// The script the part hands to another shell (`bash -c SCRIPT`, `sh -ec SCRIPT`, `eval
    /// WORDS`, `env -S STRING`), after quote removal: deny and ask rules judge its commands
    /// too.
    pub inner_script: Option<String>,
    /// The part runs code no rule can see: a shell reading its commands from standard input
    /// (`… | bash`, `bash -s`), or text the shell evaluates later (a `$(…)` inside an array
    /// subscript given to `test -v`, `printf -v`, `declare`, `let`, … or assigned to a
    /// variable): never allowed, like a computed command name.
    pub hidden_code: bool,
    /// Commands the part starts from words of its own (`xargs [OPTIONS] CMD …`, `find …
    /// -exec CMD … ;`): deny and ask rules judge them too.
    pub spawned: Vec<CommandPart>,
    /// The part writes text into a variable (`printf -v`, `read`, an assignment of a computed
    /// value, …).
    pub writes_variables: bool,
    /// The part holds an arithmetic expansion naming a variable (`$((x))`), which evaluates the
    /// variable's value as code.
    pub evaluates_names: bool,
}

/// What a part hands to another shell to run.
#[derive(Debug, PartialEq, Eq)]
enum HandedScript {
    /// Nothing (a script file is the rule's business, like any program's input).
    None,
    /// This script text.
    Inline(String),
    /// Commands read from standard input, which no rule sees.
    Unseen,
}

/// The script a command runs in a shell of its own: for `sh`, `bash`, `dash`, `zsh` or `ksh`
/// with a `-c` option, the first word after all the options (options after `-c` count too, as
/// the shell reads them: `bash -c -e SCRIPT`, `bash -c -- SCRIPT`; short options clustered,
/// `-o NAME`, `-O NAME` and `--rcfile FILE` skipped); without one, the commands on standard
/// input unless a script file is named; the words of `eval` (after a `--`); the string of
/// `env -S STRING` with the words after it. `words` are unquoted and stripped of wrappers.
fn inner_script(words: &[&str]) -> HandedScript {
    let Some((name, rest)) = words.split_first() else {
        return HandedScript::None;
    };
    let base = name.rsplit('/').next().unwrap_or(name);
    match base {
        "eval" => {
            let rest = match rest.split_first() {
                Some((&"--", after)) => after,
                _ => rest,
            };
            if rest.is_empty() {
                HandedScript::None
            } else {
                HandedScript::Inline(rest.join(" "))
            }
        }
        "env" => env_split_string(rest).map_or(HandedScript::None, HandedScript::Inline),
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "rbash" | "mksh" | "yash" | "ash" => {
            shell_script(rest)
        }
        "source" | "." => match rest.first() {
            Some(file) if reads_unseen(file) => HandedScript::Unseen,
            _ => HandedScript::None,
        },
        // Tools whose `-c` (`--command`) is a shell command line: the last one counts.
        "su" | "runuser" | "script" | "flock" => match last_command_option(base, rest) {
            Some(command) => HandedScript::Inline(command),
            // A shell reading standard input (or a terminal).
            None if base == "su" => HandedScript::Unseen,
            None => HandedScript::None,
        },
        // `watch [OPTIONS] CMD…` hands its words to `sh -c`; `trap 'CMD' SIGNAL` runs CMD
        // later; `alias NAME='CMD'` runs CMD where NAME is used; `mapfile -C CMD` per line.
        "watch" => {
            let mut at = 0;
            while let Some(word) = rest.get(at) {
                if !word.starts_with('-') {
                    break;
                }
                let takes_value = matches!(*word, "-n" | "-q")
                    || (word.starts_with("--")
                        && !word.contains('=')
                        && word.len() > 2
                        && ["interval", "equexit"]
                            .iter()
                            .any(|n| n.starts_with(&word[2..])))
                    || (!word.starts_with("--") && word.len() > 2 && word.ends_with(['n', 'q']));
                at += if takes_value { 2 } else { 1 };
            }
            match rest.get(at..) {
                Some(command) if !command.is_empty() => HandedScript::Inline(command.join(" ")),
                _ => HandedScript::None,
            }
        }
        "trap" => rest
            .iter()
            .find(|w| !w.starts_with('-'))
            .map_or(HandedScript::None, |action| {
                HandedScript::Inline((*action).to_owned())
            }),
        "alias" => {
            let values: Vec<&str> = rest
                .iter()
                .filter_map(|w| w.split_once('='))
                .map(|(_, v)| v)
                .collect();
            if values.is_empty() {
                HandedScript::None
            } else {
                HandedScript::Inline(values.join("\n"))
            }
        }
        "mapfile" | "readarray" => {
            let mut callback = None;
            let mut at = 0;
            while let Some(word) = rest.get(at) {
                let Some(cluster) = word.strip_prefix('-').filter(|c| !c.is_empty()) else {
                    break;
                };
                at += 1;
                // The first letter taking a value takes the rest of the word, else the next.
                if let Some((i, letter)) =
                    cluster.char_indices().find(|(_, c)| "dnOsuCc".contains(*c))
                {
                    let attached = &cluster[i + 1..];
                    let value = if attached.is_empty() {
                        at += 1;
                        rest.get(at - 1).copied()
                    } else {
                        Some(attached)
                    };
                    if letter == 'C' {
                        callback = value.map(str::to_owned);
                    }
                }
            }
            callback.map_or(HandedScript::None, HandedScript::Inline)
        }
        _ => HandedScript::None,
    }
}

/// The shell command line of the last `-c` option of `su`, `runuser`, `script` or `flock`
/// (`-c CMD`, `-cCMD`, in a cluster, `--command[=]CMD` or a prefix of it, `--session-command`).
/// The values of the tool's other options are passed over (`su -w -c` names a variable).
fn last_command_option(tool: &str, args: &[&str]) -> Option<String> {
    let (letters, _) = value_options(tool);
    let mut last = None;
    let mut at = 0;
    while let Some(word) = args.get(at) {
        at += 1;
        if let Some(long) = word.strip_prefix("--") {
            let (name, value) = long
                .split_once('=')
                .map_or((long, None), |(n, v)| (n, Some(v)));
            let is_command = name.len() >= 3
                && ["command", "session-command"]
                    .iter()
                    .any(|n| n.starts_with(name));
            if is_command {
                last = match value {
                    Some(value) => Some(value.to_owned()),
                    None => {
                        at += 1;
                        args.get(at - 1).map(|v| (*v).to_owned())
                    }
                };
            } else if option_takes_value(tool, word) {
                // Another option's value, the next word (`--shell -c` names a shell).
                at += 1;
            }
            continue;
        }
        let Some(cluster) = word.strip_prefix('-') else {
            continue;
        };
        // The first letter that takes a value ends the cluster: `c`, or another whose value
        // (attached, or the next word) is passed over.
        let Some((i, letter)) = cluster
            .char_indices()
            .find(|&(_, l)| l == 'c' || letters.contains(l))
        else {
            continue;
        };
        let attached = &cluster[i + letter.len_utf8()..];
        let value = if attached.is_empty() {
            at += 1;
            args.get(at - 1).map(|v| (*v).to_owned())
        } else {
            Some(attached.to_owned())
        };
        if letter == 'c' {
            last = value;
        }
    }
    last
}

/// Bash's long options, which it also takes after a single dash.
const BASH_LONG_OPTIONS: [&str; 16] = [
    "debugger",
    "dump-po-strings",
    "dump-strings",
    "help",
    "init-file",
    "login",
    "noediting",
    "noprofile",
    "norc",
    "posix",
    "pretty-print",
    "protected",
    "rcfile",
    "restricted",
    "verbose",
    "version",
];

/// What a shell given `args` runs besides a script file (see [`inner_script`]).
fn shell_script(mut args: &[&str]) -> HandedScript {
    let (mut inline, mut from_stdin) = (false, false);
    while let Some((&option, after)) = args.split_first() {
        if option == "--" || option == "-" {
            args = after;
            break;
        }
        // Bash also takes its long options after one dash (`-login`, `-rcfile FILE`).
        let long_name = option
            .strip_prefix("--")
            .filter(|l| !l.is_empty())
            .or_else(|| {
                option
                    .strip_prefix('-')
                    .filter(|l| BASH_LONG_OPTIONS.contains(l))
            });
        if let Some(long) = long_name {
            if matches!(long, "version" | "help") {
                return HandedScript::None;
            }
            let takes_value = matches!(long, "rcfile" | "init-file");
            if takes_value && after.first().is_some_and(|file| reads_unseen(file)) {
                return HandedScript::Unseen;
            }
            args = if takes_value {
                after.get(1..).unwrap_or(&[])
            } else {
                after
            };
            continue;
        }
        let short = option.len() > 1 && option.starts_with(['-', '+']);
        if !short {
            break;
        }
        if option.starts_with('-') {
            inline |= option.contains('c');
            from_stdin |= option.contains('s');
        }
        // Each `o`/`O` of a cluster takes the next word (`-eo pipefail`, `-oc pipefail S`,
        // `-oo pipefail errexit`), as bash reads them.
        let values = option.chars().filter(|c| matches!(c, 'o' | 'O')).count();
        args = after.get(values..).unwrap_or(&[]);
    }
    if inline {
        args.first().map_or(HandedScript::None, |script| {
            HandedScript::Inline((*script).to_owned())
        })
    } else if from_stdin || args.first().is_none_or(|file| reads_unseen(file)) {
        HandedScript::Unseen
    } else {
        HandedScript::None
    }
}

/// A script file argument that is really a stream no rule sees: standard input, a file
/// descriptor, or a process substitution (`bash /dev/stdin`, `. <(echo …)`).
fn reads_unseen(file: &str) -> bool {
    // Spelled any way (`/dev/./stdin`, `//dev/stdin`, `../../dev/stdin`).
    let parts: Vec<&str> = file
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    file == "<(..)"
        || file == "-"
        || parts.ends_with(&["dev", "stdin"])
        || parts.windows(2).any(|w| w == ["dev", "fd"])
        || (parts.first() == Some(&"proc") && parts.contains(&"fd"))
}

/// The command `env -S STRING [ARGS…]` runs (`-S` also in a cluster, with its value attached
/// or not, or `--split-string[=STRING]`): the string, split by the shell's rules here (close
/// to `env`'s own), followed by the other words. `args` follow `env`.
fn env_split_string(mut args: &[&str]) -> Option<String> {
    while let Some((&option, after)) = args.split_first() {
        if option == "--" || !option.starts_with('-') || option == "-" {
            return None;
        }
        if is_split_string(option) {
            let (value, rest) = if let Some((_, value)) = option.split_once('=') {
                (value, after)
            } else if let Some(at) = option.find('S').filter(|_| !option.starts_with("--")) {
                match &option[at + 1..] {
                    "" => after.split_first().map(|(v, rest)| (*v, rest))?,
                    attached => (attached, after),
                }
            } else {
                after.split_first().map(|(v, rest)| (*v, rest))?
            };
            // `env` reads `\_` as a word break; the shell's splitting (used here) would not.
            let mut script = value.replace("\\_", " ");
            for word in rest {
                script.push(' ');
                script.push_str(word);
            }
            return Some(script);
        }
        args = if option_takes_value("env", option) {
            after.get(1..).unwrap_or(&[])
        } else {
            after
        };
    }
    None
}

fn owned(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// The command `xargs` (its words `all`) starts as deny and ask rules see it: what it reads
/// from its input is any text, in place of its replace string (`-I R`, `-i`, `--replace`),
/// else as a [`VANISHING`] slot after the command.
fn xargs_started(all: &[&str], command: &[&str]) -> Vec<Vec<String>> {
    let rest = all.get(1..).unwrap_or(&[]);
    let options = &rest[..xargs_options(rest)];
    let mut replace: Option<&str> = None;
    let mut at = 0;
    while let Some(option) = options.get(at) {
        at += 1;
        if let Some(long) = option.strip_prefix("--") {
            // getopt takes any unambiguous prefix: `--r`, `--rep`.
            let (name, value) = long.split_once('=').unwrap_or((long, ""));
            if !name.is_empty() && "replace".starts_with(name) {
                replace = Some(if value.is_empty() { "{}" } else { value });
            }
            continue;
        }
        let Some(cluster) = option.strip_prefix('-') else {
            continue;
        };
        // Read as getopt reads a cluster: a letter taking a value takes the rest of it.
        for (i, letter) in cluster.char_indices() {
            let attached = &cluster[i + letter.len_utf8()..];
            match letter {
                'I' if attached.is_empty() => replace = options.get(at).copied(),
                'I' => replace = Some(attached),
                'i' if attached.is_empty() => replace = Some("{}"),
                'i' => replace = Some(attached),
                _ => {}
            }
            if "adEILnPseil".contains(letter) {
                break;
            }
        }
    }
    // Input after the command, always: a later `-L`, `-l` or `-n` turns the replace string off.
    let mut appended = owned(command);
    appended.push(VANISHING.to_string());
    let mut started = vec![appended];
    if let Some(replace) = replace.filter(|r| !r.is_empty()) {
        started.push(
            command
                .iter()
                .map(|w| w.replace(replace, &EXPANDED.to_string()))
                .collect(),
        );
    }
    started
}

/// Whether an open word may be read as an option: it starts with a slot, or with `-` and a
/// slot (`"${x:--exec}"`, `-"$x"`).
fn may_be_option(word: &str) -> bool {
    let slot = |c: char| c == EXPANDED || c == VANISHING;
    word.starts_with(slot) || word.strip_prefix('-').is_some_and(|w| w.starts_with(slot))
}

/// How deep commands started by commands (`xargs … xargs …`, `find -exec find …`) are built.
const MAX_STARTED_DEPTH: usize = 4;

thread_local! {
    /// How many [`CommandPart::new`] calls for started commands enclose the current one.
    static STARTED_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Leaves one level of [`STARTED_DEPTH`] when dropped.
struct DepthGuard;

impl DepthGuard {
    /// Enters one level: the depth before it, and the guard that leaves it.
    fn enter() -> (usize, DepthGuard) {
        let depth = STARTED_DEPTH.with(|depth| depth.replace(depth.get() + 1));
        (depth, DepthGuard)
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        STARTED_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// `find`'s own words: its starting points and expression, but not the words of the commands
/// it starts (`-exec CMD … ;`).
fn find_own_words<'w>(all: &[&'w str]) -> Vec<&'w str> {
    let mut expression = Vec::new();
    let mut in_command = false;
    for word in all.iter().skip(1) {
        if in_command {
            in_command = !matches!(*word, ";" | "+");
        } else {
            in_command = matches!(*word, "-exec" | "-execdir" | "-ok" | "-okdir");
            expression.push(*word);
        }
    }
    expression
}

/// `find`'s starting points: the words after its leading options (`-H`, `-L`, `-P`, `-D LIST`,
/// `-O3`) up to its expression.
fn find_starts<'a, 'w>(all: &'a [&'w str]) -> &'a [&'w str] {
    let mut rest = all.get(1..).unwrap_or(&[]);
    while let Some((first, after)) = rest.split_first() {
        rest = match *first {
            "-H" | "-L" | "-P" => after,
            "-D" => after.get(1..).unwrap_or(&[]),
            "--" => {
                rest = after;
                break;
            }
            option if option.starts_with("-O") => after,
            _ => break,
        };
    }
    let end = rest
        .iter()
        .position(|w| is_find_operator(w))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Whether a `find` argument starts its expression (ends the starting points).
fn is_find_operator(word: &str) -> bool {
    word.starts_with('-') || matches!(word, "(" | "!" | ",")
}

/// The command `find` (its words `all`) starts as deny and ask rules see it, one form per
/// starting point (at most 4; `.` when none is given): each `{}` is a path under it. `None`
/// when the command holds no `{}`.
fn find_started(all: &[&str], command: &[&str]) -> Option<Vec<Vec<String>>> {
    if !command.iter().any(|w| w.contains("{}")) {
        return None;
    }
    let mut starts: Vec<&str> = find_starts(all).iter().take(4).copied().collect();
    if starts.is_empty() {
        starts.push(".");
    }
    let holes: usize = command.iter().map(|w| w.matches("{}").count()).sum();
    Some(
        starts
            .into_iter()
            .map(|start| {
                // Past the cap, any path: it matches more, and the form stays small.
                let path = if holes.saturating_mul(start.len()) > MAX_OPEN_FORM_CHARS {
                    EXPANDED.to_string()
                } else {
                    format!("{start}{EXPANDED}")
                };
                command.iter().map(|w| w.replace("{}", &path)).collect()
            })
            .collect(),
    )
}

/// How many of `xargs`'s arguments (`rest`, after its name) are its options and their values:
/// the command it starts begins after them.
fn xargs_options(rest: &[&str]) -> usize {
    let mut args = rest;
    while let Some((&option, after)) = args.split_first() {
        if option == "--" {
            args = after;
            break;
        }
        if !option.starts_with('-') || option == "-" {
            break;
        }
        args = if let Some(long) = option.strip_prefix("--") {
            // getopt takes any unambiguous prefix (`--max-a 1`).
            let takes_value = !long.is_empty()
                && !long.contains('=')
                && [
                    "arg-file",
                    "delimiter",
                    "max-args",
                    "max-procs",
                    "max-chars",
                    "process-slot-var",
                ]
                .iter()
                .any(|name| name.starts_with(long));
            if takes_value {
                after.get(1..).unwrap_or(&[])
            } else {
                after
            }
        } else {
            // A cluster: a letter taking a value takes the rest of the cluster, or the next
            // word when it ends the cluster; `e`, `i`, `l` take only an attached one.
            let letters = &option[1..];
            let needs_next = letters
                .char_indices()
                .find(|(_, c)| "adEILnPseil".contains(*c))
                .is_some_and(|(at, c)| {
                    at + c.len_utf8() == letters.len() && "adEILnPs".contains(c)
                });
            if needs_next {
                after.get(1..).unwrap_or(&[])
            } else {
                after
            }
        };
    }
    rest.len() - args.len()
}

/// Commands `xargs` or `find` start from their own words: `xargs [OPTIONS] CMD …` (its
/// options skipped, with their values; no command is `echo`), and each `find … -exec CMD … ;`
/// (also `-execdir`, `-ok`, `-okdir`, ended by `;` or `+`). `words` are unquoted and
/// stripped of wrappers.
fn spawned_commands<'w>(words: &[&'w str]) -> Vec<Vec<&'w str>> {
    let Some((name, rest)) = words.split_first() else {
        return Vec::new();
    };
    match name.rsplit('/').next().unwrap_or(name) {
        "xargs" => {
            let args = &rest[xargs_options(rest)..];
            vec![if args.is_empty() {
                vec!["echo"]
            } else {
                args.to_vec()
            }]
        }
        "find" => {
            let mut commands = Vec::new();
            let mut at = 0;
            while at < rest.len() {
                if matches!(rest[at], "-exec" | "-execdir" | "-ok" | "-okdir") {
                    let start = at + 1;
                    let end = rest[start..]
                        .iter()
                        .position(|w| *w == ";" || *w == "+")
                        .map_or(rest.len(), |n| start + n);
                    if end > start {
                        commands.push(rest[start..end].to_vec());
                    }
                    at = end;
                }
                at += 1;
            }
            commands
        }
        _ => Vec::new(),
    }
}

/// A word's text with each quoted or escaped character made `_`: what brace expansion sees.
fn outside_quotes(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let (mut quote, mut escaped) = (None, false);
    for c in word.chars() {
        let literal = escaped || quote.is_some_and(|q| q != c);
        match (quote, c) {
            _ if escaped => escaped = false,
            (None, '\\') | (Some('"'), '\\') => escaped = true,
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if q == c => quote = None,
            _ => {}
        }
        out.push(if literal { '_' } else { c });
    }
    out
}

/// The longest word (in bytes) whose braces are expanded; a longer one holding a `{` leaves its
/// part unjudged.
const MAX_BRACE_WORD_BYTES: usize = 4 << 10;

/// How many words one part's brace expansions may make before the part is left unjudged.
const MAX_BRACE_WORDS: usize = 256;

/// Whether a word (as written) holds a brace expansion: a `{` closed by its `}` with a
/// top-level `,` or a `..` sequence inside.
fn has_brace_expansion(word: &str) -> bool {
    if !word.contains('{') {
        return false;
    }
    let mut budget = MAX_BRACE_WORDS;
    expand_braces(word, &mut budget).is_none_or(|words| words.len() != 1 || words[0] != word)
}

/// The words bash makes of `word` by brace expansion (`a{b,c}d` → `abd acd`, `{1..3}`), at
/// most `budget` in all across calls (`None` past it).
fn expand_braces(word: &str, budget: &mut usize) -> Option<Vec<String>> {
    let chars: Vec<(usize, char)> = word.char_indices().collect();
    for (i, &(open, c)) in chars.iter().enumerate() {
        // `${…}` is a parameter expansion, not a brace expansion.
        if c != '{' || (i > 0 && chars[i - 1].1 == '$') {
            continue;
        }
        let (mut depth, mut commas, mut close) = (0usize, Vec::new(), None);
        for &(at, c) in &chars[i + 1..] {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    close = Some(at);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => commas.push(at),
                _ => {}
            }
        }
        let Some(close) = close else { continue };
        let inner = &word[open + 1..close];
        let alternatives: Vec<String> = if commas.is_empty() {
            match sequence(inner) {
                Some(items) => items,
                None => continue,
            }
        } else {
            let mut cuts = vec![open];
            cuts.extend(&commas);
            cuts.push(close);
            cuts.windows(2)
                .map(|w| word[w[0] + 1..w[1]].to_owned())
                .collect()
        };
        let (prefix, suffix) = (&word[..open], &word[close + 1..]);
        let mut out = Vec::new();
        for alternative in alternatives {
            out.extend(expand_braces(
                &format!("{prefix}{alternative}{suffix}"),
                budget,
            )?);
        }
        return Some(out);
    }
    *budget = budget.checked_sub(1)?;
    Some(vec![word.to_owned()])
}

/// The items of a `{a..b}` / `{a..b..step}` sequence (numbers, or single letters), at most 64.
fn sequence(inner: &str) -> Option<Vec<String>> {
    let parts: Vec<&str> = inner.split("..").collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let step = parts
        .get(2)
        .map_or(Some(1i64), |s| s.parse().ok())?
        .unsigned_abs()
        .max(1);
    let letter = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .filter(|c| c.is_ascii_alphabetic() && chars.next().is_none())
    };
    let (from, to, letters) = match (parts[0].parse::<i64>(), parts[1].parse::<i64>()) {
        (Ok(a), Ok(b)) => (a, b, false),
        _ => (
            i64::from(u32::from(letter(parts[0])?)),
            i64::from(u32::from(letter(parts[1])?)),
            true,
        ),
    };
    // `{-9223372036854775808..9223372036854775807}` spans every i64: its count overflows.
    let count = (from.abs_diff(to) / step).checked_add(1)?;
    if count > 64 {
        return None;
    }
    let forward = from <= to;
    Some(
        (0..count)
            .map(|k| {
                let offset = i64::try_from(k * step).unwrap_or(0);
                let n = if forward {
                    from + offset
                } else {
                    from - offset
                };
                if letters {
                    char::from_u32(u32::try_from(n).unwrap_or(0))
                        .map(String::from)
                        .unwrap_or_default()
                } else {
                    n.to_string()
                }
            })
            .collect(),
    )
}

/// Whether a parameter expansion's text makes bash evaluate a variable's value as code: a
/// subscript that is not a number, `@` or `*` (`${a[x]}`, `${a[$i]}`), or an indirect
/// expansion of a name (`${!x}`; `${!a[@]}` and `${!prefix*}` only list names).
fn evaluates_a_variable_as_code(source: &str) -> bool {
    let Some(body) = source
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    else {
        return false;
    };
    let body = body.strip_prefix('#').unwrap_or(body);
    if let Some(name) = body.strip_prefix('!') {
        let indirect =
            !name.ends_with("[@]") && !name.ends_with("[*]") && !name.ends_with(['*', '@']);
        if indirect && !name.is_empty() {
            return true;
        }
    }
    let name_end = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '!'))
        .unwrap_or(body.len());
    // `${x:offset:length}` evaluates offset and length arithmetically (`${PWD:x}`); `${x:-…}`,
    // `${x:=…}`, `${x:+…}`, `${x:?…}` are defaults, not offsets.
    if let Some(offset) = body[name_end..].strip_prefix(':')
        && !offset.starts_with(['-', '=', '+', '?'])
        && offset.contains(|c: char| c.is_ascii_alphabetic() || c == '_' || c == '$')
    {
        return true;
    }
    body[name_end..].strip_prefix('[').is_some_and(|rest| {
        let subscript = rest.split(']').next().unwrap_or(rest);
        !(subscript == "@" || subscript == "*" || subscript.chars().all(|c| c.is_ascii_digit()))
    })
}

/// Builtins that write text they are given into a variable (`printf -v`, `read`, …), whose
/// value an arithmetic expansion on the same line would then evaluate as code.
const WRITES_VARIABLES: [&str; 9] = [
    "printf",
    "read",
    "mapfile",
    "readarray",
    "declare",
    "typeset",
    "local",
    "export",
    "readonly",
];

/// Builtins that evaluate an array subscript in a word they are given (`test -v 'a[$(cmd)]'`
/// runs `cmd`), as the shell does for any variable it expands arithmetically.
const SUBSCRIPT_EVALUATING: [&str; 15] = [
    "test",
    "[",
    "printf",
    "let",
    "declare",
    "typeset",
    "local",
    "export",
    "readonly",
    "unset",
    "read",
    "mapfile",
    "readarray",
    "wait",
    "shift",
];

/// Text the shell may run later as code: a command substitution behind a `[` (a subscript
/// evaluated when the word is used as a variable name or in arithmetic), escaped or not.
fn defers_code(text: &str) -> bool {
    let text = text.replace('\\', "");
    text.find('[')
        .is_some_and(|at| text[at..].contains("$(") || text[at..].contains('`'))
}

/// The variable `printf -v NAME` (or `-vNAME`) writes, among its options (before the format).
fn printf_variable<'a>(runs: &[&'a str]) -> Option<&'a str> {
    let mut words = runs.iter().skip(1);
    while let Some(word) = words.next() {
        match *word {
            "--" => return None,
            "-v" => return words.next().copied(),
            option if option.starts_with("-v") => return Some(&option[2..]),
            option if option.starts_with('-') && option.len() > 1 => {}
            _ => return None,
        }
    }
    None
}

/// A word naming an array element by a subscript that is not a number (`a[x]`, `a[$i]`):
/// given to `printf -v`, `test -v`, `unset`, … it evaluates that subscript as code.
fn names_evaluated_subscript(text: &str) -> bool {
    text.find('[').is_some_and(|at| {
        let subscript = text[at + 1..].split(']').next().unwrap_or("");
        !subscript.is_empty()
            && subscript != "@"
            && subscript != "*"
            && !subscript.chars().all(|c| c.is_ascii_digit())
    })
}

/// Variables whose value the shell runs as code (a script, a prompt, aliases, functions):
/// setting one is never allowed.
fn sets_code_variable(word: &str) -> bool {
    const CODE_VARIABLES: [&str; 11] = [
        "BASH_ENV",
        "ENV",
        "PROMPT_COMMAND",
        "PS0",
        "PS1",
        "PS2",
        "PS3",
        "PS4",
        "BASH_ALIASES",
        "SHELLOPTS",
        "BASHOPTS",
    ];
    let name_end = word.find(['=', '[', '+']).unwrap_or(0);
    name_end > 0 && (CODE_VARIABLES.contains(&&word[..name_end]) || word.starts_with("BASH_FUNC_"))
}

/// Whether `name` is one of the variables an allowed command may be given and still match its
/// allow rule (`CI`, `NO_COLOR`, `TERM`, `RUST_LOG` and the like: variables that change how a
/// program reports, not what it runs).
pub fn is_harmless_variable(name: &str) -> bool {
    HARMLESS_VARIABLES.contains(&name)
}

/// Variables an allowed command may be given inline (`CI=1 cargo test`) and still match its
/// allow rule: they change output or logging, not which code runs. Any other assignment stays
/// part of the text allow rules see.
const HARMLESS_VARIABLES: [&str; 12] = [
    "CI",
    "NO_COLOR",
    "FORCE_COLOR",
    "CLICOLOR",
    "TERM",
    "TZ",
    "LANG",
    "LC_ALL",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "CARGO_TERM_COLOR",
    "COLUMNS",
];

/// Characters that make the shell compute a command name rather than read it.
fn computes_name(word: &str) -> bool {
    // `[` and `{` only expand with their closing bracket after them in the word (`[ab]`,
    // `{a,b}`): `[`, `[[` and `{` alone are the test command and keywords.
    let opens_before_close = |open: char, close: char| {
        word.find(open)
            .is_some_and(|at| word[at + open.len_utf8()..].contains(close))
    };
    word.contains(['$', '`', '*', '?'])
        || opens_before_close('[', ']')
        || opens_before_close('{', '}')
}

impl CommandPart {
    /// Builds the forms of a simple command from its leading assignments and its words (as
    /// written), with the value after quote removal of each word where it differs from the
    /// text (`unquoted[i]`; `None`, or a shorter slice, where it does not or the shell
    /// computes it). `opened[i]`, where given, is the word's value with what the shell computes
    /// in it as [`EXPANDED`]: deny and ask rules also see that form, matching when some value
    /// would. `None` when there is nothing to match.
    fn new(
        assignments: &[&str],
        words: &[&str],
        unquoted: &[Option<String>],
        opened: &[Option<String>],
    ) -> Option<CommandPart> {
        let as_written = |stripped: &[&str]| {
            if stripped.is_empty() {
                // Nothing but assignments (or a lone wrapper): the text as written.
                assignments
                    .iter()
                    .chain(words)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" ")
            } else {
                stripped.join(" ")
            }
        };
        let first = as_written(strip_wrappers(words, Wrappers::Pure));
        if first.is_empty() {
            return None;
        }
        let mut restrictive = vec![first];
        // The written words' `Pure` form is `first`; their `All` form, and both forms of the
        // unquoted words, are added where they differ.
        let mut add_forms = |base: &[&str], with_pure: bool| {
            let pure = strip_wrappers(base, Wrappers::Pure);
            let all = strip_wrappers(base, Wrappers::All);
            // Both are tails of `base`: the same length is the same text.
            let forms = [
                with_pure.then_some(pure),
                (all.len() != pure.len()).then_some(all),
            ];
            for form in forms.into_iter().flatten() {
                let text = as_written(form);
                if !restrictive.contains(&text) {
                    restrictive.push(text);
                }
            }
        };
        add_forms(words, false);
        let values: Vec<&str> = words
            .iter()
            .enumerate()
            .map(|(i, w)| unquoted.get(i).and_then(Option::as_deref).unwrap_or(w))
            .collect();
        if unquoted.iter().any(Option::is_some) {
            add_forms(&values, true);
        }
        // `git pu${x}sh`, `git pu"$(printf sh)"`: the arguments the shell computes may be any
        // text, and a deny rule that some value would match must not be dodged by writing the
        // command that way. (A computed command name is never allowed already, and asked rather
        // than denied: every deny rule could match some value of `$EDITOR file`.)
        // As written and after quote removal (`env '--' "x$y" …`: the quoted `--` ends env's
        // options only once unquoted).
        let name_computed = [words, values.as_slice()].iter().any(|base| {
            strip_wrappers(base, Wrappers::All)
                .first()
                .is_some_and(|name| computes_name(name))
        });
        let open: Option<Vec<&str>> =
            (!name_computed && opened.iter().any(Option::is_some)).then(|| {
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| opened.get(i).and_then(Option::as_deref).unwrap_or(v))
                    .collect()
            });
        let open_too_long = open.as_ref().is_some_and(|open| {
            open.iter().map(|w| w.chars().count() + 1).sum::<usize>() > MAX_OPEN_FORM_CHARS
        });
        // Words bash may split, where a wrapper reads its options and operands (a duration,
        // `NAME=value`, `-n N`), among `xargs`'s options or among `find`'s own words: split,
        // they move where the command starts (`find . ${x:--exec} rm -rf /x \;`), which no
        // form shows.
        // A computed word that may be read as an option (`-"$x"`, `"${x:--c}"`) counts too.
        let splits_where_read = open.as_deref().is_some_and(|open| {
            let splits = |w: &&str| w.contains(VANISHING) || may_be_option(w);
            let all = strip_wrappers(open, Wrappers::All);
            let launcher = all
                .first()
                .map(|name| name.rsplit('/').next().unwrap_or(name));
            open[..open.len() - all.len()].iter().any(splits)
                || all
                    .first()
                    .is_some_and(|name| name.contains([EXPANDED, VANISHING]))
                || match launcher {
                    Some("xargs") => {
                        let rest = all.get(1..).unwrap_or(&[]);
                        rest[..xargs_options(rest)].iter().any(splits)
                    }
                    // Before the script a shell (or `su -c`, `script -c`, …) runs: a computed
                    // option may be `-c`, and the next word the script.
                    Some(
                        "sh" | "bash" | "dash" | "zsh" | "ksh" | "rbash" | "mksh" | "yash" | "ash"
                        | "su" | "runuser" | "script" | "flock" | "watch",
                    ) => all
                        .iter()
                        .skip(1)
                        .take_while(|w| w.starts_with('-') || may_be_option(w))
                        .any(splits),
                    // Or, inside a command it starts, a word that may be `;` or `+` and end it
                    // early (`-exec true $(echo ';') -exec git push \;`).
                    // A computed word that may be `-exec` matters only with a `;` or `+` to
                    // end a command after it (`find "$d" -name x` is fine).
                    Some("find") => {
                        let own = find_own_words(all);
                        own.iter().any(|w| w.contains(VANISHING))
                            || (own.iter().any(|w| may_be_option(w))
                                && all.iter().any(|w| matches!(*w, ";" | "+")))
                            || spawned_commands(all).iter().flatten().any(|w| {
                                w.contains(VANISHING)
                                    || (!w.is_empty() && w.chars().all(|c| c == EXPANDED))
                            })
                    }
                    _ => false,
                }
        });
        if let Some(open) = open.as_deref().filter(|_| !open_too_long) {
            add_forms(open, true);
        }
        // Brace expansion in the arguments (`git push {--force,origin}`, `--force{,}`): deny
        // and ask rules see the words bash will make. One too large to expand, or mixed with
        // quotes, leaves the part never allowed.
        let mut braces_unseen = false;
        let mut brace_words: Option<Vec<String>> = None;
        // Which words bash brace-expands (most parts have no `{`: no work for them).
        // A word too long to expand in reasonable time (finding a brace's partner is a scan to
        // the word's end) is left unjudged: never allowed.
        braces_unseen |= words
            .iter()
            .any(|w| w.len() > MAX_BRACE_WORD_BYTES && outside_quotes(w).contains('{'));
        let braced: Vec<bool> = words
            .iter()
            .map(|w| {
                w.len() <= MAX_BRACE_WORD_BYTES
                    && w.contains('{')
                    && has_brace_expansion(&outside_quotes(w))
            })
            .collect();
        if braced.contains(&true) {
            let mut budget = MAX_BRACE_WORDS;
            let mut expanded: Vec<String> = Vec::new();
            for (word, &has) in words.iter().zip(&braced) {
                // In an option word (`-{t,E}`; `{-exec,touch}` is fine), expansion would change
                // how `xargs`, `find` and shells read the words: never allowed (deny and ask
                // rules still see it expanded).
                braces_unseen |= has && word.starts_with('-');
                let plain = !word.contains(['\'', '"', '\\', '$', '`']);
                match (has, plain) {
                    (true, true) => match expand_braces(word, &mut budget) {
                        Some(alternatives) => expanded.extend(alternatives),
                        None => braces_unseen = true,
                    },
                    (true, false) => braces_unseen = true,
                    (false, _) => expanded.push((*word).to_owned()),
                }
            }
            let forms: Vec<&str> = expanded.iter().map(String::as_str).collect();
            add_forms(&forms, true);
            brace_words = Some(expanded);
        }
        // Deny and ask rules also see the part with its leading assignments
        // (`Bash(*LD_PRELOAD*)`), and a command named by its path by its file name
        // (`/bin/rm`, `./rm` are `rm`).
        if !assignments.is_empty() {
            let with_assignments = format!("{} {}", assignments.join(" "), restrictive[0]);
            if !restrictive.contains(&with_assignments) {
                restrictive.push(with_assignments);
            }
        }
        for i in 0..restrictive.len() {
            let (name, args) = restrictive[i]
                .split_once(' ')
                .unwrap_or((&restrictive[i], ""));
            if let Some((_, file)) = name.rsplit_once('/')
                && !file.is_empty()
            {
                let form = if args.is_empty() {
                    file.to_owned()
                } else {
                    format!("{file} {args}")
                };
                if !restrictive.contains(&form) {
                    restrictive.push(form);
                }
            }
        }
        // What runs, after brace expansion where there is one (`find . {-exec,rm} x \;`).
        let expanded: Option<Vec<&str>> = brace_words
            .as_ref()
            .map(|words| words.iter().map(String::as_str).collect());
        let runs = strip_wrappers(expanded.as_deref().unwrap_or(&values), Wrappers::All);
        let (inner_script, reads_stdin) = match inner_script(runs) {
            HandedScript::None => (None, false),
            HandedScript::Inline(script) => (Some(script), false),
            HandedScript::Unseen => (None, true),
        };
        // Also with the arguments the shell computes open (`xargs git pu$x`), and with what
        // `xargs` adds after its command (its input: `echo push | xargs git` runs `git push`)
        // as a vanishing slot; a started command whose name is open is judged as computed by
        // the part written from its values.
        // Commands started by commands started by … are built up to `MAX_STARTED_DEPTH` deep
        // (each level makes several forms: `xargs -0 xargs -0 …` doubled per level); deeper,
        // the part is never allowed.
        let (started_depth, _depth) = DepthGuard::enter();
        let started = spawned_commands(runs);
        let too_deep = started_depth >= MAX_STARTED_DEPTH && !started.is_empty();
        let mut spawned: Vec<CommandPart> = if too_deep {
            Vec::new()
        } else {
            started
                .iter()
                .filter_map(|command| CommandPart::new(&[], command, &[], &[]))
                .collect()
        };
        let written = expanded.as_deref().unwrap_or(&values);
        let open_written = open
            .as_deref()
            .filter(|_| !open_too_long && !splits_where_read);
        for (base, from_values) in [(Some(written), true), (open_written, false)] {
            let Some(base) = base.filter(|_| !too_deep) else {
                continue;
            };
            let all = strip_wrappers(base, Wrappers::All);
            let launcher = all
                .first()
                .map(|name| name.rsplit('/').next().unwrap_or(name));
            let mut commands: Vec<(Vec<String>, bool)> = Vec::new();
            let started_here = if from_values {
                started.clone()
            } else {
                spawned_commands(all)
            };
            for command in started_here {
                let (command, changed) = match launcher {
                    Some("xargs") => {
                        commands
                            .extend(xargs_started(all, &command).into_iter().map(|c| (c, true)));
                        continue;
                    }
                    Some("find") => match find_started(all, &command) {
                        Some(forms) => {
                            commands.extend(forms.into_iter().map(|c| (c, true)));
                            continue;
                        }
                        None => (owned(&command), false),
                    },
                    _ => (owned(&command), false),
                };
                commands.push((command, changed));
            }
            // A bare `xargs` is stripped as a wrapper: what is left takes its input.
            if base[..base.len() - all.len()]
                .iter()
                .any(|w| w.rsplit('/').next() == Some("xargs"))
            {
                let mut command = owned(all);
                command.push(VANISHING.to_string());
                commands.push((command, true));
            }
            for (command, changed) in commands {
                if from_values && !changed {
                    continue;
                }
                let words: Vec<&str> = command.iter().map(String::as_str).collect();
                // A name that is input (`xargs -I X X`) or a computed word, or a split-able
                // word where a wrapper reads its own (`timeout ${t:-1 rm -rf} echo`): no rule
                // can say what runs.
                let stripped = strip_wrappers(&words, Wrappers::All);
                let computed = stripped
                    .first()
                    .is_none_or(|name| name.contains([EXPANDED, VANISHING]))
                    || words[..words.len() - stripped.len()]
                        .iter()
                        .any(|w| w.contains(VANISHING));
                spawned.extend(CommandPart::new(&[], &words, &[], &[]).map(|mut part| {
                    part.dynamic_name |= computed;
                    part
                }));
            }
        }
        let evaluates_subscripts = runs.first().is_some_and(|name| {
            SUBSCRIPT_EVALUATING.contains(&name.rsplit('/').next().unwrap_or(name))
        });
        // `printf` evaluates a subscript only in the variable `-v` names (its numbers are read
        // as numbers, not arithmetic), so a format such as `[%s]` is just text.
        let printf = runs
            .first()
            .is_some_and(|name| name.rsplit('/').next() == Some("printf"));
        let writes_variables = assignments
            .iter()
            .chain(words.iter().filter(|w| is_assignment(w)))
            .any(|a| a.contains(['$', '`']))
            || runs.first().is_some_and(|name| {
                WRITES_VARIABLES.contains(name) && (*name != "printf" || runs.contains(&"-v"))
            });
        // A script built from words the shell computes (`eval echo $x`, `sh -c "echo $x"`):
        // their values are read as code again, which no form shows.
        let script_computed = matches!(&inner_script, Some(script) if script.contains([EXPANDED, VANISHING]))
            || open
                .as_deref()
                .filter(|_| !open_too_long)
                .is_some_and(|open| {
                    matches!(
                        self::inner_script(strip_wrappers(open, Wrappers::All)),
                        HandedScript::Inline(script) if script.contains([EXPANDED, VANISHING])
                    )
                });
        let hidden_code = braces_unseen
            || script_computed
            || reads_stdin
            || assignments
                .iter()
                .any(|a| defers_code(a) || sets_code_variable(a))
            || words.iter().any(|w| sets_code_variable(w))
            || (evaluates_subscripts
                && words
                    .iter()
                    .chain(&values)
                    .any(|w| defers_code(w) || (!printf && names_evaluated_subscript(w))))
            || (printf && printf_variable(runs).is_some_and(names_evaluated_subscript));
        let inert = strip_wrappers(words, Wrappers::Inert);
        let xargs_runs = match inert.first() {
            Some(&"xargs") => spawned_commands(inert).into_iter().next(),
            _ => None,
        };
        let (command, reads_arguments) = match &xargs_runs {
            // `xargs [OPTIONS] CMD ...`: CMD with the arguments xargs will read (its options
            // change how they are passed, not what runs).
            Some(runs) => (strip_wrappers(runs, Wrappers::Inert), true),
            None => (inert, false),
        };
        let harmless = assignments.iter().all(|a| {
            a.split_once('=').is_some_and(|(name, value)| {
                HARMLESS_VARIABLES.contains(&name) && !value.contains(['$', '`'])
            })
        });
        let permissive = if command.is_empty() {
            as_written(command)
        } else {
            let mut text = if harmless {
                Vec::new()
            } else {
                assignments.to_vec()
            };
            text.extend(command);
            if reads_arguments {
                text.push("…");
            }
            text.join(" ")
        };
        // The name after every wrapper too: `env {touch,x}`, `exec $CMD` run a computed name.
        let dynamic_name = command.first().is_some_and(|name| computes_name(name))
            || too_deep
            || name_computed
            || open_too_long
            || splits_where_read;
        Some(CommandPart {
            restrictive,
            permissive,
            dynamic_name,
            inner_script,
            hidden_code,
            spawned,
            writes_variables,
            evaluates_names: runs.first().is_some_and(|name| {
                *name == "let"
                    || (matches!(*name, "declare" | "typeset" | "local")
                        && runs.iter().any(|w| w.starts_with('-') && w.contains('i')))
            }),
        })
    }
}

/// A shell assignment word: `NAME=value` or `NAME+=value`, with a valid variable name.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        let name = name.strip_suffix('+').unwrap_or(name);
        name.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// An assignment `env` makes: any `NAME=value` whose name is not empty (`env` takes names a
/// shell would not, `a+=b` sets a variable called `a+`).
fn is_env_assignment(word: &str) -> bool {
    word.find('=').is_some_and(|at| at > 0)
}

/// Runs a `brush-parser` call, turning a panic inside it into a
/// [`SplitError`] (the command is then never allowed). Fuzzing found the
/// parser can panic (see [`has_oversized_fd_number`]); this keeps any other
/// such input from taking the runtime down.
fn guarded<T>(parse: impl FnOnce() -> Result<T, String>) -> Result<T, SplitError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(parse)) {
        Ok(result) => result.map_err(SplitError),
        Err(_) => Err(SplitError("the shell parser failed on this input".into())),
    }
}

/// `brush-parser` 0.4 unwraps the parse of a redirection's descriptor number
/// (`99999999999>file` panics); such commands are refused before parsing.
fn has_oversized_fd_number(command: &str) -> bool {
    let bytes = command.as_bytes();
    let mut run = 0;
    for &b in bytes {
        if b.is_ascii_digit() {
            run += 1;
        } else {
            if run >= 10 && (b == b'<' || b == b'>') {
                return true;
            }
            run = 0;
        }
    }
    false
}

/// `brush-parser` 0.4 can loop forever, allocating, while tokenizing odd
/// here-documents (`<<$(  `, `<<\r>`, runs like `<<<<<`; found by
/// fuzzing). Only well-formed ones are let through to it: `<` runs of one
/// (redirection), two (here-document) or three (here-string) characters;
/// a here-document delimiter that is a plain word, optionally quoted; and a
/// later line that closes it.
fn has_bad_heredoc(command: &str) -> bool {
    let chars: Vec<char> = command.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        // An escaped `<` is a plain character: `\<<<x` is `<` and a here-document `<<x`, not a
        // here-string (counted as one, `\<<<"")`` ` reached the tokenizer and looped for ever).
        if chars[i] == '\\' {
            i += 2;
            continue;
        }
        if chars[i] != '<' {
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '<').count();
        i += run;
        match run {
            1 | 3 => continue,
            2 => {}
            _ => return true,
        }
        let mut j = i;
        if chars.get(j) == Some(&'-') {
            j += 1;
        }
        while chars
            .get(j)
            .is_some_and(|c| c.is_whitespace() && *c != '\n')
        {
            j += 1;
        }
        let start = j;
        while chars
            .get(j)
            .is_some_and(|c| c.is_ascii_alphanumeric() || "_-.'\"\\".contains(*c))
        {
            j += 1;
        }
        let ends_cleanly = chars
            .get(j)
            .is_none_or(|c| c.is_whitespace() || ";&|<>)".contains(*c));
        let delimiter: String = chars[start..j]
            .iter()
            .filter(|c| !"'\"\\".contains(**c))
            .collect();
        if delimiter.is_empty() || !ends_cleanly {
            return true;
        }
        let after: String = chars[j..].iter().collect();
        let closed = after
            .lines()
            .skip(1)
            .any(|line| line.trim_start_matches('\t') == delimiter);
        if !closed {
            return true;
        }
        i = j;
    }
    false
}

/// How deep `(` may nest (quotes ignored, so this over-counts) before a
/// command is refused: `brush-parser` 0.4 backtracks exponentially on
/// deeply nested unclosed parentheses (found by fuzzing; 20 levels take
/// seconds), and real commands stay far below this.
const MAX_PAREN_DEPTH: usize = 8;

fn paren_depth(command: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for c in command.chars() {
        match c {
            '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Characters a plain array subscript may hold: an index, `@`/`*`, a
/// `$name`, arithmetic or pattern characters, but no brackets, braces,
/// parentheses, quotes or backslashes, so nothing nests inside it.
fn plain_subscript_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_@*$#+-^!.,:/ %=~".contains(c)
}

/// Whether a `[` inside a `${…}` expansion opens anything but a plain,
/// closed subscript (`${a[$i]}`, `${a[@]}`, `${x//[^a-z]/}`).
/// `brush-parser` 0.4's word parser backtracks exponentially on nested or
/// unclosed subscripts (found by fuzzing: six unclosed `${k[` take 8 s,
/// `${k[${k[…]}]}` nested six deep 5 s, a 150-byte command 48 s), so such
/// commands are refused before it sees them. Quotes are not tracked, so
/// this may also refuse a quoted string that merely looks like one.
fn has_complex_subscript(command: &str) -> bool {
    let chars: Vec<char> = command.chars().collect();
    let mut open_expansions = 0usize;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '$' if chars.get(i + 1) == Some(&'{') => {
                open_expansions += 1;
                i += 1;
            }
            '}' => open_expansions = open_expansions.saturating_sub(1),
            '[' if open_expansions > 0 => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&c| !plain_subscript_char(c))
                    .map_or(chars.len(), |n| i + 1 + n);
                if chars.get(end) != Some(&']') {
                    return true;
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// How many unquoted, unescaped `[` one word may hold before the command
/// is refused. `brush-parser` 0.4 backtracks exponentially on glob brackets
/// in one word when an expansion, a quote or an extglob follows them (found
/// by fuzzing: `A[A[$4` repeated 16 times, 96 bytes, takes 17 s; `x[!(?])`
/// repeated 16 times takes 40 ms; each further bracket roughly doubles the
/// time). Brackets inside quotes or escaped with `\` parse in linear time,
/// so a quoted regex such as `'[0-9][0-9][0-9]'` is not limited. Every
/// bracket counts, closed or not: a `]` does not stop the backtracking.
const MAX_WORD_BRACKETS: usize = 8;

/// The most unquoted, unescaped `[` in any one word of the command. Words
/// end at unquoted, unescaped whitespace and at `;&|<>`, so `a=[ b[` is one
/// word here (the parser splits at `=` too): this over-counts rather than
/// under-counts what the parser sees.
fn word_brackets(command: &str) -> usize {
    let (mut count, mut most) = (0usize, 0usize);
    let (mut single, mut double, mut escaped) = (false, false, false);
    for c in command.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '[' if !single && !double => count += 1,
            c if !single && !double && (c.is_whitespace() || ";&|<>".contains(c)) => {
                most = most.max(count);
                count = 0;
            }
            _ => {}
        }
    }
    most.max(count)
}

fn split_into(command: &str, depth: usize, parts: &mut Vec<CommandPart>) -> Result<(), SplitError> {
    if depth > MAX_DEPTH {
        return Err(SplitError("command substitutions nest too deeply".into()));
    }
    if has_oversized_fd_number(command) {
        return Err(SplitError(
            "a redirection's file descriptor number is too large".into(),
        ));
    }
    if has_bad_heredoc(command) {
        return Err(SplitError(
            "a here-document is malformed or unterminated".into(),
        ));
    }
    if has_complex_subscript(command) {
        return Err(SplitError(
            "an array subscript inside a parameter expansion is nested, unclosed or not a plain index"
                .into(),
        ));
    }
    if word_brackets(command) > MAX_WORD_BRACKETS {
        return Err(SplitError(format!(
            "a word holds more than {MAX_WORD_BRACKETS} unquoted `[`"
        )));
    }
    if paren_depth(command) > MAX_PAREN_DEPTH {
        return Err(SplitError(format!(
            "parentheses nest deeper than {MAX_PAREN_DEPTH}"
        )));
    }
    let options = parser_options();
    let program = guarded(|| {
        Parser::new(std::io::Cursor::new(command.as_bytes()), &options)
            .parse_program()
            .map_err(|e| e.to_string())
    })?;
    let mut walker = Walker {
        options,
        depth,
        parts,
        arithmetic_names: false,
    };
    for list in &program.complete_commands {
        walker.compound_list(list)?;
    }
    Ok(())
}

struct Walker<'a> {
    options: ParserOptions,
    depth: usize,
    parts: &'a mut Vec<CommandPart>,
    /// The simple command being walked holds an arithmetic expansion that names a variable.
    arithmetic_names: bool,
}

impl Walker<'_> {
    fn compound_list(&mut self, list: &CompoundList) -> Result<(), SplitError> {
        for item in &list.0 {
            self.pipeline(&item.0.first)?;
            for next in &item.0.additional {
                match next {
                    ast::AndOr::And(p) | ast::AndOr::Or(p) => self.pipeline(p)?,
                }
            }
        }
        Ok(())
    }

    fn pipeline(&mut self, pipeline: &Pipeline) -> Result<(), SplitError> {
        for command in &pipeline.seq {
            self.command(command)?;
        }
        Ok(())
    }

    fn command(&mut self, command: &Command) -> Result<(), SplitError> {
        match command {
            Command::Simple(simple) => self.simple(simple),
            Command::Compound(compound, redirects) => {
                if let Some(list) = redirects {
                    for redirect in &list.0 {
                        self.redirect(redirect)?;
                    }
                }
                self.compound(compound)
            }
            Command::Function(def) => {
                self.compound(&def.body.0)?;
                if let Some(list) = &def.body.1 {
                    for redirect in &list.0 {
                        self.redirect(redirect)?;
                    }
                }
                Ok(())
            }
            // `[[ .. ]]` may expand words with substitutions inside an
            // expression tree; rather than walk it, it is refused.
            Command::ExtendedTest(..) => {
                Err(SplitError("`[[ .. ]]` tests are not analysed".into()))
            }
        }
    }

    fn compound(&mut self, compound: &CompoundCommand) -> Result<(), SplitError> {
        match compound {
            CompoundCommand::Arithmetic(_) | CompoundCommand::ArithmeticForClause(_) => {
                Err(SplitError("arithmetic commands are not analysed".into()))
            }
            CompoundCommand::BraceGroup(g) => self.compound_list(&g.list),
            CompoundCommand::Subshell(s) => self.compound_list(&s.list),
            CompoundCommand::ForClause(f) => {
                for value in f.values.iter().flatten() {
                    self.word(&value.value)?;
                }
                self.compound_list(&f.body.list)
            }
            CompoundCommand::CaseClause(c) => {
                self.word(&c.value.value)?;
                for item in &c.cases {
                    for pattern in &item.patterns {
                        self.word(&pattern.value)?;
                    }
                    if let Some(cmd) = &item.cmd {
                        self.compound_list(cmd)?;
                    }
                }
                Ok(())
            }
            CompoundCommand::IfClause(i) => {
                self.compound_list(&i.condition)?;
                self.compound_list(&i.then)?;
                for clause in i.elses.iter().flatten() {
                    if let Some(condition) = &clause.condition {
                        self.compound_list(condition)?;
                    }
                    self.compound_list(&clause.body)?;
                }
                Ok(())
            }
            CompoundCommand::WhileClause(w) | CompoundCommand::UntilClause(w) => {
                self.compound_list(&w.0)?;
                self.compound_list(&w.1.list)
            }
            CompoundCommand::Coprocess(c) => self.command(&c.body),
        }
    }

    fn redirect(&mut self, redirect: &IoRedirect) -> Result<(), SplitError> {
        match redirect {
            IoRedirect::File(_, _, target) => match target {
                IoFileRedirectTarget::Filename(w) | IoFileRedirectTarget::Duplicate(w) => {
                    self.word(&w.value)
                }
                IoFileRedirectTarget::Fd(_) => Ok(()),
                IoFileRedirectTarget::ProcessSubstitution(_, sub) => self.compound_list(&sub.list),
            },
            IoRedirect::HereDocument(_, doc) => {
                // An unquoted delimiter expands `$(..)` in the body; quotes in
                // the body are literal there.
                if doc.requires_expansion
                    && (doc.doc.value.contains('$') || doc.doc.value.contains('`'))
                {
                    let pieces = guarded(|| {
                        word::parse_heredoc(&doc.doc.value, &self.options)
                            .map_err(|e| e.to_string())
                    })?;
                    self.pieces(&doc.doc.value, &pieces)?;
                }
                Ok(())
            }
            IoRedirect::HereString(_, w) | IoRedirect::OutputAndError(w, _) => self.word(&w.value),
        }
    }

    /// A word's value after quote removal, where it differs from the text and the shell does
    /// not compute it (no expansion or substitution in it); and, where the shell computes some
    /// of it, its value with each expansion or substitution as [`EXPANDED`]. `None` where not.
    fn values(&self, text: &str) -> (Option<String>, Option<String>) {
        if !text.contains(['\'', '"', '\\', '$', '`', '~']) {
            return (None, None);
        }
        let Ok(pieces) = guarded(|| word::parse(text, &self.options).map_err(|e| e.to_string()))
        else {
            return (None, None);
        };
        let mut value = String::new();
        if literal_pieces(&pieces, &mut value) {
            return (Some(value), None);
        }
        // Computed in part (a slot), or only a `~` kept as written (`~/'.ssh'`: its value
        // is `~/.ssh`).
        let mut opened = String::new();
        if open_pieces(text, &pieces, false, &mut opened) {
            (None, Some(opened))
        } else {
            (Some(opened), None)
        }
    }

    /// Finds the command substitutions inside one word and splits them too.
    fn word(&mut self, text: &str) -> Result<(), SplitError> {
        // Fast path: a word without `$` or a backquote cannot substitute.
        if !text.contains('$') && !text.contains('`') {
            return Ok(());
        }
        let pieces = guarded(|| word::parse(text, &self.options).map_err(|e| e.to_string()))?;
        self.pieces(text, &pieces)
    }

    fn pieces(&mut self, text: &str, pieces: &[WordPieceWithSource]) -> Result<(), SplitError> {
        for piece in pieces {
            match &piece.piece {
                WordPiece::CommandSubstitution(inner)
                | WordPiece::BackquotedCommandSubstitution(inner) => {
                    split_into(inner, self.depth + 1, self.parts)?;
                }
                WordPiece::DoubleQuotedSequence(inner)
                | WordPiece::GettextDoubleQuotedSequence(inner) => {
                    self.pieces(text, inner)?;
                }
                WordPiece::ParameterExpansion(_) | WordPiece::ArithmeticExpression(_) => {
                    // Defaults such as `${x:-$(cmd)}` nest whole words; rather
                    // than walk every expansion form, refuse any that hides a
                    // substitution.
                    let source = text.get(piece.start_index..piece.end_index).unwrap_or(text);
                    if evaluates_a_variable_as_code(source) {
                        // `${a[x]}`, `${a[$i]}`, `${!x}`: bash evaluates the value of `x` as an
                        // arithmetic expression or a name, running any `$(…)` a subscript in it
                        // holds; the value may have been built earlier on the line.
                        return Err(SplitError(
                            "an array subscript or indirect expansion that evaluates a variable \
                             is not analysed"
                                .into(),
                        ));
                    }
                    if matches!(piece.piece, WordPiece::ArithmeticExpression(_))
                        && source.contains(|c: char| c.is_ascii_alphabetic() || c == '_')
                    {
                        self.arithmetic_names = true;
                    }
                    if source.contains("@P}") {
                        // `${x@P}` expands `x` as a prompt, running the substitutions in its
                        // value: code no rule sees.
                        return Err(SplitError(
                            "a prompt expansion (`${…@P}`) runs code that is not analysed".into(),
                        ));
                    }
                    if source.contains("$(")
                        || source.contains('`')
                        || source.contains("<(")
                        || source.contains(">(")
                    {
                        return Err(SplitError(
                            "a command substitution inside a parameter expansion is not analysed"
                                .into(),
                        ));
                    }
                }
                WordPiece::Text(_)
                | WordPiece::SingleQuotedText(_)
                | WordPiece::AnsiCQuotedText(_)
                | WordPiece::TildeExpansion(_)
                | WordPiece::EscapeSequence(_) => {}
            }
        }
        Ok(())
    }

    fn simple(&mut self, simple: &ast::SimpleCommand) -> Result<(), SplitError> {
        let mut words: Vec<&str> = Vec::new();
        let mut rendered_prefix: Vec<String> = Vec::new();
        for item in simple.prefix.iter().flat_map(|p| p.0.iter()) {
            match item {
                CommandPrefixOrSuffixItem::AssignmentWord(_, w) => {
                    self.word(&w.value)?;
                    rendered_prefix.push(w.value.clone());
                }
                other => self.item(other, &mut words)?,
            }
        }
        if let Some(name) = &simple.word_or_name {
            self.word(&name.value)?;
            words.push(&name.value);
        }
        for item in simple.suffix.iter().flat_map(|s| s.0.iter()) {
            self.item(item, &mut words)?;
        }
        let (unquoted, opened): (Vec<_>, Vec<_>) = words.iter().map(|w| self.values(w)).unzip();
        let assignments: Vec<&str> = rendered_prefix.iter().map(String::as_str).collect();
        if let Some(mut part) = CommandPart::new(&assignments, &words, &unquoted, &opened) {
            part.evaluates_names |= std::mem::take(&mut self.arithmetic_names);
            self.parts.push(part);
        }
        Ok(())
    }

    fn item<'w>(
        &mut self,
        item: &'w CommandPrefixOrSuffixItem,
        words: &mut Vec<&'w str>,
    ) -> Result<(), SplitError> {
        match item {
            CommandPrefixOrSuffixItem::Word(w) => {
                self.word(&w.value)?;
                words.push(&w.value);
            }
            CommandPrefixOrSuffixItem::AssignmentWord(_, w) => {
                // After the command name an assignment is an ordinary argument.
                self.word(&w.value)?;
                words.push(&w.value);
            }
            CommandPrefixOrSuffixItem::IoRedirect(r) => {
                // Redirection targets are searched for substitutions but are
                // not part of the matched text (the words are).
                self.redirect(r)?;
            }
            CommandPrefixOrSuffixItem::ProcessSubstitution(_, sub) => {
                self.compound_list(&sub.list)?;
                words.push("<(..)");
            }
        }
        Ok(())
    }
}

/// Which wrappers [`strip_wrappers`] removes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wrappers {
    /// Those that change nothing about what runs or its arguments: `timeout`, `time`, `nice`,
    /// `nohup`, `stdbuf`, `command`, `builtin`, `noglob`.
    Inert,
    /// Those and a bare `xargs` (the text [`split_command`] returns).
    Pure,
    /// Those and `env` (with its assignments), `exec` and `sudo`: for deny and ask rules,
    /// which must see the command they run.
    All,
}

/// Appends the literal value of word pieces to `value`; false when a piece is computed by the
/// shell (an expansion or substitution), so the word has no value before it runs.
fn literal_pieces(pieces: &[WordPieceWithSource], value: &mut String) -> bool {
    pieces.iter().all(|piece| match &piece.piece {
        WordPiece::Text(text) | WordPiece::SingleQuotedText(text) => {
            value.push_str(text);
            true
        }
        WordPiece::EscapeSequence(escaped) => {
            value.push_str(escaped.strip_prefix('\\').unwrap_or(escaped));
            true
        }
        WordPiece::DoubleQuotedSequence(inner) | WordPiece::GettextDoubleQuotedSequence(inner) => {
            literal_pieces(inner, value)
        }
        WordPiece::AnsiCQuotedText(text) => decode_ansi_c(text).is_some_and(|decoded| {
            value.push_str(&decoded);
            true
        }),
        WordPiece::TildeExpansion(_)
        | WordPiece::ParameterExpansion(_)
        | WordPiece::CommandSubstitution(_)
        | WordPiece::BackquotedCommandSubstitution(_)
        | WordPiece::ArithmeticExpression(_) => false,
    })
}

/// Pushes the value of `pieces` onto `value` with a slot for each expansion or substitution:
/// [`VANISHING`] where bash splits its value into words (unquoted, or `"$@"` and
/// `"${name[@]}"`), which may also drop it, else [`EXPANDED`]; a plain `~` stays as written, as
/// deny rules name it (`~/.ssh`). Whether there was one.
fn open_pieces(
    text: &str,
    pieces: &[WordPieceWithSource],
    quoted: bool,
    value: &mut String,
) -> bool {
    let mut opened = false;
    let slot = |value: &mut String, splits: bool| {
        // Adjacent slots are one: `$a$b` may be any text, as `$a` may.
        match value.pop() {
            Some(EXPANDED | VANISHING) => {}
            Some(other) => value.push(other),
            None => {}
        }
        value.push(if splits { VANISHING } else { EXPANDED });
    };
    for piece in pieces {
        let source = text.get(piece.start_index..piece.end_index).unwrap_or("");
        match &piece.piece {
            WordPiece::Text(literal) | WordPiece::SingleQuotedText(literal) => {
                value.push_str(literal);
            }
            WordPiece::EscapeSequence(escaped) => {
                value.push_str(escaped.strip_prefix('\\').unwrap_or(escaped));
            }
            WordPiece::DoubleQuotedSequence(inner)
            | WordPiece::GettextDoubleQuotedSequence(inner) => {
                opened |= open_pieces(text, inner, true, value);
            }
            WordPiece::AnsiCQuotedText(body) => match decode_ansi_c(body) {
                Some(decoded) => value.push_str(&decoded),
                None => {
                    slot(value, false);
                    opened = true;
                }
            },
            // `~` is the home folder, as deny rules name it (`~/.ssh`); `~+`, `~-`, `~2` and
            // `~user` are other folders (`$PWD`, `$OLDPWD`, the stack, a user's home).
            WordPiece::TildeExpansion(_) if source == "~" => value.push('~'),
            WordPiece::TildeExpansion(_) => {
                slot(value, false);
                opened = true;
            }
            WordPiece::ParameterExpansion(_)
            | WordPiece::CommandSubstitution(_)
            | WordPiece::BackquotedCommandSubstitution(_)
            | WordPiece::ArithmeticExpression(_) => {
                let every_word = source == "$@"
                    || source.starts_with("${@")
                    || (source.starts_with("${") && source.contains("[@]"))
                    || (source.starts_with("${!") && source.ends_with("@}"));
                slot(value, !quoted || every_word);
                opened = true;
            }
        }
    }
    opened
}

/// The value of an ANSI-C quoted `$'…'` body, as bash decodes it (`\n`, `\t`, `\xHH`, octal
/// `\NNN`, `\uHHHH`, `\UHHHHHHHH`, `\cX`, …; an unknown escape stays as written). `None` for a
/// code that is not a character (the word then has no value a rule can see).
fn decode_ansi_c(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    let number = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, radix: u32, max: usize| {
        let mut digits = String::new();
        while digits.len() < max
            && let Some(&c) = chars.peek()
            && c.is_digit(radix)
        {
            digits.push(c);
            chars.next();
        }
        (!digits.is_empty())
            .then(|| u32::from_str_radix(&digits, radix).ok())
            .flatten()
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(escape) = chars.next() else {
            out.push('\\');
            break;
        };
        let decoded = match escape {
            'a' => '\u{7}',
            'b' => '\u{8}',
            'e' | 'E' => '\u{1b}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'v' => '\u{b}',
            '\\' | '\'' | '"' | '?' => escape,
            '0'..='7' => {
                let mut code = escape.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            code = code * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                char::from_u32(code & 0xff)?
            }
            'x' => match number(&mut chars, 16, 2) {
                Some(code) => char::from_u32(code)?,
                None => {
                    out.push_str("\\x");
                    continue;
                }
            },
            'u' | 'U' => {
                let max = if escape == 'u' { 4 } else { 8 };
                match number(&mut chars, 16, max) {
                    Some(code) => char::from_u32(code)?,
                    None => {
                        out.push('\\');
                        out.push(escape);
                        continue;
                    }
                }
            }
            'c' => {
                let control = chars.next()?;
                char::from_u32(u32::from(control.to_ascii_uppercase()) ^ 0x40)?
            }
            other => {
                out.push('\\');
                other
            }
        };
        if decoded == '\0' {
            // Bash ends the quoted text at a NUL (`$'--force\0x'` is `--force`).
            break;
        }
        out.push(decoded);
    }
    Some(out)
}

/// The options of a wrapper that take a value: their letters and long names.
fn value_options(wrapper: &str) -> (&'static str, &'static [&'static str]) {
    match wrapper {
        "timeout" => ("sk", &["signal", "kill-after"]),
        // GNU time (`/usr/bin/time -o FILE -f FMT CMD`; the shell keyword takes only `-p`).
        "time" => ("of", &["output", "format"]),
        "env" => ("uCSa", &["unset", "chdir", "split-string", "argv0"]),
        "exec" => ("a", &[]),
        "sudo" => (
            "ughpCDrtTURac",
            &[
                "user",
                "group",
                "host",
                "prompt",
                "close-from",
                "chdir",
                "role",
                "type",
                "command-timeout",
                "other-user",
                "chroot",
                "auth-type",
                "login-class",
            ],
        ),
        "doas" => ("uC", &[]),
        "nice" => ("n", &["adjustment"]),
        "stdbuf" => ("ioe", &["input", "output", "error"]),
        "ionice" => ("cnpPu", &["class", "classdata", "pid", "pgid", "uid"]),
        "runuser" | "su" => (
            "ugGws",
            &[
                "user",
                "group",
                "supp-group",
                "whitelist-environment",
                "shell",
            ],
        ),
        "script" => (
            "EIOBTmo",
            &[
                "echo",
                "log-in",
                "log-out",
                "log-io",
                "log-timing",
                "logging-format",
                "output-limit",
            ],
        ),
        "flock" => ("wE", &["timeout", "wait", "conflict-exit-code"]),
        "chroot" => ("", &["userspec", "groups"]),
        _ => ("", &[]),
    }
}

/// Whether an option word of a wrapper takes the next word as its value: a long option (or an
/// unambiguous prefix of one, as getopt allows: `--sig`) that takes a value and has no `=`, or a
/// cluster (`-iu`) whose first value-taking letter ends it (else the value is attached).
fn option_takes_value(wrapper: &str, option: &str) -> bool {
    let (letters, longs) = value_options(wrapper);
    if let Some(long) = option.strip_prefix("--") {
        return !long.is_empty()
            && !long.contains('=')
            && longs.iter().any(|name| name.starts_with(long));
    }
    let Some(cluster) = option.strip_prefix('-') else {
        return false;
    };
    cluster
        .char_indices()
        .find(|(_, c)| letters.contains(*c))
        .is_some_and(|(at, c)| at + c.len_utf8() == cluster.len())
}

/// Whether an option word of `env` is its split-string option (`-S`, in a cluster, or a prefix
/// of `--split-string`).
fn is_split_string(option: &str) -> bool {
    if let Some(long) = option.strip_prefix("--") {
        let name = long.split_once('=').map_or(long, |(name, _)| name);
        return name.len() >= 2 && "split-string".starts_with(name);
    }
    option.strip_prefix('-').is_some_and(|cluster| {
        cluster
            .chars()
            .find(|c| "uCS".contains(*c))
            .is_some_and(|c| c == 'S')
    })
}

/// Positional words a wrapper takes before the command it runs (`taskset MASK CMD`, `chroot
/// DIR CMD`, `flock FILE CMD`; `timeout`'s duration is handled apart).
fn wrapper_operands(wrapper: &str) -> usize {
    match wrapper {
        "taskset" | "chroot" | "flock" => 1,
        _ => 0,
    }
}

/// Whether `runuser`'s options (values included, as written) hold `-u USER` / `--user`: read as
/// getopt reads them, so a value that holds a `u` (`-s/usr/bin/bash`, `-g users`) is not one.
fn runuser_names_user(options: &[&str]) -> bool {
    let (letters, _) = value_options("runuser");
    let mut at = 0;
    while let Some(word) = options.get(at) {
        at += 1;
        if let Some(long) = word.strip_prefix("--") {
            let name = long.split_once('=').map_or(long, |(n, _)| n);
            if !name.is_empty() && "user".starts_with(name) {
                return true;
            }
            if option_takes_value("runuser", word) {
                at += 1;
            }
            continue;
        }
        let Some(cluster) = word.strip_prefix('-') else {
            continue;
        };
        if let Some((i, letter)) = cluster.char_indices().find(|&(_, l)| letters.contains(l)) {
            if letter == 'u' {
                return true;
            }
            if cluster[i + letter.len_utf8()..].is_empty() {
                at += 1;
            }
        }
    }
    false
}

/// Strips wrapper commands (and their options) from the front of a command.
/// Returns an empty slice when nothing but wrappers is left.
fn strip_wrappers<'w>(mut words: &'w [&'w str], which: Wrappers) -> &'w [&'w str] {
    loop {
        let Some((&first, rest)) = words.split_first() else {
            return words;
        };
        // A wrapper named by its path (`/usr/bin/env`) is the same wrapper.
        let name = first.rsplit('/').next().unwrap_or(first);
        let wrapper = match name {
            "timeout" | "time" | "nice" | "nohup" | "stdbuf" | "command" | "builtin" | "noglob" => {
                name
            }
            // Only a bare `xargs` is a pure wrapper: its options change what runs.
            "xargs"
                if which != Wrappers::Inert
                    && rest.first().is_some_and(|w| !w.starts_with('-')) =>
            {
                name
            }
            // They run the command they are given, as someone else, elsewhere or later.
            "env" | "exec" | "sudo" | "doas" | "setsid" | "unbuffer" | "taskset" | "ionice"
            | "chroot" | "flock" | "runuser" | "busybox"
                if which == Wrappers::All =>
            {
                name
            }
            _ => return words,
        };
        if wrapper == "time"
            && which != Wrappers::All
            && rest
                .iter()
                .take_while(|w| w.starts_with('-') && **w != "--")
                .any(|o| {
                    !matches!(
                        *o,
                        "-p" | "-v" | "-q" | "--portability" | "--verbose" | "--quiet"
                    )
                })
        {
            // GNU time's `-o FILE` / `-a` / `-f FORMAT` write a file of the caller's choosing:
            // not an inert wrapper for allow rules (deny and ask rules still see the command).
            return words;
        }
        let mut rest = rest;
        while let Some((&option, after)) = rest.split_first() {
            if option == "--" {
                rest = after;
                break;
            }
            if option == "-" && wrapper == "env" {
                // `env -`: start from an empty environment.
                rest = after;
                continue;
            }
            let runs_shell_command = matches!(wrapper, "flock" | "runuser")
                && (option == "--command"
                    || option.starts_with("--command=")
                    || (!option.starts_with("--") && option.ends_with('c')));
            if runs_shell_command {
                // `flock FILE -c CMD`, `runuser -c CMD USER`: a shell command line, judged as
                // the script ([`inner_script`]); the part stays the wrapper.
                return words;
            }
            if wrapper == "env" && option.starts_with('-') && is_split_string(option) {
                // `env -S STRING`: what runs is in the string ([`inner_script`]); the part
                // stays `env …`.
                return words;
            }
            if !option.starts_with('-') || option == "-" || wrapper == "xargs" {
                break;
            }
            if wrapper == "command" && (option.contains('v') || option.contains('V')) {
                // `command -v NAME` prints what NAME is; it runs nothing.
                return words;
            }
            rest = if option_takes_value(wrapper, option) {
                after.get(1..).unwrap_or(&[])
            } else {
                after
            };
        }
        if wrapper == "timeout" {
            // The duration argument.
            rest = rest.get(1..).unwrap_or(&[]);
        }
        rest = rest.get(wrapper_operands(wrapper)..).unwrap_or(&[]);
        if matches!(wrapper, "flock" | "runuser")
            && rest
                .first()
                .is_some_and(|w| *w == "-c" || w.starts_with("--command"))
        {
            return words;
        }
        // `runuser USER -c CMD`: getopt takes options after the user too, and after `--` the
        // user's shell gets `-c CMD`. The command line is judged as the script. (With `-u USER`
        // the words after the user are a command of its own, judged as such.)
        if wrapper == "runuser"
            && !runuser_names_user(&words[1..words.len() - rest.len()])
            && last_command_option(wrapper, rest).is_some()
        {
            return words;
        }
        if matches!(wrapper, "env" | "sudo") {
            // `env NAME=value ... CMD`, `sudo NAME=value ... CMD`.
            while rest.first().is_some_and(|w| is_env_assignment(w)) {
                rest = &rest[1..];
            }
        }
        if rest.is_empty() {
            return rest;
        }
        words = rest;
    }
}

/// Stands, in a form deny and ask rules see, for the value of an expansion or substitution
/// inside a word (`git pu${x}sh`): the shell computes it, so it may be any text. A private-use
/// character: one written in a command is read as a wildcard too, which only makes deny and
/// ask rules match more.
pub(crate) const EXPANDED: char = '\u{e000}';

/// As [`EXPANDED`], for an expansion bash splits into words (unquoted, `"$@"`): it may also
/// vanish, its space with it (an empty `$x` runs `git push`), as the arguments `xargs` adds
/// after its command may, and as words it may be read as a wrapper's or launcher's own
/// options (`timeout ${t:-1 rm -rf /x} git status`), so a part with one there is never allowed.
pub(crate) const VANISHING: char = '\u{e001}';

/// Open forms longer than this (in characters) are not judged slot by slot: the part is never
/// allowed instead (see [`CommandPart::dynamic_name`]).
pub(crate) const MAX_OPEN_FORM_CHARS: usize = 8 << 10;

/// Whether some text a form holding [`EXPANDED`] and [`VANISHING`] slots could become matches
/// the specifier `spec` (normalised, `*` any run of characters, a trailing ` *` also matching
/// nothing): how deny and ask rules judge arguments the shell computes. `git pu${x}sh` matches
/// `git push *` (with `x` empty), as does `git pu$x` (with `x` = `sh`). A specifier that does
/// not name its command (`*LD_PRELOAD*`, `* --force*`) is not judged this way: some value of
/// any expansion would match it, and `echo $HOME` would be denied by it.
pub(crate) fn may_match(spec: &str, form: &str) -> bool {
    /// Past this many states the question is not worked out: judged a match (a form is at
    /// most [`MAX_OPEN_FORM_CHARS`] long, so only a specifier of thousands of characters gets
    /// here).
    const MAX_STATES: usize = 1 << 24;
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Char(char),
        Any,
        /// Any text, or nothing together with the space before it.
        Vanishing,
    }
    if spec.starts_with('*') {
        return false;
    }
    let form: Vec<Token> = form
        .chars()
        .map(|c| match c {
            EXPANDED => Token::Any,
            VANISHING => Token::Vanishing,
            c => Token::Char(c),
        })
        .collect();
    // The specifier's own `*` is its wildcard; a literal `*` cannot be written in one.
    let (body, boundary) = match spec.strip_suffix(" *") {
        Some(body) => (body, true),
        None => (spec, false),
    };
    let body: Vec<Token> = body
        .chars()
        .map(|c| if c == '*' { Token::Any } else { Token::Char(c) })
        .collect();
    // Most rules name another command: their literal starts differ.
    let differs = body
        .iter()
        .zip(&form)
        .take_while(|(a, b)| matches!((a, b), (Token::Char(_), Token::Char(_))))
        .any(|(a, b)| a != b);
    if differs {
        return false;
    }
    let open = |t: Option<&Token>| matches!(t, Some(Token::Any | Token::Vanishing));
    // Whether the two token strings have a text in common: a walk over pairs of positions,
    // where a slot may match nothing (a move on its own side) or any one character of the
    // other side (staying put), and a vanishing one may be passed over with its space.
    let overlap = |pattern: &[Token]| -> bool {
        let (n, m) = (pattern.len(), form.len());
        let states = (n + 1).saturating_mul(m + 1);
        if states > MAX_STATES {
            return true;
        }
        let mut seen = vec![false; states];
        let mut todo = vec![(0usize, 0usize)];
        while let Some((i, j)) = todo.pop() {
            let at = i * (m + 1) + j;
            if seen[at] {
                continue;
            }
            seen[at] = true;
            if i == n && j == m {
                return true;
            }
            let (a, b) = (pattern.get(i), form.get(j));
            if open(a) {
                todo.push((i + 1, j));
            }
            if open(b) {
                todo.push((i, j + 1));
            }
            if b == Some(&Token::Char(' ')) && form.get(j + 1) == Some(&Token::Vanishing) {
                todo.push((i, j + 2));
            }
            match (a, b) {
                (Some(Token::Char(x)), Some(Token::Char(y))) if x == y => todo.push((i + 1, j + 1)),
                (Some(Token::Char(_)), b) if open(b) => todo.push((i + 1, j)),
                (a, Some(Token::Char(_))) if open(a) => todo.push((i, j + 1)),
                _ => {}
            }
        }
        false
    };
    overlap(&body)
        || (boundary && {
            let mut spaced = body;
            spaced.extend([Token::Char(' '), Token::Any]);
            overlap(&spaced)
        })
}

/// One compiled Bash specifier.
#[derive(Debug, Clone)]
pub(crate) enum BashPattern {
    /// No `*`: the part must equal this text.
    Exact(String),
    /// With `*`: an anchored regular expression.
    Wildcard(String),
}

impl BashPattern {
    /// Compiles a normalised specifier (`:*` already rewritten).
    pub(crate) fn new(spec: &str) -> Self {
        if !spec.contains('*') {
            return BashPattern::Exact(spec.to_string());
        }
        let (body, boundary) = match spec.strip_suffix(" *") {
            Some(body) => (body, true),
            None => (spec, false),
        };
        let mut re = String::from("(?s)^");
        for (i, literal) in body.split('*').enumerate() {
            if i > 0 {
                re.push_str(".*");
            }
            re.push_str(&regex::escape(literal));
        }
        if boundary {
            re.push_str("(?: .*)?");
        }
        re.push('$');
        BashPattern::Wildcard(re)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn split(s: &str) -> Vec<String> {
        split_command(s).unwrap()
    }

    #[test]
    fn a_form_with_open_slots_matches_a_specifier_some_value_would_match() {
        let open = |text: &str| {
            text.replace('@', &EXPANDED.to_string())
                .replace('%', &VANISHING.to_string())
        };
        for (spec, form, matches) in [
            ("git push *", "git pu@sh origin", true),
            ("git push *", "git pu@", true),
            ("git push *", "git pu@sh", true),
            ("git push *", "git pull@ origin", false),
            ("git push *", "@", true),
            ("git push", "git @", true),
            ("git push", "git push@x", false),
            ("rm -rf *", "echo @", false),
            ("git push --force*", "git push @", true),
            ("ls *", "lsof@", false),
            ("ls *", "ls@", true),
            ("a*b*c", "@x@", true),
            ("a*b", "c@", false),
            ("a*b", "@a", false),
            ("a*b*c", "a@x@c", true),
            ("cat ~/.ssh/*", "cat notes-@.txt", false),
            // A vanishing slot may take its space with it; an open one may not.
            ("git push", "git push %", true),
            ("git push", "git push @", false),
            ("rm -rf /", "rm % -rf /", true),
            ("rm -rf /", "rm % -rf", false),
            ("git push *", "git %", true),
            // Specifiers that do not name their command are not judged through slots.
            ("*LD_PRELOAD*", "echo @", false),
            ("* --force*", "git push %", false),
        ] {
            assert_eq!(may_match(spec, &open(form)), matches, "{spec} ~ {form}");
        }
    }

    /// A long word of braces, or many `{}` under a long starting point, is decided quickly.
    #[test]
    fn long_brace_words_and_many_find_holes_stay_cheap() {
        let braces = format!(
            "find {} -exec echo {} \\;",
            "{".repeat(2000),
            "{}".repeat(2000)
        );
        let started = std::time::Instant::now();
        // Each `{}` became a bare slot (the starting point is long): no word of millions of
        // braces is made.
        let parts = split_parts(&braces).unwrap();
        let started_words = parts
            .iter()
            .flat_map(|p| &p.spawned)
            .flat_map(|p| &p.restrictive);
        assert!(started_words.clone().count() > 0);
        assert!(started_words.clone().all(|form| form.len() < 64 << 10));
        let long_start = format!(
            "find {} -exec echo {} \\;",
            "a".repeat(30_000),
            "{}".repeat(1000)
        );
        assert!(split_parts(&long_start).is_ok());
        // Hours before (a brace scan over a word of 4 million characters); well under a second
        // in a release build. A bound against the blow-up, not a timing target.
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn words_the_shell_computes_are_seen_with_open_slots() {
        let forms = |command: &str| -> Vec<String> {
            split_parts(command)
                .unwrap()
                .into_iter()
                .flat_map(|p| p.restrictive)
                .collect()
        };
        let slot = EXPANDED.to_string();
        // Unquoted, bash splits the value (the slot may vanish); quoted, it does not.
        assert!(forms("git pu${x}sh origin").contains(&format!("git pu{VANISHING}sh origin")));
        assert!(forms("git \"a$b$(c)\"d").contains(&format!("git a{slot}d")));
        assert!(forms("cat ~/x$y").contains(&format!("cat ~/x{VANISHING}")));
        // Nothing computed, or a computed name: no such form.
        let open = |f: &String| f.contains([EXPANDED, VANISHING]);
        assert!(!forms("git push 'x'").iter().any(open));
        assert!(!forms("$EDITOR x$y").iter().any(open));
        // A whole unquoted word vanishes when empty; quoted, it is an empty word.
        assert!(forms("git push $x").contains(&format!("git push {VANISHING}")));
        assert!(forms("git push \"$x\"").contains(&format!("git push {slot}")));
        // `~` is home as written; `~+` is another folder.
        assert!(forms("rm ~+/x").contains(&format!("rm {slot}/x")));
    }

    /// A guard of its own, so the overrunning parses a test leaves behind
    /// never count against the one every other test shares.
    fn private_guard(deadline_ms: u64, max_overrunning: usize) -> &'static ParseGuard {
        Box::leak(Box::new(ParseGuard::new(
            Duration::from_millis(deadline_ms),
            max_overrunning,
        )))
    }

    #[test]
    fn a_real_parse_past_its_deadline_is_refused() {
        // None of the refused shapes: this reaches the parser, which backtracks exponentially
        // on it (release build: 5 ms at 12 repeats, 112 ms at 16, 22 s at 20).
        let slow = "@($(\"))#".repeat(16);
        let refused = private_guard(20, 4).run(&slow).unwrap_err();
        assert!(
            refused.0.contains("did not finish within 20 ms"),
            "{refused}"
        );
    }

    /// Parses run at most `MAX_PARSING` at once, and a caller's deadline starts when its own
    /// parse does: many callers at once all get their answer (each started a thread of its own,
    /// and on 2 cores allowed commands missed the deadline).
    #[test]
    fn many_callers_at_once_parse_a_few_at_a_time_within_their_deadlines() {
        let guard = private_guard(1_000, 2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..16)
            .map(|_| {
                let (running, most) = (Arc::clone(&running), Arc::clone(&most));
                std::thread::spawn(move || {
                    guard.within_deadline(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(100));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(())
                    })
                })
            })
            .collect();
        for caller in callers {
            caller.join().unwrap().unwrap();
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= MAX_PARSING && most > 1, "{most} parses ran at once");
    }

    #[test]
    fn overrunning_parses_are_capped_until_they_end() {
        let guard = private_guard(1_000, 1);
        let (release, released) = mpsc::channel::<()>();
        let refused: Result<(), _> = guard.within_deadline(move || {
            let _ = released.recv();
            Ok(())
        });
        assert!(
            refused
                .unwrap_err()
                .0
                .contains("did not finish within 1000 ms"),
            "an overrunning parse is refused"
        );
        assert_eq!(guard.overrunning.load(Ordering::Acquire), 1);
        // While it runs on, commands that need the parser are refused at once…
        let busy = guard.run("echo $(date) && ls").unwrap_err();
        assert!(busy.0.contains("still being parsed"), "{busy}");
        // …and once it ends, they are parsed again.
        release.send(()).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while guard.overrunning.load(Ordering::Acquire) > 0 {
            assert!(
                std::time::Instant::now() < until,
                "the overrunning parse never ended"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let parts: Vec<String> = guard
            .run("echo $(date) && ls")
            .unwrap()
            .into_iter()
            .map(|p| p.permissive)
            .collect();
        assert_eq!(parts, ["date", "echo $(date)", "ls"]);
    }

    #[test]
    fn a_parse_that_finishes_in_time_is_answered_and_not_counted() {
        let guard = private_guard(5_000, 1);
        let answer = guard.within_deadline(|| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(7)
        });
        assert_eq!(answer.unwrap(), 7);
        let failed: Result<(), _> = guard.within_deadline(|| Err(SplitError("bad".into())));
        assert_eq!(failed.unwrap_err().0, "bad");
        assert_eq!(guard.overrunning.load(Ordering::Acquire), 0);
    }

    #[test]
    fn splits_operators_and_substitutions() {
        assert_eq!(split("git status; rm -rf /"), ["git status", "rm -rf /"]);
        assert_eq!(
            split("a && b || c | d |& e & f\ng"),
            ["a", "b", "c", "d", "e", "f", "g"]
        );
        assert_eq!(
            split("echo \"$(rm -rf /)\""),
            ["rm -rf /", "echo \"$(rm -rf /)\""]
        );
        assert_eq!(split("echo `id`"), ["id", "echo `id`"]);
        assert_eq!(
            split("diff <(ls a) <(ls b)"),
            ["ls a", "ls b", "diff <(..) <(..)"]
        );
        assert_eq!(split("(cd x && make) > log"), ["cd x", "make"]);
        assert_eq!(split("for f in $(ls); do rm $f; done"), ["ls", "rm $f"]);
        assert_eq!(
            split("if true; then echo y; else rm z; fi"),
            ["true", "echo y", "rm z"]
        );
        assert_eq!(split("echo 'a; rm -rf /'"), ["echo 'a; rm -rf /'"]);
        assert_eq!(split("cat <<EOF\nit's $(whoami)\nEOF\n"), ["whoami", "cat"]);
        assert_eq!(split("cat <<'EOF'\n$(whoami)\nEOF\n"), ["cat"]);
    }

    #[test]
    fn fast_path_agrees_with_the_parser() {
        for command in [
            "git status",
            "  cargo   test -p ecs ",
            "FOO=1 BAR=x cargo build",
            "FOO=1",
            "timeout 30 nice -n 5 make -j8",
            "ls -la ~/src",
            "nohup",
            "echo a=b c",
            "",
        ] {
            let fast = plain_simple_command(command).unwrap();
            let mut parsed = Vec::new();
            split_into(command, 0, &mut parsed).unwrap();
            assert_eq!(fast.into_iter().collect::<Vec<_>>(), parsed, "{command:?}");
        }
        assert!(plain_simple_command("if true").is_none());
        assert!(plain_simple_command("a; b").is_none());
        assert!(plain_simple_command("echo *").is_none());
    }

    proptest::proptest! {
        #[test]
        fn fast_path_matches_parser_on_plain_text(command in "[a-z0-9_=./:~ -]{0,40}") {
            if let Some(fast) = plain_simple_command(&command) {
                let mut parsed = Vec::new();
                if split_into(&command, 0, &mut parsed).is_ok() {
                    proptest::prop_assert_eq!(fast.into_iter().collect::<Vec<_>>(), parsed);
                }
            }
        }
    }

    #[test]
    fn strips_wrappers_and_env() {
        assert_eq!(split("FOO=1 BAR=2 cargo test"), ["cargo test"]);
        assert_eq!(
            split("timeout -s KILL 30 nice -n 5 cargo build"),
            ["cargo build"]
        );
        assert_eq!(split("nohup stdbuf -oL make -j4"), ["make -j4"]);
        assert_eq!(split("time cargo bench"), ["cargo bench"]);
        assert_eq!(split("find . | xargs grep foo"), ["find .", "grep foo"]);
        assert_eq!(split("find . | xargs -0 rm"), ["find .", "xargs -0 rm"]);
        assert_eq!(split("FOO=$(whoami)"), ["whoami", "FOO=$(whoami)"]);
    }

    #[test]
    fn hidden_substitutions_are_refused_not_missed() {
        assert!(split_command("echo ${x:-$(rm -rf /)}").is_err());
        assert!(split_command("echo 'unterminated").is_err());
        assert!(split_command("[[ -f $(rm x) ]]").is_err());
        // Found by fuzzing: brush-parser 0.4 panics on this.
        assert!(split_command("777777777777>E>\t").is_err());
        // Found by fuzzing: brush-parser 0.4 unwraps `None` in its tokenizer;
        // the panic is caught and the command refused.
        assert!(
            split_command(
                "\u{1}$($\u{1}$($~<e<e<@V>r\u{0}e<\u{1}\u{0}<<e<e<@Ve<\u{1}\u{0}\u{8})\ne"
            )
            .is_err()
        );
        // Found by fuzzing: brush-parser 0.4 loops forever on this.
        assert!(split_command("<<$(  ").is_err());
        assert!(split_command("<<\r>\t").is_err());
        assert_eq!(split("cat <<EOF>out\nhi\nEOF\n"), ["cat"]);
        assert!(split_command("\u{f}(P&$$(  <<<<<<<<<  <<<<<  :< ~<  ").is_err());
        assert!(split_command("cat <<EOF\nnever closed").is_err());
        let commit = "git commit -m \"$(cat <<'EOF'\nFix shadows\n\nDetails.\nEOF\n)\"";
        assert_eq!(split(commit), ["cat", commit]);
        // Found by fuzzing: exponential backtracking in brush-parser 0.4.
        assert!(split_command("(((((((((( z( z( (((((((((( z( z( ((").is_err());
        assert_eq!(
            split("echo $(echo $(echo $(id)))"),
            [
                "id",
                "echo $(id)",
                "echo $(echo $(id))",
                "echo $(echo $(echo $(id)))"
            ]
        );
        assert!(split_command("cat <<-\tx$(y)").is_err());
        // Found by fuzzing: exponential backtracking on subscripts in brush-parser 0.4.
        assert!(split_command("echo ${k[${k[${k[${k[${k[${k[").is_err());
        assert!(split_command("echo ${k[${k[${k[${k[0]}]}]}]}").is_err());
        assert!(split_command("tt${k[\u{1};\\:#>\0\0)\u{1}\0\0 $$tt${k[\u{1};\\:#>").is_err());
        // An escaped `<` before a here-document: the tokenizer looped for ever, allocating.
        assert!(split_command("\\<<<\"\")`` ").is_err());
        assert!(split_command("echo \\<<<x").is_err());
        // …and on many unquoted glob brackets in one word, closed or not.
        assert!(split_command(&format!("echo {}", "A[A[$4".repeat(5))).is_err());
        assert!(split_command(&format!("echo {}", "x[!(?])".repeat(9))).is_err());
        assert!(split_command(&format!("echo {}", "x[\\!(?])".repeat(9))).is_err());
        assert!(split_command(&format!("echo {}", "x[\"\"".repeat(9))).is_err());
        assert!(split_command(&format!("echo {}", "A[\\ ".repeat(9))).is_err());
        assert!(split_command(&format!("echo {}", "A[\" \"".repeat(9))).is_err());
        assert!(split_command(&format!("echo {}", "A[\"]\"".repeat(9))).is_err());
        // Quoted or escaped brackets, and brackets spread over words, pass.
        let spread = format!(
            "echo {}'x[[[[[[[[[[' \"[[:space:]]\" a[b]c[d] {}",
            "A[A[$4 ".repeat(8),
            "x\\[!(?])".repeat(12)
        );
        assert_eq!(split(&spread), [spread.as_str()]);
        let regex = "grep -E '[0-9][0-9][0-9]-[0-9][0-9][0-9]-[0-9][0-9][0-9][0-9]' notes.txt";
        assert_eq!(split(regex), [regex]);
        assert_eq!(
            split("echo ${a[12]} ${b[@]} ${x//[^a-z]/} [ -f x ]"),
            ["echo ${a[12]} ${b[@]} ${x//[^a-z]/} [ -f x ]"]
        );
        assert_eq!(split("echo ${a[1]} $(id)"), ["id", "echo ${a[1]} $(id)"]);
        // A subscript or indirection that evaluates a variable's value runs what it holds.
        assert!(split_command("echo ${a[$i]}").is_err());
        assert!(split_command("echo ${a[x]}").is_err());
        assert!(split_command("echo ${!x}").is_err());
        assert_eq!(split("cat <<< \"$(id)\""), ["id", "cat"]);
        assert_eq!(split("ls 2>err 123>out"), ["ls"]);
    }

    #[test]
    fn patterns() {
        let m = |spec: &str, cmd: &str| match BashPattern::new(spec) {
            BashPattern::Exact(e) => e == cmd,
            BashPattern::Wildcard(re) => regex::Regex::new(&re).unwrap().is_match(cmd),
        };
        assert!(m("ls *", "ls -la") && m("ls *", "ls") && !m("ls *", "lsof"));
        assert!(m("ls*", "lsof") && m("ls*", "ls"));
        assert!(m("git * --force", "git push origin --force"));
        assert!(m("npm run", "npm run") && !m("npm run", "npm run build"));
        assert!(m("a.b *", "a.b x") && !m("a.b *", "aXb x"));
    }
}
