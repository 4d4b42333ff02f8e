//! Conformance: daemons.

#[allow(unused_imports)]
use crate::Backend;
