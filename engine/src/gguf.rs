//! GGUF (v2/v3) reader and writer.
//!
//! The reader memory-maps the file, parses the metadata and tensor table, and validates that every
//! tensor lies inside the file, so a truncated or corrupt file fails here with a message naming the
//! file and what is wrong, never later inside a kernel.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The value as an unsigned integer, if it is an integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor of the file: its name, shape (`dims[0]` is the innermost, contiguous dimension, as in
/// ggml), type, and byte range inside the mapped file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the tensor's data from the start of the file.
    pub offset: usize,
    pub n_bytes: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// A parsed, memory-mapped GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    mmap: memmap2::Mmap,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                anyhow!(
                    "unexpected end of file at byte {} (wanted {} more bytes; the file is {} bytes): truncated or not a GGUF file",
                    self.pos,
                    n,
                    self.buf.len()
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        if n > self.buf.len() as u64 {
            bail!(
                "{what} length {n} at byte {} exceeds the file size: corrupt GGUF",
                self.pos
            );
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len("string")?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| anyhow!("invalid UTF-8 string at byte {}", self.pos - n))
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::String(self.string()?),
            9 => {
                if depth > 4 {
                    bail!("metadata arrays nested too deeply: corrupt GGUF");
                }
                let ety = self.u32()?;
                let n = self.len("array")?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(ety, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => bail!(
                "unknown metadata value type {other} at byte {}: corrupt GGUF",
                self.pos
            ),
        })
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        // SAFETY: the file is opened read-only; specd never writes a model file in place (writes go to
        // a temporary file that is renamed over), so the mapping does not change under us.
        let mmap = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map model file {}", path.display()))?;
        Self::parse(path, mmap)
            .with_context(|| format!("invalid GGUF model file {}", path.display()))
    }

    /// Parses and validates a GGUF image held in memory (`path` only names it in errors and in
    /// the result): what the fuzzing targets feed.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            bail!("invalid GGUF model file {}: it is empty", path.display());
        }
        let mut map = memmap2::MmapMut::map_anon(bytes.len())
            .context("cannot allocate memory for a GGUF image")?;
        map.copy_from_slice(bytes);
        let map = map.make_read_only()?;
        Self::parse(path, map)
            .with_context(|| format!("invalid GGUF model file {}", path.display()))
    }

    fn parse(path: &Path, mmap: memmap2::Mmap) -> Result<Self> {
        let mut c = Cursor {
            buf: &mmap[..],
            pos: 0,
        };
        let magic = c
            .take(4)
            .map_err(|_| anyhow!("file is too short to be GGUF ({} bytes)", mmap.len()))?;
        if magic != MAGIC {
            bail!(
                "not a GGUF file (magic bytes {:02x?}, expected \"GGUF\")",
                magic
            );
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            bail!("unsupported GGUF version {version} (supported: 2, 3)");
        }
        let n_tensors = c.len("tensor count")?;
        let n_kv = c.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let v = c
                .value(ty, 0)
                .with_context(|| format!("reading metadata key {key:?}"))?;
            metadata.insert(key, v);
        }
        let mut raw = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims == 0 || n_dims > 4 {
                bail!("tensor {name:?} has {n_dims} dimensions (expected 1..=4)");
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64()?);
            }
            let ty = c.u32()?;
            let offset = c.u64()?;
            raw.push((name, dims, ty, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT)
            .max(1);
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let mut tensors = Vec::with_capacity(raw.len());
        for (name, dims, ty, offset) in raw {
            let ggml_type = GgmlType::from_id(ty).with_context(|| format!("tensor {name:?}"))?;
            let n_el = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| anyhow!("tensor {name:?} has an impossible shape {dims:?}"))?;
            if n_el % ggml_type.block_size() as u64 != 0
                || dims[0] % ggml_type.block_size() as u64 != 0
            {
                bail!(
                    "tensor {name:?} of type {ggml_type:?} has row length {} not a multiple of its block size {}",
                    dims[0],
                    ggml_type.block_size()
                );
            }
            let n_bytes = (n_el / ggml_type.block_size() as u64)
                .checked_mul(ggml_type.block_bytes() as u64)
                .ok_or_else(|| anyhow!("tensor {name:?} has an impossible shape {dims:?}"))?;
            // An offset near 2^64 must not wrap around to the start of the file.
            let start = data_start.saturating_add(offset);
            if start
                .checked_add(n_bytes)
                .is_none_or(|end| end > mmap.len() as u64)
            {
                bail!(
                    "tensor {name:?} ({n_bytes} bytes at offset {start}) lies past the end of the file ({} bytes): the file is truncated or corrupt",
                    mmap.len()
                );
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset: start as usize,
                n_bytes: n_bytes as usize,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            mmap,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| {
            anyhow!(
                "{}: metadata key {key:?} is missing or not an integer",
                self.path.display()
            )
        })
    }

    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(Value::as_f64)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor.
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.mmap[t.offset..t.offset + t.n_bytes]
    }
}

/// A tensor to write: name, ggml dims (innermost first), type and already-encoded bytes.
pub struct TensorOut {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub data: Vec<u8>,
}

fn write_string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn write_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&[*x as u8]),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => write_string(w, s),
        Value::Array(items) => {
            let ety = items.first().map(Value::type_id).unwrap_or(4);
            w.write_all(&ety.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for it in items {
                write_value(w, it)?;
            }
            Ok(())
        }
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
    }
}

/// Writes a GGUF v3 file (to `w`; callers write to a temporary file and rename for atomicity).
pub fn write_gguf(
    w: &mut impl Write,
    metadata: &BTreeMap<String, Value>,
    tensors: &[TensorOut],
) -> Result<()> {
    let heads: Vec<TensorHead> = tensors
        .iter()
        .map(|t| TensorHead {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
            n_bytes: t.data.len() as u64,
        })
        .collect();
    write_gguf_streaming(w, metadata, &heads, |i, w| {
        w.write_all(&tensors[i].data)?;
        Ok(())
    })
}

/// A tensor's entry in the header of a file written by [`write_gguf_streaming`].
pub struct TensorHead {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub n_bytes: u64,
}

/// Writes a GGUF v3 file whose tensor data comes one tensor at a time: `data(i, w)` writes exactly
/// `tensors[i].n_bytes` bytes of tensor `i`, in order, so a file larger than memory can be made.
pub fn write_gguf_streaming<W: Write>(
    w: &mut W,
    metadata: &BTreeMap<String, Value>,
    tensors: &[TensorHead],
    mut data: impl FnMut(usize, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let alignment = metadata
        .get("general.alignment")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_ALIGNMENT);
    let mut head = Vec::new();
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&3u32.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        write_string(&mut head, k)?;
        head.extend_from_slice(&v.type_id().to_le_bytes());
        write_value(&mut head, v)?;
    }
    let mut offset = 0u64;
    let mut offsets = Vec::with_capacity(tensors.len());
    for t in tensors {
        write_string(&mut head, &t.name)?;
        head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            head.extend_from_slice(&d.to_le_bytes());
        }
        head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
        head.extend_from_slice(&offset.to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.n_bytes).div_ceil(alignment) * alignment;
    }
    let data_start = (head.len() as u64).div_ceil(alignment) * alignment;
    head.resize(data_start as usize, 0);
    w.write_all(&head)?;
    let mut pos = 0u64;
    for (i, (t, off)) in tensors.iter().zip(offsets).enumerate() {
        if off > pos {
            w.write_all(&vec![0u8; (off - pos) as usize])?;
            pos = off;
        }
        let mut counted = Counting {
            inner: &mut *w,
            n: 0,
        };
        data(i, &mut counted)?;
        if counted.n != t.n_bytes {
            bail!(
                "tensor {}: {} bytes written, its header says {}",
                t.name,
                counted.n,
                t.n_bytes
            );
        }
        pos += t.n_bytes;
    }
    Ok(())
}

/// A writer that counts the bytes passed through it.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for Counting<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GGUF v3 image with no metadata and one tensor `t` of type id `ty` and shape `dims` at
    /// `offset`, followed by 128 bytes of data.
    fn one_tensor(dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(0u64.to_le_bytes()); // metadata
        b.extend(1u64.to_le_bytes());
        b.push(b't');
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        b.resize(b.len().div_ceil(32) * 32 + 128, 0);
        b
    }

    /// The error an image is refused with (panics if it is accepted).
    fn refusal(name: &str, bytes: &[u8]) -> String {
        match GgufFile::from_bytes(Path::new(name), bytes) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_tensor_offset_near_2_64_is_refused_not_wrapped() {
        let f32 = |offset| one_tensor(&[32], 0, offset);
        let ok = GgufFile::from_bytes(Path::new("t.gguf"), &f32(0)).unwrap();
        assert_eq!(ok.tensors[0].n_bytes, 128);
        // data_start + offset wrapped to 0 once, and the tensor "fitted" at the file's start.
        let data_start = (f32(0).len() - 128) as u64;
        let e = refusal("t.gguf", &f32(0u64.wrapping_sub(data_start)));
        assert!(e.contains("past the end of the file"), "{e}");
    }

    /// Found by `scripts/fuzz.sh` (target gguf): 2^63 F32 values count in a u64, their 2^65
    /// bytes do not — an overflow panic with overflow checks, a wrapped size (and a tensor that
    /// "fits") without.
    #[test]
    fn a_tensor_too_large_to_count_in_bytes_is_refused() {
        let e = refusal("t.gguf", &one_tensor(&[2, 1 << 62], 0, 0));
        assert!(e.contains("impossible shape"), "{e}");
    }

    #[test]
    fn empty_and_foreign_images_are_named() {
        let e = refusal("x.gguf", b"");
        assert!(e.contains("x.gguf") && e.contains("empty"), "{e}");
        let e = refusal("x.gguf", b"PK\x03\x04zip");
        assert!(e.contains("not a GGUF file"), "{e}");
    }
}
