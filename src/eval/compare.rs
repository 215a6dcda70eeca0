//! A/B comparison of two runs on the same qrels: per measure, both means, the difference (B − A),
//! a two-sided paired randomization test, a bootstrap confidence interval of the mean difference,
//! Holm's correction across measures and per-query wins/ties/losses. Seeded: the same seed gives
//! the same numbers.
//!
//! * Queries: the qrels queries that either run retrieved for (every qrels query with
//!   `complete`); a run that lacks one of them scores it as an empty ranking, so both systems are
//!   compared on exactly the same queries (the pairing the tests need).
//! * Randomization test (Fisher; Smucker, Allan & Carterette, CIKM 2007): under H0 the sign of each
//!   per-query difference is exchangeable. Each of `permutations` rounds flips every difference's
//!   sign with probability 1/2 and computes the mean. With `count` rounds whose |mean| reaches the
//!   observed |mean| (allowing 100 ulps for summation rounding, as scipy's `permutation_test` does),
//!   **p = (count + 1) / (permutations + 1)** — the observed labelling counts as one of the
//!   permutations, so p is never 0 (Phipson & Smyth 2010).
//! * Bootstrap: `bootstrap_samples` resamples of the queries with replacement; the interval is the
//!   (α/2, 1 − α/2) percentiles of the resampled mean differences, interpolated linearly between
//!   order statistics (numpy's default `linear` quantile).
//! * Holm: p-values sorted ascending, the i-th (0-based) of m multiplied by (m − i), made
//!   monotone with a running maximum, capped at 1.
//! * Randomness: every measure uses the same sign flips (ChaCha8 stream 0 of `seed`) and the same
//!   resamples (stream 1), so one measure's numbers do not depend on which others were asked for.
//!
//! ```
//! use tunelab::data::trec::{Qrels, Run};
//! use tunelab::eval::compare::{compare, CompareOptions};
//! use tunelab::eval::metrics::Measure;
//! let qrels = Qrels::parse_str("q1 0 a 1\nq2 0 b 1\nq3 0 c 1\n", "q").unwrap();
//! let a = Run::parse_str("q1 Q0 x 1 2 A\nq1 Q0 a 2 1 A\nq2 Q0 b 1 1 A\nq3 Q0 x 1 1 A\n", "a").unwrap();
//! let b = Run::parse_str("q1 Q0 a 1 1 B\nq2 Q0 b 1 1 B\nq3 Q0 c 1 1 B\n", "b").unwrap();
//! let cmp = compare(&qrels, &a, &b, &[Measure::RecipRank], &CompareOptions::default());
//! let m = &cmp.metrics[0];
//! assert_eq!((m.mean_a, m.mean_b), (0.5, 1.0));
//! assert_eq!((m.wins, m.ties, m.losses), (2, 1, 0));
//! assert!(m.p_value > 0.0 && m.p_value <= 1.0);
//! ```

use std::collections::BTreeSet;

use polars::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::trec::{Qrels, Retrieved, Run};
use crate::eval::metrics::{Measure, evaluate_query};

/// Settings of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompareOptions {
    pub seed: u64,
    /// Sign-flip rounds of the randomization test (default 10,000).
    pub permutations: usize,
    /// Bootstrap resamples (default 10,000).
    pub bootstrap_samples: usize,
    /// Confidence level of the bootstrap interval (default 0.95).
    pub confidence: f64,
    /// trec_eval `-l`.
    pub relevance_level: i32,
    /// trec_eval `-c`: compare on every qrels query.
    pub complete: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            seed: 42,
            permutations: 10_000,
            bootstrap_samples: 10_000,
            confidence: 0.95,
            relevance_level: 1,
            complete: false,
        }
    }
}

/// One measure's comparison. Differences are B − A: positive means B is better.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricComparison {
    /// trec_eval's name of the measure (`ndcg_cut_10`).
    pub measure: String,
    pub mean_a: f64,
    pub mean_b: f64,
    /// mean_b − mean_a.
    pub difference: f64,
    /// Two-sided paired randomization test p-value.
    pub p_value: f64,
    /// `p_value` after Holm's correction across the compared measures.
    pub p_holm: f64,
    /// Bootstrap percentile interval of the mean difference.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Queries where B scores higher / the same / lower than A.
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
}

/// The comparison of two runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub run_a: String,
    pub run_b: String,
    /// Number of paired queries.
    pub queries: usize,
    pub options: CompareOptions,
    pub metrics: Vec<MetricComparison>,
}

/// Compare `run_b` against `run_a` on `measures` (see the module notes).
pub fn compare(qrels: &Qrels, run_a: &Run, run_b: &Run, measures: &[Measure], opts: &CompareOptions) -> Comparison {
    let qids: BTreeSet<&String> = qrels
        .judgments
        .keys()
        .filter(|q| opts.complete || run_a.results.contains_key(*q) || run_b.results.contains_key(*q))
        .collect();
    let empty: Vec<Retrieved> = Vec::new();
    let (mut va, mut vb) = (vec![Vec::new(); measures.len()], vec![Vec::new(); measures.len()]);
    for q in &qids {
        let judged = &qrels.judgments[*q];
        let a = evaluate_query(judged, run_a.results.get(*q).unwrap_or(&empty), measures, opts.relevance_level);
        let b = evaluate_query(judged, run_b.results.get(*q).unwrap_or(&empty), measures, opts.relevance_level);
        for j in 0..measures.len() {
            va[j].push(a[j]);
            vb[j].push(b[j]);
        }
    }
    let names: Vec<String> = measures.iter().map(Measure::trec_name).collect();
    let mut cmp = compare_values(&names, &va, &vb, opts);
    cmp.run_a = run_a.tag.clone();
    cmp.run_b = run_b.tag.clone();
    cmp
}

/// Compare paired per-query values directly: `a[j][i]`, `b[j][i]` are measure `j` on query `i`.
pub fn compare_values(names: &[String], a: &[Vec<f64>], b: &[Vec<f64>], opts: &CompareOptions) -> Comparison {
    let mut metrics: Vec<MetricComparison> = names
        .iter()
        .zip(a.iter().zip(b))
        .map(|(name, (a, b))| {
            assert_eq!(a.len(), b.len(), "paired values of {name} differ in length");
            let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
            let mut rng_p = ChaCha8Rng::seed_from_u64(opts.seed);
            rng_p.set_stream(0);
            let mut rng_b = ChaCha8Rng::seed_from_u64(opts.seed);
            rng_b.set_stream(1);
            let (ci_low, ci_high) = bootstrap_ci(&diffs, opts.bootstrap_samples, opts.confidence, &mut rng_b);
            MetricComparison {
                measure: name.clone(),
                mean_a: mean(a),
                mean_b: mean(b),
                difference: mean(b) - mean(a),
                p_value: randomization_test(&diffs, opts.permutations, &mut rng_p),
                p_holm: f64::NAN,
                ci_low,
                ci_high,
                wins: diffs.iter().filter(|&&d| d > 0.0).count(),
                ties: diffs.iter().filter(|&&d| d == 0.0).count(),
                losses: diffs.iter().filter(|&&d| d < 0.0).count(),
            }
        })
        .collect();
    let p: Vec<f64> = metrics.iter().map(|m| m.p_value).collect();
    for (m, h) in metrics.iter_mut().zip(holm(&p)) {
        m.p_holm = h;
    }
    Comparison {
        run_a: String::new(),
        run_b: String::new(),
        queries: a.first().map_or(0, Vec::len),
        options: opts.clone(),
        metrics,
    }
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// Two-sided paired randomization (sign-flip) test of mean(diffs) = 0:
/// p = (#{rounds with |mean| >= |observed mean|} + 1) / (permutations + 1). 1.0 for no queries.
pub fn randomization_test(diffs: &[f64], permutations: usize, rng: &mut impl Rng) -> f64 {
    let n = diffs.len();
    if n == 0 {
        return 1.0;
    }
    let observed: f64 = diffs.iter().sum::<f64>().abs();
    // Sums of the same numbers in another order or sign pattern may differ by rounding only.
    let tolerance = observed * f64::EPSILON * 100.0;
    let mut count = 0usize;
    let mut bits = 0u64;
    for _ in 0..permutations {
        let mut sum = 0.0;
        for (i, &d) in diffs.iter().enumerate() {
            if i % 64 == 0 {
                bits = rng.random();
            }
            sum += if bits >> (i % 64) & 1 == 1 { -d } else { d };
        }
        if sum.abs() >= observed - tolerance {
            count += 1;
        }
    }
    (count + 1) as f64 / (permutations + 1) as f64
}

/// Bootstrap percentile interval of mean(diffs) at `confidence` (e.g. 0.95) from `samples`
/// resamples with replacement. (NaN, NaN) for no queries or no samples.
pub fn bootstrap_ci(diffs: &[f64], samples: usize, confidence: f64, rng: &mut impl Rng) -> (f64, f64) {
    let n = diffs.len();
    if n == 0 || samples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut means: Vec<f64> = (0..samples)
        .map(|_| {
            let mut s = 0.0;
            for _ in 0..n {
                s += diffs[rng.random_range(0..n)];
            }
            s / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let alpha = 1.0 - confidence;
    (quantile_sorted(&means, alpha / 2.0), quantile_sorted(&means, 1.0 - alpha / 2.0))
}

/// Quantile `q` of sorted values, linear interpolation between order statistics (numpy `linear`).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Holm's step-down adjustment of p-values (returned in the input order).
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut idx: Vec<usize> = (0..m).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![0.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in idx.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

impl Comparison {
    /// One row per measure: measure, mean_a, mean_b, difference, ci_low, ci_high, p_value, p_holm,
    /// wins, ties, losses.
    pub fn to_frame(&self) -> PolarsResult<DataFrame> {
        let col = |f: fn(&MetricComparison) -> f64| self.metrics.iter().map(f).collect::<Vec<f64>>();
        let count = |f: fn(&MetricComparison) -> usize| self.metrics.iter().map(|m| f(m) as u64).collect::<Vec<u64>>();
        df!(
            "measure" => self.metrics.iter().map(|m| m.measure.as_str()).collect::<Vec<_>>(),
            "mean_a" => col(|m| m.mean_a),
            "mean_b" => col(|m| m.mean_b),
            "difference" => col(|m| m.difference),
            "ci_low" => col(|m| m.ci_low),
            "ci_high" => col(|m| m.ci_high),
            "p_value" => col(|m| m.p_value),
            "p_holm" => col(|m| m.p_holm),
            "wins" => count(|m| m.wins),
            "ties" => count(|m| m.ties),
            "losses" => count(|m| m.losses),
        )
    }

    /// A fixed-width text table for terminals.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let pct = (self.options.confidence * 100.0).round();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "A = {}, B = {}, {} queries, seed {}, {} permutations, {} bootstrap samples",
            self.run_a,
            self.run_b,
            self.queries,
            self.options.seed,
            self.options.permutations,
            self.options.bootstrap_samples
        );
        let ci = format!("{pct}% CI of B-A");
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>8} {:>8} {:>21} {:>8} {:>8} {:>14}",
            "measure", "A", "B", "B-A", ci, "p", "p_holm", "win/tie/loss"
        );
        for m in &self.metrics {
            let _ = writeln!(
                out,
                "{:<16} {:>8.4} {:>8.4} {:>+8.4} {:>21} {:>8.4} {:>8.4} {:>14}",
                m.measure,
                m.mean_a,
                m.mean_b,
                m.difference,
                format!("[{:+.4}, {:+.4}]", m.ci_low, m.ci_high),
                m.p_value,
                m.p_holm,
                format!("{}/{}/{}", m.wins, m.ties, m.losses)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact two-sided sign-flip p-value by enumerating all 2^n sign patterns (the reference).
    fn exact_p(diffs: &[f64]) -> f64 {
        let n = diffs.len();
        let obs: f64 = diffs.iter().sum::<f64>().abs();
        let mut count = 0;
        for mask in 0u32..(1 << n) {
            let s: f64 = diffs.iter().enumerate().map(|(i, d)| if mask >> i & 1 == 1 { -d } else { *d }).sum();
            if s.abs() >= obs - 1e-12 {
                count += 1;
            }
        }
        count as f64 / (1u64 << n) as f64
    }

    #[test]
    fn randomization_test_matches_exact_enumeration() {
        // Hand count: diffs seven +1 and one -1, observed sum 6. A sign pattern gives
        // sum = 2p - 8 with p positive terms; |2p - 8| >= 6 for p in {0, 1, 7, 8}:
        // C(8,0) + C(8,1) + C(8,7) + C(8,8) = 18 of 256 → exact p = 0.0703125.
        let diffs = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0];
        assert_eq!(exact_p(&diffs), 18.0 / 256.0);
        let n = 10_000;
        let p = randomization_test(&diffs, n, &mut ChaCha8Rng::seed_from_u64(1));
        // Monte-Carlo: count ~ Binomial(n, p_exact); allow 4 standard errors.
        let se = (0.0703125f64 * (1.0 - 0.0703125) / n as f64).sqrt();
        assert!((p - 0.0703125).abs() < 4.0 * se + 1.0 / n as f64, "p = {p}");

        // A less regular case, checked against the enumeration only.
        let diffs = [0.31, -0.05, 0.12, 0.4, -0.22, 0.08, 0.0, 0.17];
        let exact = exact_p(&diffs);
        let p = randomization_test(&diffs, n, &mut ChaCha8Rng::seed_from_u64(2));
        let se = (exact * (1.0 - exact) / n as f64).sqrt();
        assert!((p - exact).abs() < 4.0 * se + 1.0 / n as f64, "p = {p}, exact = {exact}");
    }

    #[test]
    fn randomization_p_formula_counts_the_observed_labelling() {
        // With 0 permutations only the observed labelling counts: p = (0 + 1) / (0 + 1) = 1.
        // All-zero differences: every round's |sum| = 0 reaches the observed 0, so
        // p = (99 + 1) / (99 + 1) = 1.
        assert_eq!(randomization_test(&[1.0; 8], 0, &mut ChaCha8Rng::seed_from_u64(0)), 1.0);
        assert_eq!(randomization_test(&[0.0; 5], 99, &mut ChaCha8Rng::seed_from_u64(0)), 1.0);
    }

    #[test]
    fn holm_matches_hand_example() {
        // p = [0.01, 0.04, 0.03, 0.005], m = 4. Sorted: 0.005 ×4 = 0.02; 0.01 ×3 = 0.03;
        // 0.03 ×2 = 0.06; 0.04 ×1 = 0.04 → running max 0.06. In input order: [0.03, 0.06, 0.06, 0.02].
        let h = holm(&[0.01, 0.04, 0.03, 0.005]);
        let want = [0.03, 0.06, 0.06, 0.02];
        for (a, b) in h.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{h:?}");
        }
        // Capped at 1: [0.6, 0.7] → [min(1, 1.2), max(1, 0.7)] = [1, 1].
        assert_eq!(holm(&[0.6, 0.7]), [1.0, 1.0]);
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_shrinks_to_constants() {
        // Constant differences: every resample has mean 0.25 → interval [0.25, 0.25].
        let (lo, hi) = bootstrap_ci(&[0.25; 20], 1000, 0.95, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!((lo, hi), (0.25, 0.25));
        // Differences 0..99 / 100: mean 0.495, sd ≈ 0.2887, se ≈ 0.0289; the 95% interval should be
        // close to mean ± 1.96 se = [0.438, 0.552].
        let d: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let (lo, hi) = bootstrap_ci(&d, 10_000, 0.95, &mut ChaCha8Rng::seed_from_u64(0));
        assert!((lo - 0.438).abs() < 0.01 && (hi - 0.552).abs() < 0.01, "[{lo}, {hi}]");
        // numpy linear quantile of [1,2,3,4] at 0.25: position 0.75 → 1.75.
        assert_eq!(quantile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.25), 1.75);
    }

    #[test]
    fn same_seed_same_numbers_and_counts_are_right() {
        let names = vec!["m1".to_string(), "m2".to_string()];
        let a = vec![vec![0.1, 0.5, 0.3, 0.9, 0.0, 0.2], vec![1.0, 0.0, 0.5, 0.5, 0.25, 0.0]];
        let b = vec![vec![0.2, 0.5, 0.1, 1.0, 0.4, 0.3], vec![1.0, 1.0, 0.5, 0.75, 0.25, 0.5]];
        let opts = CompareOptions { permutations: 2000, bootstrap_samples: 2000, ..Default::default() };
        let c1 = compare_values(&names, &a, &b, &opts);
        let c2 = compare_values(&names, &a, &b, &opts);
        assert_eq!(serde_json::to_string(&c1).unwrap(), serde_json::to_string(&c2).unwrap());
        let c3 = compare_values(&names, &a, &b, &CompareOptions { seed: 7, ..opts.clone() });
        assert_ne!(c1.metrics[0].p_value, c3.metrics[0].p_value);
        // m1 diffs: +0.1, 0, -0.2, +0.1, +0.4, +0.1 → 4 wins, 1 tie, 1 loss.
        let m = &c1.metrics[0];
        assert_eq!((m.wins, m.ties, m.losses), (4, 1, 1));
        assert!((m.difference - 0.5 / 6.0).abs() < 1e-12);
        assert!(m.ci_low <= m.difference && m.difference <= m.ci_high);
        // Holm with two measures: the smaller p doubled, the larger at least that.
        let (p0, p1) = (c1.metrics[0].p_value, c1.metrics[1].p_value);
        let want = holm(&[p0, p1]);
        assert_eq!([c1.metrics[0].p_holm, c1.metrics[1].p_holm], [want[0], want[1]]);
        assert_eq!(c1.to_frame().unwrap().shape(), (2, 11));
        assert!(c1.to_table().contains("4/1/1"));
    }

    #[test]
    fn compare_pairs_queries_missing_from_one_run() {
        let qrels = Qrels::parse_str("q1 0 a 1\nq2 0 b 1\nq3 0 c 1\n", "q").unwrap();
        let a = Run::parse_str("q1 Q0 a 1 1 A\n", "a").unwrap();
        let b = Run::parse_str("q1 Q0 a 1 1 B\nq2 Q0 b 1 1 B\n", "b").unwrap();
        let c = compare(&qrels, &a, &b, &[Measure::P(1)], &CompareOptions::default());
        // q1, q2 paired (q3 retrieved by neither): A = [1, 0], B = [1, 1].
        assert_eq!(c.queries, 2);
        assert_eq!((c.metrics[0].mean_a, c.metrics[0].mean_b), (0.5, 1.0));
        let c = compare(&qrels, &a, &b, &[Measure::P(1)], &CompareOptions { complete: true, ..Default::default() });
        assert_eq!(c.queries, 3);
    }
}
