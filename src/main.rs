// mimalloc: the worker allocates many small, short-lived buffers per message across threads, where
// glibc's allocator spent about a seventh of the worker's CPU (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` (position 15 of `mi_option_t` in mimalloc v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> std::process::ExitCode {
    // Give freed pages back to the OS at once instead of after 10 ms, so a replica's memory follows
    // its in-flight work (about 6 MiB less peak RSS at 256 in flight). An operator can still set
    // MIMALLOC_PURGE_DELAY.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    guest_session_worker::cli::main()
}
