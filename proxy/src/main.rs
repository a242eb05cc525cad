//! `portcullis` binary: all the work is in the library; see `cli.rs`.
#![forbid(unsafe_code)]

// A request allocates and frees many small buffers across worker threads;
// glibc malloc's arena locking and consolidation showed up at a fifth of the
// proxy's CPU under keep-alive load. mimalloc's per-thread free lists cut it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // mimalloc asks for transparent huge pages on its arenas. The proxy's memory churns
    // (a request's buffers are freed and the pages purged), and every fresh fault of a
    // huge page made the kernel zero 2 MiB: about a tenth of the proxy's CPU under
    // keep-alive load and twice the resident memory. The flag covers the whole process
    // and every thread started after it. A kernel without the prctl keeps the default.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    portcullis::cli::main()
}
