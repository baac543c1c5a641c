//! The Kubernetes REST surface of the core server: paths, verbs, watch streams, Status errors.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::apply::{self, ApplyRequest};
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Event, EventType, Key, Tx};
use super::{CoreServer, RESOURCES, Resource, discovery, now, resource_index};

/// The axum router serving the core API.
pub fn router(server: CoreServer) -> Router {
    Router::new().fallback(handle).with_state(server)
}

/// A Kubernetes `Status` failure.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }
    fn not_found(r: &Resource, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{}{} \"{name}\" not found", r.plural, group_suffix(r)),
        )
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    fn conflict(r: &Resource, name: &str, why: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}{} \"{name}\": {why}",
                r.plural,
                group_suffix(r)
            ),
        )
    }
    fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16(),
        })
    }
}

fn group_suffix(r: &Resource) -> String {
    if r.group.is_empty() {
        String::new()
    } else {
        format!(".{}", r.group)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, json_headers(), self.status().to_string()).into_response()
    }
}

fn json_headers() -> [(header::HeaderName, &'static str); 1] {
    [(header::CONTENT_TYPE, "application/json")]
}

fn ok(code: StatusCode, v: &Value) -> Response {
    (code, json_headers(), v.to_string()).into_response()
}

/// What a request path names.
#[derive(Debug)]
enum Target {
    ApiVersions,
    GroupList,
    Group(String),
    Resources(String, String),
    Collection(usize, Option<String>),
    Item(usize, String, String, Option<String>),
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Some(Target::ApiVersions),
        ["apis"] => return Some(Target::GroupList),
        ["api", v] => return Some(Target::Resources(String::new(), (*v).to_owned())),
        ["apis", g] => return Some(Target::Group((*g).to_owned())),
        ["apis", g, v] => return Some(Target::Resources((*g).to_owned(), (*v).to_owned())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let r = |plural: &str| resource_index(group, version, plural);
    match rest {
        ["namespaces", ns, plural, tail @ ..] if *plural != "status" && *plural != "finalize" => {
            let i = r(plural)?;
            match tail {
                [] => Some(Target::Collection(i, Some((*ns).to_owned()))),
                [name] => Some(Target::Item(i, (*ns).to_owned(), (*name).to_owned(), None)),
                [name, sub] => Some(Target::Item(
                    i,
                    (*ns).to_owned(),
                    (*name).to_owned(),
                    Some((*sub).to_owned()),
                )),
                _ => None,
            }
        }
        [plural] => Some(Target::Collection(r(plural)?, None)),
        [plural, name] => Some(Target::Item(
            r(plural)?,
            String::new(),
            (*name).to_owned(),
            None,
        )),
        [plural, name, sub] => Some(Target::Item(
            r(plural)?,
            String::new(),
            (*name).to_owned(),
            Some((*sub).to_owned()),
        )),
        _ => None,
    }
}

async fn handle(
    State(server): State<CoreServer>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match dispatch(&server, &method, &uri, &query, &headers, &body) {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(%method, %uri, code = e.code.as_u16(), message = e.message, "core api error");
            e.into_response()
        }
    }
}

fn dispatch(
    server: &CoreServer,
    method: &Method,
    uri: &Uri,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "the server could not find the requested resource ({})",
                uri.path()
            ),
        )
    };
    let target = parse_path(uri.path()).ok_or_else(not_found)?;
    let q = |k: &str| query.get(k).map(String::as_str);
    match (method, target) {
        (&Method::GET, Target::ApiVersions) => Ok(ok(StatusCode::OK, &discovery::api_versions())),
        (&Method::GET, Target::GroupList) => Ok(ok(
            StatusCode::OK,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": discovery::groups()}),
        )),
        (&Method::GET, Target::Group(g)) if super::GROUPS.contains(&g.as_str()) => {
            Ok(ok(StatusCode::OK, &discovery::group(&g)))
        }
        (&Method::GET, Target::Resources(g, v)) => discovery::resources(&g, &v)
            .map(|d| ok(StatusCode::OK, &d))
            .ok_or_else(not_found),
        (&Method::GET, Target::Collection(r, ns)) => {
            let labels = LabelSelector::parse(q("labelSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?;
            let fields = FieldSelector::parse(q("fieldSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?;
            if matches!(q("watch"), Some("true" | "1")) {
                return Ok(watch(server, r, ns, labels, fields, query));
            }
            let (items, rv) = server.store.list(r, ns.as_deref());
            let items: Vec<Value> = items
                .into_iter()
                .filter(|o| visible(o, &labels, &fields))
                .collect();
            let res = &RESOURCES[r];
            Ok(ok(
                StatusCode::OK,
                &json!({
                    "kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items,
                }),
            ))
        }
        (&Method::POST, Target::Collection(r, ns)) => {
            let obj = parse_body(headers, body)?;
            let created = create(server, r, ns.unwrap_or_default(), obj, query)?;
            Ok(ok(StatusCode::CREATED, &created))
        }
        (&Method::DELETE, Target::Collection(r, ns)) => {
            let labels = LabelSelector::parse(q("labelSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?;
            let fields = FieldSelector::parse(q("fieldSelector").unwrap_or_default())
                .map_err(ApiError::bad_request)?;
            let (items, rv) = server.store.list(r, ns.as_deref());
            let mut deleted = Vec::new();
            for o in items.iter().filter(|o| visible(o, &labels, &fields)) {
                let key = key_of(r, o);
                if let Ok(d) = delete_object(server, &key, None) {
                    deleted.push(d);
                }
            }
            let res = &RESOURCES[r];
            Ok(ok(
                StatusCode::OK,
                &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()}, "items": deleted}),
            ))
        }
        (&Method::GET, Target::Item(r, ns, name, Some(sub))) if sub == "log" => {
            pod_log(server, r, &ns, &name, q("container"), q("tailLines"))
        }
        (_, Target::Item(_, _, _, Some(sub))) if sub != "status" => Err(not_found()),
        (&Method::GET, Target::Item(r, ns, name, _)) => server
            .store
            .get(&(r, ns, name.clone()))
            .map(|o| ok(StatusCode::OK, &o))
            .ok_or_else(|| ApiError::not_found(&RESOURCES[r], &name)),
        (&Method::PUT, Target::Item(r, ns, name, sub)) => {
            let obj = parse_body(headers, body)?;
            let key = (r, ns, name);
            let manager = q("fieldManager").unwrap_or("unknown").to_owned();
            let updated = server.store.write(|tx| {
                let old = tx
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| ApiError::not_found(&RESOURCES[r], &key.2))?;
                check_rv(&RESOURCES[r], &key.2, &old, &obj)?;
                commit_update(
                    server,
                    tx,
                    &key,
                    Some(&old),
                    obj,
                    sub.as_deref(),
                    Some(&manager),
                )
            })?;
            Ok(ok(StatusCode::OK, &updated))
        }
        (&Method::PATCH, Target::Item(r, ns, name, sub)) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let patch = parse_body(headers, body)?;
            let key = (r, ns, name);
            let updated = patch_object(server, &key, sub.as_deref(), &content_type, &patch, query)?;
            Ok(ok(StatusCode::OK, &updated))
        }
        (&Method::DELETE, Target::Item(r, ns, name, None)) => {
            let options = if body.is_empty() {
                None
            } else {
                serde_json::from_slice::<Value>(body).ok()
            };
            let mut options = options.unwrap_or_else(|| json!({}));
            if let Some(g) = q("gracePeriodSeconds").and_then(|g| g.parse::<i64>().ok()) {
                options["gracePeriodSeconds"] = json!(g);
            }
            let deleted = delete_object(server, &(r, ns, name), Some(&options))?;
            Ok(ok(StatusCode::OK, &deleted))
        }
        _ => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not supported on {}", uri.path()),
        )),
    }
}

fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.contains("protobuf") || content_type.contains("cbor") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml ({content_type})"
            ),
        ));
    }
    let yaml = content_type.contains("yaml");
    let parsed = if yaml {
        serde_yaml::from_slice::<Value>(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| ApiError::bad_request(format!("cannot decode the request body: {e}")))
}

fn visible(o: &Value, labels: &LabelSelector, fields: &FieldSelector) -> bool {
    labels.matches(o.pointer("/metadata/labels").and_then(Value::as_object)) && fields.matches(o)
}

fn key_of(r: usize, o: &Value) -> Key {
    let s = |p: &str| {
        o.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    (r, s("/metadata/namespace"), s("/metadata/name"))
}

fn check_rv(r: &Resource, name: &str, current: &Value, sent: &Value) -> Result<(), ApiError> {
    match sent
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
    {
        Some(rv)
            if !rv.is_empty()
                && Some(rv)
                    != current
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str) =>
        {
            Err(ApiError::conflict(
                r,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ))
        }
        _ => Ok(()),
    }
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// Fills in what the apiserver sets on create.
fn init_object(r: usize, ns: &str, obj: &mut Value) -> Result<(), ApiError> {
    let res = &RESOURCES[r];
    if !obj.is_object() {
        return Err(ApiError::bad_request("the object is not a JSON object"));
    }
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind);
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let meta = &mut obj["metadata"];
    if meta
        .get("name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        let prefix = meta
            .get("generateName")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("{} is invalid: metadata.name: Required value: name or generateName is required", res.kind)))?;
        meta["name"] = json!(format!("{prefix}{}", random_suffix()));
    }
    if res.namespaced {
        meta["namespace"] = json!(ns);
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    meta["uid"] = json!(uuid::Uuid::new_v4().to_string());
    meta["creationTimestamp"] = json!(now());
    meta["generation"] = json!(1);
    if let Some(m) = meta.as_object_mut() {
        m.remove("deletionTimestamp");
        m.remove("resourceVersion");
    }
    if r == resource_index("", "v1", "pods").expect("pods") {
        let spec = &mut obj["spec"];
        if spec.get("restartPolicy").is_none() {
            spec["restartPolicy"] = json!("Always");
        }
        if spec.get("terminationGracePeriodSeconds").is_none() {
            spec["terminationGracePeriodSeconds"] = json!(30);
        }
        if obj.pointer("/status/phase").is_none() {
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
        }
    }
    Ok(())
}

fn create(
    server: &CoreServer,
    r: usize,
    ns: String,
    mut obj: Value,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let res = &RESOURCES[r];
    if let Some(body_ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
        && res.namespaced
        && !body_ns.is_empty()
        && body_ns != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if res.namespaced && ns.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} must be created in a namespace", res.plural),
        ));
    }
    init_object(r, &ns, &mut obj)?;
    let manager = query
        .get("fieldManager")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    apply::record_update(
        &json!({}),
        &mut obj,
        &manager,
        "",
        &res.api_version(),
        &now(),
    );
    let key = key_of(r, &obj);
    let dry_run = query.contains_key("dryRun");
    server.store.write(|tx| {
        if tx.get(&key).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!(
                    "{}{} \"{}\" already exists",
                    res.plural,
                    group_suffix(res),
                    key.2
                ),
            ));
        }
        if dry_run {
            return Ok(obj);
        }
        Ok(tx.put(key.clone(), obj))
    })
}

fn strip_for_generation(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    v
}

/// Writes `new` over `old` with the apiserver's rules: identity and system metadata kept,
/// status only through /status (for kinds with that subresource), generation bumped on spec
/// changes, and the object removed once it is being deleted and has no finalizers left.
fn commit_update(
    server: &CoreServer,
    tx: &mut Tx<'_>,
    key: &Key,
    old: Option<&Value>,
    mut new: Value,
    sub: Option<&str>,
    update_manager: Option<&str>,
) -> Result<Value, ApiError> {
    let res = &RESOURCES[key.0];
    let Some(old) = old else {
        init_object(key.0, &key.1, &mut new)?;
        return Ok(tx.put(key.clone(), new));
    };
    if !new.get("metadata").is_some_and(Value::is_object) {
        new["metadata"] = json!({});
    }
    new["apiVersion"] = json!(res.api_version());
    new["kind"] = json!(res.kind);
    for field in [
        "name",
        "namespace",
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old["metadata"].get(field) {
            Some(v) => new["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    if res.status {
        if sub == Some("status") {
            let mut merged = old.clone();
            match new.get("status") {
                Some(s) => merged["status"] = s.clone(),
                None => {
                    if let Some(m) = merged.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            merged["metadata"]["managedFields"] = new["metadata"]
                .get("managedFields")
                .cloned()
                .unwrap_or_else(|| json!([]));
            new = merged;
        } else {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    let creating = tx.get(key).is_none();
    if !creating && strip_for_generation(&new) != strip_for_generation(old) {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        new["metadata"]["generation"] = json!(generation + 1);
    }
    if let Some(manager) = update_manager {
        new["metadata"]["managedFields"] = old["metadata"]
            .get("managedFields")
            .cloned()
            .unwrap_or_else(|| json!([]));
        apply::record_update(
            old,
            &mut new,
            manager,
            sub.unwrap_or_default(),
            &res.api_version(),
            &now(),
        );
    }
    let terminating = server
        .terminating
        .lock()
        .expect("terminating lock")
        .contains(key);
    if new.pointer("/metadata/deletionTimestamp").is_some() && !has_finalizers(&new) && !terminating
    {
        tx.put(key.clone(), new);
        return Ok(tx.remove(key).expect("just written"));
    }
    Ok(tx.put(key.clone(), new))
}

fn has_finalizers(o: &Value) -> bool {
    o.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty())
}

fn patch_object(
    server: &CoreServer,
    key: &Key,
    sub: Option<&str>,
    content_type: &str,
    patch: &Value,
    query: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let res = &RESOURCES[key.0];
    let manager = query.get("fieldManager").map(String::as_str);
    let force = query.get("force").is_some_and(|f| f == "true");
    let result = server.store.write(|tx| {
        let old = tx.get(key).cloned();
        if content_type.starts_with("application/apply-patch") {
            let manager = manager.ok_or_else(|| ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"))?;
            let base = if let Some(o) = &old {
                o.clone()
            } else {
                let mut skeleton = json!({"metadata": {"name": key.2}});
                init_object(key.0, &key.1, &mut skeleton)?;
                skeleton
            };
            if let Some(o) = &old {
                check_rv(res, &key.2, o, patch)?;
            }
            let now = now();
            let applied = apply::apply(
                &base,
                patch,
                &ApplyRequest {
                    manager,
                    force,
                    subresource: sub.unwrap_or_default(),
                    has_status: res.status,
                    api_version: &res.api_version(),
                    now: &now,
                },
            )
            .map_err(|c| ApiError::new(StatusCode::CONFLICT, "Conflict", c.to_string()))?;
            let old_or_base = old.unwrap_or(base);
            return commit_update(server, tx, key, Some(&old_or_base), applied, sub, None);
        }
        let old = old.ok_or_else(|| ApiError::not_found(res, &key.2))?;
        check_rv(res, &key.2, &old, patch)?;
        let mut doc = old.clone();
        if content_type.starts_with("application/json-patch") {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            json_patch::patch(&mut doc, &ops).map_err(|e| {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("the JSON patch could not be applied: {e}"))
            })?;
        } else {
            // merge-patch and strategic-merge-patch (lists are replaced, as in a merge patch).
            json_patch::merge(&mut doc, patch);
        }
        commit_update(server, tx, key, Some(&old), doc, sub, Some(manager.unwrap_or("unknown")))
    })?;
    if result.pointer("/metadata/deletionTimestamp").is_some() && server.store.get(key).is_none() {
        collect_dependents(server, &result);
    }
    Ok(result)
}

fn node_ready(tx: &Tx<'_>, node: &str) -> bool {
    let nodes = resource_index("", "v1", "nodes").expect("nodes");
    tx.get(&(nodes, String::new(), node.to_owned()))
        .and_then(|n| n.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// Deletes an object as the apiserver does: finalizers keep it (with a deletionTimestamp), a pod
/// bound to a Ready node waits for its kubelet (which deletes it again with grace 0), anything
/// else goes at once and takes the objects it owns along.
pub(crate) fn delete_object(
    server: &CoreServer,
    key: &Key,
    options: Option<&Value>,
) -> Result<Value, ApiError> {
    let res = &RESOURCES[key.0];
    let grace = options
        .and_then(|o| o.get("gracePeriodSeconds"))
        .and_then(Value::as_i64);
    let (object, removed) = server.store.write(|tx| {
        let mut obj = tx
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(res, &key.2))?;
        if let Some(pre) = options.and_then(|o| o.get("preconditions")) {
            for (field, path) in [
                ("uid", "/metadata/uid"),
                ("resourceVersion", "/metadata/resourceVersion"),
            ] {
                if let Some(want) = pre.get(field).and_then(Value::as_str)
                    && obj.pointer(path).and_then(Value::as_str) != Some(want)
                {
                    return Err(ApiError::conflict(
                        res,
                        &key.2,
                        &format!("Precondition failed: {field}: {want}"),
                    ));
                }
            }
        }
        let mut terminating = server.terminating.lock().expect("terminating lock");
        if CoreServer::is_pod(key) {
            let node = obj
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let grace = grace.unwrap_or_else(|| {
                obj.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            });
            if terminating.contains(key) {
                if grace > 0 {
                    return Ok((obj, false));
                }
                terminating.remove(key);
            } else if grace > 0 && !node.is_empty() && node_ready(tx, node) {
                let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(grace);
                obj["metadata"]["deletionTimestamp"] =
                    json!(at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
                terminating.insert(key.clone());
                return Ok((tx.put(key.clone(), obj), false));
            }
        }
        drop(terminating);
        if has_finalizers(&obj) {
            if obj.pointer("/metadata/deletionTimestamp").is_none() {
                obj["metadata"]["deletionTimestamp"] = json!(now());
                obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                return Ok((tx.put(key.clone(), obj), false));
            }
            return Ok((obj, false));
        }
        Ok((tx.remove(key).expect("present"), true))
    })?;
    if removed {
        collect_dependents(server, &object);
    }
    Ok(object)
}

/// Deletes what the removed object owned, when it has no other owner left.
fn collect_dependents(server: &CoreServer, removed: &Value) {
    let Some(uid) = removed.pointer("/metadata/uid").and_then(Value::as_str) else {
        return;
    };
    for d in server.dependents() {
        let names_it = d.owners.iter().any(|o| o["uid"] == uid);
        let others_alive = d
            .owners
            .iter()
            .filter(|o| o["uid"] != uid)
            .any(|o| o["uid"].as_str().is_some_and(|u| server.has_uid(u)));
        if names_it && !others_alive {
            server.collect(&d);
        }
    }
}

fn watch(
    server: &CoreServer,
    r: usize,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    query: &HashMap<String, String>,
) -> Response {
    let res = RESOURCES[r];
    let initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let since = match query.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(_) if initial_events => None,
        Some(v) => v.parse::<u64>().ok(),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800);
    let start = server.store.watch_from(r, ns.as_deref(), since);
    let line = |kind: &str, object: &Value| {
        let mut s = json!({"type": kind, "object": object}).to_string();
        s.push('\n');
        Bytes::from(s)
    };
    let mut lines = Vec::new();
    let mut last = start.rv;
    match (since, start.backlog) {
        (None, _) => {
            for o in start
                .current
                .iter()
                .filter(|o| visible(o, &labels, &fields))
            {
                lines.push(line("ADDED", o));
            }
            if initial_events {
                lines.push(line(
                    "BOOKMARK",
                    &json!({"kind": res.kind, "apiVersion": res.api_version(), "metadata": {
                        "resourceVersion": start.rv.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"}}}),
                ));
            }
        }
        (Some(_), Some(backlog)) => {
            for e in backlog {
                last = last.max(e.rv);
                if let Some((kind, o)) = visible_event(&e, r, ns.as_deref(), &labels, &fields) {
                    lines.push(line(kind, o));
                }
            }
        }
        (Some(rv), None) => {
            let status = ApiError::new(
                StatusCode::GONE,
                "Expired",
                format!("too old resource version: {rv} ({})", start.rv),
            );
            lines.push(line("ERROR", &status.status()));
            let body = Body::from_stream(futures::stream::iter(
                lines.into_iter().map(Ok::<_, std::io::Error>),
            ));
            return (StatusCode::OK, json_headers(), body).into_response();
        }
    }
    let live = futures::stream::unfold((start.rx, last), move |(mut rx, last)| {
        let (ns, labels, fields) = (ns.clone(), labels.clone(), fields.clone());
        async move {
            loop {
                match rx.recv().await {
                    Ok(e) if e.rv > last => {
                        if let Some((kind, o)) =
                            visible_event(&e, r, ns.as_deref(), &labels, &fields)
                        {
                            let mut s = json!({"type": kind, "object": o}).to_string();
                            s.push('\n');
                            return Some((Bytes::from(s), (rx, e.rv)));
                        }
                    }
                    Ok(_) => {}
                    // Lagging behind or closed: end the watch; the client watches again.
                    Err(_) => return None,
                }
            }
        }
    });
    let stream = futures::stream::iter(lines)
        .chain(live)
        .take_until(tokio::time::sleep(Duration::from_secs(timeout)))
        .map(Ok::<_, std::io::Error>);
    (StatusCode::OK, json_headers(), Body::from_stream(stream)).into_response()
}

/// What a watcher with these filters sees of `e`: a label change can turn a MODIFIED into an
/// ADDED or DELETED for it.
fn visible_event<'e>(
    e: &'e Event,
    r: usize,
    ns: Option<&str>,
    labels: &LabelSelector,
    fields: &FieldSelector,
) -> Option<(&'static str, &'e Value)> {
    if e.resource != r {
        return None;
    }
    if let Some(ns) = ns
        && e.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            != Some(ns)
    {
        return None;
    }
    let now = visible(&e.object, labels, fields);
    let before = e.old.as_ref().is_some_and(|o| visible(o, labels, fields));
    match (e.kind, before, now) {
        (EventType::Modified, true, true) => Some(("MODIFIED", &e.object)),
        (EventType::Modified, false, true) | (EventType::Added, _, true) => {
            Some(("ADDED", &e.object))
        }
        (EventType::Modified, true, false) | (EventType::Deleted, _, true) => {
            Some(("DELETED", &e.object))
        }
        _ => None,
    }
}

fn pod_log(
    server: &CoreServer,
    r: usize,
    ns: &str,
    name: &str,
    container: Option<&str>,
    tail: Option<&str>,
) -> Result<Response, ApiError> {
    let pod = server
        .store
        .get(&(r, ns.to_owned(), name.to_owned()))
        .ok_or_else(|| ApiError::not_found(&RESOURCES[r], name))?;
    let container = match container {
        Some(c) => c.to_owned(),
        None => pod
            .pointer("/spec/containers/0/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    };
    let uid = pod
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let root = server.log_root.lock().expect("log root lock").clone();
    let text = root
        .map(|root| root.join(format!("{ns}_{name}_{uid}")).join(&container))
        .and_then(|dir| crate::kubelet::latest_log(&dir))
        .map(|path| crate::kubelet::read_cri_log(&path))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" has no logs"
            ))
        })?;
    let text = match tail.and_then(|t| t.parse::<usize>().ok()) {
        Some(n) => {
            let lines: Vec<&str> = text.lines().collect();
            let mut s = lines[lines.len().saturating_sub(n)..].join("\n");
            s.push('\n');
            s
        }
        None => text,
    };
    Ok(([(header::CONTENT_TYPE, "text/plain")], text).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let pods = resource_index("", "v1", "pods").unwrap();
        let ns = resource_index("", "v1", "namespaces").unwrap();
        let leases = resource_index("coordination.k8s.io", "v1", "leases").unwrap();
        assert!(
            matches!(parse_path("/api/v1/pods"), Some(Target::Collection(r, None)) if r == pods)
        );
        assert!(
            matches!(parse_path("/api/v1/namespaces/a/pods"), Some(Target::Collection(r, Some(n))) if r == pods && n == "a")
        );
        assert!(
            matches!(parse_path("/api/v1/namespaces/a/pods/p/status"), Some(Target::Item(r, n, p, Some(s))) if r == pods && n == "a" && p == "p" && s == "status")
        );
        assert!(
            matches!(parse_path("/api/v1/namespaces/a"), Some(Target::Item(r, n, p, None)) if r == ns && n.is_empty() && p == "a")
        );
        assert!(
            matches!(parse_path("/api/v1/namespaces/a/status"), Some(Target::Item(r, _, p, Some(_))) if r == ns && p == "a")
        );
        assert!(
            matches!(parse_path("/apis/coordination.k8s.io/v1/namespaces/x/leases/l"), Some(Target::Item(r, ..)) if r == leases)
        );
        assert!(parse_path("/apis/example.com/v1/things").is_none());
    }
}
