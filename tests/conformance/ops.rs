//! Conformance: ops.

#[allow(unused_imports)]
use crate::Backend;
