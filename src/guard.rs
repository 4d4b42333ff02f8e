//! The credit guard and the metadata it reads: pure functions over Importly's metadata
//! `data`, so the scheduler only asks "what would this row cost?".
//!
//! With `preflight` (a row's `options` or `metadata.preflight` in the config) an import
//! first has (or fetches) the URL's metadata; with `max_credits` it fails without spending
//! anything when the chosen format costs more. The chosen format is the one whose `quality`
//! equals the row's `videoQuality`, or the most expensive when none is asked for.

use serde_json::Value;

/// The parts of a completed metadata job the cache keeps in columns.
#[derive(Clone, Debug, PartialEq)]
pub struct MetaInfo {
    pub title: Option<String>,
    pub duration: Option<f64>,
    /// `availableFormats` as given.
    pub formats: Value,
}

/// The fields may sit in `data.result` or directly in `data`; accept both.
pub fn meta_info(data: &Value) -> MetaInfo {
    let src = data.get("result").filter(|r| r.is_object()).unwrap_or(data);
    MetaInfo {
        title: src.get("title").and_then(Value::as_str).map(str::to_owned),
        duration: src.get("duration").and_then(Value::as_f64),
        formats: src
            .get("availableFormats")
            .filter(|f| f.is_array())
            .cloned()
            .unwrap_or_else(|| Value::Array(Vec::new())),
    }
}

/// What a row asks of the guard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Guard {
    pub preflight: bool,
    pub max_credits: Option<i64>,
    pub video_quality: Option<String>,
}

impl Guard {
    /// From the row's `options`, falling back to the config defaults. A row's own
    /// `"preflight": false` turns a global preflight (and a global `max_credits`) off for
    /// it, but never the row's own `max_credits`: a limit the row states is always checked,
    /// so a contradictory `{"preflight": false, "max_credits": 3}` fails closed.
    ///
    /// A guard key the guard cannot read is an error, never "no guard": a row that asked for
    /// a spending limit must not spend because of how the limit was written. `max_credits`
    /// is a whole number of credits, 0 or more; a float counts by its whole part (costs are
    /// whole credits, so `5.5` allows what `5` allows); `null` means "not given".
    pub fn from_options(
        options: &str,
        default_preflight: bool,
        default_max: Option<i64>,
    ) -> Result<Guard, String> {
        let v: Value = serde_json::from_str(options).unwrap_or(Value::Null);
        let own_max = match v.get("max_credits") {
            None | Some(Value::Null) => None,
            Some(m) => Some(whole_credits(m).ok_or_else(|| {
                format!(
                    "credit guard: options.max_credits must be a whole number of credits, \
                     0 or more, not {m}; nothing was spent"
                )
            })?),
        };
        let max_credits = own_max.or(default_max);
        let preflight = match v.get("preflight") {
            None | Some(Value::Null) => default_preflight || max_credits.is_some(),
            Some(Value::Bool(b)) => *b || own_max.is_some(),
            Some(p) => {
                return Err(format!(
                    "credit guard: options.preflight must be true or false, not {p}; \
                     nothing was spent"
                ));
            }
        };
        Ok(Guard {
            preflight,
            max_credits,
            video_quality: v
                .get("videoQuality")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// A JSON number as a non-negative whole number of credits (see [`Guard::from_options`]).
fn whole_credits(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return (n >= 0).then_some(n);
    }
    if v.as_u64().is_some() {
        return Some(i64::MAX);
    }
    let f = v.as_f64().filter(|f| f.is_finite() && *f >= 0.0)?;
    // Saturating: a limit beyond i64 is no limit in practice.
    Some(f.floor() as i64)
}

/// The cost of the format the row would get: `quality == videoQuality`, else the highest.
/// `None` when the metadata lists no costs.
pub fn cost(formats: &Value, video_quality: Option<&str>) -> Option<i64> {
    let list = formats.as_array()?;
    let cost_of = |f: &Value| f.get("costInCredits").and_then(Value::as_i64);
    if let Some(q) = video_quality
        && let Some(c) = list
            .iter()
            .find(|f| f.get("quality").and_then(Value::as_str) == Some(q))
            .and_then(cost_of)
    {
        return Some(c);
    }
    list.iter().filter_map(cost_of).max()
}

/// The guard's verdict on metadata already at hand: `Err(reason)` to fail the row.
pub fn check(guard: &Guard, formats: &Value) -> Result<Option<i64>, String> {
    let c = cost(formats, guard.video_quality.as_deref());
    match (guard.max_credits, c) {
        (Some(max), Some(c)) if c > max => Err(format!(
            "credit guard: the {} format would cost {c} credits, more than max_credits = {max}; \
             nothing was spent",
            guard.video_quality.as_deref().unwrap_or("most expensive")
        )),
        (Some(max), None) => Err(format!(
            "credit guard: the metadata lists no cost for this media, so max_credits = {max} \
             cannot be checked; nothing was spent"
        )),
        _ => Ok(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn formats() -> Value {
        json!([
            {"quality": "360p", "costInCredits": 1},
            {"quality": "720p", "costInCredits": 2},
            {"quality": "1080p", "costInCredits": 4},
            {"quality": null, "isAudioOnly": true, "costInCredits": 1}
        ])
    }

    #[test]
    fn cost_follows_the_quality_asked_for() {
        assert_eq!(cost(&formats(), Some("720p")), Some(2));
        assert_eq!(cost(&formats(), None), Some(4));
        assert_eq!(cost(&formats(), Some("2160p")), Some(4));
        assert_eq!(cost(&json!([]), None), None);
    }

    #[test]
    fn guard_verdicts() {
        let guard = |o: &str, p: bool, m: Option<i64>| Guard::from_options(o, p, m).unwrap();
        let g = guard(r#"{"videoQuality":"1080p","max_credits":3}"#, false, None);
        assert!(g.preflight);
        assert!(check(&g, &formats()).is_err());
        let g = guard(r#"{"videoQuality":"720p","max_credits":3}"#, false, None);
        assert_eq!(check(&g, &formats()), Ok(Some(2)));
        let g = guard("{}", false, None);
        assert!(!g.preflight);
        let g = guard(r#"{"preflight":false}"#, true, None);
        assert!(!g.preflight);
        let g = guard(r#"{"preflight":false}"#, false, Some(3));
        assert!(
            !g.preflight,
            "a row's own false wins over a global max_credits"
        );
        let g = guard(r#"{"preflight":false,"max_credits":3}"#, false, None);
        assert!(g.preflight, "a row's own max_credits is always checked");
        let g = guard(r#"{"max_credits":null}"#, false, Some(3));
        assert_eq!((g.preflight, g.max_credits), (true, Some(3)));
    }

    #[test]
    fn an_unreadable_guard_fails_closed() {
        let max = |o: &str| Guard::from_options(o, false, None).map(|g| g.max_credits);
        assert_eq!(max(r#"{"max_credits":5.0}"#), Ok(Some(5)));
        assert_eq!(max(r#"{"max_credits":5.9}"#), Ok(Some(5)));
        assert_eq!(max(r#"{"max_credits":0}"#), Ok(Some(0)));
        assert_eq!(max(r#"{"max_credits":1e30}"#), Ok(Some(i64::MAX)));
        assert_eq!(
            max(r#"{"max_credits":18446744073709551615}"#),
            Ok(Some(i64::MAX))
        );
        for bad in [
            r#"{"max_credits":"5"}"#,
            r#"{"max_credits":-1}"#,
            r#"{"max_credits":-0.5}"#,
            r#"{"max_credits":true}"#,
            r#"{"max_credits":[5]}"#,
            r#"{"preflight":"yes"}"#,
            r#"{"preflight":1}"#,
        ] {
            let err = Guard::from_options(bad, false, None).expect_err(bad);
            assert!(err.contains("nothing was spent"), "{bad}: {err}");
        }
    }

    #[test]
    fn metadata_in_result_or_in_data() {
        let nested = json!({"status":"completed","result":{"title":"t","duration":3.5,"availableFormats":[{"quality":"720p","costInCredits":2}]}});
        let flat = json!({"status":"completed","title":"t","duration":3.5,"availableFormats":[{"quality":"720p","costInCredits":2}]});
        assert_eq!(meta_info(&nested), meta_info(&flat));
        assert_eq!(meta_info(&flat).title.as_deref(), Some("t"));
    }
}
