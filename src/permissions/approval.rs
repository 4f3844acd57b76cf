//! Settling `Ask` decisions.

use std::fmt;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Decision, ToolCall};
use crate::telemetry::terminal_text::printable;

/// Decides calls the rules left to a person.
pub trait ApprovalHandler {
    /// Returns `true` to allow the call, `false` to deny it.
    fn approve(&self, call: &ToolCall, decision: &Decision) -> bool;

    /// How a denial by this handler reads in the task's failure reason.
    fn declined(&self) -> &'static str {
        "the approval handler declined it"
    }
}

/// The headless default: every `Ask` is denied.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenyAll;

impl ApprovalHandler for DenyAll {
    fn approve(&self, _call: &ToolCall, _decision: &Decision) -> bool {
        false
    }

    fn declined(&self) -> &'static str {
        "headless runs deny what would ask"
    }
}

/// Hands each `Ask` to a closure (the library API's hook).
pub struct CallbackApproval<F>(pub F);

impl<F: Fn(&ToolCall, &Decision) -> bool> ApprovalHandler for CallbackApproval<F> {
    fn approve(&self, call: &ToolCall, decision: &Decision) -> bool {
        (self.0)(call, decision)
    }
}

/// Held across printing a question and reading its answer. The Executor
/// checks calls concurrently, and a person sees one terminal: without this,
/// two questions could be printed before either answer is read, and a `y`
/// would approve whichever call happened to read it. Process-wide, so that
/// several prompts sharing the terminal are serialised too.
static PROMPT_LOCK: Mutex<()> = Mutex::new(());

/// Set by [`abandon_prompts`].
static ABANDONED: AtomicBool = AtomicBool::new(false);

/// Makes a [`TerminalPrompt`] waiting on a terminal now answer "no" within a tenth of a second,
/// and every later one at once, without asking: for a run being cancelled (Ctrl-C), whose
/// person is no longer answering. A blocking read would hold its thread, and the process's
/// exit, until someone pressed Enter. Process-wide, like the prompts' lock.
pub fn abandon_prompts() {
    ABANDONED.store(true, Ordering::SeqCst);
}

/// A poisoned lock only means another prompt panicked; the data is `()` or a stream.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a [`TerminalPrompt`] asks and reads.
enum PromptIo {
    /// stderr for the question, one line of stdin for the answer.
    Terminal,
    /// Injected streams (tests, embedding programs with their own console).
    Streams {
        input: Mutex<Box<dyn BufRead + Send>>,
        output: Mutex<Box<dyn Write + Send>>,
    },
}

/// Asks a person: prints `Allow TOOL INPUT? (RULE) [y/N]` and reads one line.
/// Only `y`/`yes` (any case, surrounding blanks ignored) approves; anything
/// else, an empty line, end of input and any I/O error deny. One prompt runs
/// at a time in the whole process (question and answer together), so
/// concurrent calls never swap answers.
pub struct TerminalPrompt {
    io: PromptIo,
}

impl TerminalPrompt {
    /// Asks on stderr and reads the answer from stdin.
    pub fn new() -> Self {
        TerminalPrompt {
            io: PromptIo::Terminal,
        }
    }

    /// Asks on `output` and reads answers from `input`, one line per prompt.
    pub fn with_io(
        input: impl BufRead + Send + 'static,
        output: impl Write + Send + 'static,
    ) -> Self {
        TerminalPrompt {
            io: PromptIo::Streams {
                input: Mutex::new(Box::new(input)),
                output: Mutex::new(Box::new(output)),
            },
        }
    }

    /// Prints the question; `None` on an I/O error.
    fn tell(question: &str, output: &mut dyn Write) -> Option<()> {
        output.write_all(question.as_bytes()).ok()?;
        output.flush().ok()
    }

    /// Reads one answer line from stdin; `None` at end of input, on an I/O error, or once the
    /// prompts are abandoned. On a terminal (which hands over a line at a time) it waits for
    /// the line in short polls, so that [`abandon_prompts`] is seen.
    fn read_stdin() -> Option<String> {
        let stdin = std::io::stdin();
        #[cfg(unix)]
        if std::io::IsTerminal::is_terminal(&stdin) {
            use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
            use std::os::fd::AsFd;
            loop {
                if ABANDONED.load(Ordering::SeqCst) {
                    return None;
                }
                let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(100_u8)) {
                    Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                    Ok(_) => break,
                    Err(_) => return None,
                }
            }
        }
        Self::read(&mut stdin.lock())
    }

    /// Reads one answer line; `None` at end of input or on an I/O error.
    fn read(input: &mut dyn BufRead) -> Option<String> {
        let mut line = String::new();
        match input.read_line(&mut line) {
            Ok(n) if n > 0 => Some(line),
            _ => None,
        }
    }
}

impl Default for TerminalPrompt {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TerminalPrompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let io = match self.io {
            PromptIo::Terminal => "terminal",
            PromptIo::Streams { .. } => "streams",
        };
        f.debug_struct("TerminalPrompt").field("io", &io).finish()
    }
}

impl ApprovalHandler for TerminalPrompt {
    fn declined(&self) -> &'static str {
        "not approved at the prompt"
    }

    fn approve(&self, call: &ToolCall, decision: &Decision) -> bool {
        let reason = decision.rule.as_ref().map_or_else(
            || "no rule matched".to_string(),
            |r| format!("rule {}[{}] `{}`", r.list, r.index, r.text),
        );
        // The input may be built from earlier tools' output: JSON escapes the C0 controls but
        // not C1 ones (`\u{9b}` starts a sequence on some terminals) or the bidirectional
        // overrides that would reorder what the person reads.
        let question = format!(
            "Allow {}? ({}) [y/N] \n",
            printable(&format!("{} {}", call.tool, call.input), true),
            printable(&reason, true)
        );
        let _one_prompt_at_a_time = lock(&PROMPT_LOCK);
        if ABANDONED.load(Ordering::SeqCst) {
            return false;
        }
        // Each stream's own lock is released before the next step (stderr
        // stays usable for logs while the person thinks); PROMPT_LOCK alone
        // keeps question and answer together.
        // (Separate statements, so each temporary guard is dropped at its `;`.)
        let answer = match &self.io {
            PromptIo::Terminal => {
                let told = Self::tell(&question, &mut std::io::stderr().lock());
                told.and_then(|()| Self::read_stdin())
            }
            PromptIo::Streams { input, output } => {
                let told = Self::tell(&question, &mut **lock(output));
                told.and_then(|()| Self::read(&mut **lock(input)))
            }
        };
        answer.is_some_and(|line| matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::io::Read;
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::{List, MatchedRule, Verdict};
    use super::*;

    fn ask_rule() -> Decision {
        Decision {
            verdict: Verdict::Ask,
            rule: Some(MatchedRule {
                list: List::Ask,
                index: 2,
                text: "Bash(git push *)".into(),
            }),
        }
    }

    /// A writer whose bytes the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.0)).into_owned()
        }
    }

    fn answer(input: &str) -> (bool, String) {
        let out = Shared::default();
        let prompt = TerminalPrompt::with_io(std::io::Cursor::new(input.to_owned()), out.clone());
        let call = ToolCall::from_text("Bash", "git push origin main");
        (prompt.approve(&call, &ask_rule()), out.text())
    }

    #[test]
    fn only_y_or_yes_approves() {
        for yes in ["y\n", "yes\n", " Y \n", "YES\r\n", "y"] {
            assert!(answer(yes).0, "{yes:?}");
        }
        for no in [
            "n\n", "no\n", "\n", "", "yeah\n", "maybe\n", "y es\n", "ok\n",
        ] {
            assert!(!answer(no).0, "{no:?}");
        }
    }

    #[test]
    fn an_io_error_denies() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("gone"))
            }
        }
        let prompt = TerminalPrompt::with_io(std::io::BufReader::new(Broken), Shared::default());
        let call = ToolCall::from_text("Bash", "ls");
        assert!(!prompt.approve(&call, &ask_rule()));
    }

    #[test]
    fn the_question_names_the_tool_the_input_and_the_rule() {
        let (_, question) = answer("n\n");
        assert_eq!(
            question,
            "Allow Bash {\"command\":\"git push origin main\"}? \
             (rule ask[2] `Bash(git push *)`) [y/N] \n"
        );
        let out = Shared::default();
        let prompt = TerminalPrompt::with_io(std::io::Cursor::new("y\n"), out.clone());
        let undecided = Decision {
            verdict: Verdict::Ask,
            rule: None,
        };
        assert!(prompt.approve(&ToolCall::from_text("Read", "/etc/hosts"), &undecided));
        assert!(
            out.text()
                .contains("Read {\"file_path\":\"/etc/hosts\"}? (no rule matched)")
        );
    }

    /// Text a person would be misled by (a C1 control, a right-to-left override that makes
    /// `rm` read as something else) is shown escaped; JSON alone leaves both as they are.
    #[test]
    fn the_question_escapes_what_would_reorder_or_control_the_terminal() {
        let out = Shared::default();
        let prompt = TerminalPrompt::with_io(std::io::Cursor::new("n\n"), out.clone());
        let call = ToolCall::from_text("Bash", "echo \u{202e}fr- mr\u{202c} \u{9b}31m");
        assert!(!prompt.approve(&call, &ask_rule()));
        let question = out.text();
        assert!(
            question.contains("echo \\u{202e}fr- mr\\u{202c} \\u{9b}31m"),
            "{question}"
        );
        assert!(
            !question.contains(['\u{202e}', '\u{202c}', '\u{9b}']),
            "{question}"
        );
    }

    /// Answers each line read with `y` when the last question printed asks about
    /// an `approve-me` command, `n` otherwise, and logs questions and reads in
    /// order. It is slow on purpose, so unserialised prompts would interleave.
    struct Console {
        log: Arc<Mutex<Vec<String>>>,
        pending: Vec<u8>,
    }

    impl Read for Console {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.pending.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
                let mut log = lock(&self.log);
                let last = log
                    .iter()
                    .rev()
                    .find(|l| l.starts_with("Q "))
                    .cloned()
                    .unwrap_or_default();
                let reply = if last.contains("approve-me") {
                    "y"
                } else {
                    "n"
                };
                log.push(format!("A {reply} for {last}"));
                self.pending = format!("{reply}\n").into_bytes();
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }

    struct Screen(Arc<Mutex<Vec<String>>>);

    impl Write for Screen {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).push(format!("Q {}", String::from_utf8_lossy(buf)));
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Several handles on one console, as when prompts share a terminal.
    #[derive(Clone)]
    struct SharedConsole(Arc<Mutex<Console>>);

    impl Read for SharedConsole {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            lock(&self.0).read(buf)
        }
    }

    #[test]
    fn concurrent_prompts_are_not_interleaved() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let console = SharedConsole(Arc::new(Mutex::new(Console {
            log: Arc::clone(&log),
            pending: Vec::new(),
        })));
        // Four prompts on one console, two threads each: calls on one prompt
        // and calls on different prompts must both wait their turn. Unbuffered
        // input, so each read reaches the console and logs when it happened.
        let prompts: Vec<_> = (0..4)
            .map(|_| {
                let input = std::io::BufReader::with_capacity(1, console.clone());
                Arc::new(TerminalPrompt::with_io(input, Screen(Arc::clone(&log))))
            })
            .collect();
        let threads: Vec<_> = (0..8)
            .map(|n| {
                let prompt = Arc::clone(&prompts[n % 4]);
                std::thread::spawn(move || {
                    let command = if n % 3 == 0 {
                        format!("echo approve-me {n}")
                    } else {
                        format!("echo refuse {n}")
                    };
                    let approved =
                        prompt.approve(&ToolCall::from_text("Bash", &command), &ask_rule());
                    (n, approved)
                })
            })
            .collect();
        for thread in threads {
            let (n, approved) = thread.join().unwrap();
            // Each call got the answer given to its own question.
            assert_eq!(approved, n % 3 == 0, "call {n}: {:?}", lock(&log));
        }
        // Strictly question, answer, question, answer...
        let log = lock(&log);
        let questions = log.iter().filter(|l| l.starts_with("Q ")).count();
        assert_eq!(questions, 8, "{log:?}");
        let mut expect_question = true;
        for line in log.iter() {
            // A line's first read yields the answer; further one-byte reads
            // (the newline) log nothing new, so the log alternates exactly.
            assert_eq!(line.starts_with("Q "), expect_question, "{log:?}");
            expect_question = !expect_question;
        }
    }
}
