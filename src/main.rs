//! The `threatmesh` binary: parses arguments and hands them to the library.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    match threatmesh::cli::Cli::try_parse() {
        Ok(cli) => threatmesh::cli::run(cli),
        Err(e) => threatmesh::cli::argument_error(&e),
    }
}
