//! The public training pieces composed from outside the crate: no-duplicates batches, the cached
//! MultipleNegativesRankingLoss, clipping, the warm-up schedule and AdamW on a tiny hashed-bag
//! encoder. Queries and their documents share no word, so retrieval can only improve by
//! learning; the test checks that MRR@10 (trec_eval's recip_rank over the top 10) rises.

use burn::optim::AdamWConfig;
use burn::tensor::Device;
use tunelab::data::trec::Qrels;
use tunelab::train::contrastive::{CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss, NoDuplicatesBatchSampler, PairBatch, PairRef};
use tunelab::train::encoder::{HashedBagEncoder, TrainableEncoder};
use tunelab::train::schedule::{LrSchedule, ScheduleKind, clip_grad_norm};
use tunelab::train::validation::{RetrievalValidation, Validation};

#[test]
fn contrastive_steps_raise_mrr_at_10() {
    // 16 topics: query words qa{i} qb{i}, document words da{i} db{i} dc{i}.
    let data: Vec<(String, String, Vec<String>)> =
        (0..16).map(|i| (format!("find qa{i} qb{i}"), format!("da{i} db{i} dc{i}"), Vec::new())).collect();
    let pairs: Vec<PairRef> = data.iter().map(|(q, p, n)| PairRef { query: q, positive: p, negatives: n }).collect();
    let qrels: String = (0..16).map(|i| format!("q{i} 0 d{i} 1\n")).collect();
    let mut validation = RetrievalValidation::new(
        data.iter().enumerate().map(|(i, (q, _, _))| (format!("q{i}"), q.clone())).collect(),
        data.iter().enumerate().map(|(i, (_, d, _))| (format!("d{i}"), d.clone())).collect(),
        Qrels::parse_str(&qrels, "inline").unwrap(),
    );

    let mut encoder = HashedBagEncoder::new(512, 32, 16, 0.0, 3, &Device::flex()).for_training();
    let before = validation.validate(&encoder.for_inference()).unwrap()["recip_rank"];

    let sampler = NoDuplicatesBatchSampler { batch_size: 8, drop_last: false, seed: 1 };
    let loss = CachedMultipleNegativesRankingLoss { loss: MultipleNegativesRankingLoss::default(), mini_batch_size: 3 };
    let schedule = LrSchedule { base_lr: 5e-2, warmup_steps: 4, total_steps: 60, kind: ScheduleKind::Cosine };
    let mut optim = AdamWConfig::new().with_weight_decay(0.01).init();
    let mut step = 0;
    let mut losses = Vec::new();
    for epoch in 0..30 {
        for batch in sampler.batches(&pairs, epoch) {
            let batch = PairBatch::from_pairs(batch.iter().map(|&i| pairs[i]));
            let (value, grads) = loss.backward(&encoder, &batch, step as u64).unwrap();
            let (grads, _) = clip_grad_norm(encoder.model(), grads, 1.0);
            let model = optim.step(schedule.lr(step), encoder.model().clone(), grads);
            encoder.set_model(model);
            losses.push(value);
            step += 1;
        }
    }
    assert_eq!(step, 60);
    let after = validation.validate(&encoder.for_inference()).unwrap()["recip_rank"];
    eprintln!("MRR@10 before {before:.3}, after {after:.3}; loss {:.3} → {:.3}", losses[0], losses[59]);
    assert!(after >= 0.9 && after > before + 0.3, "MRR@10 before {before}, after {after}");
    assert!(losses[59] < losses[0] / 4.0, "{losses:?}");
}
