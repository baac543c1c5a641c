//! A test cluster: the CRD apiserver, the core server and the proxy in front of them, with one
//! kubeconfig, fault controls, and cleanup on drop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell};

use crate::apiserver::{CrdApiServer, write_kubeconfig};
use crate::core::{CoreServer, GROUPS};
use crate::process::wait_until;
use crate::proxy::Proxy;

/// Field manager the harness applies CRDs and fixtures with.
pub const FIELD_MANAGER: &str = "edgewasm-testkit";

struct Servers {
    apiserver: Mutex<CrdApiServer>,
    proxy: Proxy,
}

/// The running cluster. Everything it started stops when it drops.
pub struct Cluster {
    // Drop order: servers (proxy, then processes), then the runtime, then the directory.
    servers: Option<Arc<Servers>>,
    runtime: Option<tokio::runtime::Runtime>,
    core: CoreServer,
    apiserver_url: String,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("url", &self.url())
            .field("apiserver", &self.apiserver_url)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts etcd, the CRD apiserver, the core server and the proxy. The servers run on a
    /// runtime of their own, so one cluster can serve many `#[tokio::test]`s (see
    /// [`Cluster::shared`]). Fails, naming `make deps`, when the apiserver binary is missing.
    pub async fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("testkit-cluster")
            .enable_all()
            .build()
            .context("building the cluster runtime")?;
        let core = CoreServer::new();
        let started = {
            let core = core.clone();
            runtime
                .spawn(async move {
                    let apiserver = CrdApiServer::start().await?;
                    let url = apiserver.url();
                    let proxy = Proxy::start(core, url.clone()).await?;
                    Ok::<_, anyhow::Error>((apiserver, proxy, url))
                })
                .await
        };
        let (apiserver, proxy, apiserver_url) = match started {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                runtime.shutdown_background();
                return Err(e.context("starting the test cluster"));
            }
            Err(e) => {
                runtime.shutdown_background();
                return Err(anyhow!("starting the test cluster: {e}"));
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("edgewasm-cluster-")
            .tempdir()
            .context("creating the cluster dir")?;
        crate::process::claim_temp_dir(dir.path(), "edgewasm-cluster-");
        write_kubeconfig(&dir.path().join("kubeconfig"), &proxy.url(), false)?;
        let servers = Arc::new(Servers {
            apiserver: Mutex::new(apiserver),
            proxy,
        });
        runtime.spawn(garbage_collector(core.clone(), apiserver_url.clone()));
        tracing::info!(url = servers.proxy.url(), "test cluster ready");
        Ok(Self {
            servers: Some(servers),
            runtime: Some(runtime),
            core,
            apiserver_url,
            dir,
        })
    }

    /// One cluster per test binary, started on first use and never dropped (its processes die
    /// with the test process: they are started with a parent-death signal).
    pub async fn shared() -> Result<&'static Self> {
        static SHARED: OnceCell<Cluster> = OnceCell::const_new();
        SHARED.get_or_try_init(Self::start).await
    }

    fn servers(&self) -> &Arc<Servers> {
        self.servers.as_ref().expect("servers live until drop")
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }

    /// The proxy's URL (`http://127.0.0.1:PORT`), which the kubeconfig points at.
    pub fn url(&self) -> String {
        self.servers().proxy.url()
    }

    /// The CRD apiserver's own `https://` URL (bypasses the proxy and the core server).
    pub fn apiserver_url(&self) -> &str {
        &self.apiserver_url
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A scratch directory removed with the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The core server (Pods, Nodes, Events, Leases, ...), for direct inspection.
    pub fn core(&self) -> &CoreServer {
        &self.core
    }

    /// The proxy, for fault injection: `fail_next`, `set_delay`, `drop_watches`, `set_down`.
    pub fn proxy(&self) -> &Proxy {
        &self.servers().proxy
    }

    /// A new client for the calling runtime, through the proxy.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig_path())?;
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .context("loading the test kubeconfig")?;
        kube::Client::try_from(config).context("building a kube client")
    }

    /// Applies every CustomResourceDefinition in the `*.yaml`/`*.yml`/`*.json` files of `dir`
    /// (server-side apply) and waits until each is Established. Returns their names.
    /// The shared cluster with the project's CRDs (`crds/`) applied: what every test against the
    /// CRD apiserver starts from. Panics, naming `make deps`, when the cluster cannot start.
    pub async fn shared_with_crds() -> Result<&'static Self> {
        let cluster = match Self::shared().await {
            Ok(c) => c,
            Err(e) => panic!("the test cluster did not start (run `make deps`): {e:#}"),
        };
        cluster
            .apply_crds(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds"))
            .await?;
        Ok(cluster)
    }

    pub async fn apply_crds(&self, dir: &Path) -> Result<Vec<String>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        files.sort();
        let mut names = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let applied = self
                .apply_crd_yaml(&text)
                .await
                .with_context(|| format!("applying {}", file.display()))?;
            names.extend(applied);
        }
        Ok(names)
    }

    /// Applies the CRDs in a (multi-document) YAML text and waits until they are Established.
    pub async fn apply_crd_yaml(&self, yaml: &str) -> Result<Vec<String>> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        let mut names = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value: Value = serde::Deserialize::deserialize(doc)?;
            if value.is_null() || value["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let name = value["metadata"]["name"]
                .as_str()
                .ok_or_else(|| anyhow!("a CRD without metadata.name"))?
                .to_owned();
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&value),
            )
            .await
            .with_context(|| format!("applying CRD {name}"))?;
            names.push(name);
        }
        for name in &names {
            wait_until(
                &format!("CRD {name} Established"),
                Duration::from_secs(30),
                || async {
                    let crd = api.get(name).await?;
                    Ok(crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True"))
                },
            )
            .await?;
        }
        Ok(names)
    }

    /// Stops the CRD apiserver (etcd keeps its data). Requests for custom resources get 503
    /// through the proxy until [`Self::start_apiserver`].
    pub async fn stop_apiserver(&self) {
        let servers = self.servers().clone();
        let _ = self
            .runtime()
            .spawn(async move { servers.apiserver.lock().await.stop().await })
            .await;
    }

    pub async fn start_apiserver(&self) -> Result<()> {
        let servers = self.servers().clone();
        self.runtime()
            .spawn(async move {
                let mut apiserver = servers.apiserver.lock().await;
                if apiserver.is_running() {
                    return Ok(());
                }
                apiserver.restart().await
            })
            .await?
    }

    /// The whole API is gone for `duration`: the proxy refuses connections (open watches are
    /// cut) and the CRD apiserver is stopped; then both come back and this returns once the
    /// apiserver is ready again.
    pub async fn outage(&self, duration: Duration) -> Result<()> {
        self.proxy().set_down(true).await?;
        self.stop_apiserver().await;
        tokio::time::sleep(duration).await;
        self.start_apiserver().await?;
        self.proxy().set_down(false).await
    }

    /// The CRD apiserver's log (for failure messages).
    pub async fn apiserver_log_path(&self) -> PathBuf {
        self.servers().apiserver.lock().await.log_path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.servers.take();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Deletes core objects whose owners are all gone, the way kube-controller-manager's garbage
/// collector does: owners in the core server are checked there, custom resources in the CRD
/// apiserver. An owner that cannot be checked (apiserver down) counts as present.
async fn garbage_collector(core: CoreServer, apiserver: String) {
    let http = match reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "garbage collector cannot start");
            return;
        }
    };
    let mut plurals: HashMap<(String, String), String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        for d in core.dependents() {
            let mut alive = false;
            for owner in &d.owners {
                match owner_exists(&core, &http, &apiserver, &mut plurals, &d.namespace, owner)
                    .await
                {
                    Ok(false) => {}
                    Ok(true) | Err(_) => alive = true,
                }
            }
            if !alive {
                core.collect(&d);
            }
        }
    }
}

async fn owner_exists(
    core: &CoreServer,
    http: &reqwest::Client,
    apiserver: &str,
    plurals: &mut HashMap<(String, String), String>,
    namespace: &str,
    owner: &Value,
) -> Result<bool> {
    let s = |k: &str| {
        owner
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind, name, uid) = (s("apiVersion"), s("kind"), s("name"), s("uid"));
    let group = api_version.split_once('/').map_or("", |(g, _)| g);
    if group.is_empty() || GROUPS.contains(&group) {
        return Ok(core.has_uid(&uid));
    }
    let key = (api_version.clone(), kind.clone());
    if !plurals.contains_key(&key) {
        let list: Value = http
            .get(format!("{apiserver}/apis/{api_version}"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let found = list["resources"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["kind"] == kind.as_str() && !r["name"].as_str().unwrap_or("/").contains('/')
            })
            .ok_or_else(|| anyhow!("{kind} is not served under {api_version}"))?;
        let namespaced = found["namespaced"].as_bool().unwrap_or(true);
        let plural = found["name"].as_str().unwrap_or_default().to_owned();
        plurals.insert(
            key.clone(),
            if namespaced {
                plural
            } else {
                format!("/{plural}")
            },
        );
    }
    let plural = &plurals[&key];
    let collection = match plural.strip_prefix('/') {
        Some(cluster_scoped) => format!("{apiserver}/apis/{api_version}/{cluster_scoped}"),
        None => format!("{apiserver}/apis/{api_version}/namespaces/{namespace}/{plural}"),
    };
    let response = http.get(format!("{collection}/{name}")).send().await?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        // A restarted apiserver answers 404 for custom resources until it serves their CRD again:
        // the owner is gone only if its kind is served and it is not there.
        http.get(format!("{collection}?limit=1"))
            .send()
            .await?
            .error_for_status()?;
        return Ok(false);
    }
    let object: Value = response.error_for_status()?.json().await?;
    Ok(object["metadata"]["uid"] == uid.as_str())
}

/// Polls `check` every 100 ms until it returns true; fails after `timeout` naming `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    wait_until(what, timeout, check).await
}
