//! Reading and writing safetensors weights.
//!
//! Files are memory-mapped and tensors are converted to f32 burn tensors on request, by name, with
//! the expected shape checked. Sharded checkpoints (`model.safetensors.index.json`) are read
//! through [`Weights`]. Every error names the file and, where there is one, the tensor.
//!
//! ```no_run
//! use tunelab::io::safetensors::Weights;
//! let weights = Weights::open_dir("models/all-MiniLM-L6-v2").unwrap();
//! let device = burn::tensor::Device::flex();
//! let w = weights.tensor::<2>("embeddings.word_embeddings.weight", [30522, 384], &device).unwrap();
//! assert_eq!(w.dims(), [30522, 384]);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use ::safetensors::tensor::{Dtype, Metadata, SafeTensorError, SafeTensors};
use burn::tensor::{DType, Device, Tensor, TensorData};
use memmap2::Mmap;

#[cfg(target_endian = "big")]
compile_error!("safetensors files are little-endian; this module reads and writes them as native bytes");

/// Why weights could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: tensor '{name}' not found{hint}")]
    Missing { path: PathBuf, name: String, hint: String },
    #[error("{path}: tensor '{name}' has shape {found:?}, expected {expected:?}")]
    Shape { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor '{name}' has dtype {dtype}, which cannot be read as floats")]
    Dtype { path: PathBuf, name: String, dtype: String },
    #[error("{dir}: no model.safetensors or model.safetensors.index.json{hint}")]
    NoWeights { dir: PathBuf, hint: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// One memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the tensor data (8-byte length prefix + JSON header).
    data_start: usize,
    metadata: Metadata,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SafetensorsFile {
    /// Map a file and validate its header (a truncated file is caught here, not at first use).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| WeightsError::Io { path: path.clone(), source })?;
        // SAFETY: the map is read-only; a file changed underneath us by another process could give
        // garbage numbers but not memory unsafety in our code, which only reads bytes.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| WeightsError::Io { path: path.clone(), source })?;
        // Our own checked pass first: it names the tensor whose entry is wrong or whose data is cut.
        check_header(&mmap).map_err(|reason| WeightsError::Corrupt { path: path.clone(), reason })?;
        let (n, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| WeightsError::Corrupt { path: path.clone(), reason: describe(&e, mmap.len()) })?;
        Ok(Self { path, mmap, data_start: 8 + n, metadata })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort();
        names
    }

    /// Whether the file holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.metadata.info(name).map(|i| i.shape.as_slice())
    }

    /// The `__metadata__` string map of the header, if any.
    pub fn header_metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.metadata().as_ref()
    }

    /// A tensor as f32 [`TensorData`] (converted from F32, F16, BF16 or F64), in its stored shape.
    pub fn read_data(&self, name: &str) -> Result<TensorData, WeightsError> {
        let info = self.metadata.info(name).ok_or_else(|| self.missing(name))?;
        let (start, end) = info.data_offsets;
        let bytes = self.mmap[self.data_start + start..self.data_start + end].to_vec();
        // safetensors is little-endian, as TensorData's bytes are on every target we build for.
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => {
                return Err(WeightsError::Dtype {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        let corrupt = |e: burn::tensor::DataError| WeightsError::Corrupt {
            path: self.path.clone(),
            reason: format!("tensor '{name}': {e}"),
        };
        let data = TensorData::try_from_bytes_vec(bytes, info.shape.clone(), dtype).map_err(corrupt)?;
        if dtype == DType::F32 { Ok(data) } else { data.try_cast(DType::F32).map_err(corrupt) }
    }

    /// A tensor's values as f32, with its shape.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), WeightsError> {
        let data = self.read_data(name)?;
        let shape = data.shape().to_vec();
        let values = data
            .try_into_vec::<f32>()
            .map_err(|e| WeightsError::Corrupt { path: self.path.clone(), reason: format!("tensor '{name}': {e}") })?;
        Ok((values, shape))
    }

    /// A tensor as f32 data, checked against the expected shape.
    pub fn read_data_checked(&self, name: &str, expected: &[usize]) -> Result<TensorData, WeightsError> {
        let found = self.shape(name).ok_or_else(|| self.missing(name))?;
        if found != expected {
            return Err(WeightsError::Shape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                found: found.to_vec(),
            });
        }
        self.read_data(name)
    }

    /// A burn f32 tensor of the expected shape on `device`.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, WeightsError> {
        Ok(Tensor::from_data(self.read_data_checked(name, &expected)?, device))
    }

    fn missing(&self, name: &str) -> WeightsError {
        // Point at the most likely intended tensor: one whose name ends the same way.
        let tail = name.rsplit('.').take(3).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(".");
        let similar: Vec<String> = self.names().into_iter().filter(|n| n.ends_with(&tail)).take(3).collect();
        let hint = if similar.is_empty() {
            format!(" ({} tensors in the file)", self.metadata.tensors().len())
        } else {
            format!(" (similar names: {})", similar.join(", "))
        };
        WeightsError::Missing { path: self.path.clone(), name: name.to_string(), hint }
    }
}

/// Bytes per element of a safetensors dtype name (None for names we do not know).
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" | "C64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        _ => return None,
    })
}

/// Check the header of a safetensors file with checked arithmetic, naming the tensor at fault:
/// its dtype and shape must agree with its `data_offsets`, and its data must lie inside the file.
/// (The `safetensors` crate checks the same, but its errors do not always say which tensor.)
fn check_header(bytes: &[u8]) -> Result<(), String> {
    let len = bytes.len() as u64;
    let Some(prefix) = bytes.get(..8) else {
        return Err(format!("file is only {len} bytes, too short for a header (truncated?)"));
    };
    let n = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    let data_start = match 8u64.checked_add(n) {
        Some(end) if end <= len => end,
        _ => {
            return Err(format!(
                "header length {n} runs past the end of the {len}-byte file (truncated or not safetensors)"
            ));
        }
    };
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..data_start as usize])
        .map_err(|e| format!("the {n}-byte header is not a JSON object: {e}"))?;
    let data_len = len - data_start;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |why: String| Err(format!("tensor '{name}': {why}"));
        let dtype = info.get("dtype").and_then(|d| d.as_str()).unwrap_or("");
        let Some(size) = dtype_size(dtype) else {
            return bad(format!("unknown or missing dtype {:?}", info.get("dtype")));
        };
        let shape: Option<Vec<u64>> =
            info.get("shape").and_then(|s| s.as_array()).and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let Some(shape) = shape else { return bad(format!("shape {:?} is not a list of sizes", info.get("shape"))) };
        let offsets: Option<Vec<u64>> = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let (begin, end) = match offsets.as_deref() {
            Some(&[b, e]) if b <= e => (b, e),
            _ => return bad(format!("data_offsets {:?} is not [begin, end]", info.get("data_offsets"))),
        };
        let needed = shape.iter().try_fold(size, |acc, &d| acc.checked_mul(d));
        let Some(needed) = needed.filter(|&b| usize::try_from(b).is_ok()) else {
            return bad(format!("shape {shape:?} of {dtype} overflows the size of a tensor"));
        };
        if end - begin != needed {
            return bad(format!("shape {shape:?} of {dtype} needs {needed} bytes, data_offsets [{begin}, {end}] hold {}", end - begin));
        }
        if end > data_len {
            return bad(format!(
                "data ends at byte {} but the file has {len} bytes (truncated?)",
                data_start.saturating_add(end)
            ));
        }
    }
    Ok(())
}

/// Say in words what a safetensors parse error means for the user.
fn describe(e: &SafeTensorError, file_len: usize) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => {
            format!("file is only {file_len} bytes, too short for a header (truncated?)")
        }
        SafeTensorError::InvalidHeaderLength => {
            format!("header length runs past the end of the {file_len}-byte file (truncated or not safetensors)")
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            format!("the header describes more tensor data than the {file_len}-byte file holds (truncated?)")
        }
        other => format!("{other}"),
    }
}

/// The weights of a model: one safetensors file or a sharded set, looked up by tensor name.
#[derive(Debug)]
pub struct Weights {
    files: Vec<SafetensorsFile>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
    /// What to call this set in errors (the single file, or the index file).
    label: PathBuf,
}

impl Weights {
    /// One safetensors file.
    pub fn open_file(path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let file = SafetensorsFile::open(path)?;
        let index = file.names().into_iter().map(|n| (n, 0)).collect();
        let label = file.path().to_path_buf();
        Ok(Self { files: vec![file], index, label })
    }

    /// `model.safetensors` in `dir`, or the shards listed in `model.safetensors.index.json`.
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let dir = dir.as_ref();
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Self::open_file(single);
        }
        let index_path = dir.join("model.safetensors.index.json");
        if index_path.exists() {
            return Self::open_sharded(&index_path);
        }
        let hint = if dir.join("pytorch_model.bin").exists() {
            " (only pytorch_model.bin found: convert it to safetensors first)".to_string()
        } else if !dir.exists() {
            " (the folder does not exist)".to_string()
        } else {
            String::new()
        };
        Err(WeightsError::NoWeights { dir: dir.to_path_buf(), hint })
    }

    fn open_sharded(index_path: &Path) -> Result<Self, WeightsError> {
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(index_path)
            .map_err(|source| WeightsError::Io { path: index_path.to_path_buf(), source })?;
        let parsed: Index = serde_json::from_str(&text)
            .map_err(|e| WeightsError::Corrupt { path: index_path.to_path_buf(), reason: e.to_string() })?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut shard_ids: HashMap<String, usize> = HashMap::new();
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (tensor, shard) in parsed.weight_map {
            let id = match shard_ids.get(&shard) {
                Some(&id) => id,
                None => {
                    files.push(SafetensorsFile::open(dir.join(&shard))?);
                    shard_ids.insert(shard.clone(), files.len() - 1);
                    files.len() - 1
                }
            };
            index.insert(tensor, id);
        }
        Ok(Self { files, index, label: index_path.to_path_buf() })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.index.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether a tensor of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).and_then(|&i| self.files[i].shape(name))
    }

    /// The file (or index file) these weights came from.
    pub fn path(&self) -> &Path {
        &self.label
    }

    fn file_for(&self, name: &str) -> Result<&SafetensorsFile, WeightsError> {
        match self.index.get(name) {
            Some(&i) => Ok(&self.files[i]),
            None if self.files.len() == 1 => Err(self.files[0].missing(name)),
            None => Err(WeightsError::Missing {
                path: self.label.clone(),
                name: name.to_string(),
                hint: " (not in the shard index)".into(),
            }),
        }
    }

    /// A tensor as f32 data, checked against the expected shape.
    pub fn read_data_checked(&self, name: &str, expected: &[usize]) -> Result<TensorData, WeightsError> {
        self.file_for(name)?.read_data_checked(name, expected)
    }

    /// A burn f32 tensor of the expected shape on `device`.
    pub fn tensor<const D: usize>(
        &self,
        name: &str,
        expected: [usize; D],
        device: &Device,
    ) -> Result<Tensor<D>, WeightsError> {
        self.file_for(name)?.tensor(name, expected, device)
    }
}

/// Write f32 tensors `(name, shape, values)` to a safetensors file, atomically: the data goes to
/// a temporary file beside `path` that is renamed over it only when complete, so an error never
/// leaves a half-written file under the final name.
pub fn write_f32(
    path: impl AsRef<Path>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), WeightsError> {
    use std::io::Write as _;
    let path = path.as_ref();
    let werr = |reason: String| WeightsError::Write { path: path.to_path_buf(), reason };
    // The header is written here rather than by the `safetensors` crate, whose `__metadata__` is a
    // HashMap serialised in random order: the same run would give files with different hashes.
    // Metadata keys and tensors are written sorted by name, so equal inputs give equal bytes.
    let mut order: Vec<&(String, Vec<usize>, Vec<f32>)> = tensors.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = order.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(werr(format!("tensor '{}' is given twice", w[0].0)));
    }
    let mut header = String::from("{");
    if let Some(meta) = &metadata {
        let sorted: BTreeMap<&String, &String> = meta.iter().collect();
        header.push_str(&format!("\"__metadata__\":{},", json(&sorted)));
    }
    let mut offset = 0usize;
    for (name, shape, values) in &order {
        let n = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if n != Some(values.len()) {
            return Err(werr(format!("tensor '{name}' has {} values for shape {shape:?}", values.len())));
        }
        let end = offset + 4 * values.len();
        header.push_str(&format!(
            "{}:{{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[{offset},{end}]}},",
            json(name),
            json(shape)
        ));
        offset = end;
    }
    if header.ends_with(',') {
        header.pop();
    }
    header.push('}');
    // As the `safetensors` crate does: pad the header with spaces so the data starts 8-aligned.
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let tmp = path.with_extension("safetensors.part");
    let write = || -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(File::create(&tmp)?);
        f.write_all(&(header.len() as u64).to_le_bytes())?;
        f.write_all(header.as_bytes())?;
        for (_, _, values) in &order {
            for v in values {
                f.write_all(&v.to_le_bytes())?;
            }
        }
        f.into_inner().map_err(|e| e.into_error())?.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e.to_string()));
    }
    std::fs::rename(&tmp, path).map_err(|e| werr(e.to_string()))
}

/// JSON text of plain data (names, shapes, sorted string maps: serialising them cannot fail).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::safetensors::tensor::TensorView;

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("w.safetensors");
        let tensors = vec![
            ("a".to_string(), vec![2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            ("layer.0.bias".to_string(), vec![2], vec![-1.5, 0.25]),
        ];
        write_f32(&path, &tensors, None).unwrap();
        path
    }

    #[test]
    fn round_trip_values_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let w = Weights::open_file(sample(dir.path())).unwrap();
        assert_eq!(w.names(), vec!["a", "layer.0.bias"]);
        let t = w.tensor::<2>("a", [2, 3], &Device::flex()).unwrap();
        assert_eq!(t.into_data().try_into_vec::<f32>().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn half_precision_is_widened() {
        // Hand-built file: one F16 and one BF16 tensor; 1.5 and -2.0 are exact in both formats.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.safetensors");
        let f16: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
        let bf16: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
        let views = vec![
            ("h", TensorView::new(Dtype::F16, vec![2], &f16).unwrap()),
            ("b", TensorView::new(Dtype::BF16, vec![2], &bf16).unwrap()),
        ];
        ::safetensors::tensor::serialize_to_file(views, None, &path).unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.read_f32("h").unwrap().0, vec![1.5, -2.0]);
        assert_eq!(f.read_f32("b").unwrap().0, vec![1.5, -2.0]);
    }

    #[test]
    fn wrong_shape_names_tensor_and_both_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let err = Weights::open_file(&path).unwrap().tensor::<2>("a", [3, 2], &Device::flex()).unwrap_err().to_string();
        assert!(err.contains("'a'") && err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");
        assert!(err.contains("w.safetensors"), "{err}");
    }

    #[test]
    fn missing_tensor_names_file_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let err = Weights::open_file(sample(dir.path())).unwrap().read_data_checked("layer.1.bias", &[2]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("'layer.1.bias'") && msg.contains("w.safetensors"), "{msg}");
    }

    #[test]
    fn truncated_file_is_rejected_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let msg = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(msg.contains("w.safetensors") && msg.contains("truncated"), "{msg}");
        std::fs::write(&path, &bytes[..4]).unwrap();
        let msg = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(msg.contains("w.safetensors") && msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn equal_inputs_give_byte_identical_files_whatever_the_metadata_map_order() {
        // Each HashMap has its own random iteration order: 16 keys almost surely differ in order.
        let meta = || (0..16).map(|i| (format!("key{i}"), format!("v{i}"))).collect::<HashMap<_, _>>();
        let dir = tempfile::tempdir().unwrap();
        let tensors = vec![
            ("z".to_string(), vec![2], vec![1.0, 2.0]),
            ("a".to_string(), vec![1, 2], vec![3.0, 4.0]),
        ];
        let mut reversed = tensors.clone();
        reversed.reverse();
        let (p1, p2) = (dir.path().join("1.safetensors"), dir.path().join("2.safetensors"));
        for _ in 0..4 {
            write_f32(&p1, &tensors, Some(meta())).unwrap();
            write_f32(&p2, &reversed, Some(meta())).unwrap();
            assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        }
        // And the file is still a safetensors file the reference crate reads.
        let f = SafetensorsFile::open(&p1).unwrap();
        assert_eq!(f.read_f32("a").unwrap(), (vec![3.0, 4.0], vec![1, 2]));
        assert_eq!(f.header_metadata().unwrap().len(), 16);
        let bytes = std::fs::read(&p1).unwrap();
        assert!(::safetensors::SafeTensors::deserialize(&bytes).is_ok());
        assert!(!dir.path().join("1.safetensors.part").exists());
    }

    /// Property: any truncation point and any corrupted header byte gives an error naming the
    /// file (and the tensor, when the cut falls in a tensor's data), or a file whose tensors all
    /// read or fail cleanly; never a panic.
    #[test]
    fn random_truncations_and_header_corruptions_never_panic() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read(sample(dir.path())).unwrap();
        let header_end = 8 + u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
        let path = dir.path().join("bad.safetensors");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for case in 0..400 {
            let mut bytes = good.clone();
            let truncated = case % 2 == 0;
            if truncated {
                bytes.truncate(rng.random_range(0..good.len()));
            } else {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..header_end);
                    bytes[i] = match rng.random_range(0..4) {
                        0 => rng.random(),
                        1 => b'9',
                        2 => 0xff,
                        _ => b'-',
                    };
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| match SafetensorsFile::open(&path) {
                Err(e) => Err(e.to_string()),
                Ok(f) => {
                    for name in f.names() {
                        let _ = f.read_f32(&name);
                    }
                    Ok(())
                }
            });
            let outcome = outcome.unwrap_or_else(|_| panic!("case {case}: panicked on {bytes:?}"));
            match outcome {
                Err(msg) => {
                    assert!(msg.contains("bad.safetensors"), "case {case}: {msg}");
                    if truncated && bytes.len() > header_end {
                        assert!(msg.contains("tensor '"), "case {case}: cut in the data must name the tensor: {msg}");
                    }
                }
                Ok(()) => assert!(!truncated, "case {case}: a truncated file was accepted"),
            }
        }
    }

    #[test]
    fn folder_without_weights_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let msg = Weights::open_dir(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("model.safetensors"), "{msg}");
    }
}
