//! What the dashboard reads that neither the operator commands nor the API's row pages do:
//! the latest failures, newest first, from the `imports_by_state (state, updated_at)` index
//! (a range of the failed rows, never the whole table). Failure groups and throughput are the
//! API's (`store/audit.rs`), which the dashboard shares.
