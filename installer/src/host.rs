//! The node as the installer sees it through the host root mount: which containerd it runs, where
//! that containerd's config and socket live, and how to restart it in the host's mount namespace.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// Which containerd the node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// containerd as a system service with `/etc/containerd/config.toml` (kubeadm, AKS Edge Essentials' k8s).
    Containerd,
    /// k3s's embedded containerd, configured through `config.toml.tmpl` (k3s, AKS Edge Essentials' k3s).
    K3s,
}

/// Where k3s keeps its containerd config, relative to the host root.
pub const K3S_CONTAINERD_DIR: &str = "var/lib/rancher/k3s/agent/etc/containerd";

impl Flavor {
    /// k3s when its agent folder exists on the host, plain containerd otherwise.
    pub fn detect(host_root: &Path) -> Self {
        if host_root.join(K3S_CONTAINERD_DIR).is_dir() {
            Self::K3s
        } else {
            Self::Containerd
        }
    }

    /// containerd's socket, relative to the host root.
    pub fn socket(self) -> &'static str {
        match self {
            Self::Containerd => "run/containerd/containerd.sock",
            Self::K3s => "run/k3s/containerd/containerd.sock",
        }
    }

    /// The systemd unit to restart so containerd reads its config again.
    pub fn restart_unit(self, host_root: &Path) -> anyhow::Result<String> {
        match self {
            Self::Containerd => Ok("containerd".to_owned()),
            Self::K3s => ["k3s", "k3s-agent"]
                .into_iter()
                .find(|unit| {
                    ["etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system"]
                        .iter()
                        .any(|dir| host_root.join(dir).join(format!("{unit}.service")).exists())
                })
                .map(str::to_owned)
                .context("found neither a k3s nor a k3s-agent systemd unit on the host; pass --restart-unit"),
        }
    }
}

/// Joins a host-absolute path (`/etc/...`) onto the host root mount.
pub fn on_host(host_root: &Path, path: &Path) -> PathBuf {
    host_root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Restarts a systemd unit on the host by running this binary's `host-exec` in a child process,
/// which enters the host's mount namespace (systemctl refuses to act from a chroot).
pub fn restart_unit(unit: &str, mount_namespace: &Path) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("finding the installer's own binary")?;
    let status = Command::new(me)
        .arg("host-exec")
        .arg("--mount-namespace")
        .arg(mount_namespace)
        .args(["--", "systemctl", "restart", unit])
        .status()
        .with_context(|| format!("running systemctl restart {unit} on the host"))?;
    if !status.success() {
        bail!("systemctl restart {unit} on the host failed ({status})");
    }
    Ok(())
}

/// Enters the mount namespace at `namespace` and replaces this process with `command`.
///
/// Must run in a single-threaded process (the hidden `host-exec` subcommand, before any runtime
/// starts): the kernel refuses to move a thread that shares its filesystem state.
pub fn exec_in_mount_namespace(namespace: &Path, command: &[String]) -> anyhow::Error {
    let Some((program, args)) = command.split_first() else {
        return anyhow::anyhow!("host-exec needs a command to run");
    };
    let enter = || -> anyhow::Result<()> {
        let ns = File::open(namespace)
            .with_context(|| format!("opening {} (is hostPID set?)", namespace.display()))?;
        setns(ns, CloneFlags::CLONE_NEWNS).with_context(|| {
            format!(
                "entering the mount namespace {} (needs CAP_SYS_ADMIN)",
                namespace.display()
            )
        })?;
        Ok(())
    };
    if let Err(err) = enter() {
        return err;
    }
    let err = Command::new(program)
        .args(args)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .exec();
    anyhow::Error::new(err).context(format!("running {program} in the host's mount namespace"))
}

/// Polls until containerd accepts connections on `socket` again, or the deadline passes.
pub fn wait_for_socket(socket: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                return Err(err).with_context(|| {
                    format!(
                        "containerd did not come back on {} within {timeout:?}",
                        socket.display()
                    )
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_k3s_by_its_agent_folder() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(Flavor::detect(root.path()), Flavor::Containerd);
        std::fs::create_dir_all(root.path().join(K3S_CONTAINERD_DIR)).unwrap();
        assert_eq!(Flavor::detect(root.path()), Flavor::K3s);
    }

    #[test]
    fn k3s_unit_is_server_or_agent() {
        let root = tempfile::tempdir().unwrap();
        let err = Flavor::K3s.restart_unit(root.path()).unwrap_err();
        assert!(err.to_string().contains("--restart-unit"), "{err}");
        let units = root.path().join("etc/systemd/system");
        std::fs::create_dir_all(&units).unwrap();
        std::fs::write(units.join("k3s-agent.service"), "").unwrap();
        assert_eq!(Flavor::K3s.restart_unit(root.path()).unwrap(), "k3s-agent");
        std::fs::write(units.join("k3s.service"), "").unwrap();
        assert_eq!(Flavor::K3s.restart_unit(root.path()).unwrap(), "k3s");
        assert_eq!(
            Flavor::Containerd.restart_unit(root.path()).unwrap(),
            "containerd"
        );
    }

    #[test]
    fn host_paths_join_under_the_root() {
        assert_eq!(
            on_host(Path::new("/host"), Path::new("/etc/containerd/config.toml")),
            Path::new("/host/etc/containerd/config.toml")
        );
    }

    #[test]
    fn socket_wait_gives_up_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("containerd.sock");
        let err = wait_for_socket(&socket, Duration::from_millis(300)).unwrap_err();
        assert!(format!("{err:#}").contains("containerd.sock"), "{err:#}");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        wait_for_socket(&socket, Duration::from_secs(5)).unwrap();
    }
}
