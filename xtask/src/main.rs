//! `cargo xtask`: see `lib.rs` and `flags.rs`.

fn main() -> std::process::ExitCode {
    xtask::run_cli()
}
