//! Conformance: metadata.

#[allow(unused_imports)]
use crate::Backend;
