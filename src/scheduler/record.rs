//! Turns a client [`Exchange`] into the store's [`AttemptRecord`]: the one place that
//! knows both shapes.

use crate::clock;
use crate::importly::Exchange;
use crate::store::AttemptRecord;

pub fn attempt_record(ex: &Exchange, attempt: i64, job_id: Option<&str>) -> AttemptRecord {
    let mut rate = serde_json::to_value(&ex.headers).unwrap_or_default();
    let rate_limit = match &mut rate {
        serde_json::Value::Object(m) if !m.is_empty() => Some(rate.to_string()),
        _ => None,
    };
    AttemptRecord {
        attempt,
        method: ex.method.to_owned(),
        endpoint: ex.endpoint.clone(),
        request_body: ex.request_body.clone(),
        started_at: clock::iso(ex.started_at),
        finished_at: clock::iso(ex.finished_at),
        http_status: ex.http_status.map(i64::from),
        error: ex.error.clone(),
        outcome: ex.outcome.name().to_owned(),
        rate_limit,
        response_body: ex.response_body.clone(),
        body_truncated: ex.body_truncated,
        job_id: job_id.map(str::to_owned),
    }
}
