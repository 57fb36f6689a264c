//! `specd serve`: the OpenAI-compatible HTTP API with the target and the draft in this process.

use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use specd_engine::device::Device;
use specd_engine::pipeline::LoadedModel;
use specd_engine::presets::{DEFAULT_DRAFT, DEFAULT_TARGET};
use specd_openai::request::Speculative;
use specd_openai::{Backend, Embedded, HttpConfig};

use crate::nodes::{parse_listen, run_server, shutdown_signal};

#[derive(Args)]
pub struct ServeArgs {
    /// Address of the HTTP API, e.g. 127.0.0.1:8000 (0.0.0.0:8000 for every interface).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: String,
    /// Target model: a preset name, a .gguf file, an HF model directory, or a Hugging Face repo
    /// id (org/name or org/name:file.gguf).
    #[arg(long, default_value = DEFAULT_TARGET)]
    pub target: String,
    /// Device of the target: cpu (specd's kernels), candle-cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub target_device: Device,
    /// Draft model (same forms as --target); `none`: no draft model (requests may still ask for
    /// the `ngram` drafter or `target-only`).
    #[arg(long, default_value = DEFAULT_DRAFT)]
    pub draft: String,
    /// Device of the draft.
    #[arg(long, default_value = "cpu")]
    pub draft_device: Device,
    #[command(flatten)]
    pub tls: crate::nodes::TlsIdentityArgs,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The HTTP API's settings (`serve`, and `coordinator --http-listen`).
#[derive(Args)]
pub struct ApiArgs {
    /// The model id clients name in `model` (default: the target's preset or file name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Requests generating at once.
    #[arg(long, default_value_t = 4)]
    pub max_running: usize,
    /// Requests waiting for a turn (served in order of arrival); beyond them the server answers
    /// 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_waiting: usize,
    /// Default drafter of requests: model, ngram[:MIN-MAX], suffix[:MIN-MAX@P] or hybrid (a request's
    /// `speculative.drafter` overrides it, as every default below).
    #[arg(long = "default-drafter", default_value = "model")]
    pub drafter: String,
    /// Default drafted tokens per block: a number, `auto` or `heuristic` (see `generate --help`).
    #[arg(long = "default-gamma", default_value = "8")]
    pub gamma: String,
    /// Default largest block of `auto` and `heuristic`.
    #[arg(long = "default-gamma-max", default_value_t = specd_engine::spec_decode::gamma::DEFAULT_GAMMA_MAX)]
    pub gamma_max: usize,
    /// Default acceptance rule (docs/rules.md): exact, topk:k, ...
    #[arg(long = "default-rule", default_value = "exact")]
    pub rule: String,
    /// Default error budget B per request.
    #[arg(long = "default-budget", default_value_t = 0.0)]
    pub budget: f64,
    /// Default protected tokens: `default`, `none` or a regular expression.
    #[arg(long = "default-protect", default_value = "default")]
    pub protect: String,
    /// Default budget pacing: `linear[:BURST]` or `none`.
    #[arg(long = "default-pacing", default_value = "linear")]
    pub pacing: String,
    /// Require this API key (`Authorization: Bearer KEY`) on the public API — HTTP `/v1/*`, and
    /// the coordinator's gRPC service — as `[TENANT:]KEY` (tenant `default` when none is
    /// named; at least 16 characters). Repeat it, or use --api-key-file, for several. The tenant
    /// scopes what requests share (the suffix drafter's index of earlier completions). Without
    /// keys the API is open. `/health`, `/metrics` and gRPC health stay open. (A key on the
    /// command line shows in `ps`: prefer the file.) Clients: `specd generate --coordinator`
    /// sends $SPECD_API_KEY.
    #[arg(long, value_name = "[TENANT:]KEY")]
    pub api_key: Vec<String>,
    /// A file of API keys: one `TENANT KEY` (or a bare `KEY`) per line, `#` comments.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub drain: crate::nodes::DrainArgs,
}

impl ApiArgs {
    /// The HTTP settings, the defaults checked as a request's `speculative` object is.
    pub fn config(&self) -> Result<HttpConfig> {
        let defaults = Speculative {
            mode: None,
            rule: Some(self.rule.clone()),
            budget: Some(self.budget),
            gamma: Some(serde_json::Value::String(self.gamma.clone())),
            gamma_max: Some(self.gamma_max),
            protect: Some(self.protect.clone()),
            pacing: Some(self.pacing.clone()),
            drafter: Some(self.drafter.clone()),
            draft_sampling: None,
        };
        specd_openai::request::check_defaults(&defaults).map_err(|e| {
            let field = e
                .param
                .as_deref()
                .unwrap_or("")
                .trim_start_matches("speculative.");
            anyhow::anyhow!("--default-{}: {}", field.replace('_', "-"), e.message)
        })?;
        if self.max_running == 0 {
            anyhow::bail!("--max-running must be at least 1");
        }
        Ok(HttpConfig {
            max_running: self.max_running,
            max_waiting: self.max_waiting,
            defaults,
            drain_timeout: self.drain.timeout(),
            api_keys: self.api_keys()?,
            tls: None,
        })
    }

    /// The API keys of --api-key and --api-key-file (None: an open API).
    pub fn api_keys(&self) -> Result<Option<Arc<specd_rpc::auth::ApiKeys>>> {
        Ok(
            specd_rpc::auth::ApiKeys::load(&self.api_key, self.api_key_file.as_deref())?
                .map(Arc::new),
        )
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    let listen = parse_listen(&a.listen)?;
    let mut cfg = a.api.config()?;
    cfg.tls = a.tls.load()?;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let name = a.api.served_model_name.clone();
    let load = move || -> Result<Arc<dyn Backend>> {
        let target = LoadedModel::load_on(&a.target, a.target_device, &crate::log)?;
        let draft = if a.draft == "none" {
            None
        } else {
            Some(LoadedModel::load_on(&a.draft, a.draft_device, &crate::log)?)
        };
        let backend = Embedded::new(target, draft, name)?;
        crate::log(&format!("serving model {:?}", backend.model_id()));
        Ok(Arc::new(backend))
    };
    run_server(async move {
        let listener = specd_openai::bind(listen).await?;
        crate::log(&format!(
            "HTTP API on {scheme}://{} (loading the models)",
            listener.local_addr()?
        ));
        specd_openai::serve(listener, cfg, load, shutdown_signal()).await
    })
}
