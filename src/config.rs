//! The daemon's configuration: built-in defaults, then the TOML file, then
//! `IMPORTLYD_<SECTION>__<KEY>` environment variables (later wins).
//!
//! Every error names the key at fault, because the CLI turns it into a one-line message and
//! exit status 2.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("config key `{key}`: {reason}")]
    Key { key: String, reason: String },
    #[error("config: {0}")]
    Other(String),
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub database: DatabaseConfig,
    pub api: ApiConfig,
    pub limits: LimitsConfig,
    pub retry: RetryConfig,
    pub poll: PollConfig,
    pub pause: PauseConfig,
    pub metadata: MetadataConfig,
    pub log: LogConfig,
    pub admin: AdminConfig,
    pub webhook: WebhookConfig,
    pub cluster: ClusterConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub path: PathBuf,
    /// `postgres://...`: the queue in PostgreSQL instead of the file at `path`. It may hold
    /// the password, so it is a secret: never logged, `Debug` redacts it (see
    /// [`crate::store::postgres::redact_url`] for what logs show). Not serialized: the
    /// defaults layer has no URL.
    #[serde(skip_serializing)]
    pub url: SecretString,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("importlyd.db"),
            url: SecretString::from(String::new()),
        }
    }
}

impl DatabaseConfig {
    /// The PostgreSQL URL, when one is set.
    pub fn url(&self) -> Option<&str> {
        let url = self.url.expose_secret().trim();
        (!url.is_empty()).then_some(url)
    }

    /// SQLite at `path`.
    pub fn sqlite(path: impl Into<PathBuf>) -> DatabaseConfig {
        DatabaseConfig {
            path: path.into(),
            ..DatabaseConfig::default()
        }
    }

    /// PostgreSQL at `url`.
    pub fn postgres(url: &str) -> DatabaseConfig {
        DatabaseConfig {
            url: SecretString::from(url.to_owned()),
            ..DatabaseConfig::default()
        }
    }
}

/// `[cluster]`: several daemons on one PostgreSQL database.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// A daemon whose heartbeat is older than this has lost its claims and slots.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
        }
    }
}

impl ClusterConfig {
    /// How often a daemon renews its lease: a tenth of it, between 100 ms and 1 s, so a
    /// lease survives several missed beats (a slow database, a GC pause elsewhere).
    pub fn heartbeat(&self) -> Duration {
        (self.lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub base_url: String,
    pub key_file: String,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.importly.io".into(),
            key_file: String::new(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// No serde default here: the built-in defaults differ per bucket, so [`Config::load`]
/// layers the file over a serialised [`Config::default`], key by key.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BucketLimit {
    pub requests: u64,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Jobs in progress at once; `0` for buckets without a concurrency limit (status).
    pub concurrent: u32,
    /// Requests of every window left unused, for other programs on the same key.
    #[serde(default)]
    pub reserve: u64,
}

impl BucketLimit {
    fn new(requests: u64, concurrent: u32) -> Self {
        Self {
            requests,
            window: Duration::from_secs(3600),
            concurrent,
            reserve: 0,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub import: BucketLimit,
    pub status: BucketLimit,
    pub metadata: BucketLimit,
    /// The first wait before probing for a concurrency slot another program holds
    /// (import and metadata); it doubles per refusal, up to 5 minutes. Each probe costs a
    /// request of the bucket, so it is long next to the default import pace (one a 15 s).
    #[serde(with = "humantime_serde")]
    pub probe_delay: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            import: BucketLimit::new(240, 2),
            status: BucketLimit::new(3600, 0),
            metadata: BucketLimit::new(1000, 5),
            probe_delay: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub base_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base_delay: Duration::from_secs(30),
            max_delay: Duration::from_secs(6 * 3600),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PollConfig {
    #[serde(with = "humantime_serde")]
    pub status_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub queue_interval: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            status_interval: Duration::from_secs(1),
            queue_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PauseConfig {
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
}

impl Default for PauseConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// Fetch (or reuse) metadata before every import; a row's `options.preflight` wins.
    pub preflight: bool,
    /// Fail imports whose chosen format costs more; 0 = no limit. A row's
    /// `options.max_credits` wins.
    pub max_credits: i64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        Self {
            cache_ttl: Duration::from_secs(24 * 3600),
            preflight: false,
            max_credits: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
    pub keep_attempts: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            keep_attempts: 50,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
    /// The operator token's file (else the credential `importlyd-admin-token`); without a
    /// token the admin API is read-only and `listen` must be a loopback address.
    pub token_file: String,
}

/// Importly's completion callbacks (see `webhook.rs`); off while both keys are empty.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where the receiver listens, e.g. `127.0.0.1:9188`.
    pub listen: String,
    /// The http(s) address Importly can reach that leads to `listen` (a reverse proxy's);
    /// each job's `webhookUrl` is this plus `/<token>`.
    pub public_url: String,
}

impl WebhookConfig {
    pub fn enabled(&self) -> bool {
        !self.public_url.is_empty()
    }
}

impl Config {
    /// Layers defaults, the file (if given; it must exist then) and the environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let defaults = config::Config::try_from(&Config::default())
            .map_err(|e| ConfigError::Other(e.to_string()))?;
        let mut builder = config::Config::builder().add_source(defaults);
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    reason: "no such file".into(),
                });
            }
            builder = builder
                .add_source(config::File::from(path.to_owned()).format(config::FileFormat::Toml));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("IMPORTLYD")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true),
        );
        let raw = builder.build().map_err(|e| from_config_error(e, path))?;
        let mut cfg: Config = raw
            .try_deserialize()
            .map_err(|e| from_config_error(e, path))?;
        cfg.database.path = in_state_directory(
            &cfg.database.path,
            std::env::var_os("STATE_DIRECTORY").as_deref(),
        );
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let key = |k: &str, reason: &str| {
            Err(ConfigError::Key {
                key: k.into(),
                reason: reason.into(),
            })
        };
        match reqwest::Url::parse(&self.api.base_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return key("api.base_url", "must be an http(s) URL"),
        }
        if self.database.path.as_os_str().is_empty() {
            return key("database.path", "must not be empty");
        }
        self.validate_cluster()?;
        for (k, value, min) in self.durations() {
            check_duration(k, value, min)?;
        }
        for (name, b) in [
            ("import", &self.limits.import),
            ("status", &self.limits.status),
            ("metadata", &self.limits.metadata),
        ] {
            if b.requests == 0 {
                return key(&format!("limits.{name}.requests"), "must be at least 1");
            }
            if b.reserve >= b.requests {
                return key(
                    &format!("limits.{name}.reserve"),
                    "must be less than requests",
                );
            }
            if name != "status" && b.concurrent == 0 {
                return key(&format!("limits.{name}.concurrent"), "must be at least 1");
            }
        }
        if self.retry.max_attempts == 0 {
            return key("retry.max_attempts", "must be at least 1");
        }
        if self.retry.max_delay < self.retry.base_delay {
            return key("retry.max_delay", "must not be less than retry.base_delay");
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return key(
                "log.level",
                "is not a valid level or filter (e.g. info, debug)",
            );
        }
        if self.metadata.max_credits < 0 {
            return key("metadata.max_credits", "must be 0 (no limit) or more");
        }
        if self.log.keep_attempts == 0 {
            return key("log.keep_attempts", "must be at least 1");
        }
        if !self.admin.listen.is_empty()
            && self.admin.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return key(
                "admin.listen",
                "must be empty or an address like 127.0.0.1:9187",
            );
        }
        self.validate_webhook()
    }

    /// Both webhook keys or neither: a public URL nobody listens behind (or a listener no
    /// job is told about) is a mistake, not a setting.
    /// `database.url` must be a PostgreSQL URL, and a lease must outlive any request sent
    /// under it: a daemon sends only while its lease has a whole request timeout left, so
    /// the lease needs that plus a few heartbeats to ever send at all.
    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let Some(url) = self.database.url() else {
            return Ok(());
        };
        let key = |k: &str, reason: String| {
            Err(ConfigError::Key {
                key: k.into(),
                reason,
            })
        };
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "postgres" | "postgresql") && u.has_host() => {}
            // The URL may hold a password: the message never repeats it.
            _ => {
                return key(
                    "database.url",
                    "must be a PostgreSQL URL like postgres://user@host:5432/db".into(),
                );
            }
        }
        let c = &self.cluster;
        check_duration("cluster.lease".into(), c.lease, MIN_INTERVAL)?;
        let needed = self.api.request_timeout + 3 * c.heartbeat();
        if c.lease < needed {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            return key(
                "cluster.lease",
                format!(
                    "{} is too short: it must cover api.request_timeout ({}) plus three \
                     heartbeats ({}), at least {}; raise it or lower api.request_timeout",
                    show(c.lease),
                    show(self.api.request_timeout),
                    show(3 * c.heartbeat()),
                    show(needed)
                ),
            );
        }
        Ok(())
    }

    fn validate_webhook(&self) -> Result<(), ConfigError> {
        let key = |k: &str, reason: &str| {
            Err(ConfigError::Key {
                key: k.into(),
                reason: reason.into(),
            })
        };
        let w = &self.webhook;
        if w.listen.is_empty() && w.public_url.is_empty() {
            return Ok(());
        }
        if w.listen.parse::<std::net::SocketAddr>().is_err() {
            return key(
                "webhook.listen",
                "must be an address like 127.0.0.1:9188 (and is needed with webhook.public_url)",
            );
        }
        match reqwest::Url::parse(&w.public_url) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                return key(
                    "webhook.public_url",
                    "must not carry user:password@ (it goes into every submit and the attempt log)",
                );
            }
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {}
            _ if w.public_url.is_empty() => {
                return key(
                    "webhook.public_url",
                    "must be set with webhook.listen: the http(s) address Importly can reach",
                );
            }
            _ => return key("webhook.public_url", "must be an http(s) URL"),
        }
        if w.public_url.contains(['?', '#']) {
            return key(
                "webhook.public_url",
                "must not have a query or fragment (the token is appended as a path segment)",
            );
        }
        Ok(())
    }
}

/// The longest any configured duration may be. The code multiplies and adds durations
/// (`status_interval * 6`, `now + probe_interval`, backoff doublings up to `max_delay`), and
/// `SystemTime + Duration` panics on overflow: bounding them all at load keeps every such sum
/// far from the edge, and nothing sensible is longer.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// The shortest interval where zero makes no sense (a zero or 1 ns queue interval is a busy
/// loop, a zero timeout fails every request).
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

impl Config {
    /// Every duration key with the least it may be; all are at most [`MAX_DURATION`].
    fn durations(&self) -> Vec<(String, Duration, Duration)> {
        let mut d = vec![
            (
                "api.request_timeout".to_owned(),
                self.api.request_timeout,
                MIN_INTERVAL,
            ),
            (
                "retry.base_delay".to_owned(),
                self.retry.base_delay,
                MIN_INTERVAL,
            ),
            (
                "retry.max_delay".to_owned(),
                self.retry.max_delay,
                MIN_INTERVAL,
            ),
            (
                "poll.status_interval".to_owned(),
                self.poll.status_interval,
                MIN_INTERVAL,
            ),
            (
                "poll.queue_interval".to_owned(),
                self.poll.queue_interval,
                MIN_INTERVAL,
            ),
            (
                "pause.probe_interval".to_owned(),
                self.pause.probe_interval,
                MIN_INTERVAL,
            ),
            (
                "limits.probe_delay".to_owned(),
                self.limits.probe_delay,
                MIN_INTERVAL,
            ),
            // Zero is meaningful here: never reuse cached metadata.
            (
                "metadata.cache_ttl".to_owned(),
                self.metadata.cache_ttl,
                Duration::ZERO,
            ),
        ];
        for (name, b) in [
            ("import", &self.limits.import),
            ("status", &self.limits.status),
            ("metadata", &self.limits.metadata),
        ] {
            d.push((
                format!("limits.{name}.window"),
                b.window,
                Duration::from_secs(1),
            ));
        }
        d
    }
}

/// `value` within `min..=MAX_DURATION`, or an error naming `key`.
fn check_duration(key: String, value: Duration, min: Duration) -> Result<(), ConfigError> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    let reason = if value < min {
        if min == MIN_INTERVAL {
            "must be greater than zero (at least 1ms)".to_owned()
        } else {
            format!("must be at least {}", show(min))
        }
    } else if value > MAX_DURATION {
        format!(
            "must be at most {} (got {})",
            show(MAX_DURATION),
            show(value)
        )
    } else {
        return Ok(());
    };
    Err(ConfigError::Key { key, reason })
}

/// Under systemd (`StateDirectory=` sets `$STATE_DIRECTORY`, several paths joined by `:`),
/// a relative `database.path` lives in the first state directory, so the default
/// `importlyd.db` lands in `/var/lib/importlyd` and not in the service's working directory.
/// An absolute path is kept as it is.
fn in_state_directory(path: &Path, state_dir: Option<&std::ffi::OsStr>) -> PathBuf {
    let first = state_dir
        .and_then(|d| d.to_str())
        .and_then(|d| d.split(':').next())
        .filter(|d| !d.is_empty());
    match first {
        Some(dir) if path.is_relative() && !path.as_os_str().is_empty() => {
            Path::new(dir).join(path)
        }
        _ => path.to_owned(),
    }
}

/// The `config` crate puts the key in its message ("... for key `retry.max_attempts` ...");
/// we keep that text and add the file name.
fn from_config_error(e: config::ConfigError, path: Option<&Path>) -> ConfigError {
    match (e, path) {
        (config::ConfigError::FileParse { cause, .. }, Some(p)) => ConfigError::File {
            path: p.to_owned(),
            reason: cause.to_string(),
        },
        (e, _) => ConfigError::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn a_relative_database_path_lives_in_the_state_directory() {
        let rel = Path::new("importlyd.db");
        assert_eq!(
            in_state_directory(rel, Some(OsStr::new("/var/lib/importlyd:/var/lib/other"))),
            PathBuf::from("/var/lib/importlyd/importlyd.db")
        );
        assert_eq!(in_state_directory(rel, None), rel);
        assert_eq!(in_state_directory(rel, Some(OsStr::new(""))), rel);
        let abs = Path::new("/srv/q.db");
        assert_eq!(
            in_state_directory(abs, Some(OsStr::new("/var/lib/importlyd"))),
            abs
        );
    }

    #[test]
    fn webhook_keys_go_together_and_are_checked() {
        let with = |listen: &str, public_url: &str| {
            let mut c = Config::default();
            c.webhook.listen = listen.into();
            c.webhook.public_url = public_url.into();
            c.validate().err().map(|e| e.to_string())
        };
        assert_eq!(with("", ""), None, "off");
        assert_eq!(
            with("127.0.0.1:9188", "https://hooks.example/importly"),
            None
        );
        for (listen, url, key) in [
            ("", "https://hooks.example/i", "webhook.listen"),
            ("localhost", "https://hooks.example/i", "webhook.listen"),
            ("127.0.0.1:9188", "", "webhook.public_url"),
            (
                "127.0.0.1:9188",
                "ftp://hooks.example/i",
                "webhook.public_url",
            ),
            ("127.0.0.1:9188", "hooks.example/i", "webhook.public_url"),
            (
                "127.0.0.1:9188",
                "https://hooks.example/i?x=1",
                "webhook.public_url",
            ),
            (
                "127.0.0.1:9188",
                "https://user:secret@hooks.example/i",
                "webhook.public_url",
            ),
        ] {
            let err = with(listen, url).unwrap_or_default();
            assert!(err.contains(&format!("`{key}`")), "{listen} {url}: {err}");
        }
    }
}
