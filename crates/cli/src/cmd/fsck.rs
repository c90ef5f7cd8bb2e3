use strata_snapshotter::{SnapshotError, Snapshotter};

use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Remove corrupt objects and orphans; mark images that lost content
    /// as broken (a pull imports them again).
    #[arg(long)]
    repair: bool,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let policy = config.scratch_policy()?;
    // A check only reads, so it also works on a read-only store.
    let store = if args.repair {
        config.open_store()?
    } else {
        config.open_store_read_only()?
    };
    let report = store.fsck(args.repair)?;
    let users = crate::cmd::image_users(&store)?;
    for problem in &report.problems {
        match problem.image().and_then(|id| users.get(&id)) {
            Some(names) => println!("problem: {problem} (used by {})", names.join(", ")),
            None => println!("problem: {problem}"),
        }
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
    for name in &report.marked_broken {
        println!("fsck: marked image {name} broken; `strata pull` it again");
    }

    let mut snapshots = strata_snapshotter::check(&store, &policy)?;
    for problem in &snapshots.problems {
        println!("problem: {problem}");
    }
    for orphan in &snapshots.orphans {
        println!("orphan: {orphan}");
    }
    println!(
        "fsck: {} snapshots checked, {} problems, {} orphans",
        snapshots.snapshots_checked,
        snapshots.problems.len(),
        snapshots.orphans.len()
    );
    if args.repair && !snapshots.is_clean() {
        // Opening the snapshotter reconciles the disk with the DB.
        let kernel = crate::kernel::mounter(config, &store)?;
        match Snapshotter::open_with_mounter(store.clone(), policy.clone(), std::sync::Arc::new(kernel)) {
            Ok(sn) => {
                drop(sn);
                snapshots = strata_snapshotter::check(&store, &policy)?;
                println!(
                    "fsck: after repair {} problems, {} orphans",
                    snapshots.problems.len(),
                    snapshots.orphans.len()
                );
            }
            Err(SnapshotError::InUse { .. }) => {
                println!("fsck: strata serve owns the snapshots; its next start removes the orphans");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let clean = report.is_clean() && snapshots.is_clean();
    if !args.repair && !clean {
        anyhow::bail!(
            "the store has problems; `strata fsck --repair` removes corrupt objects and orphans, then re-pull the affected images"
        );
    }
    Ok(())
}
