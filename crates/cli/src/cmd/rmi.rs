use crate::config::Config;

#[derive(clap::Args)]
pub struct Args {
    /// Image names, as `strata images` lists them.
    #[arg(required = true)]
    names: Vec<String>,
}

pub fn run(config: &Config, args: Args) -> anyhow::Result<()> {
    let store = config.open_store()?;
    for name in &args.names {
        if !store.remove_image(name)? {
            anyhow::bail!("no image named {name:?} (see `strata images`)");
        }
        println!("removed {name}");
    }
    Ok(())
}
