//! ThreatMesh: a federated exchange for signed cyber-threat indicators.
//!
//! Every organisation runs its own node. Nodes talk gRPC over mutual TLS,
//! publish and subscribe to signed indicators, and apply a sharing decision
//! at every exit. A tour of the modules, from the pure core outwards:
//!
//! - [`model`]: org ids, indicator validation and normalisation, TLP labels (pure).
//! - [`signing`]: DSSE envelopes, Ed25519 keys, verify-before-decode (pure).
//! - [`policy`]: the egress and ingress decisions and policy documents (pure).
//! - [`interop`]: STIX 2.1 mappings (pure).
//! - [`audit`]: the audit ledger's hash chain and its row constructors (pure).
//! - [`refusal`]: why a partner's envelope was refused, one vocabulary.
//! - [`clock`]: the one place the wall clock is read.
//! - [`identity`]: each org's CA, SPIFFE ids, the per-org trust store, TLS
//!   configs and verifiers, org cards.
//! - [`config`]: settings, `config/defaults.toml` < file < environment.
//! - [`provision`]: a new organisation's keys, certificates and config.
//! - [`store`]: the durable log and everything else the node keeps, one
//!   file per concern (SQLite).
//! - [`context`]: one node's shared state and the partner view; imports no
//!   service.
//! - [`net`]: mutual-TLS accept loop and client channels for tonic.
//! - [`rpc`]: caller authorisation and the one error-to-status mapping.
//! - [`exchange`]: Publish / Subscribe / GetCard and the egress gate.
//! - [`admin`]: the Admin service (own-org admins).
//! - [`taxii`]: the TAXII 2.1 server (HTTPS, the same mutual TLS).
//! - [`federation`]: outbound partner links: verify, store, cursor; cards
//!   and quarantine.
//! - [`sightings`]: sightings of indicators, recorded here or received,
//!   sent back towards the origin.
//! - [`statistics`]: signed aggregate counts shared with partners, and
//!   the mesh-wide view summed from them.
//! - [`node`]: opens a context and serves it.
//! - [`bench`]: the one-command benchmark (`threatmesh bench`).
//! - [`cli`]: the `threatmesh` commands, including `demo`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod exchange;
pub mod federation;
pub mod identity;
pub mod interop;
pub mod metrics;
pub mod model;
pub mod net;
pub mod node;
pub mod policy;
pub mod proto;
pub mod provision;
pub mod refusal;
pub mod rpc;
pub mod sightings;
pub mod signing;
pub mod statistics;
pub mod store;
pub mod taxii;
