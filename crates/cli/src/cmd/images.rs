use crate::config::Config;
use crate::draw::human;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let images = config.open_store_read_only()?.images()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&images)?);
        return Ok(());
    }
    println!("{:<50} {:<20} {:>10} {:>8}", "NAME", "MANIFEST", "SIZE", "FILES");
    for image in images {
        let short = image.manifest_digest.get(..19).unwrap_or(&image.manifest_digest);
        println!(
            "{:<50} {:<20} {:>10} {:>8}{}",
            image.name,
            short,
            human(image.logical_bytes),
            image.files,
            if image.broken.is_some() { "  BROKEN" } else { "" }
        );
    }
    Ok(())
}
