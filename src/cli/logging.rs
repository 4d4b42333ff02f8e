//! Log output: human text by default, JSON with `log.format = "json"`. When stderr is the
//! journal the journal adds time stamps itself, so we leave ours and the colours out.
//! `RUST_LOG` overrides `log.level`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = stderr_is_journal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !journal)
        .with_target(false);
    // try_init: a second init (tests, demo after run) is not an error worth dying for.
    let _ = match (cfg.format, journal) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder.without_time().try_init(),
        (LogFormat::Text, false) => builder.try_init(),
    };
}

/// Whether stderr is connected to the journal. systemd sets `JOURNAL_STREAM` to the
/// `DEVICE:INODE` of the stream it gave the service; the variable is inherited by anything
/// the service starts, so it counts only when it names the stderr we actually have (the
/// check `systemd.exec(5)` asks for).
fn stderr_is_journal() -> bool {
    let var = std::env::var("JOURNAL_STREAM").ok();
    names_stream(var.as_deref(), stderr_identity())
}

/// Device and inode of our stderr.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Whether a `JOURNAL_STREAM` value names the stream `(device, inode)`.
fn names_stream(var: Option<&str>, stream: Option<(u64, u64)>) -> bool {
    let (Some(var), Some(stream)) = (var, stream) else {
        return false;
    };
    let Some((dev, ino)) = var.trim().split_once(':') else {
        return false;
    };
    matches!((dev.parse::<u64>(), ino.parse::<u64>()), (Ok(d), Ok(i)) if (d, i) == stream)
}

#[cfg(test)]
mod tests {
    use super::names_stream;

    #[test]
    fn journal_stream_counts_only_when_it_names_our_stderr() {
        assert!(names_stream(Some("64769:1234"), Some((64769, 1234))));
        // Inherited from a parent whose stderr was the journal; ours is something else.
        assert!(!names_stream(Some("64769:1234"), Some((64769, 999))));
        assert!(!names_stream(Some("1:1"), Some((64769, 1234))));
        assert!(!names_stream(Some("garbage"), Some((1, 1))));
        assert!(!names_stream(Some(""), Some((1, 1))));
        assert!(!names_stream(None, Some((1, 1))));
        assert!(!names_stream(Some("1:1"), None));
    }
}
