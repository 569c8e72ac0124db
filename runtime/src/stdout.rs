//! Standard output for command-line tools (`resnetc` and the model executables).

use anyhow::{Context, Result};
use std::io::Write;

/// Writes `text` to stdout and flushes it. Output cut short by a closed pipe
/// (`./model --bench 10 | head -c 0`) ends the process quietly with status 0, as a
/// command-line tool's should, where `print!` would panic; under a C `main` that keeps
/// SIGPIPE's default action (the Cranelift executables) the signal ends it first, as
/// quietly. Any other failure is an error.
pub fn write(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("cannot write to stdout"),
    }
}
