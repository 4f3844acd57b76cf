//! The `tetrarch` binary: a thin shell over [`cli`].

mod cli;

use std::process::ExitCode;

/// mimalloc rather than glibc malloc: the agents allocate on one thread and free on another,
/// which glibc handles slowly (over 40% of the Orchestrator's samples in the runtime benchmark).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    cli::main()
}
