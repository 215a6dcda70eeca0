//! QLoRA's frozen base: a weight matrix kept in ggml's 32-value blocks (Q8_0, Q4_0, Q4_1) on the
//! model's device and dequantized on the fly, with tensor ops only, so the same code runs on the
//! CPU (flex) and on wgpu.
//!
//! Storage, per block of 32 weights of a row (at rest, on flex):
//!
//! | type | values                          | scale(s)      | bytes per weight |
//! |------|---------------------------------|---------------|------------------|
//! | Q8_0 | 32 × `I8`                       | `d` `F16`     | 34 / 32 = 1.0625 |
//! | Q4_0 | 16 × `U8`, two 4-bit `q` each   | `d` `F16`     | 18 / 32 = 0.5625 |
//! | Q4_1 | 16 × `U8`, two 4-bit `q` each   | `d`, `m` `F16`| 20 / 32 = 0.625  |
//!
//! exactly ggml's block sizes (f32 is 4 bytes per weight). A device without 8-bit integers or
//! f16 ([`Device::supports_dtype`]) gets `I32` values and `F32` scales instead (4 bytes per
//! stored byte: still below f32 for the 4-bit types, above it for Q8_0).
//!
//! Dequantization is ggml's `dequantize_row_*`, one tensor op per C operation, so the result is
//! bit for bit what [`crate::io::gguf::dequantize`] gives: Q8_0 `q·d`, Q4_0 `(q − 8)·d`, Q4_1
//! `q·d + m` (a multiply then an add, no fused multiply-add).
//!
//! Why not burn's own quantization (`Tensor::quantize`, `QuantScheme`)? Its block schemes are
//! symmetric (`q·scale`, no offset), so Q4_1's `m` has no place, and the flex backend unpacks
//! 4-bit values to one `i8` each (1.125 bytes per weight for Q4 with f32 block scales) where
//! packed nibbles take 0.5; its quantizer also rounds with the f16-rounded scale, which is not
//! ggml's reference quantizer. A GGUF's own blocks are kept bit-exact here instead.
//!
//! Memory: at rest the blocks are all there is (SmolLM2-135M's 210 projections: 63 MiB as Q4_1
//! against 405 MiB f32). In a training step, the backward of `x·Wᵀ` needs `W` to pass the
//! gradient down to the layers below:
//!
//! * On the CPU backend (flex), [`QuantWeight::matmul_t`] is one autodiff operation
//!   (`src/lora/quant_matmul.rs`, a burn backend extension with its own `Backward`) whose backward
//!   pass dequantizes `W` again for `grad_x = grad_y · W`: the step keeps the blocks only, and a
//!   dequantized matrix lives while one matmul runs.
//! * Elsewhere (wgpu: the extension is not routed to cubecl's fused backend here) the layer
//!   runs `x · dequantize()ᵀ` through burn's own ops, and autodiff keeps each layer's f32 matrix
//!   until `backward()`: a plain step's peak is about the f32 model's. burn 0.22's gradient
//!   checkpointing (`Device::autodiff().gradient_checkpointing()`) does not change that: the
//!   dequantization starts with an int → float conversion, which autodiff sees as a new leaf, and
//!   a leaf is kept. `--grad-checkpoint` (`train::block_checkpoint`) bounds it: its
//!   graph-free forward frees each matrix after use and each block's recompute dequantizes that
//!   block's matrices again, kept only until the block's own backward (test
//!   `qlora_recompute_dequantizes_each_block_again`), so a step holds one block's f32 matrices.
//!
//! Forward-only work (validation, generation) frees each matrix right after its matmul.
//!
//! ```
//! use burn::tensor::{Device, Tensor, TensorData};
//! use tunelab::io::gguf::{dequantize, quantize_q8_0, GgmlType};
//! use tunelab::lora::{QuantType, QuantWeight};
//!
//! let device = Device::flex();
//! let w: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect(); // [out 2, in 32]
//! let q = QuantWeight::quantize(QuantType::Q8_0, &w, [2, 32], &device).unwrap();
//! assert_eq!(q.bytes_at_rest(), 2 * 34);
//! let back = q.dequantize().into_data().try_to_vec::<f32>().unwrap();
//! // Exactly ggml's dequantization of ggml's reference quantization.
//! assert_eq!(back, dequantize(GgmlType::Q8_0, &quantize_q8_0(&w)).unwrap());
//! ```

use burn::module::Module;
use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::io::gguf::{GgmlType, quantize_q4_0, quantize_q8_0};

/// Values per block (ggml's `QK8_0`, `QK4_0`, `QK4_1`).
pub const BLOCK: usize = 32;

/// The ggml block types a [`QuantWeight`] can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantType {
    Q8_0,
    Q4_0,
    Q4_1,
}

impl QuantType {
    /// The same type in a GGUF file.
    pub fn ggml(self) -> GgmlType {
        match self {
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
        }
    }

    /// The type of a GGUF tensor, if it is one of ours.
    pub fn from_ggml(ty: GgmlType) -> Option<Self> {
        match ty {
            GgmlType::Q8_0 => Some(Self::Q8_0),
            GgmlType::Q4_0 => Some(Self::Q4_0),
            GgmlType::Q4_1 => Some(Self::Q4_1),
            _ => None,
        }
    }

    /// Bytes of one block in a GGUF file.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
        }
    }

    fn is_4bit(self) -> bool {
        !matches!(self, Self::Q8_0)
    }
}

impl std::fmt::Display for QuantType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Q8_0 => "Q8_0",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
        })
    }
}

/// What happens to the frozen projection weights of a model loaded for LoRA training (the SFT
/// option `quantize_base`, flag `--quantize-base`). Embeddings and norms always stay f32.
///
/// * `keep` (default): a GGUF's Q8_0/Q4_0/Q4_1 projections stay in their own blocks (QLoRA,
///   bit-exact with the file); other types (F32, F16, Q4_K, Q6_K) and Hugging Face folders load
///   as f32. This is what MLX-LM does: a quantized model trains as QLoRA without being asked.
/// * `none`: everything as f32 (plain LoRA; the dequantized GGUF values are the same numbers).
/// * `q8_0` / `q4_0`: quantize every projection with ggml's reference quantizer (a tensor that
///   is already of that type keeps its blocks, others are quantized from their f32 values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuantizeBase {
    None,
    Q8_0,
    Q4_0,
    #[default]
    Keep,
}

impl std::str::FromStr for QuantizeBase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "q8_0" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            "keep" => Ok(Self::Keep),
            other => Err(format!("'{other}': expected none, keep, q8_0 or q4_0")),
        }
    }
}

impl QuantizeBase {
    /// The type a projection stored as `file_type` (None: not one of ours, or not a GGUF)
    /// ends up in, or None for f32.
    pub fn target(self, file_type: Option<QuantType>) -> Option<QuantType> {
        match self {
            Self::None => None,
            Self::Keep => file_type,
            Self::Q8_0 => Some(QuantType::Q8_0),
            Self::Q4_0 => Some(QuantType::Q4_0),
        }
    }
}

/// Why a quantized weight cannot be built; names the tensor.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("tensor '{tensor}': rows of {cols} values are not a whole number of {BLOCK}-value {ty} blocks")]
    Row { tensor: String, cols: usize, ty: QuantType },
    #[error("tensor '{tensor}': {len} bytes, expected {expected} for {ty} blocks of a {shape:?} matrix")]
    Bytes { tensor: String, len: usize, expected: usize, ty: QuantType, shape: [usize; 2] },
}

#[cfg(test)]
thread_local! {
    /// [`QuantWeight::dequantize`] calls on this thread (tests count what a step dequantizes).
    pub(crate) static DEQUANTIZED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A frozen `[out, in]` matrix in ggml blocks of 32 along each row. It has no parameters: an
/// optimizer never sees it and autodiff never gives it a gradient.
#[derive(Module, Debug)]
pub struct QuantWeight {
    /// Q8_0: `[out, in]` signed values. Q4_0/Q4_1: `[out, in / 2]` bytes as ggml packs them
    /// (in each block of 16 bytes, byte `j` holds element `j` in its low nibble and element
    /// `j + 16` in its high nibble).
    pub values: Tensor<2, Int>,
    /// `d` `[out, in / 32]` (the file's own f16 values).
    pub scales: Tensor<2>,
    /// Q4_1's `m` `[out, in / 32]`.
    pub mins: Option<Tensor<2>>,
    #[module(skip)]
    pub ty: QuantType,
    #[module(skip)]
    pub shape: [usize; 2],
}

impl QuantWeight {
    /// Keep ggml blocks as stored in a GGUF file: `bytes` is the row-major `[out, in]` matrix of
    /// `ty` blocks (what `GgufFile::tensor_bytes` returns). `name` is for errors.
    pub fn from_ggml_blocks(name: &str, ty: QuantType, bytes: &[u8], shape: [usize; 2], device: &Device) -> Result<Self, QuantError> {
        let [out, inp] = shape;
        if inp % BLOCK != 0 {
            return Err(QuantError::Row { tensor: name.into(), cols: inp, ty });
        }
        let nb = inp / BLOCK;
        let expected = out * nb * ty.block_bytes();
        if bytes.len() != expected {
            return Err(QuantError::Bytes { tensor: name.into(), len: bytes.len(), expected, ty, shape });
        }
        let blocks = bytes.chunks_exact(ty.block_bytes());
        let half = |b: &[u8], i: usize| half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]]));
        let scales: Vec<half::f16> = blocks.clone().map(|b| half(b, 0)).collect();
        let (packed, mins): (Vec<u8>, Option<Vec<half::f16>>) = match ty {
            QuantType::Q8_0 => (blocks.flat_map(|b| b[2..34].iter().copied()).collect(), None),
            QuantType::Q4_0 => (blocks.flat_map(|b| b[2..18].iter().copied()).collect(), None),
            QuantType::Q4_1 => (
                blocks.clone().flat_map(|b| b[4..20].iter().copied()).collect(),
                Some(blocks.map(|b| half(b, 2)).collect()),
            ),
        };
        // 8-bit integers and f16 where the device has them (flex does), else i32 and f32.
        let small = device.supports_dtype(DType::U8) && device.supports_dtype(DType::I8);
        let value_shape = [out, if ty.is_4bit() { inp / 2 } else { inp }];
        let values = match (ty, small) {
            (QuantType::Q8_0, true) => {
                let v: Vec<i8> = packed.iter().map(|&b| b as i8).collect();
                Tensor::from_data(TensorData::new(v, value_shape), (device, DType::I8))
            }
            (_, true) => Tensor::from_data(TensorData::new(packed, value_shape), (device, DType::U8)),
            (QuantType::Q8_0, false) => {
                let v: Vec<i32> = packed.iter().map(|&b| b as i8 as i32).collect();
                Tensor::from_data(TensorData::new(v, value_shape), (device, DType::I32))
            }
            (_, false) => {
                let v: Vec<i32> = packed.iter().map(|&b| b as i32).collect();
                Tensor::from_data(TensorData::new(v, value_shape), (device, DType::I32))
            }
        };
        let f16_ok = device.supports_dtype(DType::F16);
        let scale_tensor = |s: Vec<half::f16>| -> Tensor<2> {
            if f16_ok {
                Tensor::from_data(TensorData::new(s, [out, nb]), (device, DType::F16))
            } else {
                let s: Vec<f32> = s.iter().map(|h| h.to_f32()).collect();
                Tensor::from_data(TensorData::new(s, [out, nb]), (device, DType::F32))
            }
        };
        Ok(Self { values, scales: scale_tensor(scales), mins: mins.map(scale_tensor), ty, shape })
    }

    /// Quantize a row-major f32 `[out, in]` matrix as ggml's reference quantizers do
    /// (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`). Q4_1 has no such path here: its
    /// blocks only come from files.
    pub fn quantize(ty: QuantType, values: &[f32], shape: [usize; 2], device: &Device) -> Result<Self, QuantError> {
        Self::quantize_named("(matrix)", ty, values, shape, device)
    }

    /// [`QuantWeight::quantize`] with a tensor name for errors.
    pub fn quantize_named(name: &str, ty: QuantType, values: &[f32], shape: [usize; 2], device: &Device) -> Result<Self, QuantError> {
        assert_eq!(values.len(), shape[0] * shape[1], "tensor '{name}': values do not fill {shape:?}");
        if !shape[1].is_multiple_of(BLOCK) {
            return Err(QuantError::Row { tensor: name.into(), cols: shape[1], ty });
        }
        let bytes = match ty {
            QuantType::Q8_0 => quantize_q8_0(values),
            QuantType::Q4_0 => quantize_q4_0(values),
            QuantType::Q4_1 => panic!("tensor '{name}': Q4_1 blocks are kept from a file, not made here"),
        };
        Self::from_ggml_blocks(name, ty, &bytes, shape, device)
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        self.shape
    }

    /// The f32 matrix `[out, in]`, bit-exact with ggml's dequantization of the same blocks.
    pub fn dequantize(&self) -> Tensor<2> {
        #[cfg(test)]
        DEQUANTIZED.with(|n| n.set(n.get() + 1));
        let [out, inp] = self.shape;
        let nb = inp / BLOCK;
        // Constants off the autodiff graph: `Module::train` makes a module's plain tensors autodiff
        // tensors with no checkpointing, which burn refuses to mix with checkpointed activations.
        let d = self.scales.clone().without_autodiff().cast(FloatDType::F32).reshape([out, nb, 1]);
        let q: Tensor<3> = if self.ty.is_4bit() {
            let bytes = self.values.clone().without_autodiff().reshape([out, nb, BLOCK / 2]);
            let lo = bytes.clone().bitwise_and_scalar(0x0F);
            let hi = bytes.bitwise_right_shift_scalar(4);
            Tensor::cat(vec![lo, hi], 2).float()
        } else {
            self.values.clone().without_autodiff().reshape([out, nb, BLOCK]).float()
        };
        let w = match (self.ty, &self.mins) {
            (QuantType::Q4_0, _) => q.sub_scalar(8.0) * d,
            (QuantType::Q4_1, Some(m)) => q * d + m.clone().without_autodiff().cast(FloatDType::F32).reshape([out, nb, 1]),
            _ => q * d,
        };
        w.reshape([out, inp])
    }

    /// `x` `[rows, in]` · `Wᵀ` → `[rows, out]`. On the CPU backend one autodiff operation whose
    /// backward pass dequantizes `W` again (`lora::quant_matmul`), so a training step keeps
    /// the blocks, not the f32 matrix; elsewhere `x · dequantize()ᵀ`.
    pub fn matmul_t(&self, x: Tensor<2>) -> Tensor<2> {
        use super::quant_matmul::{Q4_0, Q4_1, Q8_0, QuantMatmulBackend};
        // The op computes in the activations' dtype (f16 under `--dtype f16`), the matrix cast
        // after dequantizing, as here (the cast is a no-op for f32).
        if !Self::dequantizes_in_backward(&x.device()) {
            let dtype = x.dtype();
            return x.matmul(self.dequantize().cast(dtype).transpose());
        }
        #[cfg(test)]
        DEQUANTIZED.with(|n| n.set(n.get() + 1));
        let kind = match self.ty {
            QuantType::Q8_0 => Q8_0,
            QuantType::Q4_0 => Q4_0,
            QuantType::Q4_1 => Q4_1,
        };
        let scales = self.scales.clone().without_autodiff();
        let mins = self.mins.clone().map_or_else(|| scales.clone(), |m| m.without_autodiff());
        let [out, inp] = self.shape;
        let y = <burn::backend::Dispatch as QuantMatmulBackend>::quant_matmul(
            x.into_dispatch(),
            self.values.clone().without_autodiff().into_dispatch(),
            scales.into_dispatch(),
            mins.into_dispatch(),
            kind,
            out,
            inp,
        );
        Tensor::from_dispatch(y)
    }

    /// Whether [`QuantWeight::matmul_t`] on `device` dequantizes again in the backward pass
    /// (the CPU backend) rather than keeping the f32 matrix for it.
    pub fn dequantizes_in_backward(device: &Device) -> bool {
        crate::device::is_cpu(device)
    }

    /// Bytes the stored tensors take on the device.
    pub fn bytes_at_rest(&self) -> usize {
        let size = |n: usize, dtype: DType| n * dtype.size();
        let [out, inp] = self.shape;
        size(self.values.shape().num_elements(), self.values.dtype())
            + size(out * inp / BLOCK, self.scales.dtype())
            + self.mins.as_ref().map_or(0, |m| size(out * inp / BLOCK, m.dtype()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::dequantize;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Random blocks as a file could hold them: any nibbles or int8 values, f16 scales and mins
    /// of both signs and several magnitudes (subnormal f16 included).
    fn random_blocks(ty: QuantType, n_blocks: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..n_blocks {
            let mut f16 = || {
                let exp = rng.random_range(-26.0f32..2.0);
                let v = rng.random_range(0.5f32..1.0) * exp.exp2() * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
                half::f16::from_f32(v).to_bits().to_le_bytes()
            };
            let (d, m) = (f16(), f16());
            out.extend_from_slice(&d);
            if ty == QuantType::Q4_1 {
                out.extend_from_slice(&m);
            }
            let n = if ty.is_4bit() { 16 } else { 32 };
            out.extend((0..n).map(|_| rng.random::<u8>()));
        }
        out
    }

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn dequantize_is_bit_exact_with_ggml() {
        let device = Device::flex();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for ty in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1] {
            let shape = [5, 96];
            let bytes = random_blocks(ty, 5 * 3, &mut rng);
            let q = QuantWeight::from_ggml_blocks("t", ty, &bytes, shape, &device).unwrap();
            let want = dequantize(ty.ggml(), &bytes).unwrap();
            let got = host(q.dequantize());
            // Compare bits: -0.0 and NaN payloads count too.
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{ty}");
            let expected = 5 * 3 * ty.block_bytes();
            assert_eq!(q.bytes_at_rest(), expected, "{ty}: ggml's own block size at rest on flex");
        }
    }

    /// The CPU backend's quantized matmul (one autodiff op, `W` dequantized again in the
    /// backward pass) gives the bits of `x · dequantize()ᵀ` through burn's own ops, forward and
    /// `x`'s gradient, for every block type, with and without autodiff, with f32 activations and
    /// with f16 ones (`--dtype f16`, the matrix cast to f16 after dequantizing).
    #[test]
    fn matmul_t_is_the_dequantized_matmul_and_its_gradient() {
        use super::super::quant_matmul::BACKWARD_DEQUANTIZED;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // f16 values widen to f32 exactly, so comparing the f32 bits compares the f16 bits.
        let bits = |t: Tensor<2>| t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap().into_iter().map(f32::to_bits).collect::<Vec<_>>();
        for ty in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1] {
            for dtype in [FloatDType::F32, FloatDType::F16] {
                let (out, inp, rows) = (6, 64, 5);
                let bytes = random_blocks(ty, out * inp / BLOCK, &mut rng);
                let xs: Vec<f32> = (0..rows * inp).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                let g: Vec<f32> = (0..rows * out).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                for device in [Device::flex(), Device::flex().autodiff()] {
                    let q = QuantWeight::from_ggml_blocks("t", ty, &bytes, [out, inp], &device).unwrap();
                    let x = || {
                        let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [rows, inp]), &device).cast(dtype);
                        if device.is_autodiff() { x.require_grad() } else { x }
                    };
                    let gy = Tensor::<2>::from_data(TensorData::new(g.clone(), [rows, out]), &device).cast(dtype);
                    let (x1, x2) = (x(), x());
                    let (y1, y2) = (q.matmul_t(x1.clone()), x2.clone().matmul(q.dequantize().cast(dtype).transpose()));
                    assert_eq!(y1.dtype(), DType::from(dtype), "{ty} {dtype:?}: output dtype");
                    assert_eq!(bits(y1.clone()), bits(y2.clone()), "{ty} {dtype:?}: forward");
                    if device.is_autodiff() {
                        let before = BACKWARD_DEQUANTIZED.with(|n| n.get());
                        let (g1, g2) = ((y1 * gy.clone()).sum().backward(), (y2 * gy).sum().backward());
                        assert_eq!(BACKWARD_DEQUANTIZED.with(|n| n.get()) - before, 1, "{ty} {dtype:?}: W dequantized again in the backward pass");
                        let (d1, d2) = (x1.grad(&g1).unwrap(), x2.grad(&g2).unwrap());
                        assert_eq!(bits(d1), bits(d2), "{ty} {dtype:?}: grad x");
                    }
                }
            }
        }
    }

    #[test]
    fn quantizers_round_trip_as_ggml_reference() {
        let device = Device::flex();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let shape = [4, 64];
        let w: Vec<f32> = (0..256).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        // Worst error as a fraction of the block's max |x|: half a step for Q8_0 (d = max/127);
        // a whole step for Q4_0, whose +8 end is clamped to 7 (d = max/-8).
        for (ty, bound) in [(QuantType::Q8_0, 0.5 / 127.0), (QuantType::Q4_0, 1.0 / 8.0)] {
            let bytes = if ty == QuantType::Q8_0 { quantize_q8_0(&w) } else { quantize_q4_0(&w) };
            let q = QuantWeight::quantize(ty, &w, shape, &device).unwrap();
            let got = host(q.dequantize());
            assert_eq!(got, dequantize(ty.ggml(), &bytes).unwrap(), "{ty}");
            // Plus f16 rounding of d (relative 2^-11, times at most 8 or 127 steps).
            for (b, (x, y)) in w.chunks(32).zip(got.chunks(32)).enumerate() {
                let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let worst = x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(worst <= amax * (bound + 1e-3), "{ty} block {b}: error {worst}, max {amax}");
            }
        }
    }

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder").join(name)
    }

    /// gguf-py's quantizers (numpy ports of ggml's `quantize_row_*_ref`) made these bytes
    /// (`scripts/make-decoder-fixtures.py quantizers`); ours must give the same bytes.
    #[test]
    fn quantizers_give_gguf_py_bytes() {
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("quantize_ref.json")).unwrap()).unwrap();
        let x: Vec<f32> = r["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        for (key, bytes) in [("q8_0", quantize_q8_0(&x)), ("q4_0", quantize_q4_0(&x))] {
            assert_eq!(hex::encode(&bytes), r[key].as_str().unwrap(), "{key}");
        }
    }

    /// The Q8_0/Q4_0/Q4_1 tensors of a file written by gguf-py, kept as blocks, dequantize to
    /// gguf-py's own values.
    #[test]
    fn kept_file_blocks_dequantize_to_gguf_py_values() {
        let g = crate::io::gguf::GgufFile::open(fixture("quant_blocks.gguf")).unwrap();
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("quant_blocks.json")).unwrap()).unwrap();
        for (name, ty) in [("t_q8_0", QuantType::Q8_0), ("t_q4_0", QuantType::Q4_0), ("t_q4_1", QuantType::Q4_1)] {
            let info = g.tensor_info(name).unwrap();
            assert_eq!(QuantType::from_ggml(info.ggml_type), Some(ty));
            let shape = info.shape();
            let q = QuantWeight::from_ggml_blocks(name, ty, g.tensor_bytes(name).unwrap(), [shape[0], shape[1]], &Device::flex()).unwrap();
            let want: Vec<u32> = r["tensors"][name]["values"].as_array().unwrap().iter().map(|v| (v.as_f64().unwrap() as f32).to_bits()).collect();
            let got: Vec<u32> = host(q.dequantize()).iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn q4_0_quantizer_matches_hand_computed_ggml() {
        // Block max magnitude -4 (negative): d = -4 / -8 = 0.5, id = 2; x = 1.3 → trunc(2.6 + 8.5) = 11.
        let mut x = vec![0.0f32; 32];
        x[0] = -4.0;
        x[1] = 1.3;
        x[16] = 3.9; // 7.8 + 8.5 = 16.3 → 16, clamped to 15
        let b = quantize_q4_0(&x);
        assert_eq!(half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(), 0.5);
        assert_eq!(b[2], 15 << 4, "element 0 → 0, element 16 → 15");
        assert_eq!(b[3] & 0x0F, 11);
        assert_eq!(b[4], 8 | (8 << 4), "zeros → 8");
        // An all-zero block: d = 0, every q = 8.
        assert!(quantize_q4_0(&[0.0; 32])[2..].iter().all(|&q| q == 0x88));
    }

    #[test]
    fn bad_shapes_name_the_tensor() {
        let device = Device::flex();
        let err = QuantWeight::quantize_named("blk.0.ffn_up.weight", QuantType::Q8_0, &[0.0; 40], [2, 20], &device).unwrap_err();
        assert!(err.to_string().contains("blk.0.ffn_up.weight"), "{err}");
        let err = QuantWeight::from_ggml_blocks("blk.1.attn_q.weight", QuantType::Q4_1, &[0; 39], [2, 32], &device).unwrap_err();
        assert!(err.to_string().contains("blk.1.attn_q.weight") && err.to_string().contains("40"), "{err}");
    }
}
