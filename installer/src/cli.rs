//! The installer's command line.

use std::path::PathBuf;

use crate::host::Flavor;

#[derive(Debug, clap::Parser)]
#[command(name = "edgewasm-node-installer", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Copy the shim to the host, add the runtime to containerd's config, restart containerd only
    /// if the config changed, and label the node. Prints a JSON report on stdout.
    Install(InstallArgs),
    /// Only add the runtime to one containerd config (or k3s's template); prints a JSON report.
    Configure(ConfigureArgs),
    /// Keep running until SIGTERM: the installer DaemonSet's main container, once `install` ran.
    Wait,
    /// Run a command in another mount namespace (used by `install` to restart containerd).
    #[command(hide = true)]
    HostExec(HostExecArgs),
}

#[derive(Debug, clap::Args)]
pub struct RuntimeArgs {
    /// CRI runtime handler name; the RuntimeClass's `handler` must match.
    #[arg(long, default_value = "edgewasm")]
    pub runtime_name: String,
    /// containerd runtime type (names the shim binary containerd starts).
    #[arg(long, default_value = "io.containerd.edgewasm.v1")]
    pub runtime_type: String,
    /// Pod annotations containerd passes to the shim (repeatable).
    #[arg(long = "pod-annotation", default_value = "edgewasm.io/*")]
    pub pod_annotations: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Where the host's root filesystem is mounted in this container.
    #[arg(long, default_value = "/host")]
    pub host_root: PathBuf,
    /// The shim binary shipped in this image.
    #[arg(long, default_value = "/opt/edgewasm/bin/containerd-shim-edgewasm-v1")]
    pub shim_source: PathBuf,
    /// Host folder on containerd's PATH that receives the shim.
    #[arg(long, default_value = "/usr/local/bin")]
    pub shim_dir: PathBuf,
    /// Which containerd the node runs; detected from the host when not given.
    #[arg(long, value_enum)]
    pub flavor: Option<Flavor>,
    /// Plain containerd's config file on the host.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    pub containerd_config: PathBuf,
    /// k3s's containerd folder on the host (holds config.toml and the templates).
    #[arg(long, default_value = "/var/lib/rancher/k3s/agent/etc/containerd")]
    pub k3s_containerd_dir: PathBuf,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Restart containerd (or k3s) when the config changed; `false` leaves it to the operator.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub restart: bool,
    /// systemd unit to restart; by default `containerd`, or `k3s` / `k3s-agent` for k3s.
    #[arg(long)]
    pub restart_unit: Option<String>,
    /// How long to wait for containerd's socket after the restart.
    #[arg(long, default_value_t = 180)]
    pub restart_timeout_secs: u64,
    /// The host's mount namespace (needs hostPID).
    #[arg(long, default_value = "/proc/1/ns/mnt")]
    pub mount_namespace: PathBuf,
    /// Label this node through the Kubernetes API once the runtime is installed.
    #[arg(long)]
    pub label_node: bool,
    /// This node's name (from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The label that marks nodes able to run edgewasm Pods (the RuntimeClass selects it).
    #[arg(long, default_value = "edgewasm.io/runtime=true")]
    pub label: String,
    /// After installing, keep running until SIGTERM (the DaemonSet's main container).
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, clap::Args)]
pub struct ConfigureArgs {
    /// containerd: the config.toml; k3s: the folder holding config.toml and its template.
    #[arg(long)]
    pub path: PathBuf,
    #[arg(long, value_enum, default_value = "containerd")]
    pub flavor: Flavor,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Exit with status 3 when the file changed (0 when it was already configured).
    #[arg(long)]
    pub exit_code: bool,
}

#[derive(Debug, clap::Args)]
pub struct HostExecArgs {
    #[arg(long, default_value = "/proc/1/ns/mnt")]
    pub mount_namespace: PathBuf,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}
