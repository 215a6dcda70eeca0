//! `tunelab doctor`: what this build can run on.
use crate::device::{self, DeviceChoice};

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DoctorArgs, requested: DeviceChoice) -> anyhow::Result<()> {
    let reports: Vec<_> = DeviceChoice::ALL.iter().map(|c| device::probe(*c)).collect();
    let mem = device::system_memory();
    if args.json {
        let v = serde_json::json!({
            "version": crate::version(),
            "devices": reports,
            "system_memory_bytes": mem.map(|(t, a)| serde_json::json!({"total": t, "available": a})),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("tunelab {}  (requested device: {requested})", crate::version());
        println!("{:<8} {:<9} {:<12} status", "device", "compiled", "dtypes");
        for r in &reports {
            let status = match (&r.error, r.compiled) {
                (None, _) => "ok".to_string(),
                (Some(e), _) => e.clone(),
            };
            println!(
                "{:<8} {:<9} {:<12} {}",
                r.choice.to_string(),
                if r.compiled { "yes" } else { "no" },
                r.dtypes.join(","),
                status
            );
        }
        if let Some((t, a)) = mem {
            println!("system memory: {:.1} GiB total, {:.1} GiB available", t as f64 / 1073741824.0, a as f64 / 1073741824.0);
        }
    }
    let req = reports.iter().find(|r| r.choice == requested).expect("every choice is probed");
    if let Some(e) = &req.error {
        anyhow::bail!("requested device '{requested}' is unavailable: {e}");
    }
    Ok(())
}
