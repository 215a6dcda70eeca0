//! Parsers for numeric options, one per kind, used as clap `value_parser`s so that nonsense
//! (`--temp NaN`, `--top-p 2`, `-l -1`, `--ratios NaN,0,0`) is refused when the command line is
//! read, naming the option, instead of flowing into a run that "succeeds" with wrong numbers.
//!
//! Rust's float parser accepts `NaN`, `inf` and `-infinity`: every float parser here rejects them.
//!
//! ```
//! use tunelab::cli::values::{probability_f32, finite_positive_f64, positive_usize};
//! assert_eq!(probability_f32("0.9"), Ok(0.9));
//! assert!(probability_f32("2").is_err());
//! assert!(finite_positive_f64("NaN").is_err());
//! assert!(positive_usize("0").is_err());
//! ```

fn float(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s} is not a finite number"))
    }
}

/// Any finite number.
pub fn finite_f64(s: &str) -> Result<f64, String> {
    float(s)
}

/// A finite number > 0 (learning rates that must move, scales, epsilons).
pub fn finite_positive_f64(s: &str) -> Result<f64, String> {
    let v = float(s)?;
    if v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{s} must be greater than 0"))
    }
}

/// A finite number >= 0 (temperatures, weight decay, margins, clipping norms where 0 disables).
pub fn non_negative_f64(s: &str) -> Result<f64, String> {
    let v = float(s)?;
    if v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{s} must be 0 or more"))
    }
}

/// [`non_negative_f64`] as f32 (finite also after narrowing).
pub fn non_negative_f32(s: &str) -> Result<f32, String> {
    let v = non_negative_f64(s)? as f32;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{s} is too large"))
    }
}

/// A share in [0, 1] (dropout, split ratios, significance levels' complements).
pub fn fraction_f64(s: &str) -> Result<f64, String> {
    let v = float(s)?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s} must be between 0 and 1"))
    }
}

/// [`fraction_f64`] as f32.
pub fn fraction_f32(s: &str) -> Result<f32, String> {
    fraction_f64(s).map(|v| v as f32)
}

/// A probability mass threshold in (0, 1] (nucleus sampling's top-p: 0 would keep no token).
pub fn probability_f32(s: &str) -> Result<f32, String> {
    let v = float(s)?;
    if v > 0.0 && v <= 1.0 {
        Ok(v as f32)
    } else {
        Err(format!("{s} must be in (0, 1]"))
    }
}

/// A level in the open interval (0, 1) (significance levels, confidence levels).
pub fn open_unit_f64(s: &str) -> Result<f64, String> {
    let v = float(s)?;
    if v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(format!("{s} must be strictly between 0 and 1"))
    }
}

/// A count of at least 1 (batch sizes, steps, ranks, resamples).
pub fn positive_usize(s: &str) -> Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number >= 1"))?;
    if v >= 1 {
        Ok(v)
    } else {
        Err(format!("{s} must be at least 1"))
    }
}

/// A count of at least 1, or -1 for "all" (MLX-LM's `--val-batches`, `--num-layers`).
pub fn count_or_all(s: &str) -> Result<i64, String> {
    let v: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if v == -1 || v >= 1 {
        Ok(v)
    } else {
        Err(format!("{s}: use -1 for all or a count of at least 1"))
    }
}

/// trec_eval's `-l`: a judgment level >= 0. Negative levels would count documents outside the
/// judgment pool (trec_eval's -1) as relevant, giving MAP above 1.
pub fn relevance_level(s: &str) -> Result<i32, String> {
    let v: i32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if v >= 0 {
        Ok(v)
    } else {
        Err(format!(
            "{s} must be 0 or more (negative levels count unjudged documents as relevant)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Numeric garbage of every kind, plus random finite values in and out of range.
    fn garbage(rng: &mut impl Rng) -> String {
        const FIXED: [&str; 16] = [
            "NaN",
            "nan",
            "-nan",
            "inf",
            "-inf",
            "+inf",
            "infinity",
            "-Infinity",
            "1e999",
            "-1e999",
            "",
            " ",
            "abc",
            "1,5",
            "0x10",
            "--1",
        ];
        match rng.random_range(0..4) {
            0 => FIXED[rng.random_range(0..FIXED.len())].to_string(),
            1 => format!("{}", -rng.random_range(1e-9..1e12f64)),
            2 => format!("{:e}", rng.random_range(-1e30..1e30f64)),
            _ => format!("{}", rng.random_range(-3i64..3)),
        }
    }

    /// Property: whatever the input, a parser's Ok value is inside its documented range, and
    /// non-finite input is never Ok.
    #[test]
    fn parsers_accept_only_their_range_on_random_garbage() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..5000 {
            let s = garbage(&mut rng);
            let non_finite = s.trim().parse::<f64>().is_ok_and(|v| !v.is_finite());
            if let Ok(v) = finite_f64(&s) {
                assert!(v.is_finite() && !non_finite, "{s}");
            }
            if let Ok(v) = finite_positive_f64(&s) {
                assert!(v.is_finite() && v > 0.0, "{s}");
            }
            if let Ok(v) = non_negative_f64(&s) {
                assert!(v.is_finite() && v >= 0.0, "{s}");
            }
            if let Ok(v) = non_negative_f32(&s) {
                assert!(v.is_finite() && v >= 0.0, "{s}");
            }
            if let Ok(v) = fraction_f64(&s) {
                assert!((0.0..=1.0).contains(&v), "{s}");
            }
            if let Ok(v) = probability_f32(&s) {
                assert!(v > 0.0 && v <= 1.0, "{s}");
            }
            if let Ok(v) = open_unit_f64(&s) {
                assert!(v > 0.0 && v < 1.0, "{s}");
            }
            if let Ok(v) = positive_usize(&s) {
                assert!(v >= 1, "{s}");
            }
            if let Ok(v) = count_or_all(&s) {
                assert!(v == -1 || v >= 1, "{s}");
            }
            if let Ok(v) = relevance_level(&s) {
                assert!(v >= 0, "{s}");
            }
        }
        // The issue's examples.
        assert!(non_negative_f32("NaN").is_err());
        assert!(probability_f32("2").is_err());
        assert!(fraction_f64("NaN").is_err());
        assert!(relevance_level("-1").is_err());
        assert_eq!(relevance_level("0"), Ok(0));
        assert_eq!(count_or_all("-1"), Ok(-1));
    }

    /// Property over the real command line: every numeric option of these commands refuses what
    /// its parser refuses (clap error naming the option) and takes what it takes.
    #[test]
    fn commands_refuse_numeric_garbage_in_their_flags() {
        use clap::Parser;
        type Check = fn(&str) -> bool;
        let cases: Vec<(Vec<&str>, &str, Check, Vec<&str>)> = vec![
            (
                vec!["generate", "--model", "m", "--prompt", "p"],
                "--temp",
                (|s: &str| non_negative_f32(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["generate", "--model", "m", "--prompt", "p"],
                "--top-p",
                (|s: &str| probability_f32(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["generate", "--model", "m", "--prompt", "p"],
                "--max-tokens",
                (|s: &str| positive_usize(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["eval", "q", "r"],
                "-l",
                (|s: &str| relevance_level(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["compare", "q", "a", "b"],
                "--permutations",
                (|s: &str| positive_usize(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["compare", "q", "a", "b"],
                "--bootstrap",
                (|s: &str| positive_usize(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["data", "split", "x", "--out", "o"],
                "--ratios",
                (|s: &str| fraction_f64(s).is_ok()) as Check,
                vec!["0.1", "0.1"],
            ),
            (
                vec!["train", "lora"],
                "--learning-rate",
                (|s: &str| non_negative_f64(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["train", "lora"],
                "--dropout",
                (|s: &str| fraction_f64(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["train", "lora"],
                "--rank",
                (|s: &str| positive_usize(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["train", "lora"],
                "--val-batches",
                (|s: &str| count_or_all(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["train", "lora"],
                "--num-layers",
                (|s: &str| count_or_all(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["train", "lora"],
                "--alpha",
                (|s: &str| finite_positive_f64(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["train", "lora"],
                "--max-grad-norm",
                (|s: &str| non_negative_f64(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["train", "embed"],
                "--learning-rate",
                (|s: &str| non_negative_f64(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["train", "embed"],
                "--batch-size",
                (|s: &str| positive_usize(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec![
                    "eval",
                    "expansions",
                    "--model",
                    "m",
                    "--queries",
                    "q",
                    "--out",
                    "o",
                ],
                "--temp",
                (|s: &str| non_negative_f32(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec![
                    "eval",
                    "expansions",
                    "--model",
                    "m",
                    "--queries",
                    "q",
                    "--out",
                    "o",
                ],
                "--top-p",
                (|s: &str| probability_f32(s).is_ok()) as Check,
                vec![],
            ),
            (
                vec!["gate", "--candidate", "a", "--current", "b"],
                "--alpha",
                (|s: &str| open_unit_f64(s).is_ok()) as Check,
                vec![],
            ),
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
        for round in 0..150 {
            for (prefix, flag, ok, suffix) in &cases {
                let value = if round == 0 {
                    "NaN".to_string()
                } else {
                    garbage(&mut rng)
                };
                let mut argv = vec!["tunelab"];
                argv.extend(prefix);
                argv.push(*flag);
                argv.push(value.as_str());
                argv.extend(suffix);
                let parsed = crate::cli::Cli::try_parse_from(argv.clone());
                if !ok(&value) {
                    let err = parsed
                        .expect_err(&format!("{argv:?} was accepted"))
                        .to_string();
                    // clap names the option (a value starting with '-' reads as an unknown flag).
                    assert!(
                        value.starts_with('-') || err.contains(flag.trim_start_matches('-')),
                        "{argv:?}: {err}"
                    );
                } else if !value.starts_with('-') {
                    assert!(
                        parsed.is_ok(),
                        "{argv:?} was refused: {}",
                        parsed.unwrap_err()
                    );
                }
            }
        }
    }
}
