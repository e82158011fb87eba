//! The gradscope command line: a thin dispatcher over the library; the subcommands are in
//! `src/cli/`. Everything it prints to stdout goes through `cli::out` (so a closed pipe ends it
//! quietly), which the lint below enforces.
#![warn(clippy::print_stdout)]

mod cli;

fn main() {
    std::process::exit(cli::main());
}
