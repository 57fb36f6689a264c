//! A session resumed from a consistent (completion, budget spent) pair — what a session continued
//! on another target-node starts from — judges the original's later blocks exactly as the original
//! did: the same committed tokens, charges and budget bits. Resumed at spent 0 instead (what
//! `OpenSession` did before it could resume), the same blocks end with less spent than the
//! original: the bound would forget what was spent before the failover.

mod common;

use std::ops::ControlFlow;

use specd_engine::pipeline::encode_prompt;
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::budget::{Pacing, Policy};
use specd_engine::spec_decode::draft::{Drafter, DrafterSpec};
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::generate::run;
use specd_engine::spec_decode::target::{SessionParams, TargetSession};
use specd_engine::spec_decode::{DraftBlock, DraftSampling, Verdict, Verifier};

/// A target session that records the blocks it judged and its verdicts.
struct Recorder {
    session: TargetSession,
    blocks: Vec<DraftBlock>,
    verdicts: Vec<Verdict>,
}

impl Verifier for Recorder {
    fn submit(&mut self, block: DraftBlock) -> anyhow::Result<()> {
        self.blocks.push(block.clone());
        self.session.submit(block)
    }

    fn receive(&mut self) -> anyhow::Result<Verdict> {
        let v = self.session.receive()?;
        self.verdicts.push(v.clone());
        Ok(v)
    }
}

#[test]
fn a_resumed_session_judges_like_the_original() {
    let t = common::target();
    let d = common::load("smollm2-135m-q4_0");
    let prompt = encode_prompt(&t.tokenizer, common::PROMPTS[11], true).unwrap();
    let sampling = SamplingParams {
        temperature: 1.0,
        seed: 7,
        ..Default::default()
    };
    let params = SessionParams {
        sampling,
        max_tokens: 96,
        policy: Policy {
            rule: "topk:8".parse().unwrap(),
            budget: 6.0,
            protect: None,
            pacing: Pacing::None,
        },
        stop: None,
        logprobs: None,
    };
    let resume = |completion: &[u32], spent: f64| {
        TargetSession::resume(
            t.model.clone(),
            t.tokenizer.eos_ids.clone(),
            prompt.clone(),
            completion,
            spent,
            params.clone(),
        )
    };
    let open = |completion: &[u32], spent: f64| resume(completion, spent).unwrap();
    let mut original = Recorder {
        session: open(&[], 0.0),
        blocks: Vec::new(),
        verdicts: Vec::new(),
    };
    let mut drafter = Drafter::from_spec(
        DrafterSpec::Model,
        Some(d.model.clone()),
        sampling,
        DraftSampling::Sample,
        "",
    )
    .unwrap();
    run(
        &mut original,
        Some(&mut drafter),
        &prompt,
        params.max_tokens,
        GammaPolicy::Fixed(4),
        false,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let verdicts = &original.verdicts;
    let last = verdicts.last().unwrap();
    // Resume after the first round that spent budget, with rounds left after it that spend more.
    let r = verdicts
        .iter()
        .position(|v| v.budget_spent > 0.0)
        .expect("the run spent no budget: the test proves nothing");
    assert!(
        last.budget_spent > verdicts[r].budget_spent && last.finished.is_some(),
        "nothing was spent after round {r}: {last:?}"
    );
    let completion = &original.session.tokens()[prompt.len()..verdicts[r].committed_len];
    let spent = verdicts[r].budget_spent;
    let replay = |session: &mut TargetSession| -> Vec<Verdict> {
        original.blocks[r + 1..]
            .iter()
            .map(|b| session.verify_block(b).unwrap())
            .collect()
    };
    let mut resumed = open(completion, spent);
    assert_eq!(resumed.budget_spent(), spent);
    let again = replay(&mut resumed);
    for (a, b) in verdicts[r + 1..].iter().zip(&again) {
        assert_eq!(a.committed, b.committed);
        assert_eq!(a.token_info, b.token_info);
        assert_eq!(a.budget_spent.to_bits(), b.budget_spent.to_bits());
        assert_eq!(a.committed_len, b.committed_len);
    }
    assert_eq!(resumed.tokens(), original.session.tokens());
    assert_eq!(resumed.finished(), original.session.finished());

    // Negative control: the same blocks on a session that forgot what was spent.
    let mut forgetful = open(completion, 0.0);
    let forgot = replay(&mut forgetful);
    assert!(
        forgot.last().unwrap().budget_spent < last.budget_spent,
        "forgetting the spent budget changed nothing: the comparison above proves nothing"
    );

    // What cannot be resumed is refused, naming why.
    let refuse = |completion: &[u32], spent: f64| {
        resume(completion, spent)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default()
    };
    assert!(refuse(completion, 6.5).contains("exceeds the session's budget"));
    assert!(refuse(completion, f64::NAN).contains(">= 0"));
    let eos = t.tokenizer.eos_ids[0];
    assert!(refuse(&[eos, completion[0]], 0.0).contains("goes on for 1 more"));
    assert!(refuse(&[u32::MAX], 0.0).contains("outside the vocabulary"));
}
