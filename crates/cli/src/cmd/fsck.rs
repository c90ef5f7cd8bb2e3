use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Remove corrupt objects and orphans.
    #[arg(long)]
    repair: bool,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let store = config.open_store()?;
    let report = store.fsck(args.repair)?;
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    println!(
        "fsck: {} objects and {} images checked, {} problems, {} orphan objects, {} orphan images{}",
        report.objects_checked,
        report.images_checked,
        report.problems.len(),
        report.orphan_objects,
        report.orphan_images,
        if args.repair {
            format!(", {} repaired", report.repaired)
        } else {
            String::new()
        }
    );
    if !report.is_clean() && !args.repair {
        anyhow::bail!(
            "the store has problems; `strata fsck --repair` removes corrupt objects, then re-pull the affected images"
        );
    }
    Ok(())
}
