//! `portcullis` binary: all the work is in the library; see `cli.rs`.
#![forbid(unsafe_code)]

// A request allocates and frees many small buffers across worker threads;
// glibc malloc's arena locking and consolidation showed up at a fifth of the
// proxy's CPU under keep-alive load. mimalloc's per-thread free lists cut it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    portcullis::cli::main()
}
