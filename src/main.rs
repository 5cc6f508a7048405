fn main() -> std::process::ExitCode {
    guest_session_worker::cli::main()
}
