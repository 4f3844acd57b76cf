//! The store socket: a running `tetrarch run` lends its store to the store commands started
//! beside it (`runs`, `mem`, `lessons`, `cache stats`).
//!
//! The database engine lets one process hold a store file, and a run holds its store until it
//! ends, so these commands used to wait 5 s and fail while any run was going. Now the run listens
//! on a Unix socket beside the file (`store.redb` → `store.redb.sock`), and a command that finds
//! one answering sends it its arguments; the run executes the command against its own open store
//! (the same code as in the command's own process) and streams the output back. What a command
//! stores this way is written by the run's writer, durable as any other write.
//!
//! Safe by default: the socket is the user's alone (mode 0600, and a connection from another user
//! is closed unanswered), and it only carries these commands, each parsed by the same argument
//! parser as on the command line. `cache clear` is refused beside a run (the run keeps its own
//! copies of cached results in memory, so clearing the file would not clear what it serves);
//! `dashboard` and a second `run` of the same store fail at once, saying a run holds it (they
//! used to wait 5 s first).
//!
//! A socket file left by a killed run answers nobody: a command then opens the store itself, and
//! the next run replaces the file (it holds the store's lock, so no other run can be serving).
//!
//! The wire: the command sends one JSON line (`{"version": ..., "args": [...]}`, its command
//! line without the program name); the run answers with frames, each a kind byte, a 4-byte
//! little-endian length and that many bytes: first that it took the command (or an error to
//! print), then output to print, then the exit status (or an error). A connection that ends before
//! the run took the command (the run was ending) sends the command back to open the store itself;
//! one that ends after it is an error, as the command may have run.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tetrarch::store::Store;
use tokio_util::task::TaskTracker;

use super::{Cli, Command, StoreRef};

/// The longest request read: a command line of a memory's text is well within it.
const MAX_REQUEST: u64 = 4 << 20;

/// How long the run waits for a command's request.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a command waits for the run to answer (a durable write waits behind the run's
/// group commit; a stopped run process must not hang the command for ever).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a run's end waits for the commands it is serving to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The most output one `OUTPUT` frame carries.
const MAX_OUTPUT_FRAME: usize = 1 << 20;

/// The longest frame a command reads: an `OUTPUT` frame, or a `FAILED` message (an error's
/// text, far shorter).
const MAX_FRAME: u32 = (MAX_OUTPUT_FRAME as u32) + (64 << 10);

/// Frame kinds, run → command.
const TAKEN: u8 = 1;
const OUTPUT: u8 = 2;
const EXIT: u8 = 3;
const FAILED: u8 = 4;

/// The socket beside a store file: beside the file itself, so a command that names the store
/// through a symbolic link (or another relative path) finds the run's socket.
pub(crate) fn socket_path(store: &Path) -> PathBuf {
    let store = std::fs::canonicalize(store).unwrap_or_else(|_| store.to_path_buf());
    let mut name = store.into_os_string();
    name.push(".sock");
    PathBuf::from(name)
}

/// Calls `f` (a bind or a connect) with an address for the socket at `path`. A Unix socket's
/// address holds at most 107 bytes, and a store deep in a folder tree has a longer path: then
/// (on Linux) the address reaches the same file through this process's handle on its folder,
/// `/proc/self/fd/N/NAME`, as systemd does for long socket paths.
fn at_socket<T>(path: &Path, f: impl FnOnce(&Path) -> std::io::Result<T>) -> std::io::Result<T> {
    /// `sun_path`'s size on Linux, its closing NUL included.
    const ADDRESS_BYTES: usize = 108;
    #[cfg(target_os = "linux")]
    if path.as_os_str().len() >= ADDRESS_BYTES {
        use std::os::fd::AsRawFd;
        if let (Some(folder), Some(name)) = (path.parent(), path.file_name()) {
            let folder = std::fs::File::open(folder)?;
            let short = Path::new("/proc/self/fd")
                .join(folder.as_raw_fd().to_string())
                .join(name);
            return f(&short);
        }
    }
    f(path)
}

/// A command line sent to the run.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    /// The sender's tetrarch version: a run of another version may parse the line differently.
    version: String,
    /// The command line without the program name.
    args: Vec<Word>,
}

/// One word of a command line: text, or the bytes of one that is not UTF-8 (a store path may
/// be any bytes on Unix).
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
enum Word {
    Text(String),
    Bytes(Vec<u8>),
}

impl From<std::ffi::OsString> for Word {
    fn from(word: std::ffi::OsString) -> Word {
        match word.into_string() {
            Ok(text) => Word::Text(text),
            Err(word) => Word::Bytes(std::os::unix::ffi::OsStringExt::into_vec(word)),
        }
    }
}

impl From<Word> for std::ffi::OsString {
    fn from(word: Word) -> std::ffi::OsString {
        match word {
            Word::Text(text) => text.into(),
            Word::Bytes(bytes) => std::os::unix::ffi::OsStringExt::from_vec(bytes),
        }
    }
}

/// A run's socket while it serves. [`StoreSocket::close`] ends it; dropping it without (an early
/// error) stops accepting and removes the file, without waiting for commands being served.
pub(crate) struct StoreSocket {
    path: PathBuf,
    /// The accept loop; aborting it stops accepting (it holds nothing half done between accepts).
    accept: tokio::task::JoinHandle<()>,
    serving: TaskTracker,
}

impl StoreSocket {
    /// Starts serving `store` (the file at `store_path`, which this process holds) on its socket.
    /// `None`, with a warning, when the socket cannot be made (a folder that takes none, a
    /// path too long for a socket off Linux): the run goes on, and commands beside it wait as
    /// they did.
    pub(crate) fn serve(store: &Store, store_path: &Path) -> Option<StoreSocket> {
        let path = socket_path(store_path);
        match Self::bind(&path) {
            Ok(listener) => {
                let serving = TaskTracker::new();
                let accept = tokio::spawn(accept_loop(listener, store.clone(), serving.clone()));
                Some(StoreSocket {
                    path,
                    accept,
                    serving,
                })
            }
            Err(error) => {
                stderr_line!(
                    "warning: cannot serve the store to commands beside this run ({}: {error}); \
                     `tetrarch mem` and `runs` will wait for the run to end",
                    path.display()
                );
                None
            }
        }
    }

    fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
        // This process holds the store, so no run is serving it: a file here was left by a
        // killed one.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = at_socket(path, |address| tokio::net::UnixListener::bind(address))?;
        // Connections from other users are refused by their credentials too (see
        // `accept_loop`): this only narrows who can reach it at all.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    }

    /// Stops accepting, waits (a bounded time) for the commands being served, and removes the
    /// socket file.
    pub(crate) async fn close(mut self) {
        self.accept.abort();
        let _ = (&mut self.accept).await;
        self.serving.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.serving.wait())
            .await
            .is_err()
        {
            tracing::warn!("a command served beside the run did not finish; not waiting for it");
        }
    }
}

impl Drop for StoreSocket {
    fn drop(&mut self) {
        self.accept.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn accept_loop(listener: tokio::net::UnixListener, store: Store, serving: TaskTracker) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(%error, "store socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(peer) if peer.uid() == me => {}
            Ok(peer) => {
                tracing::warn!(uid = peer.uid(), "store socket: refused another user");
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "store socket: no peer credentials; refused");
                continue;
            }
        }
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "store socket: cannot take the connection");
                continue;
            }
        };
        let store = store.clone();
        serving.spawn_blocking(move || {
            if let Err(error) = answer(&stream, &store) {
                tracing::debug!(%error, "store socket: the command went away");
            }
        });
    }
}

/// Reads one request from `stream`, runs it against `store`, and writes the answer.
fn answer(stream: &std::os::unix::net::UnixStream, store: &Store) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST)).read_line(&mut line)?;
    // The output is written at the command's pace: `mem recent … | less` may not read for
    // minutes, and cut off at 10 s it would fail a command that works without a run. The run's
    // end does not wait for it beyond `DRAIN_TIMEOUT`.
    stream.set_write_timeout(None)?;
    let mut frames = FrameWriter { stream };
    let outcome = match serde_json::from_str::<Request>(&line) {
        Err(error) => Err(format!("the store socket got a bad request: {error}")),
        Ok(request) => serve_request(request, store, &mut frames),
    };
    match outcome {
        Ok(code) => frames.frame(EXIT, &[code]),
        Err(message) => frames.frame(FAILED, message.as_bytes()),
    }
}

/// Runs a request's command, its output going to `out`; `Err` is the error to print instead of
/// an exit status.
fn serve_request(
    request: Request,
    store: &Store,
    frames: &mut FrameWriter<'_>,
) -> std::result::Result<u8, String> {
    let own = env!("CARGO_PKG_VERSION");
    if request.version != own {
        return Err(format!(
            "{} is held by a run of tetrarch {own}, and this is tetrarch {}: use the run's \
             tetrarch, or wait for the run to end",
            store.path().display(),
            request.version
        ));
    }
    let words = request.args.into_iter().map(std::ffi::OsString::from);
    let cli =
        Cli::try_parse_from(std::iter::once(std::ffi::OsString::from("tetrarch")).chain(words))
            .map_err(|e| e.to_string().trim_end().to_owned())?;
    let command = served(cli.command, store)?;
    frames
        .frame(TAKEN, &[])
        .map_err(|e| format!("the command went away: {e}"))?;
    let store = StoreRef::Served(store);
    let mut out = std::io::BufWriter::new(&mut *frames);
    let result = match command {
        Served::Runs { json } => super::run::list(store, json, &mut out),
        Served::Mem(command) => super::mem::run(command, store, &mut out),
        Served::Lessons(command) => super::lessons::run(command, store, &mut out),
        Served::Cache(command) => super::cache::run(command, store, &mut out),
    };
    let result = result.and_then(|code| {
        out.flush()?;
        Ok(code)
    });
    match result {
        Ok(code) if code == ExitCode::SUCCESS => Ok(0),
        // The served commands exit 0 or 1 (`lessons suggest` finding nothing).
        Ok(_) => Ok(1),
        Err(error) => Err(super::error_text(&error)),
    }
}

/// The commands a run serves.
enum Served {
    Runs { json: bool },
    Mem(super::mem::MemCommand),
    Lessons(super::lessons::LessonsCommand),
    Cache(super::cache::CacheCommand),
}

/// `command` if a run serves it; else why not.
fn served(command: Command, store: &Store) -> std::result::Result<Served, String> {
    match command {
        Command::Runs { json } => Ok(Served::Runs { json }),
        Command::Mem(command) => Ok(Served::Mem(command)),
        Command::Lessons(command) => Ok(Served::Lessons(command)),
        Command::Cache(command) if !command.clears() => Ok(Served::Cache(command)),
        Command::Cache(_) => Err(format!(
            "`cache clear` does not run beside a run: {} is in use by one, which keeps its own \
             copies of cached results in memory; clear the cache after the run ends",
            store.path().display()
        )),
        _ => Err(format!(
            "a run holds {}, and this command is not one it serves; run it after the run ends",
            store.path().display()
        )),
    }
}

/// Output to the command, in `OUTPUT` frames.
struct FrameWriter<'a> {
    stream: &'a std::os::unix::net::UnixStream,
}

impl FrameWriter<'_> {
    fn frame(&mut self, kind: u8, bytes: &[u8]) -> std::io::Result<()> {
        let len =
            u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("a frame over 4 GiB"))?;
        let mut header = [0u8; 5];
        header[0] = kind;
        header[1..].copy_from_slice(&len.to_le_bytes());
        self.stream.write_all(&header)?;
        self.stream.write_all(bytes)
    }
}

impl Write for FrameWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // Frames of at most 1 MiB: the length never overflows, and memory stays bounded.
        let bytes = &bytes[..bytes.len().min(MAX_OUTPUT_FRAME)];
        self.frame(OUTPUT, bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// Whether a run holding `store` answers on its socket (a command it does not serve then fails
/// at once instead of waiting for the file).
pub(crate) fn run_serves(store: &Path) -> bool {
    let path = socket_path(store);
    // Connected and closed unasked: the run reads an empty request and moves on.
    path.exists()
        && at_socket(&path, |address| {
            std::os::unix::net::UnixStream::connect(address)
        })
        .is_ok()
}

/// Runs this process's command in the run that holds `store`, if one serves it: `Ok(None)`
/// when none does (no socket, a socket nobody answers, a run ending before it took the command),
/// and the command opens the store itself.
pub(crate) fn forward(store: &Path) -> Result<Option<ExitCode>> {
    let path = socket_path(store);
    if !path.exists() {
        return Ok(None);
    }
    let Ok(mut stream) = at_socket(&path, |address| {
        std::os::unix::net::UnixStream::connect(address)
    }) else {
        return Ok(None);
    };
    let request = Request {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        args: std::env::args_os().skip(1).map(Word::from).collect(),
    };
    let talk = |what: &str| format!("the run holding {} {what}", store.display());
    // The command line may hold a secret (`mem store --content …`), and the answer goes to the
    // terminal: only a run of this user is told it. Another user's socket at this path (a
    // store in a shared folder such as /tmp, where the run cannot remove a file it does not
    // own) is not answered.
    if let Some(uid) = served_by(&stream, &path)
        && uid != nix::unistd::geteuid().as_raw()
    {
        anyhow::bail!(
            "{} is served by another user (uid {uid}), not by a run of yours; not sending \
             the command there (remove the file or use another --store)",
            path.display()
        );
    }
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(ANSWER_TIMEOUT)))
        .with_context(|| talk("cannot be asked"))?;
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    // A run that closes the connection unanswered (it is ending, or the connection is not
    // the user's) did not take the command.
    if stream.write_all(&line).is_err() {
        return Ok(None);
    }
    let mut stdout = std::io::stdout().lock();
    let mut taken = false;
    loop {
        let mut header = [0u8; 5];
        match stream.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if !taken && closed(&e) => return Ok(None),
            Err(e) if closed(&e) => {
                anyhow::bail!(
                    "{} (the command may have taken effect)",
                    talk("ended before it finished the command")
                );
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(e).with_context(|| {
                    talk(&format!("did not answer in {} s", ANSWER_TIMEOUT.as_secs()))
                });
            }
            Err(e) => return Err(e).with_context(|| talk("did not answer")),
        }
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
        // A run writes frames of at most `MAX_FRAME`: a longer length is not one of its
        // answers, and is not allocated.
        if len > MAX_FRAME {
            anyhow::bail!("{}", talk(&format!("sent a frame of {len} bytes")));
        }
        let mut bytes = vec![0u8; len as usize];
        stream
            .read_exact(&mut bytes)
            .with_context(|| talk("broke off its answer"))?;
        match header[0] {
            TAKEN => taken = true,
            OUTPUT => stdout.write_all(&bytes)?,
            EXIT => {
                stdout.flush()?;
                return Ok(Some(ExitCode::from(bytes.first().copied().unwrap_or(2))));
            }
            FAILED => {
                stdout.flush()?;
                anyhow::bail!("{}", String::from_utf8_lossy(&bytes));
            }
            kind => anyhow::bail!("{}", talk(&format!("sent an unknown answer ({kind})"))),
        }
    }
}

/// The user id of the process serving `stream` (its peer's credentials where the system gives
/// them, else the owner of the socket file at `path`); `None` when neither can be read.
fn served_by(stream: &std::os::unix::net::UnixStream, path: &Path) -> Option<u32> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        if let Ok(peer) = getsockopt(stream, PeerCredentials) {
            return Some(peer.uid());
        }
    }
    let _ = stream;
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| m.uid())
}

/// Whether `error` is the run closing the connection.
fn closed(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use super::socket_path;
    use std::path::Path;

    #[test]
    fn the_socket_lies_beside_the_store_file() {
        assert_eq!(
            socket_path(Path::new("/data/tetrarch/store.redb")),
            Path::new("/data/tetrarch/store.redb.sock")
        );
    }
}
