//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the `traceparent` header that
//! carries one request's trace id from the HTTP client through the coordinator, the draft-node
//! and the target-node (as gRPC metadata between nodes). Every process records the trace id in
//! its request span, so one id finds the request's log lines in all of them.
//!
//! specd parses and writes the header itself (its grammar is four hex fields) rather than pull in
//! an OpenTelemetry SDK: no spans are exported, only the ids are carried and logged.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// The header (and gRPC metadata key) that carries the context.
pub const TRACEPARENT: &str = "traceparent";

/// One hop of a trace: the trace's id, the id of the span that sent it, and the sampled flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub flags: u8,
}

impl TraceContext {
    /// A new trace (sampled), for a request that came without one.
    pub fn root() -> Self {
        let trace_id = ((random_u64() as u128) << 64) | random_u64() as u128;
        TraceContext {
            trace_id: trace_id.max(1),
            span_id: random_u64().max(1),
            flags: 1,
        }
    }

    /// The context this process sends on: the same trace, a new span id.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: random_u64().max(1),
            ..*self
        }
    }

    /// Parses a `traceparent` value. `None` for anything the spec says to ignore: a wrong length
    /// or separator, upper-case or non-hex digits, the version `ff`, an all-zero id, or version
    /// `00` with trailing data (a later version may append fields, which are skipped).
    pub fn parse(header: &str) -> Option<Self> {
        let h = header.trim();
        let b = h.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex(&h[0..2])? as u8;
        if version == 0xff || (version == 0 && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
        let trace_id = hex(&h[3..35])?;
        let span_id = hex(&h[36..52])? as u64;
        let flags = hex(&h[53..55])? as u8;
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The parsed header, or a new trace when it is missing or invalid.
    pub fn from_header_or_root(header: Option<&str>) -> Self {
        header.and_then(Self::parse).unwrap_or_else(Self::root)
    }

    /// The trace id as the header writes it (32 lower-case hex digits): what the logs show.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// The `traceparent` value (version 00).
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

/// Lower-case hex only (the spec forbids upper case).
fn hex(s: &str) -> Option<u128> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// Ids unique within and across processes: the std library's randomly keyed hasher over a counter.
fn random_u64() -> u64 {
    static STATE: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = STATE.get_or_init(Default::default).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_writes_the_spec_example() {
        // The example of the W3C recommendation, section 3.2.
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(h).unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert_eq!(c.flags, 1);
        assert_eq!(c.to_string(), h);
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn refuses_what_the_spec_says_to_ignore() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        // A later version may append fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-abcd";
        assert!(TraceContext::parse(later).is_some());
    }

    #[test]
    fn children_keep_the_trace_and_roots_differ() {
        let a = TraceContext::root();
        let b = TraceContext::root();
        assert_ne!(a.trace_id, b.trace_id);
        let c = a.child();
        assert_eq!(c.trace_id, a.trace_id);
        assert_ne!(c.span_id, a.span_id);
        assert_eq!(TraceContext::parse(&c.to_string()), Some(c));
        assert_eq!(TraceContext::from_header_or_root(Some("junk")).flags, 1);
    }
}
