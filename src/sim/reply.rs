//! The answer the simulator decided on, before it becomes an HTTP response.

use std::time::Duration;

use serde_json::{Value, json};

use super::bucket::RateInfo;

#[derive(Debug)]
pub(crate) enum Payload {
    Json(Value),
    /// A 2xx body that is not JSON (an injected fault).
    Garbage,
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub payload: Payload,
    /// The bucket of the endpoint called, for the `X-RateLimit-*` headers.
    pub rate: RateInfo,
    pub plan: String,
    /// `Retry-After` header, seconds (rate-limit 429s only).
    pub retry_after: Option<u64>,
    /// Sleep this long before answering (an injected timeout).
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn new(status: u16, body: Value, rate: RateInfo, plan: &str) -> Self {
        Self {
            status,
            payload: Payload::Json(body),
            rate,
            plan: plan.to_owned(),
            retry_after: None,
            delay: None,
        }
    }

    pub fn success(data: Value, rate: RateInfo, plan: &str) -> Self {
        Self::new(200, json!({"success": true, "data": data}), rate, plan)
    }

    pub fn error(status: u16, message: &str, rate: RateInfo, plan: &str) -> Self {
        Self::new(
            status,
            json!({"success": false, "error": message}),
            rate,
            plan,
        )
    }
}

/// What a garbage answer carries: what a proxy in front of an API might send.
pub(crate) const GARBAGE_BODY: &str =
    "<html><head><title>502 Bad Gateway</title></head><body>upstream hiccup</body></html>";
