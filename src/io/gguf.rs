//! GGUF files (llama.cpp's model format): reading, dequantisation, and a small writer.
//!
//! Layout (ggml `docs/gguf.md`, gguf-py `gguf_reader.py`), all little-endian:
//! `"GGUF"`, version `u32` (2 or 3), tensor count `u64`, metadata count `u64`, the metadata
//! key/value pairs, the tensor infos (name, dims with the fastest-varying first, ggml type,
//! offset into the data section), padding to `general.alignment` (default 32), the data section.
//!
//! Dequantisation follows ggml's `dequantize_row_*` (ggml-quants.c) operation for operation, so
//! results are bit-identical to gguf-py's `quants.dequantize` (tested against it). Quantised tensors
//! stay reachable as raw blocks ([`GgufFile::tensor_bytes`]) for QLoRA.
//!
//! ```no_run
//! use tunelab::io::gguf::GgufFile;
//! let gguf = GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! assert_eq!(gguf.architecture()?, "llama");
//! let (shape, values) = gguf.tensor_f32("token_embd.weight")?;
//! assert_eq!(shape, vec![49152, 576]); // PyTorch order: [rows, columns]
//! # let _ = values;
//! # Ok::<(), tunelab::io::gguf::GgufError>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// `"GGUF"` read as a little-endian u32.
const GGUF_MAGIC: u32 = 0x4655_4747;
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Elements per super-block of the k-quants.
const QK_K: usize = 256;

/// A ggml tensor type, by its numeric id in the file (`GGMLQuantizationType` in gguf-py).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: Self = Self(0);
    pub const F16: Self = Self(1);
    pub const Q4_0: Self = Self(2);
    pub const Q4_1: Self = Self(3);
    pub const Q5_0: Self = Self(6);
    pub const Q5_1: Self = Self(7);
    pub const Q8_0: Self = Self(8);
    pub const Q2_K: Self = Self(10);
    pub const Q3_K: Self = Self(11);
    pub const Q4_K: Self = Self(12);
    pub const Q5_K: Self = Self(13);
    pub const Q6_K: Self = Self(14);
    pub const BF16: Self = Self(30);

    /// ggml's name for the type (`"Q4_K"`), or `"type 99"` for ids this build does not know.
    pub fn name(self) -> String {
        const NAMES: &[(u32, &str)] = &[
            (0, "F32"),
            (1, "F16"),
            (2, "Q4_0"),
            (3, "Q4_1"),
            (6, "Q5_0"),
            (7, "Q5_1"),
            (8, "Q8_0"),
            (9, "Q8_1"),
            (10, "Q2_K"),
            (11, "Q3_K"),
            (12, "Q4_K"),
            (13, "Q5_K"),
            (14, "Q6_K"),
            (15, "Q8_K"),
            (16, "IQ2_XXS"),
            (17, "IQ2_XS"),
            (18, "IQ3_XXS"),
            (19, "IQ1_S"),
            (20, "IQ4_NL"),
            (21, "IQ3_S"),
            (22, "IQ2_S"),
            (23, "IQ4_XS"),
            (24, "I8"),
            (25, "I16"),
            (26, "I32"),
            (27, "I64"),
            (28, "F64"),
            (29, "IQ1_M"),
            (30, "BF16"),
            (34, "TQ1_0"),
            (35, "TQ2_0"),
            (39, "MXFP4"),
        ];
        NAMES
            .iter()
            .find(|(id, _)| *id == self.0)
            .map(|(_, n)| n.to_string())
            .unwrap_or_else(|| format!("type {}", self.0))
    }

    /// `(elements per block, bytes per block)` for the types whose layout we know
    /// (`GGML_QUANT_SIZES` in gguf-py). Knowing the size is enough to skip or copy a tensor;
    /// [`GgmlType::can_dequantize`] says whether we can also turn it into f32.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self.0 {
            0 => (1, 4),
            1 | 30 => (1, 2),
            2 => (32, 18),
            3 => (32, 20),
            6 => (32, 22),
            7 => (32, 24),
            8 => (32, 34),
            9 => (32, 40),
            10 => (QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
            11 => (QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
            12 => (QK_K, 2 + 2 + QK_K / 2 + 12),
            13 => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
            14 => (QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
            15 => (QK_K, 4 + QK_K + QK_K / 8),
            24 => (1, 1),
            25 => (1, 2),
            26 => (1, 4),
            27 | 28 => (1, 8),
            _ => return None,
        })
    }

    /// Whether [`dequantize`] handles this type.
    pub fn can_dequantize(self) -> bool {
        matches!(
            self,
            Self::F32 | Self::F16 | Self::BF16 | Self::Q8_0 | Self::Q4_0 | Self::Q4_1
        ) || matches!(self, Self::Q4_K | Self::Q6_K)
    }

    /// Bytes taken by `n_elements` values of this type (None when the layout is unknown or
    /// `n_elements` is not a whole number of blocks).
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let (block, size) = self.block_layout()?;
        // Checked: a corrupt dimension must give None (an error upstream), not an overflow.
        n_elements.is_multiple_of(block as u64).then(|| (n_elements / block as u64).checked_mul(size as u64))?
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A metadata value. Integer widths are kept so a file can be written back unchanged.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements all have the same type (GGUF stores it once); an empty array keeps its type id.
    Array(u32, Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// The GGUF value-type id (`GGUFValueType`).
    pub fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(..) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(..) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }

    /// Any integer type as i64 (u64 beyond i64::MAX gives None).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Self::U8(v) => v as i64,
            Self::I8(v) => v as i64,
            Self::U16(v) => v as i64,
            Self::I16(v) => v as i64,
            Self::U32(v) => v as i64,
            Self::I32(v) => v as i64,
            Self::U64(v) => i64::try_from(v).ok()?,
            Self::I64(v) => v,
            Self::Bool(v) => v as i64,
            _ => return None,
        })
    }

    /// Any number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v as f64),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// An array of strings (`tokenizer.ggml.tokens`) as owned strings.
    pub fn as_string_array(&self) -> Option<Vec<String>> {
        self.as_array()?
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect()
    }

    /// A numeric array as f32 (`tokenizer.ggml.scores`).
    pub fn as_f32_array(&self) -> Option<Vec<f32>> {
        self.as_array()?
            .iter()
            .map(|v| v.as_f64().map(|x| x as f32))
            .collect()
    }

    /// An integer array as i64 (`tokenizer.ggml.token_type`).
    pub fn as_i64_array(&self) -> Option<Vec<i64>> {
        self.as_array()?.iter().map(MetaValue::as_i64).collect()
    }
}

impl From<&str> for MetaValue {
    fn from(s: &str) -> Self {
        Self::String(s.to_string())
    }
}
impl From<String> for MetaValue {
    fn from(s: String) -> Self {
        Self::String(s)
    }
}
impl From<u32> for MetaValue {
    fn from(v: u32) -> Self {
        Self::U32(v)
    }
}
impl From<i32> for MetaValue {
    fn from(v: i32) -> Self {
        Self::I32(v)
    }
}
impl From<f32> for MetaValue {
    fn from(v: f32) -> Self {
        Self::F32(v)
    }
}
impl From<bool> for MetaValue {
    fn from(v: bool) -> Self {
        Self::Bool(v)
    }
}
impl From<u64> for MetaValue {
    fn from(v: u64) -> Self {
        Self::U64(v)
    }
}
impl From<Vec<String>> for MetaValue {
    fn from(v: Vec<String>) -> Self {
        Self::Array(8, v.into_iter().map(MetaValue::String).collect())
    }
}
impl From<Vec<f32>> for MetaValue {
    fn from(v: Vec<f32>) -> Self {
        Self::Array(6, v.into_iter().map(MetaValue::F32).collect())
    }
}
impl From<Vec<i32>> for MetaValue {
    fn from(v: Vec<i32>) -> Self {
        Self::Array(5, v.into_iter().map(MetaValue::I32).collect())
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the fastest-varying (the row length).
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// The shape in PyTorch / burn order (ggml dims reversed): a `[in, out]` ggml weight is `[out, in]`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of values (saturating; [`GgufFile::open`] refuses files where the product overflows).
    pub fn n_elements(&self) -> u64 {
        self.checked_n_elements().unwrap_or(u64::MAX)
    }

    /// Number of values, or None when the product of the dimensions overflows `u64`/`usize`.
    pub fn checked_n_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| usize::try_from(n).is_ok())
    }

    /// Bytes the tensor takes in the data section (None for an unknown type or an overflowing size).
    pub fn n_bytes(&self) -> Option<u64> {
        self.ggml_type.bytes_for(self.checked_n_elements()?)
    }
}

/// What can go wrong reading or writing a GGUF file. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")")]
    NotGguf { path: PathBuf, magic: Vec<u8> },
    #[error("{path}: GGUF version {version} is not supported (only 2 and 3, little-endian)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error(
        "{path}: file is truncated: it ends at byte {len} while reading {what} (needs byte {needed})"
    )]
    Truncated {
        path: PathBuf,
        what: String,
        len: u64,
        needed: u64,
    },
    #[error("{path}: malformed {what}: {reason}")]
    Malformed {
        path: PathBuf,
        what: String,
        reason: String,
    },
    #[error(
        "{path}: tensor '{tensor}' has type {ggml_type}, which tunelab cannot dequantize (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)"
    )]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        ggml_type: GgmlType,
    },
    #[error("{path}: no tensor named '{tensor}'")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: metadata key '{key}' is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key '{key}' is {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// An open GGUF file: parsed header, metadata and tensor infos over a memory map of the data.
pub struct GgufFile {
    path: PathBuf,
    mmap: Mmap,
    /// 2 or 3.
    pub version: u32,
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment` or 32.
    pub alignment: u64,
    /// Absolute byte offset of the data section.
    pub data_offset: u64,
    index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor; every short read becomes [`GgufError::Truncated`].
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                len: self.buf.len() as u64,
                needed: (self.pos as u64).saturating_add(n as u64),
            }),
        }
    }
    fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &dyn Fn() -> String) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let len =
            usize::try_from(len).map_err(|_| self.malformed(what(), "string length overflows"))?;
        let bytes = self.take(len, what)?;
        // Some converters wrote invalid UTF-8 into token strings; keep going like gguf-py does.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn malformed(&self, what: String, reason: &str) -> GgufError {
        GgufError::Malformed {
            path: self.path.to_path_buf(),
            what,
            reason: reason.to_string(),
        }
    }

    fn value(
        &mut self,
        ty: u32,
        what: &dyn Fn() -> String,
        depth: usize,
    ) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::U8(self.u8(what)?),
            1 => MetaValue::I8(self.u8(what)? as i8),
            2 => MetaValue::U16(self.u16(what)?),
            3 => MetaValue::I16(self.u16(what)? as i16),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(self.u32(what)? as i32),
            6 => MetaValue::F32(f32::from_bits(self.u32(what)?)),
            7 => MetaValue::Bool(self.u8(what)? != 0),
            8 => MetaValue::String(self.string(what)?),
            9 => {
                if depth > 8 {
                    return Err(self.malformed(what(), "arrays nested deeper than 8"));
                }
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                // Each element takes at least one byte: a count beyond the file is corruption,
                // and checking it first avoids a huge allocation.
                if n > (self.buf.len() - self.pos) as u64 {
                    return Err(GgufError::Truncated {
                        path: self.path.to_path_buf(),
                        what: what(),
                        len: self.buf.len() as u64,
                        needed: (self.pos as u64).saturating_add(n),
                    });
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, what, depth + 1)?);
                }
                MetaValue::Array(elem, items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(self.u64(what)? as i64),
            12 => MetaValue::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(self.malformed(what(), &format!("unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Open and parse a GGUF file. The tensor data stays memory-mapped; nothing is dequantized yet.
    ///
    /// Checks that every tensor's data lies inside the file, so a truncated download fails here,
    /// naming the file and the first tensor that does not fit.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed underneath us gives wrong numbers, not UB
        // in our code paths (we only read bytes).
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<Self, GgufError> {
        let mut c = Cursor {
            buf: &mmap,
            pos: 0,
            path: &path,
        };
        let header = || "the header".to_string();
        let magic = c.take(4, &header)?;
        if u32::from_le_bytes(magic.try_into().unwrap()) != GGUF_MAGIC {
            return Err(GgufError::NotGguf {
                path: path.clone(),
                magic: magic.to_vec(),
            });
        }
        let version = c.u32(&header)?;
        if version != 2 && version != 3 {
            // A big-endian file reads as a byte-swapped version (e.g. 0x03000000).
            return Err(GgufError::UnsupportedVersion {
                path: path.clone(),
                version,
            });
        }
        let n_tensors = c.u64(&header)?;
        let n_kv = c.u64(&header)?;

        let mut metadata = Vec::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("the key of metadata entry {}", i + 1))?;
            let what = || format!("metadata value '{key}'");
            let ty = c.u32(&what)?;
            let value = c.value(ty, &what, 0)?;
            metadata.push((key, value));
        }

        let mut tensors = Vec::new();
        for i in 0..n_tensors {
            let name = c.string(&|| format!("the name of tensor info {}", i + 1))?;
            let what = || format!("the info of tensor '{name}'");
            let n_dims = c.u32(&what)?;
            if n_dims > 8 {
                return Err(c.malformed(
                    what(),
                    &format!("{n_dims} dimensions (ggml allows at most 4)"),
                ));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&what))
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = GgmlType(c.u32(&what)?);
            let offset = c.u64(&what)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }

        let index: HashMap<String, usize> = metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let alignment = match index.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_i64() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
                _ => return Err(c.malformed("general.alignment".into(), "must be a power of two")),
            },
        };
        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let len = mmap.len() as u64;

        for t in &tensors {
            if t.offset % alignment != 0 {
                return Err(
                    c.malformed(format!("tensor '{}'", t.name), "data offset is not aligned")
                );
            }
            // Every size below is checked arithmetic: a corrupt dimension (2^63) or offset must
            // be an error naming the tensor, never an overflow panic or a wrapped-around size.
            if t.checked_n_elements().is_none() {
                return Err(c.malformed(
                    format!("tensor '{}'", t.name),
                    &format!("dimensions {:?} overflow the number of elements", t.dims),
                ));
            }
            if t.ggml_type.block_layout().is_some() && t.n_bytes().is_none() {
                let (block, _) = t.ggml_type.block_layout().unwrap_or((1, 0));
                return Err(c.malformed(
                    format!("tensor '{}'", t.name),
                    &format!("{} elements of {} are not a whole number of {block}-element blocks", t.n_elements(), t.ggml_type),
                ));
            }
            // Unknown types have no known size: they fail later, when someone asks for their data.
            if let Some(n) = t.n_bytes() {
                let end = data_offset.checked_add(t.offset).and_then(|e| e.checked_add(n)).unwrap_or(u64::MAX);
                if end > len {
                    return Err(GgufError::Truncated {
                        path: path.clone(),
                        what: format!("the data of tensor '{}'", t.name),
                        len,
                        needed: end,
                    });
                }
            }
        }
        let tensor_index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            mmap,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            index,
            tensor_index,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &MetaValue) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: found.type_name().to_string(),
        }
    }

    /// A string value (error if missing or not a string).
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "a string", v))
    }

    /// An integer value of any width.
    pub fn get_int(&self, key: &str) -> Result<i64, GgufError> {
        let v = self.require(key)?;
        v.as_i64().ok_or_else(|| self.wrong(key, "an integer", v))
    }

    /// A numeric value of any type.
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    /// An optional integer: None when absent, an error when present with another type.
    pub fn opt_int(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.get(key).map(|_| self.get_int(key)).transpose()
    }

    /// An optional number: None when absent, an error when present with another type.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.get(key).map(|_| self.get_f64(key)).transpose()
    }

    /// An array of strings.
    pub fn get_string_array(&self, key: &str) -> Result<Vec<String>, GgufError> {
        let v = self.require(key)?;
        v.as_string_array()
            .ok_or_else(|| self.wrong(key, "an array of strings", v))
    }

    /// `general.architecture` (`"llama"`, `"qwen3"`, ...).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// A tensor's info by name.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    fn info_or_err(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor_info(name)
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })
    }

    /// The raw bytes of a tensor (quantised blocks as stored), for QLoRA and re-export.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], GgufError> {
        let t = self.info_or_err(name)?;
        let n = t.n_bytes().ok_or_else(|| self.unsupported(t))?;
        let start = (self.data_offset + t.offset) as usize;
        Ok(&self.mmap[start..start + n as usize])
    }

    fn unsupported(&self, t: &TensorInfo) -> GgufError {
        GgufError::UnsupportedTensorType {
            path: self.path.clone(),
            tensor: t.name.clone(),
            ggml_type: t.ggml_type,
        }
    }

    /// A tensor dequantized to f32, with its shape in PyTorch order.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), GgufError> {
        let t = self.info_or_err(name)?;
        if !t.ggml_type.can_dequantize() {
            return Err(self.unsupported(t));
        }
        let bytes = self.tensor_bytes(name)?;
        let values = dequantize(t.ggml_type, bytes).map_err(|_| self.unsupported(t))?;
        Ok((t.shape(), values))
    }
}

/// Why [`dequantize`] refused its input.
#[derive(Debug, thiserror::Error)]
pub enum DequantError {
    #[error("cannot dequantize ggml type {0}")]
    Unsupported(GgmlType),
    #[error("{len} bytes is not a whole number of {ggml_type} blocks of {block_bytes} bytes")]
    Partial {
        ggml_type: GgmlType,
        len: usize,
        block_bytes: usize,
    },
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Dequantize raw ggml blocks to f32, exactly as ggml's `dequantize_row_*` does.
///
/// ```
/// use tunelab::io::gguf::{dequantize, GgmlType};
/// // One Q8_0 block: scale 0.5 (f16 0x3800), then 32 int8 values 0, 1, ..., 31.
/// let mut block = vec![0x00, 0x38];
/// block.extend(0u8..32);
/// let x = dequantize(GgmlType::Q8_0, &block).unwrap();
/// assert_eq!(x[3], 1.5);
/// ```
pub fn dequantize(ty: GgmlType, bytes: &[u8]) -> Result<Vec<f32>, DequantError> {
    let (block, size) = ty.block_layout().ok_or(DequantError::Unsupported(ty))?;
    if !ty.can_dequantize() {
        return Err(DequantError::Unsupported(ty));
    }
    if !bytes.len().is_multiple_of(size) {
        return Err(DequantError::Partial {
            ggml_type: ty,
            len: bytes.len(),
            block_bytes: size,
        });
    }
    let mut out = Vec::with_capacity(bytes.len() / size * block);
    for b in bytes.chunks_exact(size) {
        match ty {
            GgmlType::F32 => out.push(f32::from_le_bytes(b.try_into().unwrap())),
            GgmlType::F16 => out.push(f16_at(b, 0)),
            // bf16 is the top half of an f32.
            GgmlType::BF16 => out.push(f32::from_bits(
                (u16::from_le_bytes([b[0], b[1]]) as u32) << 16,
            )),
            GgmlType::Q8_0 => {
                // d: f16, qs: 32 x i8; y = qs * d
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
            }
            GgmlType::Q4_0 => {
                // d: f16, qs: 16 bytes; low nibbles are elements 0..16, high nibbles 16..32; y = (q - 8) * d
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
            GgmlType::Q4_1 => {
                // d: f16, m: f16, qs: 16 bytes (nibbles as Q4_0); y = q * d + m (no fused multiply-add)
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
            GgmlType::Q4_K => dequant_q4_k(b, &mut out),
            GgmlType::Q6_K => dequant_q6_k(b, &mut out),
            _ => return Err(DequantError::Unsupported(ty)),
        }
    }
    Ok(out)
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) packed in 12 bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K super-block (144 bytes): d f16, dmin f16, scales [12], qs [128]. Eight sub-blocks of 32;
/// each 64-element chunk reads 32 bytes, low nibbles first. y = d*sc * q - dmin*m.
fn dequant_q4_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..4 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        out.extend(q.iter().map(|&x| d1 * (x & 0x0F) as f32 - m1));
        out.extend(q.iter().map(|&x| d2 * (x >> 4) as f32 - m2));
    }
}

/// Q6_K super-block (210 bytes): ql [128] (low 4 bits), qh [64] (high 2 bits), scales [16] i8, d f16.
/// Two halves of 128 elements; y = d * scale * (q - 32).
fn dequant_q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 208);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let y = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
}

/// Quantize f32 values to Q8_0 blocks as ggml's `quantize_row_q8_0_ref` does:
/// d = max|x| / 127, q = round(x / d) (half away from zero), d stored as f16.
///
/// `values.len()` must be a multiple of 32.
pub fn quantize_q8_0(values: &[f32]) -> Vec<u8> {
    assert!(values.len().is_multiple_of(32), "Q8_0 needs a multiple of 32 values");
    let mut out = Vec::with_capacity(values.len() / 32 * 34);
    for block in values.chunks_exact(32) {
        let amax = block.iter().fold(0.0f32, |a, &x| a.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|&x| ((x * id).round() as i8) as u8));
    }
    out
}

/// Quantize f32 values to Q4_0 blocks as ggml's `quantize_row_q4_0_ref` does: the value of
/// largest magnitude `max` (the first one on ties) gives `d = max / -8`, so it lands on -8;
/// q = min(15, trunc(x / d + 8.5)), stored as `q` (low nibbles: elements 0..16, high: 16..32),
/// d stored as f16. `values.len()` must be a multiple of 32.
pub fn quantize_q4_0(values: &[f32]) -> Vec<u8> {
    assert!(values.len().is_multiple_of(32), "Q4_0 needs a multiple of 32 values");
    let mut out = Vec::with_capacity(values.len() / 32 * 18);
    for block in values.chunks_exact(32) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &x in block {
            if amax < x.abs() {
                amax = x.abs();
                max = x;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
        // ggml casts through int8_t before the MIN: trunc, as `as i8` does for these values.
        let q = |x: f32| ((x * id + 8.5) as i8).min(15) as u8;
        out.extend((0..16).map(|j| q(block[j]) | (q(block[j + 16]) << 4)));
    }
    out
}

/// Builds a GGUF v3 file: metadata plus F32, F16 or Q8_0 tensors (or raw blocks of any type).
///
/// ```
/// use tunelab::io::gguf::{GgmlType, GgufFile, GgufWriter};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("tiny.gguf");
/// let mut w = GgufWriter::new();
/// w.add_metadata("general.architecture", "llama");
/// w.add_tensor("w", &[2, 32], GgmlType::F16, &vec![0.5; 64]);
/// w.write(&path).unwrap();
/// let g = GgufFile::open(&path).unwrap();
/// assert_eq!(g.tensor_f32("w").unwrap().1[63], 0.5);
/// ```
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(TensorInfo, Vec<u8>)>,
    alignment: Option<u64>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) a metadata entry. `general.alignment` also sets the data alignment.
    pub fn add_metadata(&mut self, key: &str, value: impl Into<MetaValue>) -> &mut Self {
        let value = value.into();
        if key == "general.alignment" {
            self.alignment = value.as_i64().map(|a| a as u64);
        }
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Add a tensor given in f32, stored as `ty` (F32, F16 or Q8_0). `shape` is PyTorch order.
    ///
    /// Panics for other types or when the row length does not fit Q8_0's 32-element blocks.
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
        values: &[f32],
    ) -> &mut Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "tensor '{name}': shape and data disagree"
        );
        let bytes = match ty {
            GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            GgmlType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
            GgmlType::Q8_0 => {
                assert!(
                    shape.last().is_some_and(|&n| n % 32 == 0),
                    "tensor '{name}': Q8_0 rows must be multiples of 32"
                );
                quantize_q8_0(values)
            }
            other => panic!("GgufWriter::add_tensor stores F32, F16 or Q8_0, not {other}"),
        };
        self.add_raw_tensor(name, shape, ty, bytes)
    }

    /// Add a tensor from raw ggml blocks (already quantised).
    pub fn add_raw_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
        bytes: Vec<u8>,
    ) -> &mut Self {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let info = TensorInfo {
            name: name.to_string(),
            dims,
            ggml_type: ty,
            offset: 0,
        };
        assert_eq!(
            info.n_bytes(),
            Some(bytes.len() as u64),
            "tensor '{name}': byte count does not match {ty}"
        );
        self.tensors.push((info, bytes));
        self
    }

    /// Write the file (to a temporary name first, then renamed, so a failed write leaves nothing half-done).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        let align = self.alignment.unwrap_or(DEFAULT_ALIGNMENT);
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut head, k);
            head.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (t, bytes) in &self.tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.0.to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + bytes.len() as u64).div_ceil(align) * align;
        }
        head.resize(
            (head.len() as u64).div_ceil(align) as usize * align as usize,
            0,
        );
        let data_start = head.len() as u64;
        for ((_, bytes), &off) in self.tensors.iter().zip(&offsets) {
            debug_assert_eq!(head.len() as u64, data_start + off);
            head.extend_from_slice(bytes);
            head.resize(
                (head.len() as u64).div_ceil(align) as usize * align as usize,
                0,
            );
        }
        let tmp = path.with_extension("gguf.part");
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&head).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

// ------------------------------------------------------------------------------------ tokenizer

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
mod token_type {
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// The tokenizer stored in a GGUF file, rebuilt as a Hugging Face `tokenizers::Tokenizer`.
///
/// * `tokenizer.ggml.model = "gpt2"`: byte-level BPE (vocab + merges) with the pre-tokenizer
///   regexes llama.cpp uses for `tokenizer.ggml.pre` (llama-vocab.cpp, `llm_tokenizer_bpe`),
///   each applied as an isolating `Split` before the byte-level mapping.
/// * `tokenizer.ggml.model = "llama"`: SentencePiece BPE (tokens + scores) as transformers converts
///   it: merges ordered by the merged piece's score, byte fallback, `▁` for spaces, a `▁` prefix
///   on every text fragment when `add_space_prefix` (llama.cpp adds it after each special token too).
///
/// Control and user-defined tokens become added tokens, so `<|im_start|>` written in a prompt
/// encodes as one token (llama.cpp's `parse_special = true`).
pub struct GgufTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// End-of-turn token (`tokenizer.ggml.eot_token_id`), where the file names one.
    pub eot_token_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
}

/// Why a GGUF tokenizer could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: {key} = '{value}' is not supported ({supported})")]
    Unsupported {
        path: PathBuf,
        key: &'static str,
        value: String,
        supported: &'static str,
    },
    #[error("{path}: could not build the tokenizer: {reason}")]
    Build { path: PathBuf, reason: String },
}

/// llama.cpp's pre-tokenizer regexes for a `tokenizer.ggml.pre` value (llama-vocab.cpp), and
/// whether whole words found in the vocabulary skip the merges (`ignore_merges`, Llama 3).
pub(crate) fn bpe_pre_regexes(pre: &str) -> Option<(Vec<&'static str>, bool)> {
    const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
    const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => {
            (vec![LLAMA3], true)
        }
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" | "megrez" => (vec![QWEN2], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![r"\p{N}", GPT2], false)
        }
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
        | "roberta-bpe" => (vec![GPT2], false),
        "default" => (
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
            false,
        ),
        _ => return None,
    })
}

impl GgufTokenizer {
    /// Rebuild the tokenizer from `tokenizer.ggml.*` metadata.
    ///
    /// ```no_run
    /// use tunelab::io::gguf::{GgufFile, GgufTokenizer};
    /// let g = GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
    /// let tok = GgufTokenizer::from_gguf(&g)?;
    /// let ids = tok.tokenizer.encode("<|im_start|>user", false).unwrap();
    /// assert_eq!(ids.get_ids()[0], 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_gguf(g: &GgufFile) -> Result<Self, TokenizerError> {
        let path = g.path().to_path_buf();
        let model = g.get_str("tokenizer.ggml.model")?;
        let tokens = g.get_string_array("tokenizer.ggml.tokens")?;
        let types = match g.get("tokenizer.ggml.token_type") {
            Some(v) => v.as_i64_array().ok_or_else(|| GgufError::WrongType {
                path: path.clone(),
                key: "tokenizer.ggml.token_type".into(),
                expected: "an integer array",
                found: "another type".into(),
            })?,
            None => vec![1; tokens.len()],
        };
        let id =
            |k: &str| -> Result<Option<u32>, GgufError> { Ok(g.opt_int(k)?.map(|v| v as u32)) };
        let flag = |k: &str| g.get(k).and_then(|v| v.as_bool());
        let bos_token_id = id("tokenizer.ggml.bos_token_id")?;
        let eos_token_id = id("tokenizer.ggml.eos_token_id")?;
        let eot_token_id = id("tokenizer.ggml.eot_token_id")?;
        let unk_id = id("tokenizer.ggml.unknown_token_id")?;
        // llama.cpp's defaults: SentencePiece vocabularies add BOS, BPE ones do not.
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(model == "llama");
        let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);

        let added: Vec<serde_json::Value> = tokens
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (_, t))| matches!(**t, token_type::CONTROL | token_type::USER_DEFINED | token_type::UNKNOWN))
            .map(|(i, (content, t))| {
                serde_json::json!({
                    "id": i, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                    "normalized": false, "special": *t != token_type::USER_DEFINED,
                })
            })
            .collect();
        let vocab: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), serde_json::json!(i)))
            .collect();

        let mut json = match model {
            "gpt2" => {
                let pre = g
                    .get("tokenizer.ggml.pre")
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let (regexes, ignore_merges) =
                    bpe_pre_regexes(pre).ok_or_else(|| TokenizerError::Unsupported {
                        path: path.clone(),
                        key: "tokenizer.ggml.pre",
                        value: pre.to_string(),
                        supported: "llama-bpe, qwen2, smollm, gpt-2, default and their aliases",
                    })?;
                let merges: Vec<serde_json::Value> = g
                    .get_string_array("tokenizer.ggml.merges")?
                    .iter()
                    .map(|m| {
                        let (a, b) = m.split_once(' ').unwrap_or((m, ""));
                        serde_json::json!([a, b])
                    })
                    .collect();
                let mut pretok: Vec<serde_json::Value> = regexes
                    .iter()
                    .map(|r| serde_json::json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
                    .collect();
                pretok.push(serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
                serde_json::json!({
                    "normalizer": null,
                    "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretok},
                    "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
                    "model": {
                        "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                        "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
                    },
                })
            }
            "llama" => {
                let scores = g
                    .get("tokenizer.ggml.scores")
                    .and_then(|v| v.as_f32_array())
                    .ok_or_else(|| GgufError::MissingKey {
                        path: path.clone(),
                        key: "tokenizer.ggml.scores".into(),
                    })?;
                let add_space_prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let merges = spm_merges(&tokens, &scores, &types);
                let mut normalizers = vec![];
                if add_space_prefix {
                    normalizers.push(serde_json::json!({"type": "Prepend", "prepend": "\u{2581}"}));
                }
                normalizers.push(serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}));
                let mut decoders = vec![
                    serde_json::json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                    serde_json::json!({"type": "ByteFallback"}),
                    serde_json::json!({"type": "Fuse"}),
                ];
                if add_space_prefix {
                    decoders.push(
                        serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}),
                    );
                }
                serde_json::json!({
                    "normalizer": {"type": "Sequence", "normalizers": normalizers},
                    "pre_tokenizer": null,
                    "decoder": {"type": "Sequence", "decoders": decoders},
                    "model": {
                        "type": "BPE", "dropout": null,
                        "unk_token": unk_id.and_then(|i| tokens.get(i as usize)).cloned(),
                        "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                        "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges,
                    },
                })
            }
            other => {
                return Err(TokenizerError::Unsupported {
                    path,
                    key: "tokenizer.ggml.model",
                    value: other.to_string(),
                    supported: "gpt2 (BPE) and llama (SentencePiece)",
                });
            }
        };
        // BOS/EOS added by the post-processor, as llama.cpp does with add_special = true.
        let named = |on: bool, id: Option<u32>| -> Option<(u32, String)> {
            if !on {
                return None;
            }
            id.and_then(|i| tokens.get(i as usize).map(|t| (i, t.clone())))
        };
        let (bos, eos) = (named(add_bos, bos_token_id), named(add_eos, eos_token_id));
        let piece = |t: &str| serde_json::json!({"SpecialToken": {"id": t, "type_id": 0}});
        let seq = |id: &str, type_id: u32| serde_json::json!({"Sequence": {"id": id, "type_id": type_id}});
        let with_specials = |body: serde_json::Value| -> Vec<serde_json::Value> {
            bos.iter()
                .map(|(_, t)| piece(t))
                .chain([body])
                .chain(eos.iter().map(|(_, t)| piece(t)))
                .collect()
        };
        let single = with_specials(seq("A", 0));
        let pair: Vec<serde_json::Value> = single
            .iter()
            .cloned()
            .chain(with_specials(seq("B", 1)))
            .collect();
        let special_map: serde_json::Map<String, serde_json::Value> = bos
            .iter()
            .chain(eos.iter())
            .map(|(i, t)| {
                (
                    t.clone(),
                    serde_json::json!({"id": t, "ids": [i], "tokens": [t]}),
                )
            })
            .collect();
        json["post_processor"] = if special_map.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_map})
        };
        json["version"] = "1.0".into();
        json["truncation"] = serde_json::Value::Null;
        json["padding"] = serde_json::Value::Null;
        json["added_tokens"] = added.into();
        let bytes = serde_json::to_vec(&json).expect("tokenizer JSON serialises");
        let tokenizer =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| TokenizerError::Build {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            tokenizer,
            bos_token_id,
            eos_token_id,
            eot_token_id,
            add_bos,
            add_eos,
        })
    }
}

/// Merges for a SentencePiece vocabulary, as transformers' `SentencePieceExtractor` derives them:
/// every split of a piece into two pieces of the vocabulary, ordered by the merged piece's score
/// (highest first; ties by id), the priority llama.cpp's `llm_tokenizer_spm` uses.
fn spm_merges(tokens: &[String], scores: &[f32], types: &[i64]) -> Vec<serde_json::Value> {
    let index: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(f32, usize, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        // Only normal pieces merge; control, byte and unknown tokens never do.
        if types.get(id).is_some_and(|&t| t != 1) {
            continue;
        }
        for (k, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(k);
            if let (Some(&ia), Some(&ib)) = (index.get(a), index.get(b)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, ia, ib));
            }
        }
    }
    merges.sort_by(|x, y| {
        y.0.partial_cmp(&x.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(x.1.cmp(&y.1))
            .then(x.2.cmp(&y.2))
    });
    merges
        .into_iter()
        .map(|(_, _, a, b)| serde_json::json!([tokens[a], tokens[b]]))
        .collect()
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_string(out, s),
        MetaValue::Array(ty, items) => {
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for it in items {
                put_value(out, it);
            }
        }
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.25 (f16 0x3400), m = -1.0 (f16 0xBC00); byte k holds k (low nibble) and 15-k (high).
        // Element k (k < 16) is k*0.25 - 1; element 16+k is (15-k)*0.25 - 1.
        let mut b = vec![0x00, 0x34, 0x00, 0xBC];
        b.extend((0u8..16).map(|k| k | ((15 - k) << 4)));
        let y = dequantize(GgmlType::Q4_1, &b).unwrap();
        assert_eq!(y.len(), 32);
        for k in 0..16 {
            assert_eq!(y[k], k as f32 * 0.25 - 1.0);
            assert_eq!(y[16 + k], (15 - k) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn q4_0_block_by_hand() {
        // d = 2.0 (f16 0x4000); every byte 0x80 -> low nibble 0 -> (0-8)*2 = -16, high 8 -> 0.
        let mut b = vec![0x00, 0x40];
        b.extend([0x80u8; 16]);
        let y = dequantize(GgmlType::Q4_0, &b).unwrap();
        assert!(y[..16].iter().all(|&v| v == -16.0) && y[16..].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn q8_0_round_trip_is_within_rounding_error() {
        let x: Vec<f32> = (0..64).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let y = dequantize(GgmlType::Q8_0, &quantize_q8_0(&x)).unwrap();
        for (blk_x, blk_y) in x.chunks(32).zip(y.chunks(32)) {
            let step = blk_x.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0;
            for (a, b) in blk_x.iter().zip(blk_y) {
                // Rounding to the nearest step costs step/2; storing d in f16 (relative error
                // 2^-11) costs up to 127 * step * 2^-11 more.
                assert!((a - b).abs() <= step * (0.5 + 127.0 / 2048.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn unsupported_type_and_partial_blocks_are_errors() {
        assert!(matches!(
            dequantize(GgmlType::Q5_K, &[0; 176]),
            Err(DequantError::Unsupported(_))
        ));
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 35]),
            Err(DequantError::Partial { .. })
        ));
        assert_eq!(GgmlType(13).name(), "Q5_K");
        assert_eq!(GgmlType(999).name(), "type 999");
    }

    fn sample_writer() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "llama")
            .add_metadata("llama.block_count", 2u32)
            .add_metadata("some.float", 0.5f32)
            .add_metadata("some.flag", true)
            .add_metadata(
                "tokenizer.ggml.tokens",
                vec!["a".to_string(), "b".to_string()],
            )
            .add_metadata(
                "nested",
                MetaValue::Array(9, vec![MetaValue::Array(4, vec![MetaValue::U32(7)])]),
            );
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
        w.add_tensor("f32", &[2, 32], GgmlType::F32, &x)
            .add_tensor("f16", &[64], GgmlType::F16, &x)
            .add_tensor("q8", &[2, 32], GgmlType::Q8_0, &x);
        w
    }

    #[test]
    fn writer_and_reader_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        sample_writer().write(&path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.architecture().unwrap(), "llama");
        assert_eq!(g.get_int("llama.block_count").unwrap(), 2);
        assert_eq!(g.get_f64("some.float").unwrap(), 0.5);
        assert_eq!(g.get("some.flag").unwrap().as_bool(), Some(true));
        assert_eq!(
            g.get_string_array("tokenizer.ggml.tokens").unwrap(),
            vec!["a", "b"]
        );
        assert_eq!(
            g.get("nested").unwrap().as_array().unwrap()[0]
                .as_i64_array()
                .unwrap(),
            vec![7]
        );
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 8.0 - 4.0).collect();
        let (shape, v) = g.tensor_f32("f32").unwrap();
        assert_eq!((shape, v), (vec![2, 32], x.clone()));
        // Multiples of 1/8 in [-4, 4) are exact in f16.
        assert_eq!(g.tensor_f32("f16").unwrap().1, x);
        // Q8_0 with max |x| = 4: step 4/127, so error at most 2/127.
        let q = g.tensor_f32("q8").unwrap().1;
        assert!(
            q.iter()
                .zip(&x)
                .all(|(a, b)| (a - b).abs() <= 2.0 / 127.0 + 1e-6)
        );
        assert_eq!(g.tensor_bytes("q8").unwrap().len(), 2 * 34);
        assert_eq!(g.data_offset % 32, 0);
        assert!(g.tensors.iter().all(|t| t.offset % 32 == 0));
    }

    #[test]
    fn truncated_file_names_the_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.gguf");
        sample_writer().write(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("cut.gguf") && err.contains("truncated") && err.contains("'q8'"),
            "{err}"
        );
        // Cut inside the metadata.
        std::fs::write(&path, &bytes[..60]).unwrap();
        let err = GgufFile::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("cut.gguf") && err.contains("truncated") && err.contains("metadata"),
            "{err}"
        );
    }

    /// Offset of the first dimension of tensor `name` in a file written by [`GgufWriter`].
    fn dims_offset(bytes: &[u8], name: &str) -> usize {
        let mut key = (name.len() as u64).to_le_bytes().to_vec();
        key.extend_from_slice(name.as_bytes());
        let at = bytes.windows(key.len()).rposition(|w| w == key.as_slice()).unwrap();
        at + key.len() + 4
    }

    #[test]
    fn a_huge_dimension_is_an_error_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.gguf");
        sample_writer().write(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        for huge in [1u64 << 63, u64::MAX, 1 << 40] {
            let mut bytes = good.clone();
            let at = dims_offset(&bytes, "q8");
            bytes[at..at + 8].copy_from_slice(&huge.to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            let err = GgufFile::open(&path).unwrap_err().to_string();
            assert!(err.contains("huge.gguf") && err.contains("'q8'"), "{huge}: {err}");
        }
    }

    /// Property: random truncation points and random corruption of the header never panic;
    /// each gives an error naming the file (and the tensor, when a tensor's data is cut).
    #[test]
    fn random_truncations_and_header_corruptions_never_panic() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.gguf");
        sample_writer().write(&path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let data_offset = GgufFile::open(&path).unwrap().data_offset as usize;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(63);
        for case in 0..400 {
            let mut bytes = good.clone();
            let truncated = case % 2 == 0;
            if truncated {
                bytes.truncate(rng.random_range(0..good.len()));
            } else {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..data_offset);
                    bytes[i] = match rng.random_range(0..3) {
                        0 => rng.random(),
                        1 => 0xff,
                        _ => 0x80,
                    };
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| match GgufFile::open(&path) {
                Err(e) => Err(e.to_string()),
                Ok(g) => {
                    for t in g.tensors.clone() {
                        let _ = g.tensor_f32(&t.name);
                    }
                    Ok(())
                }
            });
            match outcome.unwrap_or_else(|_| panic!("case {case}: panicked")) {
                Err(msg) => {
                    assert!(msg.contains("bad.gguf"), "case {case}: {msg}");
                    if truncated && bytes.len() > data_offset {
                        assert!(msg.contains("tensor '"), "case {case}: {msg}");
                    }
                }
                Ok(()) => assert!(!truncated || bytes.len() >= good.len() - 31, "case {case}: truncated file accepted"),
            }
        }
    }

    #[test]
    fn unsupported_tensor_type_names_tensor_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q5k.gguf");
        let mut w = GgufWriter::new();
        w.add_raw_tensor("blk.0.attn_q.weight", &[256], GgmlType::Q5_K, vec![0; 176]);
        w.write(&path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert!(
            g.tensor_bytes("blk.0.attn_q.weight").is_ok(),
            "raw blocks stay readable"
        );
        let err = g.tensor_f32("blk.0.attn_q.weight").unwrap_err().to_string();
        assert!(
            err.contains("q5k.gguf") && err.contains("blk.0.attn_q.weight") && err.contains("Q5_K"),
            "{err}"
        );
    }

    #[test]
    fn not_gguf_and_missing_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        std::fs::write(&path, b"GGML\x03\0\0\0").unwrap();
        assert!(
            GgufFile::open(&path)
                .unwrap_err()
                .to_string()
                .contains("not a GGUF file")
        );
        let path = dir.path().join("m.gguf");
        sample_writer().write(&path).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let err = g.get_str("qwen3.block_count").unwrap_err().to_string();
        assert!(
            err.contains("m.gguf") && err.contains("qwen3.block_count"),
            "{err}"
        );
        let err = g.get_str("llama.block_count").unwrap_err().to_string();
        assert!(
            err.contains("expected a string") && err.contains("u32"),
            "{err}"
        );
        let err = g.tensor_f32("nope").unwrap_err().to_string();
        assert!(err.contains("no tensor named 'nope'"), "{err}");
    }
}
