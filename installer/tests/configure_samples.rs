//! The installer binary against sample containerd and k3s configs: it adds the runtime once, a second
//! run changes nothing, and the user's settings and comments stay as they were.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use toml_edit::DocumentMut;

const BIN: &str = env!("CARGO_BIN_EXE_edgewasm-node-installer");

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/samples")
        .join(name)
}

/// Copies a sample file or folder into a fresh temporary folder.
fn scratch(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let source = sample(name);
    let dest = dir.path().join(name);
    if source.is_dir() {
        fs::create_dir_all(&dest).unwrap();
        for entry in fs::read_dir(&source).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), dest.join(entry.file_name())).unwrap();
        }
    } else {
        fs::copy(&source, &dest).unwrap();
    }
    (dir, dest)
}

struct Run {
    code: i32,
    report: serde_json::Value,
}

fn configure(flavor: &str, path: &Path) -> Run {
    let out = Command::new(BIN)
        .args(["configure", "--exit-code", "--flavor", flavor, "--path"])
        .arg(path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|err| panic!("no JSON report ({err}); stderr: {stderr}"));
    Run {
        code: out.status.code().unwrap(),
        report,
    }
}

fn runtime<'a>(doc: &'a DocumentMut, plugin: &str) -> &'a toml_edit::Item {
    &doc["plugins"][plugin]["containerd"]["runtimes"]["edgewasm"]
}

fn assert_runtime(doc: &DocumentMut, plugin: &str) {
    let rt = runtime(doc, plugin);
    assert_eq!(
        rt["runtime_type"].as_str(),
        Some("io.containerd.edgewasm.v1"),
        "{doc}"
    );
    let annotations: Vec<_> = rt["pod_annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(annotations, ["edgewasm.io/*"]);
}

#[test]
fn plain_containerd_samples_are_extended_once_and_keep_the_rest() {
    for (name, plugin) in [
        ("containerd-debian.toml", "io.containerd.grpc.v1.cri"),
        ("containerd-kubeadm.toml", "io.containerd.grpc.v1.cri"),
        ("containerd-v3.toml", "io.containerd.cri.v1.runtime"),
    ] {
        let (_dir, path) = scratch(name);
        let original = fs::read_to_string(&path).unwrap();

        let first = configure("containerd", &path);
        assert_eq!(
            first.code, 3,
            "{name}: first run must report a change: {}",
            first.report
        );
        assert_eq!(first.report["changed"], true);
        let edited = fs::read_to_string(&path).unwrap();
        assert!(
            edited.starts_with(&original),
            "{name}: the user's text changed:\n{edited}"
        );
        assert_runtime(&edited.parse().unwrap(), plugin);
        let backup = first.report["backup"]
            .as_str()
            .expect("a backup of the original");
        assert_eq!(fs::read_to_string(backup).unwrap(), original);

        let second = configure("containerd", &path);
        assert_eq!(
            second.code, 0,
            "{name}: second run changed something: {}",
            second.report
        );
        assert_eq!(second.report["changed"], false);
        assert_eq!(fs::read_to_string(&path).unwrap(), edited);
    }
}

#[test]
fn kubeadm_settings_survive_by_value() {
    let (_dir, path) = scratch("containerd-kubeadm.toml");
    configure("containerd", &path);
    let doc: DocumentMut = fs::read_to_string(&path).unwrap().parse().unwrap();
    let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
    assert_eq!(
        cri["sandbox_image"].as_str(),
        Some("registry.k8s.io/pause:3.9")
    );
    assert_eq!(
        cri["containerd"]["default_runtime_name"].as_str(),
        Some("runc")
    );
    assert_eq!(
        cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"].as_bool(),
        Some(true)
    );
    assert_eq!(doc["oom_score"].as_integer(), Some(-999));
    assert!(doc.to_string().contains("# pinned for air-gapped sites"));
}

#[test]
fn missing_containerd_config_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/containerd/config.toml");
    let run = configure("containerd", &path);
    assert_eq!(run.code, 3);
    assert!(run.report["backup"].is_null());
    let doc: DocumentMut = fs::read_to_string(&path).unwrap().parse().unwrap();
    assert_eq!(doc["version"].as_integer(), Some(2));
    assert_runtime(&doc, "io.containerd.grpc.v1.cri");
}

#[test]
fn k3s_template_is_created_from_base_then_left_alone() {
    let (_dir, k3s) = scratch("k3s-v2");
    let generated = fs::read_to_string(k3s.join("config.toml")).unwrap();

    let first = configure("k3s", &k3s);
    assert_eq!(first.code, 3, "{}", first.report);
    assert_eq!(first.report["version"], "v2");
    let template = fs::read_to_string(k3s.join("config.toml.tmpl")).unwrap();
    assert!(
        template.starts_with("{{ template \"base\" . }}\n"),
        "{template}"
    );
    assert!(
        template.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.edgewasm]"),
        "{template}"
    );
    assert!(
        first.report["backup"].is_null(),
        "nothing to back up when the template was absent"
    );
    // k3s owns config.toml; the installer never writes it.
    assert_eq!(
        fs::read_to_string(k3s.join("config.toml")).unwrap(),
        generated
    );

    // What k3s renders: its generated config followed by our section must be valid TOML.
    let rendered = template.replace("{{ template \"base\" . }}", &generated);
    assert_runtime(&rendered.parse().unwrap(), "io.containerd.grpc.v1.cri");

    let second = configure("k3s", &k3s);
    assert_eq!(second.code, 0, "{}", second.report);
    assert_eq!(
        fs::read_to_string(k3s.join("config.toml.tmpl")).unwrap(),
        template
    );
}

#[test]
fn k3s_with_containerd_2_gets_the_v3_template() {
    let (_dir, k3s) = scratch("k3s-v3");
    let run = configure("k3s", &k3s);
    assert_eq!(run.code, 3);
    assert_eq!(run.report["version"], "v3");
    assert!(!k3s.join("config.toml.tmpl").exists());
    let template = fs::read_to_string(k3s.join("config-v3.toml.tmpl")).unwrap();
    assert!(
        template
            .contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.edgewasm]"),
        "{template}"
    );
}

#[test]
fn k3s_user_template_keeps_its_sections() {
    let (_dir, k3s) = scratch("k3s-custom");
    let original = fs::read_to_string(k3s.join("config.toml.tmpl")).unwrap();
    let run = configure("k3s", &k3s);
    assert_eq!(run.code, 3);
    let template = fs::read_to_string(k3s.join("config.toml.tmpl")).unwrap();
    assert!(template.starts_with(&original), "{template}");
    assert!(template.contains("runtimes.edgewasm]"), "{template}");
    let backup = run.report["backup"].as_str().unwrap();
    assert_eq!(fs::read_to_string(backup).unwrap(), original);
    assert_eq!(configure("k3s", &k3s).code, 0);
}

#[test]
fn unparseable_config_is_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    fs::write(&path, "version = 2\n[plugins\n").unwrap();
    let out = Command::new(BIN)
        .args(["configure", "--path"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config.toml") && stderr.contains("not valid TOML"),
        "{stderr}"
    );
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "version = 2\n[plugins\n",
        "a broken file must stay untouched"
    );
}

#[test]
fn install_on_a_fake_host_copies_the_shim_and_configures_once() {
    let host = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let shim = image.path().join("containerd-shim-edgewasm-v1");
    fs::write(&shim, b"\x7fELF fake shim").unwrap();
    fs::create_dir_all(host.path().join("etc/containerd")).unwrap();
    fs::copy(
        sample("containerd-debian.toml"),
        host.path().join("etc/containerd/config.toml"),
    )
    .unwrap();

    let install = || {
        let out = Command::new(BIN)
            .args(["install", "--restart=false", "--host-root"])
            .arg(host.path())
            .arg("--shim-source")
            .arg(&shim)
            .env_remove("NODE_NAME")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = install();
    assert_eq!(first["flavor"], "containerd");
    assert_eq!(first["shim"]["changed"], true);
    assert_eq!(first["config"]["changed"], true);
    assert!(first["restarted"].is_null() && first["labelledNode"].is_null());
    assert_eq!(
        fs::read(
            host.path()
                .join("usr/local/bin/containerd-shim-edgewasm-v1")
        )
        .unwrap(),
        b"\x7fELF fake shim"
    );

    let second = install();
    assert_eq!(second["shim"]["changed"], false);
    assert_eq!(second["config"]["changed"], false);
}

#[test]
fn install_detects_k3s_on_the_host() {
    let host = tempfile::tempdir().unwrap();
    let k3s = host.path().join("var/lib/rancher/k3s/agent/etc/containerd");
    fs::create_dir_all(&k3s).unwrap();
    fs::copy(sample("k3s-v2/config.toml"), k3s.join("config.toml")).unwrap();
    let shim = host.path().join("shim");
    fs::write(&shim, b"shim").unwrap();
    let out = Command::new(BIN)
        .args(["install", "--restart=false", "--host-root"])
        .arg(host.path())
        .arg("--shim-source")
        .arg(&shim)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["flavor"], "k3s");
    assert!(k3s.join("config.toml.tmpl").exists());
    assert!(
        !host.path().join("etc/containerd/config.toml").exists(),
        "plain containerd's config must stay absent"
    );
}

#[test]
fn label_node_without_a_node_name_is_a_clear_error() {
    let host = tempfile::tempdir().unwrap();
    let shim = host.path().join("shim");
    fs::write(&shim, b"shim").unwrap();
    let out = Command::new(BIN)
        .args(["install", "--restart=false", "--label-node", "--host-root"])
        .arg(host.path())
        .arg("--shim-source")
        .arg(&shim)
        .env_remove("NODE_NAME")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NODE_NAME"));
}

#[test]
fn host_exec_enters_a_mount_namespace_and_runs_the_command() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "host_exec needs root (CAP_SYS_ADMIN for setns); run the tests as root as CI does"
    );
    let out = Command::new(BIN)
        .args([
            "host-exec",
            "--mount-namespace",
            "/proc/self/ns/mnt",
            "--",
            "sh",
            "-c",
            "echo entered",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "entered");
}

/// containerd's merged view of a config file, as the daemon would load it.
fn containerd_dump(config: &Path) -> String {
    let out = Command::new("containerd")
        .arg("--config")
        .arg(config)
        .args(["config", "dump"])
        .output()
        .unwrap_or_else(|err| {
            panic!("running containerd ({err}); install it: apt-get install containerd")
        });
    assert!(
        out.status.success(),
        "containerd rejected {}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn containerd_1_6_loads_the_edited_configs() {
    let v1 = tempfile::tempdir().unwrap();
    let v1_config = v1.path().join("config.toml");
    fs::write(
        &v1_config,
        "[plugins.cri]\n  sandbox_image = \"registry.k8s.io/pause:3.9\"\n",
    )
    .unwrap();
    let (_a, debian) = scratch("containerd-debian.toml");
    let (_b, kubeadm) = scratch("containerd-kubeadm.toml");
    let (_c, k3s) = scratch("k3s-custom");

    for (flavor, path) in [
        ("containerd", &v1_config),
        ("containerd", &debian),
        ("containerd", &kubeadm),
        ("k3s", &k3s),
    ] {
        assert_eq!(configure(flavor, path).code, 3);
    }
    // What k3s does at start: render the template with its base config in place of the action.
    let rendered = k3s.join("rendered.toml");
    let template = fs::read_to_string(k3s.join("config.toml.tmpl")).unwrap();
    let generated = fs::read_to_string(k3s.join("config.toml")).unwrap();
    fs::write(
        &rendered,
        template.replace("{{ template \"base\" . }}", &generated),
    )
    .unwrap();

    for config in [&v1_config, &debian, &kubeadm, &rendered] {
        let dump = containerd_dump(config);
        let section = dump
            .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.edgewasm]")
            .nth(1)
            .unwrap_or_else(|| {
                panic!(
                    "containerd does not see the runtime in {}:\n{dump}",
                    config.display()
                )
            });
        let section = section.split("\n\n").next().unwrap();
        assert!(
            section.contains("runtime_type = \"io.containerd.edgewasm.v1\""),
            "{section}"
        );
        assert!(
            section.contains("pod_annotations = [\"edgewasm.io/*\"]"),
            "{section}"
        );
    }
    assert!(containerd_dump(&kubeadm).contains("SystemdCgroup = true"));
    assert!(containerd_dump(&rendered).contains("runtimes.spin]"));
}
