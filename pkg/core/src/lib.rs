//! clustermon core: everything but the databases and the command line.
//!
//! - [`model`]: the documents (clusters, monitors, master).
//! - [`store`]: the store contract, an in-memory store, the contract suite.
//! - [`balance`]: pure assignment decisions (balancer, handoff, lease).
//! - [`feed`]: change feed stream and the reflector into the cluster map.
//! - [`schedule`]: phases, the scheduler and its bounded check pool.
//! - [`check`]: the check seam, the healthz checker, TLS and the Kubernetes client.
//! - [`secrets`]: credentials sealed at rest (AES-256-GCM).
//! - [`reload`]: secret files re-read without a restart.
//! - [`engine`]: membership loop and wiring, graceful shutdown.
//! - [`metrics`]: every metric, and the non-blocking statsd emitter.
//! - [`zone`]: the global allocator that keeps each bucket's entries together.

pub mod admin;
pub mod alerts;
pub mod balance;
pub mod check;
pub mod clock;
pub mod config;
pub mod decode;
pub mod engine;
pub mod feed;
pub mod http;
pub mod liveness;
pub mod metrics;
pub mod model;
pub mod reload;
pub mod schedule;
pub mod secrets;
pub mod status;
pub mod store;
pub mod zone;

/// The library's tests run on the allocator the binary installs: every
/// test exercises it, and entries are built in their buckets' zones.
#[cfg(test)]
#[global_allocator]
static TEST_ALLOC: zone::Global = zone::Global;

/// The invariants of ARCHITECTURE.md that a scan of the sources checks.
#[cfg(test)]
mod invariants;
