//! The process groups of the children running now (`process` calls and `mcp` servers), so a
//! process that must exit at once (a second Ctrl-C) can kill them first: each child leads its
//! own group, so it would not get the terminal's signal, and the drop that kills it on every
//! other path does not run when the process exits.
//!
//! A process killed outright (SIGKILL, the OOM killer, a crash) runs none of that, and its
//! children kept running: a `sleep 300` tool, an MCP server that does not exit when its stdin
//! closes. So the groups are also listed to a reaper, started before the first child: an awk
//! (through `sh`) in a group of its own that reads `+PGID`/`-PGID` lines on a pipe only this
//! process holds, and at the pipe's end, which this process's death brings, SIGKILLs every group
//! still listed. (Linux's `PR_SET_PDEATHSIG` is no substitute: it fires when the spawning
//! *thread* ends, which for a blocking-pool thread is after 10 s idle, and it reaches the child
//! alone, not its group.) Without `sh`, there is no reaper, with a warning. Limits: a child
//! killed with us in the microseconds between its spawn and its `+` line escapes; a host that
//! forks without exec hands the pipe to its fork, which then keeps the reaper waiting until it
//! too ends.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::OnceLock;
use std::sync::mpsc::Sender;

static LIVE: parking_lot::Mutex<BTreeSet<i32>> = parking_lot::Mutex::new(BTreeSet::new());

/// The reaper's feed: `(+ or -, group id)` lines for its writer thread; `None` when it could not
/// be started.
static REAPER: OnceLock<Option<Sender<(char, i32)>>> = OnceLock::new();

/// Keeps a count per listed group id (`+` adds one, `-` takes one off); at end of input, kills
/// the groups still listed, in one `kill`. awk, not a shell loop: removing an id from a shell
/// string costs more the longer the list (27 s of CPU for 10,000 lines over 500 running
/// children in dash). It ignores the signals a terminal or a service manager sends a whole
/// session (inherited through the `exec`), so it outlives us. Ids 0 and 1 are never listed
/// (`kill -0`/`-1` would reach its own group, or every process).
const REAPER_SCRIPT: &str = r#"trap '' INT TERM HUP QUIT
exec awk '/^\+[0-9]+$/{k=substr($0,2)+0; if(k>1)n[k]++; next}
/^-[0-9]+$/{k=substr($0,2)+0; if((k in n)&&--n[k]==0)delete n[k]}
END{s=""; for(k in n)s=s" -"k; if(s!="")system("kill -KILL"s" 2>/dev/null")}'
"#;

/// Starts the reaper, if it is not running yet: called before a child is spawned, so that a
/// kill right after the spawn finds the reaper there (starting `sh` takes milliseconds).
pub(crate) fn start_reaper() {
    let _ = reaper();
}

fn reaper() -> Option<&'static Sender<(char, i32)>> {
    REAPER.get_or_init(spawn_reaper).as_ref()
}

/// Spawns the reaper and the thread that writes its lines: the writes block when the pipe is
/// full (a reaper stopped by SIGSTOP), and they must never block a caller, which may be an
/// async worker (the whole runtime froze in a test that stopped the reaper).
#[cfg(unix)]
fn spawn_reaper() -> Option<Sender<(char, i32)>> {
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
    let mut input = match spawned.map(|mut child| child.stdin.take()) {
        Ok(Some(input)) => input,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(
                "no reaper for child processes (cannot start sh: {e}): if this process is \
                 killed outright, its tools keep running"
            );
            return None;
        }
    };
    let (lines, received) = std::sync::mpsc::channel::<(char, i32)>();
    let feeding = std::thread::Builder::new()
        .name("tetrarch-reaper-feed".into())
        .spawn(move || {
            for (change, pgid) in received {
                // One write per line: a pipe write this small arrives whole.
                if input
                    .write_all(format!("{change}{pgid}\n").as_bytes())
                    .is_err()
                {
                    tracing::warn!(
                        "the reaper of child processes has gone: if this process is killed \
                         outright, its tools keep running"
                    );
                    return;
                }
            }
        });
    match feeding {
        Ok(_) => Some(lines),
        Err(e) => {
            tracing::warn!("no reaper for child processes (cannot start its thread: {e})");
            None
        }
    }
}

#[cfg(not(unix))]
fn spawn_reaper() -> Option<Sender<(char, i32)>> {
    None
}

/// Tells the reaper a group started (`+`) or ended (`-`). Never blocks.
fn tell_reaper(change: char, pgid: i32) {
    if let Some(feed) = reaper() {
        let _ = feed.send((change, pgid));
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
    /// (`server &`) is killed now, and the group is never signalled again. Safe right after the
    /// reap: while any process of the group lives, the kernel does not hand its id to a new
    /// process; with none left, `killpg` finds nothing (a new group of that id would need the pid numbers to wrap around within
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
