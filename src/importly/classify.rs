//! Turns a status code and body into an [`Outcome`]. Pure, so every documented case is a
//! unit test.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::bounds::{MAX_ANSWER, MAX_LOG_FIELD, bounded, valid_job_id};
use super::{JobState, Outcome, RateHeaders};
use crate::clock;

/// Which call an answer belongs to: a 2xx means different things for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Submit,
    Status,
}

/// Classifies one HTTP answer. `now` is when it arrived.
pub fn classify(
    call: Call,
    status: u16,
    headers: &RateHeaders,
    body: &[u8],
    now: SystemTime,
) -> Outcome {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let message = || error_message(json.as_ref(), body, status);
    match status {
        200..=299 => classify_success(call, json, body.len()),
        429 => classify_429(json.as_ref(), headers, now),
        401 => Outcome::Unauthorized { message: message() },
        402 => Outcome::InsufficientCredits { message: message() },
        404 => Outcome::NotFound { message: message() },
        // A request timeout or "too early" is the transport's problem, not the row's.
        408 | 425 => transient(format!("HTTP {status}: {}", message()), headers),
        400..=499 => Outcome::BadRequest { message: message() },
        _ => transient(format!("HTTP {status}: {}", message()), headers),
    }
}

/// Classifies an answer whose body went over [`MAX_ANSWER`]: `prefix` is what was kept. A
/// 2xx is garbled (its body is the answer, and we did not read it all): transient, and for
/// a submit ambiguous, since a 2xx to a submit almost surely created a job. Any other status
/// says what it means by itself; it is classified as usual from the prefix, which is not
/// parsed as the whole answer it is not.
pub fn classify_over_cap(
    call: Call,
    status: u16,
    headers: &RateHeaders,
    prefix: &[u8],
    now: SystemTime,
) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Transient {
            reason: format!("2xx answer over the {MAX_ANSWER}-byte cap, not read further"),
            retry_after: None,
            ambiguous: call == Call::Submit,
        };
    }
    // A cut body never parses as the JSON it was; make sure a prefix that happens to be
    // valid JSON is not read as the answer either.
    let prefix = String::from_utf8_lossy(prefix);
    let message = format!("{} [body over the {MAX_ANSWER}-byte cap]", prefix.trim());
    classify(call, status, headers, message.as_bytes(), now)
}

fn transient(reason: String, headers: &RateHeaders) -> Outcome {
    // The header parser clamps already; this keeps a hand-built RateHeaders as safe.
    let max = clock::MAX_SERVER_WAIT.as_secs();
    Outcome::Transient {
        reason: bounded(&reason, MAX_LOG_FIELD),
        retry_after: headers.retry_after.map(|s| Duration::from_secs(s.min(max))),
        ambiguous: false,
    }
}

fn classify_success(call: Call, json: Option<Value>, len: usize) -> Outcome {
    // A 2xx to a submit that we cannot read almost surely created a job: ambiguous.
    let transient = |reason: String| Outcome::Transient {
        reason,
        retry_after: None,
        ambiguous: call == Call::Submit,
    };
    let Some(json) = json else {
        return transient(format!("2xx answer that is not JSON ({len} bytes)"));
    };
    let Some(data) = json.get("data").filter(|d| d.is_object()) else {
        return transient("2xx answer without a `data` object".into());
    };
    match call {
        // Any 2xx with a valid job id is an accepted job, whatever state it already
        // reports. An id we could not store, log or poll with is no job id.
        Call::Submit => match data.get("jobId").map(job_id_text) {
            Some(Some(job_id)) if valid_job_id(&job_id) => Outcome::Accepted { job_id },
            Some(Some(job_id)) => transient(format!(
                "2xx answer to a submit with an invalid `data.jobId` ({} bytes; at most {} \
                 printable ASCII characters without spaces or / ? # &)",
                job_id.len(),
                super::bounds::MAX_JOB_ID
            )),
            _ => transient("2xx answer to a submit without `data.jobId`".into()),
        },
        Call::Status => {
            let state = match data.get("status").and_then(Value::as_str) {
                Some("queued") => JobState::Queued,
                Some("processing") => JobState::Processing,
                Some("completed") => JobState::Completed,
                Some("failed") => JobState::Failed,
                _ => return transient("2xx status answer without a known `data.status`".into()),
            };
            // The data is stored as the row's result: written out again it must stay within
            // the cap too (number formats can grow, e.g. `1e15`).
            let data = data.clone();
            if data.to_string().len() > MAX_ANSWER {
                return transient(format!(
                    "2xx status answer whose `data` is over the {MAX_ANSWER}-byte cap"
                ));
            }
            Outcome::Job { state, data }
        }
    }
}

/// Job ids are strings in the docs; accept numbers too rather than lose a job.
fn job_id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn classify_429(json: Option<&Value>, headers: &RateHeaders, now: SystemTime) -> Outcome {
    let field = |k: &str| json.and_then(|j| j.get(k));
    let is_concurrency = field("concurrentLimit").is_some()
        || field("currentConcurrent").is_some()
        || field("error")
            .and_then(Value::as_str)
            .is_some_and(|e| e.to_ascii_lowercase().contains("concurren"));
    if is_concurrency && field("retryAfter").is_none() {
        let num = |k: &str| field(k).and_then(Value::as_u64).map(|n| n as u32);
        return Outcome::ConcurrencyLimited {
            limit: num("concurrentLimit"),
            current: num("currentConcurrent"),
        };
    }
    // Honour whichever is later: the body's retryAfter (s), the Retry-After header (s), the
    // body's reset (unix ms) and the X-RateLimit-Reset header (unix s).
    let retry_after_body = field("retryAfter").and_then(as_secs);
    let mut until = now;
    for secs in [retry_after_body, headers.retry_after]
        .into_iter()
        .flatten()
    {
        until = until.max(clock::after_server_wait(now, secs));
    }
    if let Some(ms) = field("reset").and_then(Value::as_u64) {
        until = until.max(clock::from_unix_ms(i64::try_from(ms).unwrap_or(i64::MAX)));
    }
    if let Some(reset) = headers.reset
        && headers.remaining == Some(0)
    {
        until = until.max(clock::from_unix_secs(reset));
    }
    // A garbled value must not park the bucket for years.
    until = until.min(now.checked_add(clock::MAX_SERVER_WAIT).unwrap_or(now));
    if until == now {
        // A 429 that says nothing about when: wait a little rather than hammer.
        until = now.checked_add(Duration::from_secs(1)).unwrap_or(now);
    }
    Outcome::RateLimited {
        until,
        retry_after: retry_after_body
            .or(headers.retry_after)
            .map(|s| Duration::from_secs(s.min(clock::MAX_SERVER_WAIT.as_secs()))),
    }
}

fn as_secs(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f.ceil() as u64))
}

/// The error message of an answer, bounded to [`MAX_LOG_FIELD`]: it goes into logs,
/// `last_error` and the attempt record.
fn error_message(json: Option<&Value>, body: &[u8], status: u16) -> String {
    let from_json = json.and_then(|j| {
        j.get("error")
            .or_else(|| j.get("message"))
            .and_then(Value::as_str)
            .map(|m| bounded(m, MAX_LOG_FIELD))
    });
    match from_json {
        Some(m) => m,
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("HTTP {status} with an empty body")
            } else {
                text.chars().take(300).collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn accepted_submit() {
        let body = br#"{"success":true,"data":{"jobId":"abc","status":"queued","message":"Import queued."}}"#;
        assert_eq!(
            classify(Call::Submit, 200, &RateHeaders::default(), body, at(0)),
            Outcome::Accepted {
                job_id: "abc".into()
            }
        );
    }

    #[test]
    fn completed_status_keeps_data() {
        let body = br#"{"success":true,"data":{"jobId":"abc","status":"completed","mediaUrl":"m","creditsUsed":3}}"#;
        match classify(Call::Status, 200, &RateHeaders::default(), body, at(0)) {
            Outcome::Job {
                state: JobState::Completed,
                data,
            } => assert_eq!(data["creditsUsed"], 3),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_huge_retry_after_on_a_500_is_clamped() {
        let headers = RateHeaders {
            retry_after: Some(u64::MAX),
            ..Default::default()
        };
        let body = br#"{"success":false,"error":"boom","retryAfter":18446744073709551615}"#;
        match classify(Call::Submit, 500, &headers, body, at(0)) {
            Outcome::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(clock::MAX_SERVER_WAIT))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_unreadable_2xx_to_a_submit_is_an_ambiguous_submit() {
        let h = RateHeaders::default();
        let long_id = format!(r#"{{"data":{{"jobId":"{}"}}}}"#, "i".repeat(4096));
        let bad_chars = br#"{"data":{"jobId":"a/b?c"}}"#;
        for body in [
            &b"<html>oops"[..],
            br#"{"data":{}}"#,
            br#"{"success":true}"#,
            br#"{"data":{"jobId":""}}"#,
            long_id.as_bytes(),
            bad_chars,
        ] {
            let out = classify(Call::Submit, 200, &h, body, at(0));
            assert!(
                matches!(&out, Outcome::Transient { ambiguous: true, reason, .. } if reason.len() < 300),
                "{out:?}"
            );
            assert_eq!(out.name(), "ambiguous_submit");
            // The same answer to a status call created nothing.
            let out = classify(Call::Status, 200, &h, body, at(0));
            assert!(
                matches!(
                    out,
                    Outcome::Transient {
                        ambiguous: false,
                        ..
                    }
                ),
                "{out:?}"
            );
        }
    }

    #[test]
    fn an_answer_over_the_cap_is_garbled_when_2xx_and_its_status_otherwise() {
        let h = RateHeaders::default();
        let prefix = br#"{"success":true,"data":{"jobId":"xxxxxxxx"#;
        let out = classify_over_cap(Call::Submit, 200, &h, prefix, at(0));
        assert!(
            matches!(
                out,
                Outcome::Transient {
                    ambiguous: true,
                    ..
                }
            ),
            "{out:?}"
        );
        let out = classify_over_cap(Call::Status, 200, &h, prefix, at(0));
        assert!(
            matches!(
                out,
                Outcome::Transient {
                    ambiguous: false,
                    ..
                }
            ),
            "{out:?}"
        );
        // A prefix that happens to be valid JSON is still not taken as the answer.
        let out = classify_over_cap(Call::Submit, 200, &h, br#"{"data":{"jobId":"a"}}"#, at(0));
        assert!(matches!(out, Outcome::Transient { .. }), "{out:?}");
        let out = classify_over_cap(Call::Submit, 401, &h, b"<html>denied", at(0));
        assert!(matches!(out, Outcome::Unauthorized { .. }), "{out:?}");
        let out = classify_over_cap(Call::Submit, 503, &h, b"<html>down", at(0));
        assert!(matches!(out, Outcome::Transient { .. }), "{out:?}");
    }

    #[test]
    fn a_status_answer_over_the_log_cap_is_still_read_whole() {
        // A metadata job with many formats: ~40 KiB, more than the attempt log keeps.
        let formats: Vec<String> = (0..200)
            .map(|i| format!(r#"{{"formatId":"f{i}","quality":"720p","costInCredits":2,"description":"a format of the media, described at some length"}}"#))
            .collect();
        let body = format!(
            r#"{{"success":true,"data":{{"jobId":"m1","status":"completed","availableFormats":[{}]}}}}"#,
            formats.join(",")
        );
        assert!(body.len() > crate::importly::MAX_BODY);
        match classify(
            Call::Status,
            200,
            &RateHeaders::default(),
            body.as_bytes(),
            at(0),
        ) {
            Outcome::Job {
                state: JobState::Completed,
                data,
            } => assert_eq!(data["availableFormats"].as_array().map(Vec::len), Some(200)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn messages_from_bodies_are_bounded() {
        let body = format!(
            r#"{{"success":false,"error":"{}"}}"#,
            "e".repeat(crate::importly::MAX_BODY)
        );
        match classify(
            Call::Submit,
            400,
            &RateHeaders::default(),
            body.as_bytes(),
            at(0),
        ) {
            Outcome::BadRequest { message } => assert!(message.len() < MAX_LOG_FIELD + 40),
            other => panic!("unexpected {other:?}"),
        }
        match classify(
            Call::Submit,
            500,
            &RateHeaders::default(),
            body.as_bytes(),
            at(0),
        ) {
            Outcome::Transient { reason, .. } => assert!(reason.len() < MAX_LOG_FIELD + 40),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn status_data_that_grows_past_the_cap_when_written_is_garbled() {
        let nums = vec!["1e15"; MAX_ANSWER / 6].join(",");
        let body = format!(r#"{{"data":{{"status":"completed","n":[{nums}]}}}}"#);
        assert!(body.len() < MAX_ANSWER);
        let out = classify(
            Call::Status,
            200,
            &RateHeaders::default(),
            body.as_bytes(),
            at(0),
        );
        assert!(matches!(out, Outcome::Transient { .. }), "{out:?}");
    }

    #[test]
    fn garbled_2xx_is_transient() {
        let out = classify(
            Call::Status,
            200,
            &RateHeaders::default(),
            b"<html>oops",
            at(0),
        );
        assert!(matches!(out, Outcome::Transient { .. }), "{out:?}");
    }

    #[test]
    fn rate_limit_waits_for_the_latest_hint() {
        let body = br#"{"success":false,"error":"Rate limit exceeded. Limit: 240 requests per 1 h","limit":240,"remaining":0,"reset":1709901234000,"retryAfter":3600,"endpoint":"/import"}"#;
        let now = at(1_709_900_000);
        match classify(Call::Submit, 429, &RateHeaders::default(), body, now) {
            Outcome::RateLimited { until, retry_after } => {
                assert_eq!(until, at(1_709_903_600)); // retryAfter beats the earlier reset
                assert_eq!(retry_after, Some(Duration::from_secs(3600)));
            }
            other => panic!("unexpected {other:?}"),
        }
        let later_reset = br#"{"success":false,"error":"Rate limit exceeded","reset":1709999999000,"retryAfter":5}"#;
        match classify(Call::Submit, 429, &RateHeaders::default(), later_reset, now) {
            Outcome::RateLimited { until, .. } => assert_eq!(until, at(1_709_999_999)),
            other => panic!("unexpected {other:?}"),
        }
        let headers = RateHeaders {
            retry_after: Some(7200),
            ..Default::default()
        };
        match classify(Call::Submit, 429, &headers, body, now) {
            Outcome::RateLimited { until, .. } => assert_eq!(until, at(1_709_907_200)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn absurd_429_hints_are_capped_not_panics() {
        let now = at(1_709_900_000);
        let body = br#"{"success":false,"error":"Rate limit exceeded","reset":18446744073709551615,"retryAfter":18446744073709551615}"#;
        let headers = RateHeaders {
            retry_after: Some(u64::MAX),
            remaining: Some(0),
            reset: Some(u64::MAX),
            ..Default::default()
        };
        match classify(Call::Submit, 429, &headers, body, now) {
            Outcome::RateLimited { until, retry_after } => {
                assert_eq!(until, now + clock::MAX_SERVER_WAIT);
                assert_eq!(retry_after, Some(clock::MAX_SERVER_WAIT));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn concurrency_limit_is_its_own_kind() {
        let body = br#"{"success":false,"error":"Concurrent limit exceeded. Max 2 concurrent import jobs allowed.","concurrentLimit":2,"currentConcurrent":2,"endpoint":"/import"}"#;
        assert_eq!(
            classify(Call::Submit, 429, &RateHeaders::default(), body, at(0)),
            Outcome::ConcurrencyLimited {
                limit: Some(2),
                current: Some(2)
            }
        );
    }

    #[test]
    fn statuses_map_to_the_policy() {
        let h = RateHeaders::default();
        let err = br#"{"success":false,"error":"nope"}"#;
        assert!(
            matches!(classify(Call::Submit, 400, &h, err, at(0)), Outcome::BadRequest { message } if message == "nope")
        );
        assert!(matches!(
            classify(Call::Submit, 401, &h, err, at(0)),
            Outcome::Unauthorized { .. }
        ));
        assert!(matches!(
            classify(Call::Submit, 402, &h, err, at(0)),
            Outcome::InsufficientCredits { .. }
        ));
        assert!(matches!(
            classify(Call::Submit, 404, &h, err, at(0)),
            Outcome::NotFound { .. }
        ));
        assert!(matches!(
            classify(Call::Submit, 500, &h, err, at(0)),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            classify(Call::Submit, 503, &h, b"", at(0)),
            Outcome::Transient { .. }
        ));
    }
}
