//! The typed values that cross the store interface in place of text: a row's [`State`], its
//! kind ([`JobKind`]) and times ([`SystemTime`]). Each backend renders them in its own SQL;
//! what is read back is checked here, so a value an outside writer garbled becomes a
//! `StoreError` (a column decode error naming the column), never a panic.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sqlx::ValueRef;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;

use crate::clock;
use crate::importly::JobKind;
use crate::limits::Scope;

/// Where a row stands (the `state_must_be_known` CHECK constraint of both schemas).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Pending,
    Submitting,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl State {
    /// Every state, in the lifecycle's order (the CHECK constraint's).
    pub const ALL: [State; 6] = [
        State::Pending,
        State::Submitting,
        State::Running,
        State::Completed,
        State::Failed,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Submitting => "submitting",
            State::Running => "running",
            State::Completed => "completed",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }
}

/// Ordered by name, not by the lifecycle: maps keyed by state (`status --json`'s counts)
/// printed their keys alphabetically while they were text, and must go on doing so.
impl Ord for State {
    fn cmp(&self, other: &State) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for State {
    fn partial_cmp(&self, other: &State) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Text that names no state (or kind, or scope).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {text:?}: one of {known}")]
pub struct UnknownName {
    what: &'static str,
    text: String,
    known: String,
}

impl UnknownName {
    fn new(what: &'static str, text: &str, known: &[&str]) -> UnknownName {
        UnknownName {
            what,
            text: text.to_owned(),
            known: known.join(", "),
        }
    }
}

impl FromStr for State {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<State, UnknownName> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownName::new("state", s, &State::ALL.map(State::as_str)))
    }
}

impl FromStr for JobKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<JobKind, UnknownName> {
        JobKind::parse(s).ok_or_else(|| UnknownName::new("job kind", s, &["import", "metadata"]))
    }
}

impl FromStr for Scope {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Scope, UnknownName> {
        Scope::parse(s)
            .ok_or_else(|| UnknownName::new("pause scope", s, &["all", "import", "metadata"]))
    }
}

/// The `sqlx::Type` of a type both backends store as text (a name, or a time's canonical
/// text).
macro_rules! text_type {
    ($t:ty) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $t
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }
    };
}

/// The lowercase name everywhere: `Display`, serde, and the SQL text of both backends.
macro_rules! named {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        text_type!($t);

        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $t
        where
            &'static str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(&self, buf: &mut DB::ArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&'static str as sqlx::Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $t
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(value: <DB as sqlx::Database>::ValueRef<'r>) -> Result<$t, BoxDynError> {
                let s = <String as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(s.parse::<$t>()?)
            }
        }
    };
}

named!(State);
named!(JobKind);
named!(Scope);

/// Compares with the name, as in `assert_eq!(row.state, "failed")`.
macro_rules! eq_name {
    ($t:ty) => {
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

eq_name!(State);
eq_name!(JobKind);
eq_name!(Scope);

/// A time as both backends read it back: the canonical text (`clock::iso`; PostgreSQL's
/// `iso!`), checked. Only for decoding: a field holds the [`SystemTime`] (`#[sqlx(try_from
/// = "Iso")]`).
pub struct Iso(pub SystemTime);

impl From<Iso> for SystemTime {
    fn from(t: Iso) -> SystemTime {
        t.0
    }
}

/// Text that is no time.
#[derive(Debug, thiserror::Error)]
#[error("not a time: {0:?}")]
pub struct NotATime(String);

/// `s` as a time, or an error naming the text (for values read back from the database).
pub fn parse_time(s: &str) -> Result<SystemTime, NotATime> {
    clock::parse_iso(s).ok_or_else(|| NotATime(s.to_owned()))
}

/// A time that may be absent (a nullable column, or an aggregate over no rows), read back as
/// [`Iso`] reads one: `NULL` is `None`, garbled text an error
/// (`#[sqlx(try_from = "OptIso")]`).
pub struct OptIso(pub Option<SystemTime>);

impl From<OptIso> for Option<SystemTime> {
    fn from(t: OptIso) -> Option<SystemTime> {
        t.0
    }
}

/// A time of `imports` (or an aggregate of one), read back leniently: text that is no time
/// reads as the epoch instead of failing.
///
/// Why not [`Iso`]'s error: `imports` is the table users write themselves, and on SQLite its
/// time columns can legitimately hold text `parse_time` refuses. Migration 0004's triggers
/// rewrite every time `strftime()` parses into the canonical form, but leave what it cannot
/// parse as written in `created_at`, `updated_at` and `completed_at`, and `next_attempt_at`'s
/// CHECK (`julianday()`) accepts years before 1970 (as PostgreSQL's `timestamptz` does), which
/// `SystemTime`'s canonical text cannot show. One such row must not fail `list`, `export` or
/// the dashboard for every other row: it shows as `1970-01-01T00:00:00.000Z`, the time the
/// canonical text clamps anything earlier to, and sorts as due long ago.
/// (`#[sqlx(try_from = "LaxIso")]`; every other table is the daemon's own and is read with
/// [`Iso`].)
pub struct LaxIso(pub SystemTime);

impl From<LaxIso> for SystemTime {
    fn from(t: LaxIso) -> SystemTime {
        t.0
    }
}

/// [`LaxIso`] for a nullable column: `NULL` is `None` (`#[sqlx(try_from = "OptLaxIso")]`).
pub struct OptLaxIso(pub Option<SystemTime>);

impl From<OptLaxIso> for Option<SystemTime> {
    fn from(t: OptLaxIso) -> Option<SystemTime> {
        t.0
    }
}

/// `s` as a time, the epoch if it is none (see [`LaxIso`]).
pub fn lax_time(s: &str) -> SystemTime {
    clock::parse_iso(s).unwrap_or(std::time::UNIX_EPOCH)
}

/// The `sqlx::Type` and `Decode` of a time read back from the text both backends render
/// times as: `read` makes the value from the text `s`; `null => v` reads `NULL` as `v`
/// (without it, `NULL` is `String`'s decode error).
macro_rules! time_decode {
    ($t:ident, $(null => $null:expr,)? |$s:ident| $read:expr) => {
        text_type!($t);

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $t
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(value: <DB as sqlx::Database>::ValueRef<'r>) -> Result<$t, BoxDynError> {
                $(
                    if value.is_null() {
                        return Ok($null);
                    }
                )?
                let $s = <String as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok($read)
            }
        }
    };
}

time_decode!(Iso, |s| Iso(parse_time(&s)?));
time_decode!(OptIso, null => OptIso(None), |s| OptIso(Some(parse_time(&s)?)));
// NULL only where PostgreSQL's `to_char` met a `timestamptz` of 'infinity', which is no time
// either.
time_decode!(LaxIso, null => LaxIso(std::time::UNIX_EPOCH), |s| LaxIso(lax_time(&s)));
time_decode!(OptLaxIso, null => OptLaxIso(None), |s| OptLaxIso(Some(lax_time(&s))));

/// Serializes a time as the canonical text, so JSON that carried the stored text before it
/// was typed prints the same bytes (`#[serde(serialize_with = "iso")]`).
pub fn iso<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&clock::iso(*t))
}

/// [`iso`] for an optional time: `null` when absent.
pub fn iso_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => iso(t, s),
        None => s.serialize_none(),
    }
}

/// Reads the canonical text [`iso`] writes (`#[serde(deserialize_with = "from_iso")]`).
pub fn from_iso<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    parse_time(&s).map_err(serde::de::Error::custom)
}

/// A minute's start as its canonical text's first 16 characters (`2026-12-07T01:52`), the
/// minute of `finished_per_minute` (`#[serde(serialize_with = "minute")]`).
pub fn minute<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&minute_text(*t))
}

/// `t`'s minute as text (`2026-12-07T01:52`).
pub fn minute_text(t: SystemTime) -> String {
    let mut text = clock::iso(t);
    text.truncate(16);
    text
}

/// The minute `text` (`2026-12-07T01:52`, the first 16 characters of a stored time) as its
/// start, read leniently as [`LaxIso`] (it is cut from `imports.updated_at`).
pub fn lax_minute(text: &str) -> SystemTime {
    lax_time(&format!("{text}:00.000Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_say_what_is_known() {
        for st in State::ALL {
            assert_eq!(st.as_str().parse::<State>(), Ok(st));
            assert_eq!(
                serde_json::to_string(&st).unwrap(),
                format!("\"{}\"", st.as_str())
            );
            assert_eq!(
                serde_json::from_str::<State>(&format!("\"{st}\"")).unwrap(),
                st
            );
        }
        let e = "done".parse::<State>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown state \"done\": one of pending, submitting, running, completed, failed, \
             cancelled"
        );
        assert!("Import".parse::<JobKind>().is_err());
        assert_eq!("metadata".parse::<JobKind>(), Ok(JobKind::Metadata));
        assert_eq!("all".parse::<Scope>(), Ok(Scope::All));
    }

    #[test]
    fn maps_keyed_by_state_keep_their_alphabetical_order() {
        let mut sorted = State::ALL;
        sorted.sort();
        let names: Vec<&str> = sorted.iter().map(|s| s.as_str()).collect();
        let mut alpha = names.clone();
        alpha.sort();
        assert_eq!(names, alpha);
    }

    #[test]
    fn times_serialize_as_the_canonical_text_they_were_stored_as() {
        #[derive(Serialize, Deserialize)]
        struct T {
            #[serde(serialize_with = "iso", deserialize_with = "from_iso")]
            at: SystemTime,
        }
        #[derive(Serialize)]
        struct O {
            #[serde(serialize_with = "iso_opt")]
            at: Option<SystemTime>,
            #[serde(serialize_with = "minute")]
            m: SystemTime,
        }
        let text = "2999-01-01T10:00:00.123Z";
        let json = format!("{{\"at\":\"{text}\"}}");
        let t: T = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), json);
        assert!(serde_json::from_str::<T>(r#"{"at":"soon"}"#).is_err());
        let o = O { at: None, m: t.at };
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"at":null,"m":"2999-01-01T10:00"}"#
        );
        assert_eq!(
            lax_minute("2999-01-01T10:00"),
            lax_time("2999-01-01T10:00:00.000Z")
        );

        // The group commit's SQL reads the records' times from their JSON as this text.
        let r = crate::store::AttemptRecord {
            started_at: t.at,
            finished_at: t.at,
            ..Default::default()
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            (&v["started_at"], &v["finished_at"]),
            (&text.into(), &text.into())
        );
    }

    #[test]
    fn times_users_garbled_read_as_the_epoch() {
        for odd in ["yesterday", "1960-01-01T00:00:00.000Z", ""] {
            assert_eq!(lax_time(odd), std::time::UNIX_EPOCH, "{odd}");
        }
        let t = lax_time("2026-12-07T10:00:00.123Z");
        assert_eq!(clock::iso(t), "2026-12-07T10:00:00.123Z");
    }

    #[test]
    fn garbled_times_are_errors() {
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-12-07T10:00:00.123Z").is_ok());
    }
}
