//! Chunked loops for element-wise kernels, split over rayon's threads when large.
//!
//! (tunelab patch) Upstream burn-flex 0.22.1 runs unary, binary and scalar element-wise
//! kernels on the calling thread only. Training a small encoder spends about half of its CPU
//! step in such kernels (GELU's erf, masks, scaling, gradients), so one core idled. Chunks are
//! contiguous, processed independently, and the per-element arithmetic is unchanged: results
//! are bit-identical whatever the thread count.

/// Below this many elements a loop stays on the calling thread (rayon's hand-off costs a few
/// microseconds; 32 Ki f32 adds take about that long).
pub(crate) const PAR_MIN_ELEMS: usize = 1 << 15;

#[cfg(feature = "rayon")]
pub(crate) fn chunk_len(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // A few chunks per thread to balance uneven cores; whole cache lines.
    let c = (n / (threads * 4)).max(1 << 13);
    (c + 63) & !63
}

/// How many runs of a loop nest each parallel chunk takes: the same few chunks per thread as
/// [`chunk_len`], counted in whole runs.
#[cfg(feature = "rayon")]
pub(crate) fn runs_per_chunk(runs: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    runs.div_ceil(threads * 4).max(1)
}

/// (tunelab patch) `f()`, compiled for AVX-512 or AVX2 and FMA when the CPU has them.
///
/// The crate is built for baseline x86-64, so element loops (GELU's erf and exp, masks,
/// gradients) vectorize 4 wide with SSE2; the closures passed here are inlined into a copy built
/// with `avx512f,avx512bw,avx512dq,avx512vl` (16 wide) or `avx2,fma` (8 wide), whichever the CPU
/// has (detected once, cached by std). Rust never contracts `a * b + c` into an FMA, so the
/// results are bit-identical on every path. Elsewhere (aarch64 NEON is the baseline) this is `f()`.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
        #[inline]
        unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
        {
            // SAFETY: the four AVX-512 subsets were detected on this CPU just above (AVX-512F implies
            // AVX2 and FMA on every CPU that has it).
            return unsafe { avx512(f) };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: both features were detected on this CPU just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `f` on disjoint chunks of `dst`.
pub(crate) fn chunks_mut<E: Send, F: Fn(&mut [E]) + Sync + Send>(dst: &mut [E], f: F) {
    #[cfg(feature = "rayon")]
    if dst.len() >= PAR_MIN_ELEMS {
        use rayon::prelude::*;
        let c = chunk_len(dst.len());
        dst.par_chunks_mut(c).for_each(|d| wide(#[inline(always)] || f(d)));
        return;
    }
    wide(#[inline(always)] || f(dst))
}

/// `f(dst_chunk, src_chunk)` on matching chunks of two slices of equal length.
pub(crate) fn zip_chunks_mut<E: Send, S: Sync, F: Fn(&mut [E], &[S]) + Sync + Send>(
    dst: &mut [E],
    src: &[S],
    f: F,
) {
    debug_assert_eq!(dst.len(), src.len());
    #[cfg(feature = "rayon")]
    if dst.len() >= PAR_MIN_ELEMS {
        use rayon::prelude::*;
        let c = chunk_len(dst.len());
        dst.par_chunks_mut(c)
            .zip(src.par_chunks(c))
            .for_each(|(d, s)| wide(#[inline(always)] || f(d, s)));
        return;
    }
    wide(#[inline(always)] || f(dst, src))
}

/// `src.iter().map(op).collect()`, in parallel chunks when large (as [`zip_chunks_mut`] decides).
pub(crate) fn map_collect<S: Copy + Sync, E: Send, F: Fn(S) -> E + Sync + Send>(
    src: &[S],
    op: F,
) -> alloc::vec::Vec<E> {
    let mut out = alloc::vec::Vec::with_capacity(src.len());
    zip_chunks_mut(&mut out.spare_capacity_mut()[..src.len()], src, #[inline(always)] |d, s| {
        for (o, &x) in d.iter_mut().zip(s) {
            o.write(op(x));
        }
    });
    // SAFETY: every one of the `src.len()` slots was written above.
    unsafe { out.set_len(src.len()) };
    out
}

/// `a.iter().zip(b).map(op).collect()` for slices of equal length, in parallel chunks when large.
pub(crate) fn map2_collect<A, B, E, F>(a: &[A], b: &[B], op: F) -> alloc::vec::Vec<E>
where
    A: Copy + Sync,
    B: Copy + Sync,
    E: Send,
    F: Fn(A, B) -> E + Sync + Send,
{
    debug_assert_eq!(a.len(), b.len());
    #[cfg(feature = "rayon")]
    if a.len() >= PAR_MIN_ELEMS {
        use rayon::prelude::*;
        let n = a.len();
        let mut out = alloc::vec::Vec::with_capacity(n);
        let c = chunk_len(n);
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(c)
            .zip(a.par_chunks(c).zip(b.par_chunks(c)))
            .for_each(|(o, (x, y))| {
                wide(#[inline(always)] || {
                    for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                        o.write(op(x, y));
                    }
                })
            });
        // SAFETY: every one of the `n` slots was written above.
        unsafe { out.set_len(n) };
        return out;
    }
    a.iter().zip(b).map(|(&x, &y)| op(x, y)).collect()
}

/// (tunelab patch) Elements per dropout chunk, each drawn from its own generator.
#[cfg(feature = "rayon")]
const BERNOULLI_CHUNK: usize = 1 << 16;

/// (tunelab patch) The generator of chunk `i` of a Bernoulli tensor drawn with `seed`.
#[cfg(feature = "rayon")]
fn bernoulli_chunk_rng(seed: u64, i: usize) -> burn_std::rand::StdRng {
    use burn_std::rand::SeedableRng;
    burn_std::rand::StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// (tunelab patch) One when a uniform u32 falls below this (prob·2³², exact to 2⁻³²; prob = 1
/// keeps all).
#[cfg(feature = "rayon")]
fn bernoulli_threshold(prob: f64) -> u64 {
    (prob.clamp(0.0, 1.0) * 4_294_967_296.0) as u64
}

/// (tunelab patch) `n` draws of Bernoulli(`prob`) as 1.0 / 0.0, in chunks of 64 Ki, chunk `i`
/// from `StdRng::seed_from_u64(seed ^ i·φ)`: one sequential generator took a fifth of a CPU
/// training step drawing dropout masks.
#[cfg(feature = "rayon")]
pub(crate) fn bernoulli_f32(n: usize, prob: f64, seed: u64) -> alloc::vec::Vec<f32> {
    use burn_std::rand::RngExt;
    use rayon::prelude::*;
    let threshold = bernoulli_threshold(prob);
    let mut out = alloc::vec![0f32; n];
    out.par_chunks_mut(BERNOULLI_CHUNK).enumerate().for_each(|(i, chunk)| {
        let mut rng = bernoulli_chunk_rng(seed, i);
        // (change 10) The draws a block at a time (`fill`: the generator's words in order, the
        // same u32s `random::<u32>()` returns one by one), then a branch-free compare the compiler
        // vectorizes: the per-draw loop was ~3% of a MiniLM MNRL step's CPU samples.
        let mut words = [0u32; 1024];
        for part in chunk.chunks_mut(words.len()) {
            let words = &mut words[..part.len()];
            rng.fill(words);
            for (v, &u) in part.iter_mut().zip(words.iter()) {
                *v = if u64::from(u) < threshold { 1.0 } else { 0.0 };
            }
        }
    });
    out
}

/// (tunelab test hook) [`bernoulli_f32`] beside the same chunks drawn one `random::<u32>()` at a
/// time, its loop before change 10, for a test that the two agree bit for bit.
#[cfg(feature = "rayon")]
#[doc(hidden)]
pub fn bernoulli_f32_and_one_by_one(n: usize, prob: f64, seed: u64) -> (alloc::vec::Vec<f32>, alloc::vec::Vec<f32>) {
    use burn_std::rand::RngExt;
    let threshold = bernoulli_threshold(prob);
    let mut one_by_one = alloc::vec![0f32; n];
    for (i, chunk) in one_by_one.chunks_mut(BERNOULLI_CHUNK).enumerate() {
        let mut rng = bernoulli_chunk_rng(seed, i);
        for v in chunk.iter_mut() {
            if u64::from(rng.random::<u32>()) < threshold {
                *v = 1.0;
            }
        }
    }
    (bernoulli_f32(n, prob, seed), one_by_one)
}
