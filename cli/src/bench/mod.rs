//! `specd bench`: benchmarks that print their figures and ratios against a baseline measured in
//! the same run.

mod distributed;
mod forward;
mod generate;
mod latency;
mod load;
mod procs;
mod rules;
mod stats;

use anyhow::Result;
use clap::Subcommand;

pub use generate::BENCH_PROMPTS;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Target-only vs speculative tokens/s, α, E, t_d, t_v(k) and measured vs predicted speedup.
    Generate(generate::GenerateBenchArgs),
    /// Every acceptance rule at several knobs and budgets: α, E, tokens/s, lossy accepts, budget
    /// spent, and fidelity (non-argmax tokens against the target at temperature 0).
    Rules(rules::RulesBenchArgs),
    /// Embedded vs loopback-distributed tokens/s and the per-round network overhead.
    Distributed(distributed::DistributedBenchArgs),
    /// Speedup over streamed target-only decoding against the draft–target round-trip time, per
    /// block-size policy (fixed γ, auto, heuristic), with and without pipelining, beside the
    /// latency model's prediction (starts target-node, draft-node, link and coordinator).
    Latency(latency::LatencyBenchArgs),
    /// Cost of one forward of k tokens, t_v(k), after a context, on a device, beside the
    /// bandwidth floor (weight bytes ÷ memory bandwidth).
    Forward(forward::ForwardBenchArgs),
    /// Closed-loop load on the embedded engine (clients 1, 4, 16, 64; target-only and
    /// speculative): aggregate tokens/s, time to first token, inter-token latency, errors and
    /// memory, beside the step cost t(k) of k sessions batched in one pass.
    Load(load::LoadBenchArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Generate(a) => generate::bench_generate(a),
        BenchCommand::Rules(a) => rules::bench_rules(a),
        BenchCommand::Distributed(a) => distributed::bench_distributed(a),
        BenchCommand::Latency(a) => latency::bench_latency(a),
        BenchCommand::Forward(a) => forward::bench_forward(a),
        BenchCommand::Load(a) => load::bench_load(a),
    }
}
