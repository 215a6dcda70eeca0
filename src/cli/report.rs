//! `tunelab report ...`: work with run reports.
//!
//! `tunelab report rerun MANIFEST` recomputes the per-query metrics of a report from the qrels
//! and run files stored in its run directory (checked against their SHA-256 first) and says
//! whether every value equals `metrics.arrow` exactly. Exit status 1 on any difference.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::device::DeviceChoice;
use crate::report::{MetricsEvaluator, QueryValue, RerunOutcome, rerun};

#[derive(clap::Subcommand, Debug)]
pub enum ReportCommand {
    /// Re-run an evaluation from its manifest and say whether the numbers match.
    Rerun {
        /// The run's manifest.json.
        manifest: PathBuf,
    },
}

pub fn run(c: ReportCommand, _device: DeviceChoice) -> anyhow::Result<()> {
    match c {
        ReportCommand::Rerun { manifest } => rerun_command(&manifest, &metrics_evaluator()),
    }
}

/// The metric computation `report rerun` uses: `eval::metrics` on the stored qrels and run,
/// measure names as trec_eval prints them (`recip_rank`, `ndcg_cut_10`, `P_5`).
pub fn metrics_evaluator() -> impl MetricsEvaluator {
    |qrels: &Path, run: &Path, measures: &[String], options: &crate::eval::metrics::EvalOptions| -> Result<Vec<QueryValue>, String> {
        use crate::data::trec::{Qrels, Run};
        use crate::eval::metrics::{Measure, evaluate};
        let measures = Measure::parse_list(measures).map_err(|e| e.to_string())?;
        let qrels = Qrels::read(qrels).map_err(|e| e.to_string())?;
        let run = Run::read(run).map_err(|e| e.to_string())?;
        Ok(per_query_values(&evaluate(&qrels, &run, &measures, options)))
    }
}

pub use crate::report::per_query_values;

/// Run the re-evaluation, print the outcome, fail when anything differs.
pub fn rerun_command(manifest: &Path, evaluator: &dyn MetricsEvaluator) -> anyhow::Result<()> {
    let outcome = rerun(manifest, evaluator)?;
    print_outcome(&outcome, &mut std::io::stdout().lock())?;
    if !outcome.matches() {
        bail!("re-run of {}/{} does not reproduce metrics.arrow", outcome.experiment, outcome.run_id);
    }
    Ok(())
}

/// The human-readable verdict (at most 20 differing values listed).
pub fn print_outcome(o: &RerunOutcome, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "rerun {}/{}: {} per-query values compared", o.experiment, o.run_id, o.compared)?;
    if o.matches() {
        return writeln!(out, "MATCH: every value equals metrics.arrow exactly");
    }
    if o.compared == 0 {
        return writeln!(out, "NOTHING TO COMPARE: neither metrics.arrow nor the re-run produced values");
    }
    writeln!(out, "MISMATCH: {} of {} values differ", o.mismatches.len(), o.compared)?;
    writeln!(out, "system\tqid\tmeasure\tstored\trecomputed")?;
    let show = |v: Option<f64>| v.map(|x| format!("{x:?}")).unwrap_or_else(|| "-".into());
    for m in o.mismatches.iter().take(20) {
        writeln!(out, "{}\t{}\t{}\t{}\t{}", m.system, m.qid, m.measure, show(m.stored), show(m.recomputed))?;
    }
    if o.mismatches.len() > 20 {
        writeln!(out, "... and {} more", o.mismatches.len() - 20)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::RerunMismatch;

    #[test]
    fn outcome_text_lists_mismatches() {
        let mut o = RerunOutcome { experiment: "e".into(), run_id: "r".into(), compared: 4, mismatches: vec![] };
        let mut buf = Vec::new();
        print_outcome(&o, &mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf).contains("MATCH: every value"));
        o.mismatches.push(RerunMismatch {
            system: "bm25".into(),
            qid: "q1".into(),
            measure: "map".into(),
            stored: Some(0.5),
            recomputed: None,
        });
        let mut buf = Vec::new();
        print_outcome(&o, &mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf);
        assert!(text.contains("MISMATCH: 1 of 4") && text.contains("bm25\tq1\tmap\t0.5\t-"), "{text}");
    }
}
