//! ThreatMesh: a federated exchange for signed cyber-threat indicators.
#![forbid(unsafe_code)]

pub mod identity;
pub mod model;
pub mod proto;
pub mod signing;
