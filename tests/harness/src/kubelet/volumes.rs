//! The Pod volumes the test kubelet materializes, as kubelet does: each Secret volume becomes a
//! folder of files (one per key, with the volume's modes) that containers get bind-mounted.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Secret, SecretVolumeSource};
use kube::api::Api;

/// kubelet's default `defaultMode` for Secret volumes.
const DEFAULT_MODE: i32 = 0o644;

/// Writes every Secret volume of `pod` under `root` (`<root>/kubernetes.io~secret/<volume>`) and
/// returns the folder of each, by volume name. `Err` is kubelet's `FailedMount` message: the Pod
/// cannot start until it is resolved (a Secret that is missing and not optional, a missing key).
pub(super) async fn materialize(
    client: &kube::Client,
    pod: &Pod,
    root: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut dirs = BTreeMap::new();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    for volume in volumes.into_iter().flatten() {
        let Some(source) = &volume.secret else {
            continue;
        };
        let failed = |why: &str| {
            format!(
                "MountVolume.SetUp failed for volume {:?} : {why}",
                volume.name
            )
        };
        let name = source.secret_name.clone().unwrap_or_default();
        let optional = source.optional == Some(true);
        let secret = match secrets.get_opt(&name).await {
            Ok(Some(secret)) => Some(secret),
            Ok(None) if optional => None,
            Ok(None) => return Err(failed(&format!("secret {name:?} not found"))),
            Err(e) => return Err(failed(&format!("getting secret {name:?}: {e}"))),
        };
        let dir = root.join("kubernetes.io~secret").join(&volume.name);
        write_secret(&dir, secret.as_ref(), source).map_err(|e| failed(&format!("{e:#}")))?;
        dirs.insert(volume.name.clone(), dir);
    }
    Ok(dirs)
}

/// Makes `dir` hold exactly the files `source` selects from `secret` (none when it is absent): each
/// replaced by a rename, so a reader sees the old content or the new, and keys gone from the Secret
/// are removed.
fn write_secret(dir: &Path, secret: Option<&Secret>, source: &SecretVolumeSource) -> Result<()> {
    // The fake API server keeps `stringData` as written; the real one merges it over `data`.
    let mut data: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    if let Some(s) = secret {
        for (k, v) in s.data.iter().flatten() {
            data.insert(k.clone(), v.0.clone());
        }
        for (k, v) in s.string_data.iter().flatten() {
            data.insert(k.clone(), v.clone().into_bytes());
        }
    }
    let default_mode = source.default_mode.unwrap_or(DEFAULT_MODE);
    let mut files: Vec<(String, &[u8], i32)> = Vec::new();
    match &source.items {
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => {
                        files.push((item.path.clone(), value, item.mode.unwrap_or(default_mode)));
                    }
                    None if source.optional == Some(true) => {}
                    None => bail!("references non-existent secret key: {}", item.key),
                }
            }
        }
        None => files.extend(
            data.iter()
                .map(|(k, v)| (k.clone(), v.as_slice(), default_mode)),
        ),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut keep = BTreeSet::new();
    for (path, value, mode) in files {
        let relative = Path::new(&path);
        if relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            bail!("invalid path {path:?} for a secret key");
        }
        keep.extend(
            relative
                .components()
                .next()
                .map(|c| c.as_os_str().to_owned()),
        );
        let target = dir.join(relative);
        let parent = target.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let staged = parent.join(format!(
            "..staged-{}",
            target.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::write(&staged, value).with_context(|| format!("writing {}", staged.display()))?;
        #[allow(clippy::cast_sign_loss)] // modes are 0..=0o777, checked by the API server
        let mode = mode as u32;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", staged.display()))?;
        std::fs::rename(&staged, &target)
            .with_context(|| format!("replacing {}", target.display()))?;
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if keep.contains(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing the stale {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::KeyToPath;

    fn secret(data: &[(&str, &str)], string_data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            string_data: Some(
                string_data
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_become_files_with_the_default_mode_and_string_data_wins() {
        let dir = tempfile::tempdir().unwrap();
        let source = SecretVolumeSource {
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        };
        let s = secret(
            &[("username", "old"), ("password", "pw")],
            &[("username", "admin")],
        );
        write_secret(dir.path(), Some(&s), &source).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("username")).unwrap(),
            "admin"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("password")).unwrap(),
            "pw"
        );
        assert_eq!(mode(&dir.path().join("password")), 0o400);

        // A key removed from the Secret disappears; a rewrite over a read-only file works.
        write_secret(
            dir.path(),
            Some(&secret(&[("username", "root")], &[])),
            &source,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("username")).unwrap(),
            "root"
        );
        assert!(!dir.path().join("password").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn items_pick_keys_paths_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let item = |key: &str, path: &str, mode: Option<i32>| KeyToPath {
            key: key.into(),
            path: path.into(),
            mode,
            ..KeyToPath::default()
        };
        let mut source = SecretVolumeSource {
            items: Some(vec![item("password", "auth/pass", Some(0o600))]),
            ..SecretVolumeSource::default()
        };
        let s = secret(&[("username", "u"), ("password", "p")], &[]);
        write_secret(dir.path(), Some(&s), &source).unwrap();
        assert_eq!(mode(&dir.path().join("auth/pass")), 0o600);
        assert!(!dir.path().join("username").exists());

        source.items = Some(vec![item("token", "token", None)]);
        let err = write_secret(dir.path(), Some(&s), &source).unwrap_err();
        assert!(
            err.to_string().contains("non-existent secret key: token"),
            "{err}"
        );
        source.items = Some(vec![item("password", "../escape", None)]);
        assert!(write_secret(dir.path(), Some(&s), &source).is_err());
    }

    #[test]
    fn an_absent_optional_secret_is_an_empty_folder() {
        let dir = tempfile::tempdir().unwrap();
        let source = SecretVolumeSource {
            optional: Some(true),
            ..SecretVolumeSource::default()
        };
        write_secret(&dir.path().join("v"), None, &source).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("v")).unwrap().count(), 0);
    }
}
