//! `strata-cri`: the CRI client from the command line, for bench/compare.
//! Every subcommand prints one JSON object on stdout.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use strata_bench_cri::{spec, ContainerSpec, Cri, PodSpec};

#[derive(Parser)]
#[command(version, about = "Pull images and run containers through a CRI runtime (containerd)")]
struct Cli {
    /// The runtime's CRI socket.
    #[arg(long, env = "STRATA_CRI_SOCKET", default_value = "/run/containerd/containerd.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct Auth {
    /// Registry user name.
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// Registry password.
    #[arg(long, env = "STRATA_CRI_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

impl Auth {
    fn pair(&self) -> Option<(&str, &str)> {
        Some((self.user.as_deref()?, self.password.as_deref()?))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// The runtime's name and versions.
    Version,
    /// PullImage: {"image", "image_id", "pull_s"}.
    Pull {
        image: String,
        #[command(flatten)]
        auth: Auth,
    },
    /// RemoveImage of each image.
    Rmi { images: Vec<String> },
    /// ImageStatus: {"image", "present", "id", "size"}.
    ImageStatus { image: String },
    /// Runs CMD (or the image's own) in a new host-network pod, waits for
    /// its end and removes the pod: exit code, output and each step's time.
    Run {
        image: String,
        /// PullImage first (timed as pull_s).
        #[arg(long)]
        pull: bool,
        #[command(flatten)]
        auth: Auth,
        /// Pods' log directories go below this one.
        #[arg(long, default_value = "/var/log/strata-cri")]
        log_root: PathBuf,
        /// Leave the pod and container in place.
        #[arg(long)]
        keep: bool,
        /// Seconds to wait for the container's exit.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
        /// The command and its arguments.
        #[arg(last = true)]
        cmd: Vec<String>,
    },
    /// Stops and removes every pod strata-cri made.
    RmPods,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut cri = Cri::connect(&cli.socket)?;
    let out = match cli.cmd {
        Cmd::Version => {
            let v = cri.version()?;
            json!({"runtime": v.runtime_name, "runtime_version": v.runtime_version, "api_version": v.runtime_api_version})
        }
        Cmd::Pull { image, auth } => {
            let t = Instant::now();
            let id = cri.pull_image(&image, auth.pair())?;
            json!({"image": image, "image_id": id, "pull_s": secs(t.elapsed())})
        }
        Cmd::Rmi { images } => {
            for image in &images {
                cri.remove_image(image)?;
            }
            json!({"removed": images})
        }
        Cmd::ImageStatus { image } => match cri.image_status(&image)? {
            Some(i) => json!({"image": image, "present": true, "id": i.id, "size": i.size}),
            None => json!({"image": image, "present": false}),
        },
        Cmd::Run {
            image,
            pull,
            auth,
            log_root,
            keep,
            timeout_s,
            cmd,
        } => run(
            &mut cri,
            &image,
            pull.then(|| auth.pair()),
            &log_root,
            keep,
            timeout_s,
            &cmd,
        )?,
        Cmd::RmPods => {
            let pods = cri.list_pods(spec::LABEL)?;
            for pod in &pods {
                cri.remove_pod(pod)?;
            }
            json!({"removed": pods})
        }
    };
    println!("{out}");
    Ok(())
}

fn run(
    cri: &mut Cri,
    image: &str,
    pull: Option<Option<(&str, &str)>>,
    log_root: &std::path::Path,
    keep: bool,
    timeout_s: u64,
    cmd: &[String],
) -> Result<Value> {
    let total = Instant::now();
    let mut timings = serde_json::Map::new();
    if let Some(auth) = pull {
        let t = Instant::now();
        cri.pull_image(image, auth)?;
        timings.insert("pull_s".into(), secs(t.elapsed()).into());
    }
    let t = Instant::now();
    let pod = cri.run_pod_sandbox(&PodSpec::unique("strata-cri", log_root))?;
    timings.insert("run_pod_sandbox_s".into(), secs(t.elapsed()).into());
    let spec = ContainerSpec::new("main", image).command(cmd);
    let ran = cri.run(&pod, &spec, Duration::from_secs(timeout_s));
    if !keep || ran.is_err() {
        let t = Instant::now();
        let removed = cri.remove_pod(&pod.id);
        timings.insert("remove_pod_s".into(), secs(t.elapsed()).into());
        if ran.is_ok() {
            removed.with_context(|| format!("removing pod {}", pod.id))?;
        }
    }
    let ran = ran.with_context(|| format!("running {cmd:?} in {image}"))?;
    timings.insert("create_container_s".into(), secs(ran.create).into());
    timings.insert("start_container_s".into(), secs(ran.start).into());
    timings.insert("wait_s".into(), secs(ran.wait).into());
    if let Some(exited_after) = ran.exited_after {
        timings.insert("exited_after_create_s".into(), secs(exited_after).into());
    }
    timings.insert("total_s".into(), secs(total.elapsed()).into());
    Ok(json!({
        "image": image,
        "pod_id": pod.id,
        "container_id": ran.exited.id,
        "exit_code": ran.exited.exit_code,
        "stdout": ran.exited.output.stdout,
        "stderr": ran.exited.output.stderr,
        "timings": timings,
    }))
}
