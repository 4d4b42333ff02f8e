//! Conformance: limits.

#[allow(unused_imports)]
use crate::Backend;
