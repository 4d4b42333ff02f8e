//! `importlyd ticket`: a support ticket for one row, in the shape Importly's support asks
//! for: the job id or request payload, timestamps of the failing requests, what came back.
//! Built only from the database and the non-secret config; the API key is never read here.

use std::path::PathBuf;

use serde_json::{Value, json};

use super::{CmdResult, Failure, TicketFormat};
use crate::config::Config;
use crate::service::row_json;
use crate::store::{ListFilter, Row, State, Store, StoredAttempt};

pub async fn command(
    store: &Store,
    cfg: &Config,
    id: Option<i64>,
    format: TicketFormat,
    failed: bool,
    since: Option<std::time::SystemTime>,
    dir: Option<PathBuf>,
) -> CmdResult {
    match (id, failed) {
        (Some(id), false) => {
            let Some(row) = store.row(id).await? else {
                return Err(Failure {
                    code: 1,
                    message: format!("no row with id {id}"),
                });
            };
            let attempts = store.attempts(id).await?;
            out!("{}", render(&build(&row, &attempts, cfg), format));
            Ok(())
        }
        (None, true) => {
            let dir = dir.ok_or_else(|| Failure::usage("--failed needs --dir PATH"))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| Failure::usage(format!("--dir {}: {e}", dir.display())))?;
            let rows = store
                .list(&ListFilter {
                    state: Some(State::Failed),
                    since,
                    limit: None,
                })
                .await?;
            let ext = match format {
                TicketFormat::Text => "txt",
                TicketFormat::Markdown => "md",
                TicketFormat::Json => "json",
            };
            for row in &rows {
                let attempts = store.attempts(row.id).await?;
                let path = dir.join(format!("ticket-{}.{ext}", row.id));
                std::fs::write(&path, render(&build(row, &attempts, cfg), format)).map_err(
                    |e| Failure {
                        code: 1,
                        message: format!("writing {}: {e}", path.display()),
                    },
                )?;
            }
            outln!("wrote {} tickets to {}", rows.len(), dir.display());
            Ok(())
        }
        _ => Err(Failure::usage("give one row id, or --failed --dir PATH")),
    }
}

/// The ticket's content, format-independent; `--format json` prints it as is.
pub fn build(row: &Row, attempts: &[StoredAttempt], cfg: &Config) -> Value {
    let mut job_ids: Vec<String> = attempts.iter().filter_map(|a| a.job_id.clone()).collect();
    job_ids.extend(row.importly_job_id.clone());
    job_ids.dedup();
    job_ids.sort();
    job_ids.dedup();
    // The payload as it was last sent; before any send, as it would be.
    let payload = attempts
        .iter()
        .rev()
        .find_map(|a| a.request_body.as_deref())
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
        .or_else(|| crate::importly::submit_body(&row.url, &row.options).ok());
    let what = match (row.state, row.last_error.as_deref()) {
        (State::Failed, Some(e)) => format!("failed: {}", first_line(e)),
        (state, _) => format!("is {state}"),
    };
    let subject = format!(
        "Importly {} {} ({}){}",
        row.kind,
        what,
        row.url,
        job_ids
            .first()
            .map(|j| format!(", job {j}"))
            .unwrap_or_default()
    );
    let timeline: Vec<Value> = attempts
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
            if let Some(r) = rate_limit_json(a.rate_limit.as_deref()) {
                v["rate_limit"] = r;
            }
            v["error_text"] = json!(error_text(a));
            v
        })
        .collect();
    json!({
        "subject": subject,
        "generated_at": crate::clock::now_iso(),
        "daemon_version": env!("CARGO_PKG_VERSION"),
        "row": row_json(row),
        "job_ids": job_ids,
        "request_payload": payload,
        "attempts": timeline,
        "config": {
            "base_url": crate::importly::redact_url(&cfg.api.base_url),
            "request_timeout": humantime::format_duration(cfg.api.request_timeout).to_string(),
            "limits": cfg.limits,
            "retry": cfg.retry,
        },
    })
}

/// Outcomes of exchanges that went right: their body is the answer, not an error.
const SUCCESS_OUTCOMES: [&str; 4] = ["accepted", "job_queued", "job_processing", "job_completed"];

/// What went wrong in one exchange, in a line: the transport error, the body's `error`
/// (or a failed job's `data.error` / `data.message`), or the start of a body that says
/// nothing clearer. `None` for an exchange that went right.
fn error_text(a: &StoredAttempt) -> Option<String> {
    if let Some(e) = &a.error {
        return Some(e.clone());
    }
    let body = a.response_body.as_deref()?;
    let parsed = serde_json::from_str::<Value>(body).ok();
    let mut pointers = vec!["/error", "/data/error"];
    if a.outcome == "job_failed" {
        pointers.push("/data/message");
    }
    let from_json = parsed.as_ref().and_then(|v| {
        pointers
            .iter()
            .find_map(|p| v.pointer(p).and_then(Value::as_str))
            .map(str::to_owned)
    });
    if from_json.is_some() {
        return from_json;
    }
    if SUCCESS_OUTCOMES.contains(&a.outcome.as_str()) {
        return None;
    }
    Some(body.chars().take(200).collect())
}

/// The rate-limit headers of one answer, with the reset also as a UTC time.
fn rate_limit_json(raw: Option<&str>) -> Option<Value> {
    let mut v = serde_json::from_str::<Value>(raw?).ok()?;
    if let Some(reset) = v.get("reset").and_then(Value::as_u64) {
        v["reset_at"] = json!(crate::clock::iso(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(reset)
        ));
    }
    Some(v)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

pub fn render(t: &Value, format: TicketFormat) -> String {
    match format {
        TicketFormat::Json => {
            let mut s = serde_json::to_string_pretty(t).unwrap_or_default();
            s.push('\n');
            s
        }
        TicketFormat::Text => render_text(t, false),
        TicketFormat::Markdown => render_text(t, true),
    }
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("-")
}

fn render_text(t: &Value, md: bool) -> String {
    let mut out = String::new();
    let h = |title: &str| {
        if md {
            format!("\n## {title}\n\n")
        } else {
            format!("\n{title}\n{}\n", "-".repeat(title.len()))
        }
    };
    let code = |body: &str| {
        if md {
            format!("```json\n{body}\n```\n")
        } else {
            format!("{body}\n")
        }
    };
    if md {
        out.push_str(&format!("# {}\n", s(t, "/subject")));
    } else {
        out.push_str(&format!("Subject: {}\n", s(t, "/subject")));
    }
    out.push_str(&h("Summary"));
    let bullet = if md { "- " } else { "  " };
    let job_ids: Vec<&str> = t["job_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (k, v) in [
        ("Row", t["row"]["id"].to_string()),
        (
            "Importly job id(s)",
            if job_ids.is_empty() {
                "none (no job was created)".into()
            } else {
                job_ids.join(", ")
            },
        ),
        ("Media URL", s(t, "/row/url").into()),
        ("Kind", s(t, "/row/kind").into()),
        ("Final state", s(t, "/row/state").into()),
        ("Last error", s(t, "/row/last_error").into()),
        ("Attempts counted", t["row"]["attempts"].to_string()),
        ("Queued at (UTC)", s(t, "/row/created_at").into()),
        ("Finished at (UTC)", s(t, "/row/completed_at").into()),
        ("importlyd version", s(t, "/daemon_version").into()),
        ("Ticket generated (UTC)", s(t, "/generated_at").into()),
    ] {
        out.push_str(&format!("{bullet}{k}: {v}\n"));
    }
    out.push_str(&h("Request payload"));
    out.push_str(&code(
        &serde_json::to_string_pretty(&t["request_payload"]).unwrap_or_default(),
    ));
    let attempts = t["attempts"].as_array().cloned().unwrap_or_default();
    out.push_str(&h(&format!(
        "Timeline ({} logged exchanges, UTC)",
        attempts.len()
    )));
    // Code in markdown, so JSON bodies are not read as emphasis: inline for one plain line,
    // a fenced block (longer than any backtick run inside) for HTML or multi-line bodies.
    let inline = |text: &str| {
        if !md {
            return text.to_owned();
        }
        if !text.contains('`') && !text.contains('\n') {
            return format!("`{text}`");
        }
        let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
        let fence = "`".repeat(longest.max(2) + 1);
        format!("\n\n{fence}\n{text}\n{fence}\n")
    };
    for (i, a) in attempts.iter().enumerate() {
        let status = a["http_status"]
            .as_i64()
            .map(|s| format!("HTTP {s}"))
            .unwrap_or_else(|| "no HTTP answer".into());
        out.push_str(&format!(
            "{}{}. {} -> {}  {} {}  {} ({}, try {})\n",
            if md { "" } else { "  " },
            i + 1,
            s(a, "/started_at"),
            s(a, "/finished_at"),
            s(a, "/method"),
            s(a, "/endpoint"),
            status,
            s(a, "/outcome"),
            a["attempt"],
        ));
        let indent = if md { "   " } else { "     " };
        if let Some(e) = a["error_text"].as_str() {
            out.push_str(&format!("{indent}error: {e}\n"));
        }
        if let Some(j) = a["job_id"].as_str() {
            out.push_str(&format!("{indent}job id: {j}\n"));
        }
        // The payload is printed once above; an exchange that sent something else shows it.
        if let Some(b) = a["request_body"].as_str()
            && serde_json::from_str::<Value>(b).ok().as_ref() != Some(&t["request_payload"])
        {
            out.push_str(&format!("{indent}request body: {}\n", inline(b)));
        }
        if let Some(r) = a["rate_limit"].as_object() {
            out.push_str(&format!("{indent}rate limit: {}\n", rate_limit_line(r)));
        }
        if let Some(b) = a["response_body"].as_str() {
            let cut = if a["body_truncated"].as_bool() == Some(true) {
                " (truncated at 16 KiB)"
            } else {
                ""
            };
            out.push_str(&format!("{indent}response body{cut}: {}\n", inline(b)));
        }
    }
    out.push_str(&h("Client configuration (no secrets)"));
    let c = &t["config"];
    let bucket = |name: &str| {
        let b = &c["limits"][name];
        let conc = match b["concurrent"].as_u64() {
            Some(n) if n > 0 => format!(", {n} concurrent"),
            _ => String::new(),
        };
        format!(
            "{name} {} per {}{conc}",
            b["requests"],
            b["window"].as_str().unwrap_or("-")
        )
    };
    for (k, v) in [
        ("Base URL", s(c, "/base_url").to_owned()),
        ("Request timeout", s(c, "/request_timeout").to_owned()),
        (
            "Limits",
            ["import", "status", "metadata"]
                .iter()
                .map(|n| bucket(n))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        (
            "Retry",
            format!(
                "at most {} attempts, backoff {} doubling to {}",
                c["retry"]["max_attempts"],
                s(c, "/retry/base_delay"),
                s(c, "/retry/max_delay")
            ),
        ),
    ] {
        out.push_str(&format!("{bullet}{k}: {v}\n"));
    }
    out
}

/// `99997/100000 left in the 1 h window (plan paid), resets 2026-...Z; Retry-After 30 s`
fn rate_limit_line(r: &serde_json::Map<String, Value>) -> String {
    let num = |k: &str| r.get(k).and_then(Value::as_u64).map(|n| n.to_string());
    let text = |k: &str| r.get(k).and_then(Value::as_str);
    let mut parts = Vec::new();
    match (num("remaining"), num("limit")) {
        (Some(rem), Some(lim)) => parts.push(format!("{rem}/{lim} left")),
        (Some(rem), None) => parts.push(format!("{rem} left")),
        _ => {}
    }
    if let Some(w) = text("window") {
        parts.push(format!("in the {w} window"));
    }
    if let Some(p) = text("plan") {
        parts.push(format!("(plan {p})"));
    }
    let mut line = parts.join(" ");
    if let Some(at) = text("reset_at") {
        line.push_str(&format!(", resets {at}"));
    }
    if let Some(ra) = num("retry_after") {
        line.push_str(&format!("; Retry-After {ra} s"));
    }
    if line.is_empty() {
        Value::Object(r.clone()).to_string()
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_from_the_base_url() {
        assert_eq!(
            crate::importly::redact_url("https://user:pw@api.example.com/v1?x=a@b"),
            "https://[redacted]@api.example.com/v1?x=a@b"
        );
        assert_eq!(
            crate::importly::redact_url("http://127.0.0.1:8787"),
            "http://127.0.0.1:8787"
        );
    }

    #[test]
    fn rate_limit_reads_as_a_sentence() {
        let v = rate_limit_json(Some(
            r#"{"limit":240,"remaining":0,"reset":1764064800,"window":"1 h","plan":"paid","retry_after":30}"#,
        ))
        .unwrap();
        assert_eq!(v["reset_at"], "2025-11-25T10:00:00.000Z");
        assert_eq!(
            rate_limit_line(v.as_object().unwrap()),
            "0/240 left in the 1 h window (plan paid), resets 2025-11-25T10:00:00.000Z; \
             Retry-After 30 s"
        );
    }
}
