//! etcd plus the real CRD apiserver (tests/apiserver) on free loopback ports with a temporary
//! data dir, stoppable and restartable mid-test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::process::{ChildGuard, free_port, log_tail, wait_until};

const DEPS_HINT: &str =
    "run `make deps` (scripts/deps.d/harness.sh builds it from tests/apiserver)";
const READY_TIMEOUT: Duration = Duration::from_mins(1);

/// Where the etcd and crd-apiserver binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub apiserver: PathBuf,
    pub etcd: PathBuf,
}

impl Binaries {
    /// `CRD_APISERVER_BIN` / `ETCD_BIN`, else what `scripts/deps.d/harness.sh` left in
    /// `$CRD_APISERVER_CACHE` (default `/var/cache/crd-apiserver`). Fails naming the deps script.
    pub fn locate() -> Result<Self> {
        Self::locate_from(
            std::env::var_os("CRD_APISERVER_CACHE"),
            std::env::var_os("CRD_APISERVER_BIN"),
            std::env::var_os("ETCD_BIN"),
        )
    }

    fn locate_from(
        cache: Option<std::ffi::OsString>,
        apiserver: Option<std::ffi::OsString>,
        etcd: Option<std::ffi::OsString>,
    ) -> Result<Self> {
        let cache = cache.map_or_else(|| PathBuf::from("/var/cache/crd-apiserver"), PathBuf::from);
        let apiserver = apiserver.map_or_else(|| cache.join("bin/crd-apiserver"), PathBuf::from);
        let etcd = etcd.map_or_else(|| cache.join("etcd/usr/bin/etcd"), PathBuf::from);
        for (what, path) in [("crd-apiserver", &apiserver), ("etcd", &etcd)] {
            if !is_executable(path) {
                bail!(
                    "{what} binary not found at {} (set CRD_APISERVER_BIN/ETCD_BIN, or {DEPS_HINT})",
                    path.display()
                );
            }
        }
        Ok(Self { apiserver, etcd })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A running etcd + crd-apiserver pair; both are killed when this drops.
#[derive(Debug)]
pub struct CrdApiServer {
    // Fields drop in order: the apiserver, then etcd, then the data dir.
    apiserver: Option<ChildGuard>,
    /// Held so that etcd stops with this value.
    _etcd: ChildGuard,
    dir: tempfile::TempDir,
    binaries: Binaries,
    etcd_port: u16,
    api_port: u16,
    http: reqwest::Client,
}

impl CrdApiServer {
    /// Starts etcd and the apiserver in a fresh temporary directory and waits for `/readyz`.
    pub async fn start() -> Result<Self> {
        let binaries = Binaries::locate()?;
        let dir = tempfile::Builder::new()
            .prefix("edgewasm-apiserver-")
            .tempdir()
            .context("creating the apiserver data dir")?;
        crate::process::claim_temp_dir(dir.path(), "edgewasm-apiserver-");
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(3))
            .build()?;
        // A port found free can be taken by someone else before etcd binds it: try fresh ports then.
        let mut attempt = 0;
        let (etcd, etcd_port) = loop {
            attempt += 1;
            let etcd_port = free_port()?;
            let peer_port = free_port()?;
            let etcd_log = dir.path().join(format!("etcd-{attempt}.log"));
            let mut etcd = ChildGuard::spawn(
                "etcd",
                &binaries.etcd,
                &[
                    "--name=testkit".into(),
                    format!(
                        "--data-dir={}",
                        dir.path().join(format!("etcd-{attempt}")).display()
                    ),
                    "--log-level=warn".into(),
                    format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                    format!("--initial-cluster=testkit=http://127.0.0.1:{peer_port}"),
                    "--unsafe-no-fsync".into(),
                ],
                &etcd_log,
            )?;
            let url = format!("http://127.0.0.1:{etcd_port}/health");
            // Stops waiting as soon as etcd exits: that is a failure, said below.
            let waited = wait_until("etcd", READY_TIMEOUT, || {
                let exited = etcd.exited().is_some();
                let (http, url) = (http.clone(), url.clone());
                async move {
                    if exited {
                        return Ok(true);
                    }
                    let body = http.get(&url).send().await?.text().await?;
                    Ok(body.contains("\"health\":\"true\""))
                }
            })
            .await;
            let ready = match (waited, etcd.exited()) {
                (Ok(()), Some(status)) => Err(anyhow::anyhow!("etcd exited ({status})")),
                (other, _) => other,
            };
            match ready {
                Ok(()) => break (etcd, etcd_port),
                Err(_)
                    if attempt < 3
                        && log_tail(&etcd_log, 20).contains("address already in use") => {}
                Err(e) => {
                    return Err(e.context(format!("etcd log:\n{}", log_tail(&etcd_log, 20))));
                }
            }
        };
        let mut server = Self {
            dir,
            binaries,
            etcd_port,
            api_port: free_port()?,
            _etcd: etcd,
            apiserver: None,
            http,
        };
        server.start_apiserver().await?;
        Ok(server)
    }

    async fn start_apiserver(&mut self) -> Result<()> {
        let log = self.dir.path().join("apiserver.log");
        let mut child = ChildGuard::spawn(
            "crd-apiserver",
            &self.binaries.apiserver,
            &[
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", self.api_port),
                format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
                format!("--cert-dir={}", self.dir.path().join("certs").display()),
            ],
            &log,
        )?;
        let url = format!("{}/readyz", self.url());
        let http = self.http.clone();
        let ready = wait_until("crd-apiserver", READY_TIMEOUT, || {
            let exited = child.exited();
            let (http, url) = (http.clone(), url.clone());
            async move {
                if let Some(status) = exited {
                    bail!("crd-apiserver exited ({status})");
                }
                let body = http.get(&url).send().await?.text().await?;
                Ok(body.trim() == "ok")
            }
        })
        .await;
        if let Err(e) = ready {
            return Err(e.context(format!("crd-apiserver log:\n{}", log_tail(&log, 30))));
        }
        tracing::info!(url = self.url(), pid = child.pid(), "crd-apiserver ready");
        self.apiserver = Some(child);
        Ok(())
    }

    /// `https://127.0.0.1:PORT` (self-signed certificate).
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The apiserver's own log, for failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("apiserver.log")
    }

    pub fn is_running(&self) -> bool {
        self.apiserver.is_some()
    }

    /// Stops the apiserver (etcd and its data stay); its port refuses connections until
    /// [`Self::restart`].
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            child.stop(Duration::from_secs(10)).await;
            tracing::info!("crd-apiserver stopped");
        }
    }

    /// Starts the apiserver again on the same port and data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        self.start_apiserver().await
    }

    /// Stops the apiserver for `duration`, then starts it again and waits until it is ready.
    pub async fn outage(&mut self, duration: Duration) -> Result<()> {
        self.stop().await;
        tokio::time::sleep(duration).await;
        self.start_apiserver().await
    }

    /// Writes a kubeconfig that reaches this apiserver directly (no proxy) to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        write_kubeconfig(path, &self.url(), true)
    }
}

/// Writes a kubeconfig for `server` (every credential is accepted; the token only stops kubectl
/// from prompting).
pub fn write_kubeconfig(path: &Path, server: &str, insecure: bool) -> Result<()> {
    let tls = if insecure {
        "\n    insecure-skip-tls-verify: true"
    } else {
        ""
    };
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: edgewasm-test
  cluster:
    server: {server}{tls}
users:
- name: admin
  user: {{token: any-token-is-accepted}}
contexts:
- name: edgewasm-test
  context: {{cluster: edgewasm-test, user: admin, namespace: default}}
current-context: edgewasm-test
"
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_deps_script() {
        let err = Binaries::locate_from(Some("/nonexistent".into()), None, None).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("/nonexistent/bin/crd-apiserver"),
            "{message}"
        );
        assert!(
            message.contains("make deps") && message.contains("scripts/deps.d/harness.sh"),
            "{message}"
        );
    }
}
