use crate::cmd::find_image;
use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Image names, as `strata images` lists them (`:latest` may be left out).
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let store = config.open_store()?;
    for name in &args.names {
        let record = find_image(&store, name)?;
        let removed = match &record {
            Some(r) => store.remove_image(&r.name)?,
            None => false,
        };
        match record {
            Some(r) if removed => println!("removed {}", r.name),
            _ => anyhow::bail!("no image named {name:?} (see `strata images`)"),
        }
    }
    Ok(())
}
