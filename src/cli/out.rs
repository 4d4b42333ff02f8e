//! Standard output of the operator commands. `println!` panics when stdout is a pipe whose
//! reader has gone (`importlyd list | head -3`); everything the commands print goes through
//! [`Stdout`] instead. Once the reader has gone, output is dropped and the command ends as
//! it would have (its work done, its usual exit status), without a word; a command that
//! only prints (`export`) asks [`gone`] and stops early.
//!
//! SIGPIPE stays ignored (Rust's default): `run` and `demo` hold sockets, and a peer closing
//! one must come back as an error to handle, never as a signal that kills the daemon.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once a write met a closed pipe.
static GONE: AtomicBool = AtomicBool::new(false);

/// Prints a line to standard output; after the reader has gone, nothing.
macro_rules! outln {
    () => { $crate::cli::out::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::out::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints to standard output without a newline; after the reader has gone, nothing.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::out::print(format_args!($($arg)*)) };
}

/// Prints a line to standard error, ignoring a failed write: a closed stderr
/// (`2>&1 | head`) must not panic, and the exit status still tells what happened.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Standard output as a writer whose errors never come back: a closed pipe turns it into a
/// sink (see [`gone`]); any other write error (a full disk under `export > file`) ends the
/// process with exit 1, naming it. Wrap it in a `BufWriter` for many small writes.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if gone() {
            return Ok(buf.len());
        }
        match io::stdout().lock().write(buf) {
            Ok(n) => Ok(n),
            Err(e) => closed(e).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if gone() {
            return Ok(());
        }
        io::stdout().lock().flush().or_else(closed)
    }
}

pub fn print(args: std::fmt::Arguments<'_>) {
    // `Stdout` never returns an error.
    let _ = Stdout.write_fmt(args);
}

/// Flushes what is buffered, with the same handling of a closed pipe.
pub fn flush() {
    let _ = Stdout.flush();
}

/// True once standard output's reader has gone: nothing printed from now on is read.
pub fn gone() -> bool {
    GONE.load(Ordering::Relaxed)
}

fn closed(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        GONE.store(true, Ordering::Relaxed);
        return Ok(());
    }
    // Exiting here, deep in a command, is deliberate: its output is lost, and the database
    // needs no clean close (every write is committed before it is reported).
    errln!("importlyd: writing to standard output: {e}");
    std::process::exit(1);
}
