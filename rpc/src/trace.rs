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
