//! The `threatmesh` binary: parses arguments and hands them to the library.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    threatmesh::cli::run(threatmesh::cli::Cli::parse())
}
