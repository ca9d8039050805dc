//! `threatmesh completions SHELL` and `threatmesh man --out DIR`: shell
//! completion scripts and manual pages, generated from the same argument
//! definitions the command line parses with, so they never drift from it.

use std::path::PathBuf;

use clap::{Args, CommandFactory};

use super::{Cli, CliError};

/// Arguments of `threatmesh completions`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh completions bash > /etc/bash_completion.d/threatmesh
  threatmesh completions zsh > \"${fpath[1]}/_threatmesh\"
  threatmesh completions fish > ~/.config/fish/completions/threatmesh.fish")]
pub struct CompletionsArgs {
    /// The shell to write a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Arguments of `threatmesh man`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Examples:
  threatmesh man --out /usr/local/share/man/man1 && man threatmesh-peer-add
  threatmesh man --out target/man")]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing): threatmesh.1
    /// and one page per command, e.g. threatmesh-peer-add.1.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Writes the completion script for `args.shell` to standard output.
pub fn completions(args: &CompletionsArgs) -> Result<(), CliError> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "threatmesh", &mut script);
    out_raw!("{}", String::from_utf8_lossy(&script));
    Ok(())
}

/// Writes a manual page per command into `args.out`.
pub fn man(args: &ManArgs) -> Result<(), CliError> {
    let failed = |e: std::io::Error| CliError::Failed(format!("{}: {e}", args.out.display()));
    std::fs::create_dir_all(&args.out).map_err(failed)?;
    clap_mangen::generate_to(Cli::command(), &args.out).map_err(failed)?;
    let pages = std::fs::read_dir(&args.out)
        .map_err(failed)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "1"))
        .count();
    out!(
        "wrote {pages} manual pages to {} (read one with `man {}/threatmesh.1`)",
        args.out.display(),
        args.out.display()
    );
    Ok(())
}
