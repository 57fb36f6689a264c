//! specd's telemetry, shared by every process: logs through `tracing` ([`logs`]), the W3C trace
//! context that ties one request's log lines together across processes ([`trace`]), and the
//! Prometheus metrics with their `/metrics` listener ([`metrics`]).

pub mod logs;
pub mod metrics;
pub mod trace;
