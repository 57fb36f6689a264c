//! Protobuf bytes decoded as the messages nodes receive (DraftFrame, OpenSessionRequest,
//! GenerateRequest, RunRequest) and run through the wire conversions and checks the services
//! apply: each ends in a value or an INVALID_ARGUMENT status, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use specd_engine::spec_decode::budget::ProtectCache;
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_proto::v1;
use specd_rpc::convert;

fn protect() -> &'static ProtectCache {
    static P: OnceLock<ProtectCache> = OnceLock::new();
    P.get_or_init(|| ProtectCache::new(Arc::new(specd_fuzz::tiny_tokenizer()), 8))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = v1::DraftFrame::decode(data) {
        if let Some(b) = &f.block {
            if let Ok(block) = convert::block_from_wire(b, 257, 32) {
                assert!(block.tokens.len() <= 32);
                let _ = convert::block_to_wire(&block, b.block_seq);
            }
        }
    }
    if let Ok(r) = v1::OpenSessionRequest::decode(data) {
        let _ = convert::sampling_from_wire(r.sampling.as_ref());
        if let Ok(p) = convert::policy_from_wire(r.policy.as_ref(), protect()) {
            let _ = convert::policy_to_wire(&p);
        }
        let _ = convert::prompt_from_wire(&r.prompt, r.chat, &r.messages);
        let _ = convert::top_logprobs_from_wire(r.top_logprobs);
    }
    if let Ok(r) = v1::GenerateRequest::decode(data) {
        if let Ok(g) = convert::gamma_from_wire(r.gamma, &r.gamma_policy, r.gamma_max, 32) {
            let _ = convert::gamma_to_wire(g);
        }
        let _ = convert::draft_sampling_from_wire(&r.draft_sampling);
        let _ = r.drafter.parse::<DrafterSpec>();
    }
    if let Ok(r) = v1::RunRequest::decode(data) {
        let _ = convert::gamma_from_wire(r.gamma, &r.gamma_policy, r.gamma_max, usize::MAX);
        let _ = convert::sampling_from_wire(r.sampling.as_ref());
    }
});
