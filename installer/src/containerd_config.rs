//! Adds the edgewasm runtime to containerd's CRI configuration (a plain `config.toml` or k3s's
//! `config.toml.tmpl`), idempotently and without touching the user's other settings or comments.

use toml_edit::{Array, DocumentMut, Item, Table, Value, value};

/// The runtime entry containerd's CRI plugin needs to hand Pods with our RuntimeClass to the shim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEntry {
    /// The CRI runtime handler name, which a RuntimeClass's `handler` refers to.
    pub name: String,
    /// containerd's shim name: `io.containerd.edgewasm.v1` runs `containerd-shim-edgewasm-v1`.
    pub runtime_type: String,
    /// Pod annotations containerd passes through to the shim (the grants live in one of them).
    pub pod_annotations: Vec<String>,
}

impl Default for RuntimeEntry {
    fn default() -> Self {
        Self {
            name: "edgewasm".to_owned(),
            runtime_type: "io.containerd.edgewasm.v1".to_owned(),
            pod_annotations: vec!["edgewasm.io/*".to_owned()],
        }
    }
}

/// containerd's config file format version; each one names the CRI plugin differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConfigVersion {
    /// containerd 1.x without a `version` key: `plugins.cri`.
    V1,
    /// containerd 1.x `version = 2`: `plugins."io.containerd.grpc.v1.cri"`.
    V2,
    /// containerd 2.x `version = 3`: `plugins."io.containerd.cri.v1.runtime"`.
    V3,
}

impl ConfigVersion {
    /// Reads the version of an existing config; `None` when the file holds no settings at all.
    pub fn of(text: &str) -> Result<Option<Self>, ConfigError> {
        let doc: DocumentMut = text.parse().map_err(ConfigError::Parse)?;
        Self::of_document(&doc)
    }

    fn of_document(doc: &DocumentMut) -> Result<Option<Self>, ConfigError> {
        match doc.get("version") {
            None if doc.as_table().is_empty() => Ok(None),
            None => Ok(Some(Self::V1)),
            Some(item) => match item.as_integer() {
                Some(1) => Ok(Some(Self::V1)),
                Some(2) => Ok(Some(Self::V2)),
                Some(3) => Ok(Some(Self::V3)),
                _ => Err(ConfigError::UnknownVersion(
                    item.to_string().trim().to_owned(),
                )),
            },
        }
    }

    /// The table that holds CRI runtimes in this version.
    fn runtimes_path(self) -> [&'static str; 4] {
        let plugin = match self {
            Self::V1 => "cri",
            Self::V2 => "io.containerd.grpc.v1.cri",
            Self::V3 => "io.containerd.cri.v1.runtime",
        };
        ["plugins", plugin, "containerd", "runtimes"]
    }
}

/// Why a config could not be edited; the message tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("not valid TOML: {0}")]
    Parse(#[source] toml_edit::TomlError),
    #[error("unknown containerd config version {0} (expected 1, 2 or 3)")]
    UnknownVersion(String),
    #[error(
        "`{0}` is not a table, so the runtime cannot be added under it; \
         write it as a [section] or add the edgewasm runtime by hand"
    )]
    NotATable(String),
    #[error(
        "the k3s template is not TOML apart from whole-line {{{{ ... }}}} actions ({0}); \
         add the edgewasm runtime to it by hand"
    )]
    Template(#[source] toml_edit::TomlError),
}

/// The edited text and whether it differs from what was there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    pub text: String,
    pub changed: bool,
    pub version: ConfigVersion,
}

/// Adds the runtime to a plain containerd config. A missing or empty file becomes a `version = 2`
/// config holding only the runtime (containerd's defaults fill in the rest).
pub fn add_runtime_to_config(
    existing: Option<&str>,
    entry: &RuntimeEntry,
) -> Result<Edit, ConfigError> {
    let original = existing.unwrap_or("");
    let mut doc: DocumentMut = original.parse().map_err(ConfigError::Parse)?;
    let version = if let Some(version) = ConfigVersion::of_document(&doc)? {
        version
    } else {
        // Keep the comments of a file that held nothing else, above the version.
        let separator = if original.is_empty() || original.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        doc = format!("{original}{separator}version = 2\n")
            .parse()
            .map_err(ConfigError::Parse)?;
        ConfigVersion::V2
    };
    ensure_runtime(&mut doc, version, entry)?;
    let text = doc.to_string();
    Ok(Edit {
        changed: text != original,
        text,
        version,
    })
}

/// What k3s's template must render first so that k3s's own settings stay in place.
pub const K3S_BASE_TEMPLATE: &str = "{{ template \"base\" . }}";

/// Adds the runtime to k3s's containerd template (`config.toml.tmpl` or `config-v3.toml.tmpl`),
/// creating it from k3s's base template when absent. `version` is the version k3s's base renders.
///
/// The template is Go template text; whole-line actions such as `{{ template "base" . }}` are kept
/// verbatim and the rest must be TOML.
pub fn add_runtime_to_k3s_template(
    existing: Option<&str>,
    version: ConfigVersion,
    entry: &RuntimeEntry,
) -> Result<Edit, ConfigError> {
    let original = existing.unwrap_or("");
    let source = if original.trim().is_empty() {
        format!("{K3S_BASE_TEMPLATE}\n")
    } else {
        original.to_owned()
    };
    let masked = TemplateMask::new(&source);
    let mut doc: DocumentMut = masked.toml.parse().map_err(ConfigError::Template)?;
    ensure_runtime(&mut doc, version, entry)?;
    let text = masked.restore(&doc.to_string());
    Ok(Edit {
        changed: text != original,
        text,
        version,
    })
}

/// A Go template with its whole-line actions replaced by TOML comments, so toml_edit can edit it.
struct TemplateMask {
    toml: String,
    actions: Vec<String>,
}

impl TemplateMask {
    const MARKER: &'static str = "#edgewasm-node-installer:template-line:";

    fn new(template: &str) -> Self {
        let mut actions = Vec::new();
        let mut toml = String::with_capacity(template.len());
        for line in template.split_inclusive('\n') {
            let body = line.trim_end_matches(['\n', '\r']);
            let trimmed = body.trim();
            if trimmed.starts_with("{{") && trimmed.ends_with("}}") {
                toml.push_str(Self::MARKER);
                toml.push_str(&actions.len().to_string());
                toml.push_str(&line[body.len()..]);
                actions.push(body.to_owned());
            } else {
                toml.push_str(line);
            }
        }
        Self { toml, actions }
    }

    fn restore(&self, edited: &str) -> String {
        let mut out = String::with_capacity(edited.len());
        for line in edited.split_inclusive('\n') {
            let body = line.trim_end_matches(['\n', '\r']);
            let action = body
                .strip_prefix(Self::MARKER)
                .and_then(|index| index.parse::<usize>().ok())
                .and_then(|index| self.actions.get(index));
            match action {
                Some(action) => {
                    out.push_str(action);
                    out.push_str(&line[body.len()..]);
                }
                None => out.push_str(line),
            }
        }
        out
    }
}

/// Makes sure `runtimes.<name>` has our runtime type and pod annotations, leaving everything else.
fn ensure_runtime(
    doc: &mut DocumentMut,
    version: ConfigVersion,
    entry: &RuntimeEntry,
) -> Result<(), ConfigError> {
    // Text after the last table (comments, masked template lines) is rendered after every table,
    // new ones included; a new table takes it as its prefix so the user's text stays in front.
    let trailing = doc.trailing().as_str().unwrap_or_default().to_owned();
    doc.set_trailing("");
    let created = ensure_runtime_table(doc, version, entry, &trailing)?;
    if !created {
        doc.set_trailing(trailing);
    }
    Ok(())
}

/// Returns whether it created the runtime's table (with `prefix` in front of it).
fn ensure_runtime_table(
    doc: &mut DocumentMut,
    version: ConfigVersion,
    entry: &RuntimeEntry,
    prefix: &str,
) -> Result<bool, ConfigError> {
    let after_last = last_position(doc.as_table()).map_or(0, |last| last + 1);
    let mut table = doc.as_table_mut();
    let mut path = String::new();
    for key in version.runtimes_path() {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        table = table
            .entry(key)
            .or_insert_with(|| {
                let mut parent = Table::new();
                parent.set_implicit(true);
                Item::Table(parent)
            })
            .as_table_mut()
            .ok_or_else(|| ConfigError::NotATable(path.clone()))?;
    }
    path.push('.');
    path.push_str(&entry.name);
    let created = !table.contains_key(&entry.name);
    let runtime = table
        .entry(&entry.name)
        .or_insert_with(|| Item::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| ConfigError::NotATable(path.clone()))?;
    if created {
        // toml_edit would place a new table right after its siblings; it goes after everything.
        runtime.set_position(Some(after_last));
        runtime.decor_mut().set_prefix(format!(
            "{prefix}\n# Added by edgewasm-node-installer: Pods with the edgewasm RuntimeClass run as WebAssembly.\n"
        ));
    }
    // A table that only existed as the parent of e.g. `.options` must now get its own header.
    runtime.set_implicit(false);

    if runtime.get("runtime_type").and_then(Item::as_str) != Some(entry.runtime_type.as_str()) {
        runtime["runtime_type"] = value(entry.runtime_type.as_str());
    }
    if let Some(existing) = runtime
        .get_mut("pod_annotations")
        .and_then(Item::as_array_mut)
    {
        for wanted in &entry.pod_annotations {
            if !existing
                .iter()
                .any(|present| present.as_str() == Some(wanted))
            {
                existing.push(wanted.as_str());
            }
        }
    } else {
        let annotations: Array = entry
            .pod_annotations
            .iter()
            .map(|a| Value::from(a.as_str()))
            .collect();
        runtime["pod_annotations"] = value(annotations);
    }
    Ok(created)
}

/// The highest document position of any table, so a new one can be placed after all of them.
fn last_position(table: &Table) -> Option<isize> {
    table
        .iter()
        .filter_map(|(_, item)| item.as_table())
        .map(|child| child.position().max(last_position(child)))
        .fold(table.position(), Ord::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> RuntimeEntry {
        RuntimeEntry::default()
    }

    #[test]
    fn missing_config_becomes_version_2_with_runtime() {
        let edit = add_runtime_to_config(None, &entry()).unwrap();
        assert!(edit.changed);
        assert_eq!(edit.version, ConfigVersion::V2);
        assert_eq!(
            edit.text,
            "version = 2\n\n# Added by edgewasm-node-installer: Pods with the edgewasm RuntimeClass run as WebAssembly.\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.edgewasm]\n\
             runtime_type = \"io.containerd.edgewasm.v1\"\n\
             pod_annotations = [\"edgewasm.io/*\"]\n"
        );
    }

    #[test]
    fn version_picks_the_cri_plugin_name() {
        let cases = [
            (
                "[plugins.cri]\nx = 1\n",
                "[plugins.cri.containerd.runtimes.edgewasm]",
            ),
            (
                "version = 2\n",
                "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.edgewasm]",
            ),
            (
                "version = 3\n",
                "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.edgewasm]",
            ),
        ];
        for (input, header) in cases {
            let edit = add_runtime_to_config(Some(input), &entry()).unwrap();
            assert!(edit.text.contains(header), "{input:?} gave:\n{}", edit.text);
            assert!(
                edit.text.starts_with(input),
                "existing text must stay first:\n{}",
                edit.text
            );
        }
    }

    #[test]
    fn unknown_version_is_an_error() {
        let err = add_runtime_to_config(Some("version = 9\n"), &entry()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown containerd config version 9"),
            "{err}"
        );
    }

    #[test]
    fn existing_pod_annotations_are_extended_not_replaced() {
        let input = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.edgewasm]\n\
                     runtime_type = \"io.containerd.edgewasm.v1\"\npod_annotations = [\"example.com/x\"]\n";
        let edit = add_runtime_to_config(Some(input), &entry()).unwrap();
        assert!(edit.changed);
        assert!(
            edit.text
                .contains("pod_annotations = [\"example.com/x\", \"edgewasm.io/*\"]"),
            "{}",
            edit.text
        );
    }

    #[test]
    fn wrong_runtime_type_is_corrected() {
        let input = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.edgewasm]\n\
                     runtime_type = \"io.containerd.runc.v2\" # old\npod_annotations = [\"edgewasm.io/*\"]\n";
        let edit = add_runtime_to_config(Some(input), &entry()).unwrap();
        assert!(edit.changed);
        assert!(
            edit.text
                .contains("runtime_type = \"io.containerd.edgewasm.v1\""),
            "{}",
            edit.text
        );
        assert!(!edit.text.contains("runc"), "{}", edit.text);
    }

    #[test]
    fn runtime_with_only_options_gets_its_own_header() {
        let input = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.edgewasm.options]\n\
                     SystemdCgroup = true\n";
        let edit = add_runtime_to_config(Some(input), &entry()).unwrap();
        let reparsed: DocumentMut = edit.text.parse().unwrap();
        let runtime =
            &reparsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["edgewasm"];
        assert_eq!(
            runtime["runtime_type"].as_str(),
            Some("io.containerd.edgewasm.v1")
        );
        assert_eq!(runtime["options"]["SystemdCgroup"].as_bool(), Some(true));
    }

    #[test]
    fn inline_table_in_the_way_is_a_clear_error() {
        let input = "version = 2\nplugins = { x = 1 }\n";
        let err = add_runtime_to_config(Some(input), &entry()).unwrap_err();
        assert!(
            err.to_string().contains("`plugins` is not a table"),
            "{err}"
        );
    }

    #[test]
    fn comment_only_file_keeps_its_comments() {
        let input = "# managed by hand\n";
        let edit = add_runtime_to_config(Some(input), &entry()).unwrap();
        assert!(
            edit.text.starts_with("# managed by hand\nversion = 2\n"),
            "{}",
            edit.text
        );
        assert_eq!(
            ConfigVersion::of(&edit.text).unwrap(),
            Some(ConfigVersion::V2)
        );
    }

    #[test]
    fn absent_k3s_template_is_created_from_base() {
        let edit = add_runtime_to_k3s_template(None, ConfigVersion::V2, &entry()).unwrap();
        assert!(edit.changed);
        assert!(
            edit.text.starts_with("{{ template \"base\" . }}\n"),
            "{}",
            edit.text
        );
        assert!(
            edit.text
                .contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.edgewasm]"),
            "{}",
            edit.text
        );
        let again =
            add_runtime_to_k3s_template(Some(&edit.text), ConfigVersion::V2, &entry()).unwrap();
        assert!(!again.changed, "second run changed:\n{}", again.text);
    }

    #[test]
    fn k3s_template_keeps_actions_and_user_sections() {
        let input = "{{ template \"base\" . }}\n\n  {{- /* user note */ -}}\n\
                     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.spin]\n\
                     runtime_type = \"io.containerd.spin.v2\"\n";
        let edit = add_runtime_to_k3s_template(Some(input), ConfigVersion::V2, &entry()).unwrap();
        assert!(edit.text.starts_with(input), "{}", edit.text);
        assert!(edit.text.contains("runtimes.edgewasm]"), "{}", edit.text);
    }

    #[test]
    fn k3s_template_with_inline_actions_is_refused() {
        let input = "{{ template \"base\" . }}\n[plugins.x]\nroot = {{ .NodeConfig.Root }}\n";
        let err =
            add_runtime_to_k3s_template(Some(input), ConfigVersion::V2, &entry()).unwrap_err();
        assert!(
            err.to_string()
                .contains("add the edgewasm runtime to it by hand"),
            "{err}"
        );
    }
}
