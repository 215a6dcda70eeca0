//! GradCache must hold one mini-batch's autograd graph at a time, not the whole batch's.
//!
//! burn's autodiff frees a recorded graph only inside a backward pass, so a first pass that
//! builds graphs and merely drops (or detaches) their outputs keeps every mini-batch's saved
//! activations alive until the step ends: the cached loss then needs as much memory as the plain
//! one. This binary counts the bytes live on the heap (its own global allocator, and a single
//! test so nothing else allocates beside it) and compares the peak of one cached step with the
//! plain step's. The sizes are chosen so that the saved activations dominate: each text's bag of
//! hashed words (`buckets` floats) is kept by the matmul for the embedding table's gradient.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Device;
use tunelab::train::contrastive::{CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss, PairBatch, PairRef};
use tunelab::train::encoder::{HashedBagEncoder, TrainableEncoder};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::SeqCst) + new_size - layout.size();
                PEAK.fetch_max(now, Ordering::SeqCst);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Bytes allocated at the peak of `f` above what was live when it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (PEAK.load(Ordering::SeqCst) - base, out)
}

#[test]
fn gradcache_holds_one_mini_batch_of_graph_at_a_time() {
    const BUCKETS: usize = 8192; // 32 KiB saved per text
    let device = Device::flex().autodiff();
    // Dropout on, as in training: the first pass must still draw masks without a graph.
    let encoder = HashedBagEncoder::new(BUCKETS, 4, 4, 0.1, 7, &device).for_training();
    let data: Vec<(String, String)> = (0..128).map(|i| (format!("query {i} about w{i}"), format!("document {i} on w{i} and more"))).collect();
    let pairs: Vec<PairRef> = data.iter().map(|(q, p)| PairRef { query: q, positive: p, negatives: &[] }).collect();
    let batch = |n: usize| PairBatch::from_pairs(pairs[..n].iter().copied());
    let plain = MultipleNegativesRankingLoss::default();
    let cached = CachedMultipleNegativesRankingLoss { loss: plain.clone(), mini_batch_size: 4 };

    // Warm up once (thread pools, lazily built state), then measure each on its own.
    drop(cached.backward(&encoder, &batch(8), 0).unwrap());
    let (plain_peak, _) = peak_during(|| plain.backward(&encoder, &batch(128), 1).unwrap());
    let (small_peak, _) = peak_during(|| cached.backward(&encoder, &batch(32), 1).unwrap());
    let (large_peak, _) = peak_during(|| cached.backward(&encoder, &batch(128), 1).unwrap());
    let kib = |b: usize| b as f64 / 1024.0;
    eprintln!(
        "peak heap above the start: plain MNRL, 128 pairs {:.0} KiB; GradCache (mini-batch 4) 32 pairs {:.0} KiB, 128 pairs {:.0} KiB \
         (one text's saved bag: {:.0} KiB)",
        kib(plain_peak),
        kib(small_peak),
        kib(large_peak),
        kib(BUCKETS * 4)
    );
    // The plain step keeps the bags of all 256 texts (8 MiB); the cached one, those of 4.
    assert!(plain_peak > 256 * BUCKETS * 4, "the plain step should hold every text's bag: {plain_peak} bytes");
    assert!(large_peak * 4 < plain_peak, "GradCache peak {large_peak} bytes is not far below the plain step's {plain_peak}: graphs retained?");
    // Four times the batch adds the cached embeddings and the loss on them (scores grow as the
    // square of the batch), not graphs: retaining them would add 192 more bags (6 MiB).
    let retained = 192 * BUCKETS * 4;
    assert!(large_peak - small_peak < retained / 4, "GradCache peak grows with the batch: {small_peak} → {large_peak} bytes");
}
