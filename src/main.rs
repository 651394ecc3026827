//! The `lwf-engine` command line: parse, run (the library does the work),
//! print. Errors become one line and a non-zero exit.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::one_line_panics();
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match cli::run(cli) {
        Ok(out) => {
            out.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lwf-engine: error: {e}");
            ExitCode::FAILURE
        }
    }
}
