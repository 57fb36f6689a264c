//! `specd bench distributed`: embedded vs loopback-distributed speed on the same prompts in the
//! same run, and the per-round network + scheduling overhead seen by the draft-node.

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use specd_engine::pipeline::{self, Mode, Prompt, Request};
use specd_engine::sampling::SamplingParams;
use specd_engine::spec_decode::budget::Policy;
use specd_engine::spec_decode::draft::DrafterSpec;
use specd_engine::spec_decode::gamma::GammaPolicy;
use specd_engine::spec_decode::DraftSampling;

use super::procs::{free_port, start, start_model_node};
use super::BENCH_PROMPTS;

#[derive(Args)]
pub struct DistributedBenchArgs {
    #[command(flatten)]
    pub models: crate::model_args::ModelPairArgs,
    #[arg(long, default_value_t = 4)]
    pub gamma: usize,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// How many of the built-in prompts to run.
    #[arg(long, default_value_t = 4)]
    pub prompts: usize,
    /// Print one JSON line with every figure on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn bench_distributed(a: DistributedBenchArgs) -> Result<()> {
    if a.prompts == 0 || a.prompts > BENCH_PROMPTS.len() {
        bail!("--prompts must be in 1..={}", BENCH_PROMPTS.len());
    }
    let log = &crate::log;
    let target = a.models.load_target()?;
    let draft = a.models.load_draft()?;
    let pc = free_port()?;
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    log("starting target-node, draft-node and coordinator on loopback");
    let (_t, pt) = start_model_node("target-node", &a.models.target)?;
    let (_d, pd) = start_model_node("draft-node", &a.models.draft)?;
    let _c = start(
        &[
            "coordinator".into(),
            "--listen".into(),
            addr(pc),
            "--target".into(),
            url(pt),
            "--draft".into(),
            url(pd),
        ],
        pc,
    )?;
    let req = |p: &str| Request {
        prompt: Prompt::user(p),
        stop: Vec::new(),
        logprobs: None,
        tenant: String::new(),
        max_tokens: a.max_tokens,
        sampling: SamplingParams::default(),
        gamma: GammaPolicy::Fixed(a.gamma),
        mode: Mode::Speculative,
        drafter: DrafterSpec::Model,
        draft_sampling: DraftSampling::Greedy,
        policy: Policy::default(),
    };
    let prompts = &BENCH_PROMPTS[..a.prompts];
    let (mut e_tok, mut e_s, mut d_tok, mut d_s, mut d_wall) = (0usize, 0f64, 0usize, 0f64, 0f64);
    let (mut pl_tok, mut pl_s, mut pl_stale) = (0usize, 0f64, 0u64);
    let (mut p50s, mut p99s, mut rounds) = (Vec::new(), Vec::new(), 0u64);
    let mut identical = true;
    // Warm-up (model pages, connections).
    specd_coordinator::client::generate(&url(pc), &req(prompts[0]), "none", true, |_| {})?;
    for (i, p) in prompts.iter().enumerate() {
        log(&format!("prompt {}/{}", i + 1, prompts.len()));
        let emb = pipeline::generate(&target, Some(&draft), &req(p), |_| {})?;
        e_tok += emb.stats.completion_tokens;
        e_s += emb.stats.decode_s;
        let dist = specd_coordinator::client::generate(&url(pc), &req(p), "none", false, |_| {})?;
        d_tok += dist.output.stats.completion_tokens;
        d_s += dist.output.stats.decode_s;
        d_wall += dist.output.wall_s;
        identical &= dist.output.token_ids == emb.token_ids;
        p50s.push(dist.wire_stats.round_overhead_us_p50);
        p99s.push(dist.wire_stats.round_overhead_us_p99);
        rounds += dist.wire_stats.rounds;
        let piped = specd_coordinator::client::generate(&url(pc), &req(p), "none", true, |_| {})?;
        pl_tok += piped.output.stats.completion_tokens;
        pl_s += piped.output.stats.decode_s;
        pl_stale += piped.wire_stats.stale_blocks;
        identical &= piped.output.token_ids == emb.token_ids;
    }
    let pl_tps = pl_tok as f64 / pl_s;
    let (e_tps, d_tps) = (e_tok as f64 / e_s, d_tok as f64 / d_s);
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (p50, p99) = (med(&mut p50s), p99s.iter().cloned().fold(0f64, f64::max));
    eprintln!(
        "target {}, draft {}, γ = {}, {} prompts × {} tokens, greedy",
        target.name,
        draft.name,
        a.gamma,
        prompts.len(),
        a.max_tokens
    );
    eprintln!("embedded:               {e_tps:7.1} tok/s");
    eprintln!("distributed, sequential: {d_tps:7.1} tok/s  ({:.3}× embedded; client wall incl. session setup {:.1} tok/s)", d_tps / e_tps, d_tok as f64 / d_wall);
    eprintln!("per-round network + scheduling overhead: p50 {p50:.0} µs (median over prompts), p99 {p99:.0} µs (worst prompt), {rounds} rounds");
    eprintln!(
        "distributed, pipelined: {pl_tps:7.1} tok/s  ({:.3}× embedded, {:.3}× unpipelined; {pl_stale} stale blocks)",
        pl_tps / e_tps,
        pl_tps / d_tps
    );
    eprintln!("outputs identical (greedy, all three): {identical}");
    if a.json {
        println!(
            "{}",
            json!({
                "bench": "distributed", "target": target.name, "draft": draft.name, "gamma": a.gamma,
                "max_tokens": a.max_tokens, "prompts": prompts.len(),
                "embedded_tokens_per_s": e_tps, "distributed_tokens_per_s": d_tps, "ratio": d_tps / e_tps,
                "distributed_client_wall_tokens_per_s": d_tok as f64 / d_wall,
                "round_overhead_us_p50": p50, "round_overhead_us_p99": p99, "rounds": rounds,
                "pipelined_tokens_per_s": pl_tps, "pipelined_ratio": pl_tps / e_tps, "pipelined_stale_blocks": pl_stale,
                "outputs_identical": identical,
            })
        );
    }
    Ok(())
}
