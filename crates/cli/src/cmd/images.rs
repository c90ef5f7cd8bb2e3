use crate::config::Config;
use crate::draw::human;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Whether an image's files are all in the store: `complete`, or `lazy`
/// (pulled lazily; `missing` contents are still to fetch).
fn state(store: &strata_store::Store, record: &strata_store::ImageRecord) -> anyhow::Result<Option<u64>> {
    let Ok(id) = record.erofs_id() else {
        return Ok(None);
    };
    let Some(needs) = store.lazy_needs(&id)? else {
        return Ok(None);
    };
    Ok(Some(strata_image::lazy::still_missing(store, &needs)?.len() as u64))
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let store = config.open_store_read_only()?;
    let images = store.images()?;
    if args.json {
        let mut out = Vec::new();
        for image in &images {
            let missing = state(&store, image)?;
            let mut value = serde_json::to_value(image)?;
            if let Some(fields) = value.as_object_mut() {
                fields.insert("complete".into(), missing.is_none().into());
                fields.insert("missing".into(), missing.unwrap_or(0).into());
            }
            out.push(value);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{:<50} {:<20} {:>10} {:>8}  STATE", "NAME", "MANIFEST", "SIZE", "FILES");
    for image in images {
        let short = image.manifest_digest.get(..19).unwrap_or(&image.manifest_digest);
        let state = match state(&store, &image)? {
            None => "complete".to_owned(),
            Some(missing) => format!("lazy ({missing} missing)"),
        };
        println!(
            "{:<50} {:<20} {:>10} {:>8}  {state}{}",
            image.name,
            short,
            human(image.logical_bytes),
            image.files,
            if image.broken.is_some() { "  BROKEN" } else { "" }
        );
    }
    Ok(())
}
