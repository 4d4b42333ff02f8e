//! The secrets the client must never let through into logs, records or tickets, and the
//! scrubbing of every text it hands on. Whatever a server or a proxy echoes back (a key in
//! an error message, a request dump) is stored and logged, so it is scrubbed first.
//!
//! Scrubbed: the key in use, the keys used before it in this process (a SIGHUP key change
//! does not make an answer echoing the old one harmless; at most [`MAX_OLD_KEYS`] kept), and
//! the base URL's password; each as written, JSON-escaped (also with `\/`) and
//! percent-encoded (upper- and lower-case hex, and `+` for a space).

use secrecy::{ExposeSecret, SecretString};

/// How many earlier keys are kept for scrubbing.
pub const MAX_OLD_KEYS: usize = 8;

/// Secrets shorter than this are not scrubbed: replacing them would garble ordinary text,
/// and no real key is that short.
const MIN_SECRET: usize = 4;

const REDACTED: &str = "[REDACTED]";

pub(crate) struct Secrets {
    key: SecretString,
    old_keys: Vec<SecretString>,
    password: Option<SecretString>,
    /// Every form of every secret, longest first (so a longer form is replaced before a
    /// shorter one inside it), recomputed when the key changes.
    forms: Vec<SecretString>,
}

impl Secrets {
    pub fn new(key: SecretString, password: Option<SecretString>) -> Secrets {
        let mut s = Secrets {
            key,
            old_keys: Vec::new(),
            password,
            forms: Vec::new(),
        };
        s.refresh();
        s
    }

    pub fn key(&self) -> &SecretString {
        &self.key
    }

    /// Makes `key` the one in use; the previous one joins the old keys (oldest dropped).
    pub fn set_key(&mut self, key: SecretString) {
        let old = std::mem::replace(&mut self.key, key);
        let same = |k: &SecretString| k.expose_secret() == old.expose_secret();
        if old.expose_secret() != self.key.expose_secret() && !self.old_keys.iter().any(same) {
            self.old_keys.push(old);
            if self.old_keys.len() > MAX_OLD_KEYS {
                self.old_keys.remove(0);
            }
        }
        self.refresh();
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for form in &self.forms {
            let form = form.expose_secret();
            if out.contains(form) {
                out = out.replace(form, REDACTED);
            }
        }
        out
    }

    /// The length of the longest form, in bytes.
    pub fn longest_form(&self) -> usize {
        self.forms.first().map_or(0, |f| f.expose_secret().len())
    }

    fn refresh(&mut self) {
        let mut forms: Vec<String> = Vec::new();
        let secrets = std::iter::once(&self.key)
            .chain(&self.old_keys)
            .chain(self.password.as_ref());
        for secret in secrets {
            let raw = secret.expose_secret();
            if raw.len() < MIN_SECRET {
                continue;
            }
            for form in forms_of(raw) {
                if !forms.contains(&form) {
                    forms.push(form);
                }
            }
        }
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        self.forms = forms.into_iter().map(SecretString::from).collect();
    }
}

/// `raw` as written, JSON-escaped and percent-encoded.
fn forms_of(raw: &str) -> Vec<String> {
    let json = serde_json::to_string(raw).unwrap_or_default();
    let json = json
        .strip_prefix('"')
        .and_then(|j| j.strip_suffix('"'))
        .unwrap_or(raw)
        .to_owned();
    let json_slash = json.replace('/', "\\/");
    let upper = percent_encode(raw, false, false);
    let lower = percent_encode(raw, true, false);
    let form = percent_encode(raw, false, true);
    vec![raw.to_owned(), json, json_slash, upper, lower, form]
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986: letters, digits, `-._~`);
/// `lower` picks lower-case hex, `plus` writes a space as `+` (form encoding).
fn percent_encode(raw: &str, lower: bool, plus: bool) -> String {
    let mut out = String::with_capacity(raw.len() * 3);
    for b in raw.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            b' ' if plus => out.push('+'),
            _ if lower => out.push_str(&format!("%{b:02x}")),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    #[test]
    fn every_form_of_the_key_is_scrubbed() {
        let key = r#"sk/live+k "q"&x é"#;
        let s = Secrets::new(secret(key), None);
        let json = serde_json::to_string(&serde_json::json!({ "echo": key })).unwrap();
        let forms = [
            key.to_owned(),
            json,
            r#"sk\/live+k \"q\"&x é"#.to_owned(),
            "sk%2Flive%2Bk%20%22q%22%26x%20%C3%A9".to_owned(),
            "sk%2flive%2bk%20%22q%22%26x%20%c3%a9".to_owned(),
            "sk%2Flive%2Bk+%22q%22%26x+%C3%A9".to_owned(),
        ];
        for text in forms {
            let out = s.scrub(&format!("before {text} after"));
            assert!(out.contains(REDACTED), "{text} -> {out}");
            for part in ["sk/live", "sk%2", "sk\\/", "live+k"] {
                assert!(!out.contains(part), "{text} -> {out}");
            }
        }
    }

    #[test]
    fn old_keys_stay_scrubbed_after_a_key_change_and_the_list_is_bounded() {
        let mut s = Secrets::new(secret("sk_old_key_1"), Some(secret("proxy-pass")));
        s.set_key(secret("sk_new_key_2"));
        assert_eq!(s.key().expose_secret(), "sk_new_key_2");
        let out = s.scrub("old sk_old_key_1 new sk_new_key_2 pass proxy-pass");
        assert_eq!(out, "old [REDACTED] new [REDACTED] pass [REDACTED]");
        for i in 0..3 * MAX_OLD_KEYS {
            s.set_key(secret(&format!("sk_rotated_{i:04}")));
        }
        assert_eq!(s.old_keys.len(), MAX_OLD_KEYS);
        // The newest old keys are the ones kept.
        let last_old = format!("sk_rotated_{:04}", 3 * MAX_OLD_KEYS - 2);
        assert_eq!(s.scrub(&last_old), REDACTED);
        // Setting the same key again adds nothing.
        let before = s.old_keys.len();
        let current = s.key().expose_secret().to_owned();
        s.set_key(secret(&current));
        assert_eq!(s.old_keys.len(), before);
    }

    #[test]
    fn tiny_secrets_are_left_alone() {
        let s = Secrets::new(secret("ab"), None);
        assert_eq!(s.scrub("abc"), "abc");
        assert_eq!(s.longest_form(), 0);
    }
}
