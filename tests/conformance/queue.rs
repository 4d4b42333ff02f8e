//! Conformance: queue.

#[allow(unused_imports)]
use crate::Backend;
