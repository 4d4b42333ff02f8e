//! The OpenAPI 3.1 description of `/api/v1`, written by hand (the API is small, and a unit
//! test in `super::api` holds it to the router's real routes).

use serde_json::{Value, json};

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description,
           "schema": schema})
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": "The row's id",
           "schema": {"type": "integer", "format": "int64"}})
}

fn json_answer(description: &str) -> Value {
    json!({"description": description,
           "content": {"application/json": {"schema": {"type": "object"}}}})
}

/// The answers every route may give besides its own.
fn common(mut responses: Value, changes: bool) -> Value {
    let extra = [
        (
            "400",
            "The request is malformed (an unknown state, a limit out of range)",
        ),
        (
            "401",
            "A token is configured and the request lacks it (WWW-Authenticate: Basic)",
        ),
        ("500", "The database failed"),
    ];
    for (code, d) in extra {
        responses[code] = json_answer(d);
    }
    if changes {
        responses["403"] = json_answer(
            "No token is configured (read-only), or the request came from another site \
             (Origin, Sec-Fetch-Site)",
        );
    }
    responses
}

pub fn document() -> Value {
    let state = json!({"type": "string",
        "enum": ["pending", "submitting", "running", "completed", "failed", "cancelled"]});
    let q = query(
        "q",
        "Substring of the url, external_id or last_error",
        json!({"type": "string"}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "importlyd admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The operator verbs of importlyd over HTTP, on `admin.listen`. \
                With a token configured every route needs it (HTTP Basic with the token as \
                password, or Bearer); without one the API is read-only."
        },
        "components": {"securitySchemes": {
            "basic": {"type": "http", "scheme": "basic"},
            "bearer": {"type": "http", "scheme": "bearer"}
        }},
        "security": [{"basic": []}, {"bearer": []}],
        "paths": {
            "/api/v1/status": {"get": {
                "summary": "Counts per state, budgets, pauses, live daemons and the drain \
                    estimate (= `status --json`)",
                "responses": common(json!({"200": json_answer("The status view")}), false)
            }},
            "/api/v1/rows": {"get": {
                "summary": "A page of rows in id order (the rows of `list --json`)",
                "parameters": [
                    query("state", "Only rows in this state", state),
                    q,
                    query("limit", "Rows per page, 1 to 1000 (100)",
                          json!({"type": "integer", "minimum": 1, "maximum": 1000})),
                    query("after", "The previous page's next_after (keyset cursor)",
                          json!({"type": "integer", "format": "int64"}))
                ],
                "responses": common(json!({"200": json_answer(
                    "{rows: [...], next_after: id or null on the last page}")}), false)
            }},
            "/api/v1/rows/{id}": {"get": {
                "summary": "One row and its logged exchanges, oldest first (= `show --json`)",
                "parameters": [id_param()],
                "responses": common(json!({"200": json_answer("{row, attempts}"),
                                           "404": json_answer("No such row")}), false)
            }},
            "/api/v1/rows/{id}/ticket": {"get": {
                "summary": "The row's support ticket (= `ticket ID --format F`)",
                "parameters": [id_param(), query("format", "text (default), markdown or json",
                    json!({"type": "string", "enum": ["text", "markdown", "json"]}))],
                "responses": common(json!({
                    "200": {"description": "The ticket", "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "text/markdown": {"schema": {"type": "string"}},
                        "application/json": {"schema": {"type": "object"}}}},
                    "404": json_answer("No such row")}), false)
            }},
            "/api/v1/audit": {"get": {
                "summary": "Operator actions from the API and the CLI, newest first",
                "parameters": [query("limit", "At most this many (100; up to 1000)",
                    json!({"type": "integer", "minimum": 1, "maximum": 1000}))],
                "responses": common(json!({"200": {"description":
                    "[{id, at, action, target, source (api|cli), ok, detail}]",
                    "content": {"application/json": {"schema": {"type": "array"}}}}}), false)
            }},
            "/api/v1/rows/{id}/retry": {"post": {
                "summary": "A failed row back to pending",
                "parameters": [id_param()],
                "responses": common(json!({
                    "200": json_answer("{action, done: [id], skipped: []}"),
                    "404": json_answer("No such row"),
                    "409": json_answer("The row is not failed; skipped says why")}), true)
            }},
            "/api/v1/rows/{id}/cancel": {"post": {
                "summary": "A pending row to cancelled",
                "parameters": [id_param()],
                "responses": common(json!({
                    "200": json_answer("{action, done: [id], skipped: []}"),
                    "404": json_answer("No such row"),
                    "409": json_answer("The row is not pending; skipped says why")}), true)
            }},
            "/api/v1/retry": {"post": {
                "summary": "Bulk retry: up to 10,000 failed rows matching q back to pending",
                "parameters": [
                    {"name": "state", "in": "query", "required": true,
                     "schema": {"type": "string", "enum": ["failed"]}},
                    query("q", "Substring of the url, external_id or last_error",
                          json!({"type": "string"}))
                ],
                "responses": common(json!({"200": json_answer(
                    "{retried: n, cap: 10000}; when retried equals cap, call again")}), true)
            }},
            "/api/v1/resume": {"post": {
                "summary": "Lift every pause (= `importlyd resume`)",
                "responses": common(json!({"200": json_answer("{lifted: n}")}), true)
            }},
            "/api/v1/openapi.json": {"get": {
                "summary": "This document",
                "responses": common(json!({"200": json_answer("OpenAPI 3.1")}), false)
            }}
        }
    })
}
