//! Parsing of media URLs and the URL rules that steer a job's outcome (see the module docs of
//! `sim` for the table).

/// The parts of an http(s) URL the rules look at.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct MediaUrl {
    /// Lower-cased host, without port or user info.
    pub host: String,
    /// Path, without query or fragment; may be empty.
    pub path: String,
}

/// Parses an absolute http or https URL with a non-empty host; `None` for anything else.
/// Hand-rolled because the rules need only host and path.
pub(crate) fn parse_media_url(s: &str) -> Option<MediaUrl> {
    let (scheme, rest) = s.trim().split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = host_of(authority)?;
    let path_end = tail.find(['?', '#']).unwrap_or(tail.len());
    Some(MediaUrl {
        host,
        path: tail[..path_end].to_owned(),
    })
}

/// The host of an authority `user@host:port`, `None` when empty or containing whitespace.
fn host_of(authority: &str) -> Option<String> {
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if hostport.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port after them.
        let close = hostport.find(']')?;
        &hostport[..=close]
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// What the URL asks of the simulator.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct UrlRules {
    pub not_found: bool,
    pub bad: bool,
    pub fail: bool,
    pub slow: bool,
    /// `/flaky500-N`: the first N start requests for this exact URL get a 500.
    pub flaky500: Option<u64>,
    /// `cost-N` path segment: the import costs N credits.
    pub cost: Option<i64>,
}

impl UrlRules {
    pub fn of(url: &MediaUrl) -> Self {
        let path = url.path.as_str();
        Self {
            not_found: url.host == "unreachable.example" || path.contains("/notfound"),
            bad: path.contains("/bad"),
            fail: path.contains("/fail"),
            slow: path.contains("/slow"),
            flaky500: number_after(path, "/flaky500-"),
            cost: path
                .split('/')
                .find_map(|seg| seg.strip_prefix("cost-"))
                .filter(|n| all_digits(n))
                .and_then(|n| n.parse().ok()),
        }
    }
}

/// The decimal number right after the first `marker` in `s` (`/flaky500-2.mp4` gives 2).
fn number_after(s: &str, marker: &str) -> Option<u64> {
    let rest = &s[s.find(marker)? + marker.len()..];
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(s: &str) -> UrlRules {
        UrlRules::of(&parse_media_url(s).unwrap_or_else(|| panic!("not a url: {s}")))
    }

    #[test]
    fn parses_host_and_path() {
        let u = parse_media_url("HTTPS://user@Media.Example.com:8443/a/b.mp4?x=/bad#f");
        assert_eq!(
            u,
            Some(MediaUrl {
                host: "media.example.com".into(),
                path: "/a/b.mp4".into()
            })
        );
        assert_eq!(
            parse_media_url("http://[::1]:80/x").map(|u| u.host),
            Some("[::1]".into())
        );
        assert_eq!(
            parse_media_url("http://h").map(|u| u.path),
            Some(String::new())
        );
    }

    #[test]
    fn rejects_non_http_urls() {
        for s in [
            "ftp://x/y",
            "example.com/a",
            "http://",
            "http:///a",
            "https://:80/a",
            "",
        ] {
            assert_eq!(parse_media_url(s), None, "{s}");
        }
    }

    #[test]
    fn reads_the_rules() {
        assert!(rules("https://unreachable.example/a.mp4").not_found);
        assert!(rules("https://e.com/notfound/a.mp4").not_found);
        assert!(rules("https://e.com/x/bad.mp4").bad);
        assert!(rules("https://e.com/fail/a.mp4").fail);
        assert!(rules("https://e.com/slow/a.mp4").slow);
        assert_eq!(rules("https://e.com/flaky500-2.mp4").flaky500, Some(2));
        assert_eq!(rules("https://e.com/flaky500-x.mp4").flaky500, None);
        assert_eq!(rules("https://e.com/cost-5/a.mp4").cost, Some(5));
        assert_eq!(rules("https://e.com/a-cost-5.mp4").cost, None);
        assert_eq!(rules("https://e.com/cost-5x/a.mp4").cost, None);
        assert_eq!(rules("https://e.com/ok.mp4"), UrlRules::default());
    }
}
