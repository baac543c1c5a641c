//! Server-side apply, simplified: maps merge field by field, lists and scalars are atomic, each
//! applier owns the leaf fields it sent, and a field an applier stops sending is removed unless
//! another applier owns it.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

/// A field path: keys from the object root to a leaf (a scalar, a list or null).
pub type FieldPath = Vec<String>;

/// System fields no applier owns.
fn is_system(path: &[String]) -> bool {
    match path {
        [top] => top == "apiVersion" || top == "kind",
        [meta, field, ..] if meta == "metadata" => matches!(
            field.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
        ),
        _ => false,
    }
}

/// The leaf paths (scalars, lists, nulls) of `value` that an applier would own.
pub fn leaf_paths(value: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        match v {
            // An empty map owns nothing (its fields may belong to others).
            Value::Object(m) => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() && !is_system(path) {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// `fieldsV1` encoding of a set of paths (`{"f:spec":{"f:size":{}}}`).
pub fn encode_fields(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for key in path {
            node = node
                .entry(format!("f:{key}"))
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
    }
    Value::Object(root)
}

/// Inverse of [`encode_fields`]; entries that are not `f:` keys (list items) end the path.
pub fn decode_fields(fields: &Value) -> BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (k, child) in children {
            path.push(k[2..].to_owned());
            walk(child, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = v;
    for k in parents {
        match node.get_mut(k) {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(m) = node.as_object_mut() {
        m.remove(last);
    }
}

/// Maps merge recursively; anything else in `applied` replaces what is there.
fn merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, v) in a {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone)]
struct Manager {
    manager: String,
    operation: String,
    subresource: String,
    fields: BTreeSet<FieldPath>,
    raw: Value,
}

fn managers(object: &Value) -> Vec<Manager> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|e| Manager {
                    manager: str_field(e, "manager"),
                    operation: str_field(e, "operation"),
                    subresource: str_field(e, "subresource"),
                    fields: e.get("fieldsV1").map(decode_fields).unwrap_or_default(),
                    raw: e.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// What an apply request is.
#[derive(Debug)]
pub struct ApplyRequest<'a> {
    pub manager: &'a str,
    pub force: bool,
    /// "" for the main resource, "status" for the status subresource.
    pub subresource: &'a str,
    /// Whether the resource has a status subresource (then the main resource ignores status
    /// and the status subresource ignores everything else).
    pub has_status: bool,
    pub api_version: &'a str,
    pub now: &'a str,
}

/// A field another applier owns with a different value, and `force` was not set.
#[derive(Debug, PartialEq, Eq)]
pub struct Conflicts(pub Vec<(String, String)>);

impl std::fmt::Display for Conflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Apply failed with {} conflict(s):", self.0.len())?;
        for (manager, path) in &self.0 {
            write!(f, " conflict with \"{manager}\": .{path};")?;
        }
        Ok(())
    }
}

/// Applies `applied` onto `current` (an empty object when creating) and returns the new object
/// with its `managedFields` updated.
pub fn apply(current: &Value, applied: &Value, req: &ApplyRequest<'_>) -> Result<Value, Conflicts> {
    let in_scope = |p: &FieldPath| {
        let is_status = p.first().is_some_and(|k| k == "status");
        match (req.has_status, req.subresource) {
            (true, "status") => is_status,
            (true, _) => !is_status,
            _ => true,
        }
    };
    let new_fields: BTreeSet<FieldPath> =
        leaf_paths(applied).into_iter().filter(in_scope).collect();
    let mut all = managers(current);
    let mine = |m: &Manager| {
        m.manager == req.manager && m.operation == "Apply" && m.subresource == req.subresource
    };
    let previous: BTreeSet<FieldPath> = all
        .iter()
        .filter(|m| mine(m))
        .flat_map(|m| m.fields.iter().cloned())
        .collect();

    let mut conflicts = Vec::new();
    for other in all.iter_mut().filter(|m| !mine(m)) {
        let contested: Vec<FieldPath> = other
            .fields
            .iter()
            .filter(|p| {
                new_fields
                    .iter()
                    .any(|n| overlaps(n, p) && get(current, n) != get(applied, n))
            })
            .cloned()
            .collect();
        if contested.is_empty() {
            continue;
        }
        if req.force || other.operation != "Apply" {
            // Forced, or an Update manager: ownership moves to this applier.
            for p in &contested {
                other.fields.remove(p);
            }
        } else {
            conflicts.extend(
                contested
                    .iter()
                    .map(|p| (other.manager.clone(), p.join("."))),
            );
        }
    }
    if !conflicts.is_empty() {
        return Err(Conflicts(conflicts));
    }

    let mut result = current.clone();
    for gone in previous.difference(&new_fields) {
        let still_owned = all
            .iter()
            .filter(|m| !mine(m))
            .any(|m| m.fields.iter().any(|p| overlaps(p, gone)));
        let shadowed = new_fields.iter().any(|n| overlaps(n, gone));
        if !still_owned && !shadowed {
            remove(&mut result, gone);
        }
    }
    let mut scoped = applied.clone();
    if let Some(m) = scoped.as_object_mut() {
        for key in ["apiVersion", "kind"] {
            m.remove(key);
        }
        if req.has_status {
            if req.subresource == "status" {
                m.retain(|k, _| k == "status");
            } else {
                m.remove("status");
            }
        }
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| !is_system(&["metadata".to_owned(), k.clone()]));
        }
    }
    merge(&mut result, &scoped);

    let mut entries: Vec<Value> = all
        .into_iter()
        .filter(|m| !mine(m) && !m.fields.is_empty())
        .map(|m| {
            let mut raw = m.raw;
            raw["fieldsV1"] = encode_fields(&m.fields);
            raw
        })
        .collect();
    if !new_fields.is_empty() {
        let mut entry = json!({
            "manager": req.manager,
            "operation": "Apply",
            "apiVersion": req.api_version,
            "time": req.now,
            "fieldsType": "FieldsV1",
            "fieldsV1": encode_fields(&new_fields),
        });
        if !req.subresource.is_empty() {
            entry["subresource"] = json!(req.subresource);
        }
        entries.push(entry);
    }
    if !result.get("metadata").is_some_and(Value::is_object) {
        result["metadata"] = json!({});
    }
    result["metadata"]["managedFields"] = Value::Array(entries);
    Ok(result)
}

/// Records `manager` as an Update manager of the fields that changed between `old` and `new`
/// (kept simple: whole changed leaves), so that appliers can take them over without conflicts.
pub fn record_update(
    old: &Value,
    new: &mut Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    now: &str,
) {
    let before = leaf_paths(old);
    let changed: BTreeSet<FieldPath> = leaf_paths(new)
        .into_iter()
        .filter(|p| !before.contains(p) || get(old, p) != get(new, p))
        .filter(|p| {
            !p.first()
                .is_some_and(|k| k == "metadata" && p.get(1).is_some_and(|f| f == "managedFields"))
        })
        .collect();
    let mut all = managers(old);
    let mut entries: Vec<Value> = Vec::new();
    let mut merged = changed.clone();
    for m in all.drain(..) {
        if m.manager == manager && m.operation == "Update" && m.subresource == subresource {
            merged.extend(m.fields);
            continue;
        }
        let mut raw = m.raw;
        raw["fieldsV1"] = encode_fields(&m.fields);
        entries.push(raw);
    }
    if !merged.is_empty() {
        let mut entry = json!({
            "manager": manager,
            "operation": "Update",
            "apiVersion": api_version,
            "time": now,
            "fieldsType": "FieldsV1",
            "fieldsV1": encode_fields(&merged),
        });
        if !subresource.is_empty() {
            entry["subresource"] = json!(subresource);
        }
        entries.push(entry);
    }
    if new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"]["managedFields"] = Value::Array(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(manager: &'a str, force: bool, sub: &'a str) -> ApplyRequest<'a> {
        ApplyRequest {
            manager,
            force,
            subresource: sub,
            has_status: true,
            api_version: "v1",
            now: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn fields_round_trip() {
        let v = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "spec": {"a": 1, "b": [1, 2], "c": {"d": null}}});
        let paths = leaf_paths(&v);
        assert_eq!(decode_fields(&encode_fields(&paths)), paths);
        assert!(!paths.contains(&vec!["metadata".to_owned(), "name".to_owned()]));
    }

    #[test]
    fn omitted_fields_are_removed_unless_someone_else_owns_them() {
        let empty = json!({});
        let a1 = json!({"metadata": {"name": "x"}, "spec": {"a": 1, "b": 2}});
        let obj = apply(&empty, &a1, &req("one", false, "")).unwrap();
        let b = json!({"metadata": {"name": "x"}, "spec": {"b": 2, "c": 3}});
        let obj = apply(&obj, &b, &req("two", false, "")).unwrap();
        let a2 = json!({"metadata": {"name": "x"}, "spec": {}});
        let obj = apply(&obj, &a2, &req("one", false, "")).unwrap();
        assert_eq!(obj["spec"], json!({"b": 2, "c": 3}));
        let managers: Vec<&str> = obj["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["manager"].as_str().unwrap())
            .collect();
        assert_eq!(managers, ["two"]);
    }

    #[test]
    fn conflicts_unless_forced() {
        let obj = apply(
            &json!({}),
            &json!({"spec": {"a": 1}}),
            &req("one", false, ""),
        )
        .unwrap();
        let err = apply(&obj, &json!({"spec": {"a": 2}}), &req("two", false, "")).unwrap_err();
        assert_eq!(err.0, [("one".to_owned(), "spec.a".to_owned())]);
        // Same value: shared ownership, no conflict.
        apply(&obj, &json!({"spec": {"a": 1}}), &req("two", false, "")).unwrap();
        let obj = apply(&obj, &json!({"spec": {"a": 2}}), &req("two", true, "")).unwrap();
        assert_eq!(obj["spec"]["a"], 2);
        assert_eq!(
            obj["metadata"]["managedFields"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn status_subresource_scope() {
        let obj = apply(
            &json!({"spec": {"a": 1}}),
            &json!({"spec": {"a": 9}, "status": {"phase": "Running"}}),
            &req("kubelet", false, "status"),
        )
        .unwrap();
        assert_eq!(obj["spec"]["a"], 1);
        assert_eq!(obj["status"]["phase"], "Running");
        let obj = apply(
            &obj,
            &json!({"status": {"phase": "X"}, "spec": {"b": 1}}),
            &req("op", false, ""),
        )
        .unwrap();
        assert_eq!(obj["status"]["phase"], "Running");
        assert_eq!(obj["spec"]["b"], 1);
    }

    #[test]
    fn updates_lose_to_appliers_without_conflict() {
        let mut obj = json!({"metadata": {"name": "x"}, "spec": {"a": 1}});
        let old = obj.clone();
        obj["spec"]["a"] = json!(5);
        record_update(&old, &mut obj, "kubectl-edit", "", "v1", "t");
        let obj = apply(&obj, &json!({"spec": {"a": 7}}), &req("op", false, "")).unwrap();
        assert_eq!(obj["spec"]["a"], 7);
    }
}
