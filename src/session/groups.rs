//! The process groups of the children running now (`process` calls and `mcp` servers), so a
//! process that must exit at once (a second Ctrl-C) can kill them first: each child leads its
//! own group, so it would not get the terminal's signal, and the drop that kills it on every
//! other path does not run when the process exits.
//!
//! A process killed outright (SIGKILL, the OOM killer, a crash) runs none of that, and its
//! children kept running: a `sleep 300` tool, an MCP server that does not exit when its stdin
//! closes. So the groups are also listed to a reaper, started with the first child: a `sh` in a
//! group of its own that reads `+PGID`/`-PGID` lines on a pipe only this process holds, and at
//! the pipe's end, which this process's death brings, SIGKILLs every group still listed.
//! (Linux's `PR_SET_PDEATHSIG` is no substitute: it fires when the spawning *thread* ends, which
//! for a blocking-pool thread is after 10 s idle, and it reaches the child alone, not its group.)
//! Without `sh`, there is no reaper, with a warning.

use std::collections::BTreeSet;
use std::io::Write;

static LIVE: parking_lot::Mutex<BTreeSet<i32>> = parking_lot::Mutex::new(BTreeSet::new());

/// The reaper's end of the pipe (`None` when it could not be started, or its pipe broke).
static REAPER: parking_lot::Mutex<Option<Reaper>> = parking_lot::Mutex::new(None);
static REAPER_STARTED: std::sync::Once = std::sync::Once::new();

/// Keeps a list of `+`/`-` group ids; at end of input, kills the groups still listed. It ignores
/// the signals a terminal or a service manager sends its whole session, so it outlives us.
const REAPER_SCRIPT: &str = r#"trap '' INT TERM HUP QUIT
live=' '
while read -r line; do
  pg=${line#?}
  case $line in
    +*) live="$live$pg " ;;
    -*) case $live in *" $pg "*) live="${live%% $pg *} ${live#* $pg }" ;; esac ;;
  esac
done
for pg in $live; do kill -KILL -"$pg" 2>/dev/null; done
"#;

/// The write end of the reaper's stdin (close-on-exec, so no other child holds it open).
struct Reaper {
    input: std::process::ChildStdin,
}

#[cfg(unix)]
fn start_reaper() -> Option<Reaper> {
    use std::os::unix::process::CommandExt;
    let spawned = std::process::Command::new("sh")
        .args(["-c", REAPER_SCRIPT])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .process_group(0)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => Some(Reaper {
            input: child.stdin.take()?,
        }),
        Err(e) => {
            tracing::warn!(
                "no reaper for child processes (cannot start sh: {e}): if this process is \
                 killed outright, its tools keep running"
            );
            None
        }
    }
}

#[cfg(not(unix))]
fn start_reaper() -> Option<Reaper> {
    None
}

/// Tells the reaper a group started (`+`) or ended (`-`).
fn tell_reaper(change: char, pgid: i32) {
    REAPER_STARTED.call_once(|| *REAPER.lock() = start_reaper());
    let mut reaper = REAPER.lock();
    // One write per line: the reaper reads lines, and a pipe write this small is atomic.
    let line = format!("{change}{pgid}\n");
    let broken = reaper
        .as_mut()
        .is_some_and(|r| r.input.write_all(line.as_bytes()).is_err());
    if broken {
        tracing::warn!(
            "the reaper of child processes has gone: if this process is killed outright, its \
             tools keep running"
        );
        *reaper = None;
    }
}

/// A live child's process group, killed (SIGKILL) when this drops or when the call is over
/// ([`ChildGroup::kill_leftovers`]). The group id is the child's pid, which cannot be reused
/// while the unreaped child holds it, so the kill cannot hit a stranger.
#[derive(Debug)]
pub(crate) struct ChildGroup {
    pgid: Option<i32>,
}

impl ChildGroup {
    /// Tracks the group led by the child `pid` (`None`: the child is already gone).
    pub(crate) fn new(pid: Option<u32>) -> ChildGroup {
        let pgid = pid.and_then(|id| i32::try_from(id).ok());
        if let Some(pgid) = pgid {
            LIVE.lock().insert(pgid);
            tell_reaper('+', pgid);
        }
        ChildGroup { pgid }
    }

    /// The child was reaped and the call is over: what it left running in its group
    /// (`server &`) is killed now, and the group is never signalled again. Safe right after the reap: while any process of the
    /// group lives, the kernel does not hand its id to a new process; with none left, `killpg`
    /// finds nothing (a new group of that id would need the pid numbers to wrap around within
    /// the microseconds since the reap).
    pub(crate) fn kill_leftovers(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            kill(pgid);
            LIVE.lock().remove(&pgid);
            tell_reaper('-', pgid);
        }
    }
}

impl Drop for ChildGroup {
    fn drop(&mut self) {
        self.kill_leftovers();
    }
}

fn kill(pgid: i32) {
    // ESRCH (the group is already gone) is the normal case and is ignored.
    #[cfg(unix)]
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Kills the process group of every child running now and returns how many there were. For a
/// process about to exit without unwinding (`std::process::exit`).
pub fn kill_child_process_groups() -> usize {
    let groups = std::mem::take(&mut *LIVE.lock());
    for &pgid in &groups {
        kill(pgid);
    }
    groups.len()
}
