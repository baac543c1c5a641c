//! The install steps in order, each idempotent, and the JSON report of what they changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::cli::{ConfigureArgs, InstallArgs, RuntimeArgs};
use crate::containerd_config::{self, ConfigVersion, RuntimeEntry};
use crate::host::{self, Flavor};
use crate::{node_label, shim_binary};

/// The shim binary's name, which containerd derives from the runtime type.
pub const SHIM_NAME: &str = "containerd-shim-edgewasm-v1";

/// What `install` did; printed as JSON on stdout.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub flavor: Flavor,
    pub shim: ShimReport,
    pub config: ConfigReport,
    /// The systemd unit restarted, if the config changed.
    pub restarted: Option<String>,
    /// The node labelled, if asked to.
    pub labelled_node: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShimReport {
    pub path: PathBuf,
    pub changed: bool,
}

/// What the config edit did.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigReport {
    pub path: PathBuf,
    pub version: ConfigVersion,
    pub changed: bool,
    /// Where the user's original file was saved before our first change.
    pub backup: Option<PathBuf>,
}

impl RuntimeArgs {
    fn entry(&self) -> RuntimeEntry {
        RuntimeEntry {
            name: self.runtime_name.clone(),
            runtime_type: self.runtime_type.clone(),
            pod_annotations: self.pod_annotations.clone(),
        }
    }
}

/// Adds the runtime to plain containerd's `config` file, or to the template in k3s's `config` folder.
pub fn configure(
    flavor: Flavor,
    config: &Path,
    entry: &RuntimeEntry,
) -> anyhow::Result<ConfigReport> {
    let (path, edit) = match flavor {
        Flavor::Containerd => {
            let existing = read_if_present(config)?;
            let edit = containerd_config::add_runtime_to_config(existing.as_deref(), entry)
                .with_context(|| {
                    format!("adding the {} runtime to {}", entry.name, config.display())
                })?;
            (config.to_path_buf(), edit)
        }
        Flavor::K3s => {
            // k3s renders its base template in the version of the containerd it embeds; the config it
            // generated last tells us which one (and so which template file k3s reads).
            let generated = config.join("config.toml");
            let version = if let Some(text) = read_if_present(&generated)? {
                ConfigVersion::of(&text)
                    .with_context(|| format!("reading the version of {}", generated.display()))?
                    .unwrap_or(ConfigVersion::V2)
            } else {
                tracing::warn!(
                    path = %generated.display(),
                    "k3s has not generated its containerd config yet; assuming version 2"
                );
                ConfigVersion::V2
            };
            let template = config.join(match version {
                ConfigVersion::V3 => "config-v3.toml.tmpl",
                ConfigVersion::V1 | ConfigVersion::V2 => "config.toml.tmpl",
            });
            let existing = read_if_present(&template)?;
            let edit =
                containerd_config::add_runtime_to_k3s_template(existing.as_deref(), version, entry)
                    .with_context(|| {
                        format!(
                            "adding the {} runtime to {}",
                            entry.name,
                            template.display()
                        )
                    })?;
            (template, edit)
        }
    };
    let mut backup = None;
    if edit.changed {
        if path.exists() {
            let saved = path.with_file_name(format!(
                "{}.edgewasm-backup",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            if !saved.exists() {
                fs::copy(&path, &saved)
                    .with_context(|| format!("saving {} to {}", path.display(), saved.display()))?;
            }
            backup = Some(saved);
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        shim_binary::write_atomically(&path, edit.text.as_bytes(), 0o644)?;
        tracing::info!(path = %path.display(), "added the runtime to containerd's config");
    }
    Ok(ConfigReport {
        path,
        version: edit.version,
        changed: edit.changed,
        backup,
    })
}

fn read_if_present(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// The `configure` subcommand.
pub fn run_configure(args: &ConfigureArgs) -> anyhow::Result<ConfigReport> {
    configure(args.flavor, &args.path, &args.runtime.entry())
}

/// The `install` subcommand: shim, config, restart on change, label.
pub async fn run_install(args: &InstallArgs) -> anyhow::Result<Report> {
    let root = &args.host_root;
    let flavor = args.flavor.unwrap_or_else(|| Flavor::detect(root));
    tracing::info!(?flavor, host_root = %root.display(), "installing the edgewasm runtime");

    let shim_path = host::on_host(root, &args.shim_dir).join(SHIM_NAME);
    let shim_changed = shim_binary::install(&args.shim_source, &shim_path)?;

    let config_path = match flavor {
        Flavor::Containerd => host::on_host(root, &args.containerd_config),
        Flavor::K3s => host::on_host(root, &args.k3s_containerd_dir),
    };
    let entry = args.runtime.entry();
    let config = configure(flavor, &config_path, &entry)?;

    let mut restarted = None;
    if config.changed && args.restart {
        let unit = match &args.restart_unit {
            Some(unit) => unit.clone(),
            None => flavor.restart_unit(root)?,
        };
        tracing::info!(unit, "config changed; restarting");
        host::restart_unit(&unit, &args.mount_namespace)?;
        let socket = root.join(flavor.socket());
        let timeout = Duration::from_secs(args.restart_timeout_secs);
        tokio::task::spawn_blocking(move || host::wait_for_socket(&socket, timeout)).await??;
        if flavor == Flavor::K3s {
            check_k3s_rendered(&config_path.join("config.toml"), &entry)?;
        }
        restarted = Some(unit);
    }

    let mut labelled_node = None;
    if args.label_node {
        let node = args
            .node_name
            .as_deref()
            .context("--label-node needs the node name (--node-name or NODE_NAME)")?;
        let (key, value) = node_label::parse_label(&args.label)?;
        node_label::label_node(
            node,
            &key,
            &value,
            Duration::from_secs(args.restart_timeout_secs),
        )
        .await?;
        tracing::info!(node, label = args.label, "labelled the node");
        labelled_node = Some(node.to_owned());
    }

    Ok(Report {
        flavor,
        shim: ShimReport {
            path: shim_path,
            changed: shim_changed,
        },
        config,
        restarted,
        labelled_node,
    })
}

/// k3s regenerates config.toml from the template when it starts; make sure ours made it through.
fn check_k3s_rendered(generated: &Path, entry: &RuntimeEntry) -> anyhow::Result<()> {
    let text = fs::read_to_string(generated)
        .with_context(|| format!("reading {}", generated.display()))?;
    let edit = containerd_config::add_runtime_to_config(Some(&text), entry)
        .with_context(|| format!("parsing {}", generated.display()))?;
    anyhow::ensure!(
        !edit.changed,
        "k3s restarted but {} has no {} runtime: is the template in the file this k3s version reads?",
        generated.display(),
        entry.name
    );
    Ok(())
}
