//! The answer the simulator decided on, before it becomes an HTTP response.

use std::time::Duration;

use serde_json::{Value, json};

use super::bucket::RateInfo;

#[derive(Debug)]
pub(crate) enum Payload {
    Json(Value),
    /// A 2xx body that is not JSON (an injected fault).
    Garbage,
    /// `head`, then `pad` bytes of `x`, then `tail`: an answer far over any sane size,
    /// streamed so it is never held whole (a hostile answer).
    Oversized {
        head: String,
        pad: u64,
        tail: String,
    },
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
    /// Send the body a byte at a time over this long (a hostile answer).
    pub trickle: Option<Duration>,
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
            trickle: None,
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

/// The head and tail around a grown string in `body`: the string is `data.jobId` of a 2xx
/// answer to a start request, `data.message` of another 2xx, `error` of anything else. The
/// grown field comes first in its object, so the JSON stays valid whatever else it holds.
pub(crate) fn oversized_parts(body: &Value, start: bool) -> (String, String) {
    let (outer, field) = match body.get("data").and_then(Value::as_object) {
        Some(_) if start => (Some("data"), "jobId"),
        Some(_) => (Some("data"), "message"),
        None => (None, "error"),
    };
    let mut top = body.as_object().cloned().unwrap_or_default();
    let inner = match outer {
        Some(name) => top.remove(name).and_then(|v| v.as_object().cloned()),
        None => None,
    };
    // `{"field":"` + pad + `",rest}`; rest is the object's other members.
    let members = |mut obj: serde_json::Map<String, Value>, skip: &str| {
        obj.remove(skip);
        let text = Value::Object(obj).to_string();
        let inside = text[1..text.len() - 1].to_owned();
        if inside.is_empty() {
            String::new()
        } else {
            format!(",{inside}")
        }
    };
    match (outer, inner) {
        (Some(name), Some(inner)) => {
            let head = format!("{{\"{name}\":{{\"{field}\":\"");
            let tail = format!("\"{}}}{}}}", members(inner, field), members(top, name));
            (head, tail)
        }
        _ => {
            let head = format!("{{\"{field}\":\"");
            let tail = format!("\"{}}}", members(top, field));
            (head, tail)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(body: &Value, start: bool, pad: usize) -> Value {
        let (head, tail) = oversized_parts(body, start);
        let text = format!("{head}{}{tail}", "x".repeat(pad));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn oversized_answers_stay_valid_json_with_the_grown_field() {
        let ok = json!({"success": true, "data": {"jobId": "a", "status": "queued"}});
        let v = whole(&ok, true, 5);
        assert_eq!(v["data"]["jobId"], "xxxxx");
        assert_eq!(v["data"]["status"], "queued");
        assert_eq!(v["success"], true);
        let v = whole(&ok, false, 3);
        assert_eq!(v["data"]["message"], "xxx");
        assert_eq!(v["data"]["jobId"], "a");
        let err = json!({"success": false, "error": "nope", "limit": 2});
        let v = whole(&err, true, 4);
        assert_eq!(v["error"], "xxxx");
        assert_eq!(v["limit"], 2);
        let v = whole(&json!({"data": {}}), true, 1);
        assert_eq!(v, json!({"data": {"jobId": "x"}}));
    }
}
