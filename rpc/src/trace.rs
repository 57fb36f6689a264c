//! The W3C trace context in gRPC metadata (key `traceparent`), so one request's trace id appears
//! in the logs of every node it passes: a server reads it with [`incoming`], records its trace id
//! in the request's span, and sends it on with [`outgoing`].

use specd_telemetry::trace::{TraceContext, TRACEPARENT};
use tonic::metadata::MetadataValue;

/// The caller's context, or a new trace when it sent none (or an invalid one).
pub fn incoming<T>(req: &tonic::Request<T>) -> TraceContext {
    TraceContext::from_header_or_root(
        req.metadata()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    )
}

/// A request carrying `ctx` on to the next node (as a new span of the same trace).
pub fn outgoing<T>(msg: T, ctx: &TraceContext) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Ok(v) = MetadataValue::try_from(ctx.child().to_string()) {
        req.metadata_mut().insert(TRACEPARENT, v);
    }
    req
}

/// How long a short call between nodes (closing a session, detokenizing, a policy change, `Info`)
/// may take: a partitioned peer answers nothing, and the caller must not wait for keepalives.
pub const SHORT_CALL: std::time::Duration = std::time::Duration::from_secs(10);

/// How long opening a session may take: the target prefills the prompt first.
pub const OPEN_CALL: std::time::Duration = std::time::Duration::from_secs(120);

/// [`outgoing`] with a deadline: the call ends with DEADLINE_EXCEEDED after `timeout` (sent as
/// `grpc-timeout`, so the peer knows it too).
pub fn unary<T>(msg: T, ctx: &TraceContext, timeout: std::time::Duration) -> tonic::Request<T> {
    let mut req = outgoing(msg, ctx);
    req.set_timeout(timeout);
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_crosses_a_hop_and_a_missing_one_starts_a_trace() {
        let ctx = TraceContext::root();
        let sent = outgoing((), &ctx);
        let got = incoming(&sent);
        assert_eq!(got.trace_id, ctx.trace_id);
        assert_ne!(got.span_id, ctx.span_id);
        let bare = incoming(&tonic::Request::new(()));
        assert_ne!(bare.trace_id, ctx.trace_id);
    }
}
