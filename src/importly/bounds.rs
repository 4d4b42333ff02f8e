//! How much of what a server says the client keeps: the body cap, the job-id rules and the
//! bound on every text it hands on for logs and records. A server (or a proxy in front of
//! it) that sends more is garbled, never a reason to grow.

/// Response bodies are kept up to this size in the attempt log (the log's cap): what a
/// ticket shows of an answer.
pub const MAX_BODY: usize = 16 * 1024;

/// The largest answer read and parsed (1 MiB). A completed metadata job with many formats
/// easily passes [`MAX_BODY`] and must still be read whole; an answer over this is not
/// read further, not parsed (a garbled answer), and kept cut to [`MAX_BODY`].
pub const MAX_ANSWER: usize = 1024 * 1024;

/// The longest job id accepted from a submit's answer.
pub const MAX_JOB_ID: usize = 128;

/// The longest text the client produces for a log field or a record's `error` (an error
/// message taken from a body, a transport error), before the cut marker.
pub const MAX_LOG_FIELD: usize = 1024;

/// A job id we can store, log and put in a status URL: 1 to [`MAX_JOB_ID`] printable ASCII
/// characters, none of them a space or one of `/ ? # &`.
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_JOB_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'/' | b'?' | b'#' | b'&'))
}

/// `text` cut to at most `max` bytes on a character boundary, with a marker saying how much
/// was cut; unchanged when it fits.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let end = floor_char_boundary(text, max);
    format!("{} [... {} bytes cut]", &text[..end], text.len() - end)
}

/// The largest index `<= i` that is a character boundary of `s`.
pub(crate) fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    let mut end = i;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// `url` without the password of a `user:password@` (or a lone `user@`) part: what may be
/// shown of a base URL in logs and `Debug`. Text that does not parse as a URL is cut at its
/// last `@` before the path the same way.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => format!("{scheme}://[redacted]@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_short_printable_and_url_safe() {
        assert!(valid_job_id("imp_11436db8_1"));
        assert!(valid_job_id(&"a".repeat(MAX_JOB_ID)));
        assert!(valid_job_id("12345"));
        for bad in [
            "",
            "a b",
            "a/b",
            "a?b",
            "a#b",
            "a&b",
            "tab\there",
            "nl\n",
            "é",
            "\u{7f}",
        ] {
            assert!(!valid_job_id(bad), "{bad:?}");
        }
        assert!(!valid_job_id(&"a".repeat(MAX_JOB_ID + 1)));
    }

    #[test]
    fn bounded_cuts_on_a_character_boundary_and_says_so() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("ééé", 3), "é [... 4 bytes cut]");
        let long = "x".repeat(10_000);
        let b = bounded(&long, MAX_LOG_FIELD);
        assert!(b.len() < MAX_LOG_FIELD + 40, "{}", b.len());
        assert!(b.ends_with("[... 8976 bytes cut]"));
    }

    #[test]
    fn userinfo_is_redacted() {
        assert_eq!(
            redact_url("https://user:s3cret@proxy.example/api"),
            "https://[redacted]@proxy.example/api"
        );
        assert_eq!(redact_url("http://127.0.0.1:8787"), "http://127.0.0.1:8787");
        assert_eq!(
            redact_url("http://h/path?x=a@b"),
            "http://h/path?x=a@b",
            "an @ after the host is not userinfo"
        );
    }
}
