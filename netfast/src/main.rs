//! The `netfast` command line. Each subcommand lives in its own module under `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    // End quietly when the reader of our output goes away (`netfast conntrack list | head`),
    // as other command-line tools do, instead of panicking in println!.
    // SAFETY: restores a signal's default disposition before any other thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    cli::main()
}
