//! `specd bench forward`: what one forward of k tokens costs on a device, t_v(k), after a context of
//! given length, beside the bandwidth floor (every weight byte read once).

use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use specd_engine::device::Device;
use specd_engine::model::{profile, Model};
use specd_engine::pipeline::LoadedModel;
use specd_engine::presets::DEFAULT_TARGET;

use super::stats::median;

#[derive(Args)]
pub struct ForwardBenchArgs {
    /// The model (preset, file, directory or Hugging Face repo id).
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub model: String,
    /// Device: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Tokens in the KV cache before each timed forward.
    #[arg(long, default_value_t = 512)]
    pub context: usize,
    /// Rows per forward to time, comma-separated (k = γ + 1 for a verify of γ drafted tokens).
    #[arg(long, default_value = "1,2,4,8,16,32", value_delimiter = ',')]
    pub k: Vec<usize>,
    /// Timed repetitions of each k (after 2 untimed); the median is reported.
    #[arg(long, default_value_t = 11)]
    pub reps: usize,
    /// Memory bandwidth in GB/s for the floor (weight bytes ÷ bandwidth), e.g. 4800 for an H200;
    /// 0: no floor.
    #[arg(long, default_value_t = 0.0)]
    pub bandwidth_gbs: f64,
    /// Also time each stage of the forward (matmuls, attention, norms, logits copy), waiting for
    /// the device after each: where the time goes, per k.
    #[arg(long)]
    pub profile: bool,
    /// Print one JSON line with every figure on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Median seconds of forwards of `k` tokens (for every k in `ks`) after `context`, measured
/// round-robin over k so that drift on a shared machine hits every k alike. A forward returns its
/// logits on the host, so the time includes the device's work and the copy.
pub fn time_forwards(
    model: &Model,
    context: &[u32],
    ks: &[usize],
    reps: usize,
) -> Result<Vec<f64>> {
    let mut cache = model.new_cache();
    model.forward(&mut cache, context, context.len())?;
    let base = cache.len();
    let mut times = vec![Vec::with_capacity(reps); ks.len()];
    for rep in 0..reps + 2 {
        for (i, &k) in ks.iter().enumerate() {
            let block: Vec<u32> = context.iter().cycle().take(k).copied().collect();
            let t0 = Instant::now();
            std::hint::black_box(model.forward(&mut cache, &block, 0)?);
            if rep >= 2 {
                times[i].push(t0.elapsed().as_secs_f64());
            }
            cache.truncate(base);
        }
    }
    Ok(times.iter().map(|t| median(t)).collect())
}

/// Milliseconds per forward of each stage, over `reps` profiled forwards of `k` tokens.
fn profile_forwards(
    model: &Model,
    context: &[u32],
    k: usize,
    reps: usize,
) -> Result<Vec<(&'static str, f64)>> {
    let mut cache = model.new_cache();
    model.forward(&mut cache, context, context.len())?;
    let base = cache.len();
    let block: Vec<u32> = context.iter().cycle().take(k).copied().collect();
    profile::enable(true);
    let res = (0..reps).try_for_each(|_| {
        model.forward(&mut cache, &block, 0)?;
        cache.truncate(base);
        Ok::<_, anyhow::Error>(())
    });
    let stages = profile::take();
    profile::enable(false);
    res?;
    let mut out: Vec<(&str, f64)> = stages
        .into_iter()
        .map(|(s, _, secs)| (s, secs * 1e3 / reps as f64))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(out)
}

pub fn bench_forward(a: ForwardBenchArgs) -> Result<()> {
    if a.k.is_empty() || a.k.contains(&0) {
        bail!("--k values must be at least 1");
    }
    if a.reps == 0 || a.context == 0 {
        bail!("--reps and --context must be at least 1");
    }
    let m = LoadedModel::load_on(&a.model, a.device, &crate::log)?;
    let cfg = &m.model.config;
    let longest = a.k.iter().max().copied().unwrap_or(1);
    if a.context + longest > cfg.context_length {
        bail!(
            "--context {} plus k = {longest} exceeds the model's context length {}",
            a.context,
            cfg.context_length
        );
    }
    // A context of real text, repeated to length (the cost does not depend on which tokens).
    let text = super::BENCH_PROMPTS.join(" ");
    let ids = m.tokenizer.encode(&text, false)?;
    if ids.is_empty() {
        bail!("the tokenizer gave no tokens for the benchmark text");
    }
    let context: Vec<u32> = ids.iter().cycle().take(a.context).copied().collect();
    crate::log(&format!(
        "timing forwards of k = {:?} after {} tokens on {}, {} reps each",
        a.k, a.context, a.device, a.reps
    ));
    let t = time_forwards(&m.model, &context, &a.k, a.reps)?;
    let bytes = m.model.n_bytes();
    let floor_ms = (a.bandwidth_gbs > 0.0).then(|| bytes as f64 / (a.bandwidth_gbs * 1e9) * 1e3);
    eprintln!(
        "{} on {}: {:.0} MB of weights{}",
        m.name,
        a.device,
        bytes as f64 / 1e6,
        floor_ms.map_or(String::new(), |f| format!(
            ", bandwidth floor {f:.2} ms at {} GB/s",
            a.bandwidth_gbs
        ))
    );
    let mut rows = Vec::new();
    for (&k, &s) in a.k.iter().zip(&t) {
        let ms = s * 1e3;
        let over_floor = floor_ms.map(|f| ms / f);
        eprintln!(
            "t_v({k:>2}) = {ms:8.2} ms  {:5.2}× t_v({})  {:6.1} tok/s{}",
            s / t[0],
            a.k[0],
            k as f64 / s,
            over_floor.map_or(String::new(), |r| format!("  {r:.2}× floor"))
        );
        rows.push(json!({"k": k, "ms": ms, "over_first": s / t[0], "over_floor": over_floor}));
    }
    let mut profiles = serde_json::Map::new();
    if a.profile {
        for &k in &a.k {
            let stages = profile_forwards(&m.model, &context, k, a.reps)?;
            let total: f64 = stages.iter().map(|s| s.1).sum();
            eprintln!("profile of k = {k} (synchronized after each stage): {total:.2} ms");
            for (s, ms) in &stages {
                eprintln!("  {s:<18} {ms:8.3} ms  {:5.1} %", 100.0 * ms / total);
            }
            profiles.insert(
                k.to_string(),
                stages
                    .iter()
                    .map(|(s, ms)| (s.to_string(), json!(ms)))
                    .collect(),
            );
        }
    }
    if a.json {
        println!(
            "{}",
            json!({
                "bench": "forward", "model": m.name, "device": a.device.to_string(),
                "context": a.context, "reps": a.reps, "weight_bytes": bytes,
                "bandwidth_gbs": a.bandwidth_gbs, "floor_ms": floor_ms, "forwards": rows,
                "profile_ms": if a.profile { Some(profiles) } else { None },
            })
        );
    }
    Ok(())
}
