//! Standard output of the operator commands. `println!` panics when stdout is a pipe whose
//! reader has gone (`importlyd list | head -3`); everything the commands print goes through
//! [`Stdout`] instead, which ends the process quietly then, as `cat` or `ls` would.
//!
//! SIGPIPE stays ignored (Rust's default): `run` and `demo` hold sockets, and a peer closing
//! one must come back as an error to handle, never as a signal that kills the daemon.

use std::io::{self, Write};

/// Prints a line to standard output; a closed pipe ends the process quietly.
macro_rules! outln {
    () => { $crate::cli::out::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::out::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// Prints to standard output without a newline; a closed pipe ends the process quietly.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::out::print(format_args!($($arg)*)) };
}

/// Standard output as a writer whose errors never come back: a closed pipe exits 0 without a
/// word (the reader took what it wanted), any other write error exits 1 naming it. Wrap it in
/// a `BufWriter` for many small writes (`export`).
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stdout().lock().write(buf).or_else(|e| gone(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush().or_else(|e| gone(e))
    }
}

pub fn print(args: std::fmt::Arguments<'_>) {
    // `Stdout` never returns an error: it exits instead.
    let _ = Stdout.write_fmt(args);
}

/// Flushes what is buffered, with the same quiet exit on a closed pipe.
pub fn flush() {
    let _ = Stdout.flush();
}

/// Ends the process for a failed write to standard output. Exiting here, deep in a command,
/// is deliberate: nothing a command does after its output is gone matters to anyone, and the
/// database needs no clean close (every write is committed before it is reported).
fn gone(e: io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("importlyd: writing to standard output: {e}");
    std::process::exit(1);
}
