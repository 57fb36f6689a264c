//! Where a model comes from: a local file or directory, a named preset, or a Hugging Face repo id
//! resolved through `hf-hub` (its standard cache; `HF_HUB_OFFLINE=1` uses the cache only).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::presets::{self, Log};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Path(PathBuf),
    Preset(String),
    /// `org/name` (HF layout) or `org/name:file.gguf`, optional `@revision`.
    HuggingFace {
        repo: String,
        revision: Option<String>,
        file: Option<String>,
    },
}

impl ModelSource {
    /// Parses a `--model` style argument.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() {
            bail!("empty model name");
        }
        let path = Path::new(spec);
        if path.exists() {
            return Ok(ModelSource::Path(path.to_path_buf()));
        }
        if presets::find(spec).is_some() {
            return Ok(ModelSource::Preset(spec.to_owned()));
        }
        let looks_like_path = spec.starts_with('.')
            || spec.starts_with('/')
            || spec.ends_with(".gguf") && !spec.contains(':');
        if !looks_like_path {
            let (rest, file) = match spec.split_once(':') {
                Some((r, f)) => (r, Some(f.to_owned())),
                None => (spec, None),
            };
            let (repo, revision) = match rest.split_once('@') {
                Some((r, v)) => (r, Some(v.to_owned())),
                None => (rest, None),
            };
            let parts: Vec<&str> = repo.split('/').collect();
            let valid = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            };
            if parts.len() == 2
                && parts.iter().all(|p| valid(p))
                && file.as_deref().is_none_or(|f| !f.is_empty())
            {
                return Ok(ModelSource::HuggingFace {
                    repo: repo.to_owned(),
                    revision,
                    file,
                });
            }
        }
        let names: Vec<&str> = presets::PRESETS.iter().map(|p| p.name).collect();
        bail!(
            "unknown model {spec:?}: it is not an existing file or directory, not a preset ({}), and not a Hugging Face repo id (org/name or org/name:file.gguf)",
            names.join(", ")
        )
    }

    /// Resolves to a local file or directory, fetching if needed.
    pub fn resolve(&self, log: Log) -> Result<PathBuf> {
        match self {
            ModelSource::Path(p) => Ok(p.clone()),
            ModelSource::Preset(name) => {
                let p = presets::find(name).ok_or_else(|| anyhow!("unknown preset {name:?}"))?;
                presets::ensure(p, log).with_context(|| format!("cannot prepare preset {name}"))
            }
            ModelSource::HuggingFace {
                repo,
                revision,
                file,
            } => resolve_hf(repo, revision.as_deref(), file.as_deref(), log),
        }
    }

    /// A short display name.
    pub fn name(&self) -> String {
        match self {
            ModelSource::Path(p) => p.display().to_string(),
            ModelSource::Preset(n) => n.clone(),
            ModelSource::HuggingFace { repo, file, .. } => match file {
                Some(f) => format!("{repo}:{f}"),
                None => repo.clone(),
            },
        }
    }
}

fn hf_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false")
}

fn hf_repo(repo: &str, revision: Option<&str>) -> hf_hub::Repo {
    match revision {
        Some(r) => {
            hf_hub::Repo::with_revision(repo.to_owned(), hf_hub::RepoType::Model, r.to_owned())
        }
        None => hf_hub::Repo::model(repo.to_owned()),
    }
}

/// Fetches one file of a repo: from the cache when offline, else through the hub API (which
/// also uses the cache).
fn hf_get(repo: &str, revision: Option<&str>, file: &str, log: Log) -> Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    if let Some(p) = cache.repo(hf_repo(repo, revision)).get(file) {
        return Ok(p);
    }
    if hf_offline() {
        bail!(
            "{repo}/{file} is not in the Hugging Face cache ({}) and HF_HUB_OFFLINE is set; download it first or unset HF_HUB_OFFLINE",
            cache.path().display()
        );
    }
    log(&format!(
        "downloading {repo}/{file} from the Hugging Face hub"
    ));
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .map_err(|e| anyhow!("cannot set up the Hugging Face client: {e}"))?;
    api.repo(hf_repo(repo, revision))
        .get(file)
        .map_err(|e| anyhow!("cannot download {repo}/{file} from the Hugging Face hub: {e} (set HF_HUB_OFFLINE=1 to use only the local cache)"))
}

fn resolve_hf(repo: &str, revision: Option<&str>, file: Option<&str>, log: Log) -> Result<PathBuf> {
    if let Some(f) = file {
        return hf_get(repo, revision, f, log);
    }
    // HF layout: config, tokenizer, and one or more safetensors shards in one snapshot directory.
    let config = hf_get(repo, revision, "config.json", log)?;
    hf_get(repo, revision, "tokenizer.json", log)?;
    let _ = hf_get(repo, revision, "tokenizer_config.json", log);
    match hf_get(repo, revision, "model.safetensors", log) {
        Ok(_) => {}
        Err(single) => {
            let index =
                hf_get(repo, revision, "model.safetensors.index.json", log).map_err(|_| single)?;
            let idx: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index)?)?;
            let mut shards: Vec<String> = idx["weight_map"]
                .as_object()
                .ok_or_else(|| anyhow!("{} has no weight_map", index.display()))?
                .values()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            shards.sort();
            shards.dedup();
            for s in shards {
                hf_get(repo, revision, &s, log)?;
            }
        }
    }
    Ok(config.parent().expect("snapshot directory").to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_model_specs() {
        assert_eq!(
            ModelSource::parse("smollm2-135m-q8_0").unwrap(),
            ModelSource::Preset("smollm2-135m-q8_0".into())
        );
        assert_eq!(
            ModelSource::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(),
            ModelSource::HuggingFace {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: None,
                file: None
            }
        );
        assert_eq!(
            ModelSource::parse("org/repo@main:model.Q8_0.gguf").unwrap(),
            ModelSource::HuggingFace {
                repo: "org/repo".into(),
                revision: Some("main".into()),
                file: Some("model.Q8_0.gguf".into())
            }
        );
        let err = ModelSource::parse("no-such-model").unwrap_err().to_string();
        assert!(
            err.contains("no-such-model") && err.contains("smollm2-135m-q8_0"),
            "{err}"
        );
        assert!(ModelSource::parse("./missing.gguf").is_err());
    }

    #[test]
    fn hf_repo_resolves_from_a_local_cache_offline() {
        let dir = tempfile::tempdir().unwrap();
        let hub = dir.path().join("hub");
        let snap = hub
            .join("models--org--tiny")
            .join("snapshots")
            .join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(hub.join("models--org--tiny").join("refs")).unwrap();
        std::fs::write(
            hub.join("models--org--tiny").join("refs").join("main"),
            "abc123",
        )
        .unwrap();
        std::fs::write(snap.join("tiny.gguf"), b"GGUF").unwrap();
        // Scoped environment for this process's test: HF_HOME points at the fake cache.
        std::env::set_var("HF_HOME", dir.path());
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let src = ModelSource::parse("org/tiny:tiny.gguf").unwrap();
        let got = src.resolve(&|_| {}).unwrap();
        assert_eq!(got, snap.join("tiny.gguf"));
        let missing = ModelSource::parse("org/tiny:other.gguf")
            .unwrap()
            .resolve(&|_| {})
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("HF_HUB_OFFLINE") && missing.contains("other.gguf"),
            "{missing}"
        );
    }
}
