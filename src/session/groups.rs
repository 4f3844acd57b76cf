//! The process groups of the children running now (`process` calls and `mcp` servers), so a
//! process that must exit at once (a second Ctrl-C) can kill them first: each child leads its
//! own group, so it would not get the terminal's signal, and the drop that kills it on every
//! other path does not run when the process exits.

use std::collections::BTreeSet;

static LIVE: parking_lot::Mutex<BTreeSet<i32>> = parking_lot::Mutex::new(BTreeSet::new());

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
