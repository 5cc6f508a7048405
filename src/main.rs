// mimalloc: the worker allocates many small, short-lived buffers per message across threads, where
// glibc's allocator spent about a tenth of the worker's CPU (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    guest_session_worker::cli::main()
}
