//! The `dispatch` binary: a thin shell over the library (see `lib.rs`).

fn main() -> std::process::ExitCode {
    dispatch::cli::main()
}
