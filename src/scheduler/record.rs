//! Turns a client [`Exchange`] into the store's [`AttemptRecord`]: the one place that
//! knows both shapes. Every text field is bounded by the attempt log's cap
//! ([`MAX_BODY`]) here, whatever the client already did, so no record can grow the
//! database by more than that per field.

use crate::importly::{Exchange, MAX_BODY, bounded};
use crate::store::AttemptRecord;

/// Room left under the cap for the cut marker `bounded` appends.
const MARKER_ROOM: usize = 40;

fn cap(text: &str) -> String {
    if text.len() <= MAX_BODY {
        return text.to_owned();
    }
    bounded(text, MAX_BODY - MARKER_ROOM)
}

pub fn attempt_record(ex: &Exchange, attempt: i64, job_id: Option<&str>) -> AttemptRecord {
    let mut rate = serde_json::to_value(&ex.headers).unwrap_or_default();
    let rate_limit = match &mut rate {
        serde_json::Value::Object(m) if !m.is_empty() => Some(rate.to_string()),
        _ => None,
    };
    let response_body = ex.response_body.as_deref().map(cap);
    let cut = response_body.as_deref().map(str::len) != ex.response_body.as_deref().map(str::len);
    AttemptRecord {
        attempt,
        method: ex.method.to_owned(),
        endpoint: cap(&ex.endpoint),
        request_body: ex.request_body.as_deref().map(cap),
        started_at: ex.started_at,
        finished_at: ex.finished_at,
        http_status: ex.http_status.map(i64::from),
        error: ex.error.as_deref().map(cap),
        outcome: ex.outcome.name().to_owned(),
        // Rate-limit headers are bounded where they are parsed; a garbled JSON of them is
        // not worth keeping cut.
        rate_limit: rate_limit.filter(|r| r.len() <= MAX_BODY),
        response_body,
        body_truncated: ex.body_truncated || cut,
        job_id: job_id.map(cap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::importly::{Outcome, RateHeaders};
    use std::time::SystemTime;

    #[test]
    fn every_text_field_stays_within_the_cap() {
        let huge = "x".repeat(10 * MAX_BODY);
        let ex = Exchange {
            method: "POST",
            endpoint: format!("/import/status?id={huge}"),
            request_body: Some(huge.clone()),
            started_at: SystemTime::now(),
            finished_at: SystemTime::now(),
            http_status: Some(200),
            error: Some(huge.clone()),
            headers: RateHeaders {
                plan: Some(huge.clone()),
                ..RateHeaders::default()
            },
            response_body: Some(huge.clone()),
            body_truncated: false,
            outcome: Outcome::Transient {
                reason: huge.clone(),
                retry_after: None,
                ambiguous: true,
            },
        };
        let r = attempt_record(&ex, 1, Some(&huge));
        for (name, field) in [
            ("endpoint", Some(&r.endpoint)),
            ("request_body", r.request_body.as_ref()),
            ("error", r.error.as_ref()),
            ("response_body", r.response_body.as_ref()),
            ("job_id", r.job_id.as_ref()),
            ("rate_limit", r.rate_limit.as_ref()),
        ] {
            let len = field.map_or(0, String::len);
            assert!(len <= MAX_BODY, "{name}: {len} bytes");
        }
        assert!(r.body_truncated);
        assert_eq!(r.outcome, "ambiguous_submit");
    }
}
