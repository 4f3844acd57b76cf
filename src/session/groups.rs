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
//! killed with us between its spawn and its `+` line escapes (microseconds, unless the spawning
//! thread is preempted right there); a host that forks without exec hands the pipe to its fork,
//! which then keeps the reaper waiting until it too ends.
//!
//! Why the child does not list itself before its `exec` (a `pre_exec` hook), which would close
//! that window: any hook makes std `fork` the whole process instead of `posix_spawn`ing it, and
//! fork copies the page tables. Measured on a 2-core machine for a `true` call spawned through
//! tokio in its own group: 0.75–0.87 ms without a hook at 10, 50 and 200 MB resident; with an
//! empty one 1.76 ms at 10 MB, 2.9–3.2 ms at 50 MB and 8.3–8.6 ms at 200 MB. Every `process` call
//! would pay that for a kill that must land in that short window.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::OnceLock;

static LIVE: parking_lot::Mutex<BTreeSet<i32>> = parking_lot::Mutex::new(BTreeSet::new());

/// The reaper's input; `None` when it could not be started.
static REAPER: OnceLock<Option<Feed>> = OnceLock::new();

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

/// The reaper's `PATH` (it runs `sh`, `awk` and `kill`).
const REAPER_PATH: &str = "/usr/bin:/bin";

/// Starts the reaper, if it is not running yet: called before a child is spawned, so that a
/// kill right after the spawn finds the reaper there (starting `sh` takes milliseconds).
pub(crate) fn start_reaper() {
    let _ = reaper();
}

fn reaper() -> Option<&'static Feed> {
    REAPER.get_or_init(spawn_reaper).as_ref()
}

/// The reaper's input, written on the caller's thread: a group is listed before its
/// `ChildGroup` is made, rather than when a writer thread next runs (under load that took long
/// enough for a child killed with us to escape). The socket is non-blocking, so a write never
/// blocks a caller, which may be an async worker (the whole runtime froze in a test that stopped
/// the reaper): what does not fit (a reaper stopped by SIGSTOP) waits in `backlog`, in order,
/// and a thread of its own retries it.
struct Feed {
    state: parking_lot::Mutex<FeedState>,
    /// The thread retrying the backlog (woken when there is one).
    retrier: std::thread::Thread,
    /// The reaper's process id (the tests stop it).
    #[cfg_attr(not(test), allow(dead_code))]
    pid: u32,
}

struct FeedState {
    input: std::os::unix::net::UnixStream,
    /// Bytes not written yet; every later line goes after them.
    backlog: Vec<u8>,
    /// The reaper has gone: nothing more is written.
    gone: bool,
}

impl FeedState {
    /// Writes what the socket takes of the backlog.
    fn flush(&mut self) {
        while !self.backlog.is_empty() && !self.gone {
            match self.input.write(&self.backlog) {
                Ok(0) => self.lose_reaper(),
                Ok(n) => {
                    self.backlog.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => self.lose_reaper(),
            }
        }
    }

    fn lose_reaper(&mut self) {
        self.gone = true;
        self.backlog = Vec::new();
        tracing::warn!(
            "the reaper of child processes has gone: if this process is killed outright, its \
             tools keep running"
        );
    }
}

/// Spawns the reaper and the thread that retries what its input could not take at once.
#[cfg(unix)]
fn spawn_reaper() -> Option<Feed> {
    use std::os::unix::process::CommandExt;
    let no_reaper = |why: String| {
        tracing::warn!(
            "no reaper for child processes ({why}): if this process is killed outright, its \
             tools keep running"
        );
        None
    };
    // A socket pair rather than a pipe: std can make its end non-blocking. Ours is
    // close-on-exec, so no other child holds it open past our death.
    let (input, reaper_end) = match std::os::unix::net::UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => return no_reaper(format!("cannot make its input: {e}")),
    };
    if let Err(e) = input.set_nonblocking(true) {
        return no_reaper(format!("cannot make its input non-blocking: {e}"));
    }
    // By path where one is found, so std spawns it rather than forking this whole process.
    let shell = super::program_on_child_path("sh", Some(REAPER_PATH.as_ref()));
    let spawned = std::process::Command::new(shell.as_deref().unwrap_or("sh".as_ref()))
        .arg0("sh")
        .args(["-c", REAPER_SCRIPT])
        .env_clear()
        .env("PATH", REAPER_PATH)
        .current_dir("/")
        .process_group(0)
        .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(
            reaper_end,
        )))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let pid = match spawned {
        Ok(child) => child.id(),
        Err(e) => return no_reaper(format!("cannot start sh: {e}")),
    };
    let retrying = std::thread::Builder::new()
        .name("tetrarch-reaper-feed".into())
        .spawn(|| {
            loop {
                // Woken when a line did not fit; then retried until the backlog is written.
                std::thread::park();
                while let Some(feed) = REAPER.get().and_then(Option::as_ref) {
                    let mut state = feed.state.lock();
                    state.flush();
                    if state.gone {
                        return;
                    }
                    if state.backlog.is_empty() {
                        break;
                    }
                    drop(state);
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        });
    match retrying {
        Ok(handle) => Some(Feed {
            state: parking_lot::Mutex::new(FeedState {
                input,
                backlog: Vec::new(),
                gone: false,
            }),
            retrier: handle.thread().clone(),
            pid,
        }),
        Err(e) => no_reaper(format!("cannot start its thread: {e}")),
    }
}

#[cfg(not(unix))]
fn spawn_reaper() -> Option<Feed> {
    None
}

/// Tells the reaper a group started (`+`) or ended (`-`). Never blocks.
fn tell_reaper(change: char, pgid: i32) {
    let Some(feed) = reaper() else {
        return;
    };
    let mut state = feed.state.lock();
    if state.gone {
        return;
    }
    state
        .backlog
        .extend_from_slice(format!("{change}{pgid}\n").as_bytes());
    state.flush();
    if !state.backlog.is_empty() {
        feed.retrier.unpark();
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

#[cfg(all(test, unix))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A stopped reaper (SIGSTOP) takes no more input: telling it of groups never blocks the
    /// caller, and what waited is written, in order, once it runs again.
    #[test]
    fn a_stopped_reaper_never_blocks_and_catches_up() {
        start_reaper();
        let feed = reaper().unwrap();
        let reaper_pid = nix::unistd::Pid::from_raw(i32::try_from(feed.pid).unwrap());
        nix::sys::signal::kill(reaper_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        // Far more than a socket buffer holds: 100,000 lines of 12 bytes. A group id above
        // Linux's pid limit, so none of them is a real group.
        let started = std::time::Instant::now();
        for _ in 0..50_000 {
            tell_reaper('+', 1_999_999_999);
            tell_reaper('-', 1_999_999_999);
        }
        let told_in = started.elapsed();
        let waiting = feed.state.lock().backlog.len();
        nix::sys::signal::kill(reaper_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        assert!(waiting > 0, "the stopped reaper took everything");
        assert!(told_in < std::time::Duration::from_secs(10), "{told_in:?}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !feed.state.lock().backlog.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the backlog was not written"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!feed.state.lock().gone);
    }
}
