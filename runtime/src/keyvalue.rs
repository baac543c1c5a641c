//! wasi:keyvalue for one workload: small buckets, bounded in size, persisted under the state dir so a
//! component keeps its state across restarts.
//!
//! Each bucket is one JSON file (`<dir>/<bucket>.json`, values hex-encoded) rewritten atomically on every
//! change: the stores are small, and a restart must never see a half-written file. Instances of the same
//! workload in one process share the store (one per directory), so their writes do not overwrite each
//! other.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use wasmtime::component::{Resource, ResourceTable};

use crate::Error;
use crate::world::bindings::wasi::keyvalue::{atomics, batch, store};

/// A bucket handle held by the guest: the name of an open bucket.
pub struct Bucket {
    name: String,
}

/// All buckets of one workload.
pub(crate) struct KeyValueStore {
    dir: Option<PathBuf>,
    max_bytes: u64,
    buckets: Mutex<HashMap<String, BTreeMap<String, Vec<u8>>>>,
}

/// Stores by directory, so instances of one workload share theirs.
static OPEN: Mutex<Option<HashMap<PathBuf, Weak<KeyValueStore>>>> = Mutex::new(None);

impl KeyValueStore {
    /// The store persisted in `dir` (created if missing), or an in-memory one.
    pub(crate) fn open(dir: Option<&Path>, max_bytes: u64) -> Result<Arc<Self>, Error> {
        let Some(dir) = dir else {
            return Ok(Arc::new(Self::new(None, max_bytes)));
        };
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut open = OPEN.lock().expect("not poisoned");
        let open = open.get_or_insert_with(HashMap::new);
        open.retain(|_, store| store.strong_count() > 0);
        if let Some(store) = open.get(dir).and_then(Weak::upgrade) {
            return Ok(store);
        }
        let store = Arc::new(Self::new(Some(dir.to_path_buf()), max_bytes));
        open.insert(dir.to_path_buf(), Arc::downgrade(&store));
        Ok(store)
    }

    fn new(dir: Option<PathBuf>, max_bytes: u64) -> Self {
        Self {
            dir,
            max_bytes,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, bucket: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{bucket}.json")))
    }

    /// Loads a bucket from disk the first time it is opened.
    fn load(&self, bucket: &str) -> Result<(), store::Error> {
        let mut buckets = self.buckets.lock().expect("not poisoned");
        if buckets.contains_key(bucket) {
            return Ok(());
        }
        let mut data = BTreeMap::new();
        if let Some(file) = self.file(bucket) {
            match std::fs::read(&file) {
                Ok(bytes) => {
                    let stored: BTreeMap<String, String> = serde_json::from_slice(&bytes)
                        .map_err(|e| other(format!("{}: {e}", file.display())))?;
                    for (k, v) in stored {
                        let v = hex::decode(v)
                            .map_err(|e| other(format!("{}: {e}", file.display())))?;
                        data.insert(k, v);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(other(format!("{}: {e}", file.display()))),
            }
        }
        buckets.insert(bucket.to_string(), data);
        Ok(())
    }

    fn read<R>(&self, bucket: &str, f: impl FnOnce(&BTreeMap<String, Vec<u8>>) -> R) -> R {
        let buckets = self.buckets.lock().expect("not poisoned");
        f(buckets.get(bucket).expect("loaded at open"))
    }

    /// Applies a change, checks the size bound and persists the bucket; the change is undone when either
    /// fails.
    fn write<R>(
        &self,
        bucket: &str,
        f: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> Result<R, store::Error>,
    ) -> Result<R, store::Error> {
        let mut buckets = self.buckets.lock().expect("not poisoned");
        let before = buckets.get(bucket).expect("loaded at open").clone();
        let result = f(buckets.get_mut(bucket).expect("loaded at open"));
        let result = result.and_then(|r| {
            let used: u64 = buckets
                .values()
                .flat_map(|b| b.iter())
                .map(|(k, v)| (k.len() + v.len()) as u64)
                .sum();
            if used > self.max_bytes {
                return Err(other(format!(
                    "the store is full: {used} bytes would exceed its limit of {} bytes",
                    self.max_bytes
                )));
            }
            self.persist(bucket, &buckets[bucket])?;
            Ok(r)
        });
        if result.is_err() {
            buckets.insert(bucket.to_string(), before);
        }
        result
    }

    fn persist(&self, bucket: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<(), store::Error> {
        let Some(file) = self.file(bucket) else {
            return Ok(());
        };
        let stored: BTreeMap<&str, String> = data
            .iter()
            .map(|(k, v)| (k.as_str(), hex::encode(v)))
            .collect();
        let json = serde_json::to_vec(&stored).expect("strings serialize");
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| other(format!("cannot save {}: {e}", file.display())))
    }
}

fn other(message: String) -> store::Error {
    store::Error::Other(message)
}

/// Bucket names become file names: keep them to a safe alphabet.
fn bucket_name(identifier: &str) -> Result<String, store::Error> {
    if identifier.is_empty() {
        return Ok("default".into());
    }
    let ok = identifier.len() <= 64
        && identifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(identifier.to_string())
    } else {
        Err(store::Error::NoSuchStore)
    }
}

/// The store and the resource table of one guest call.
pub(crate) struct KeyValueView<'a> {
    pub(crate) store: &'a Arc<KeyValueStore>,
    pub(crate) table: &'a mut ResourceTable,
}

impl KeyValueView<'_> {
    fn bucket(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<String> {
        Ok(self.table.get(bucket)?.name.clone())
    }
}

type Outcome<T> = wasmtime::Result<Result<T, store::Error>>;

impl store::Host for KeyValueView<'_> {
    async fn open(&mut self, identifier: String) -> Outcome<Resource<Bucket>> {
        let name = match bucket_name(&identifier) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = self.store.load(&name) {
            return Ok(Err(e));
        }
        Ok(Ok(self.table.push(Bucket { name })?))
    }
}

impl store::HostBucket for KeyValueView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<Option<Vec<u8>>> {
        let name = self.bucket(&bucket)?;
        Ok(Ok(self.store.read(&name, |b| b.get(&key).cloned())))
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Outcome<()> {
        let name = self.bucket(&bucket)?;
        Ok(self.store.write(&name, |b| {
            b.insert(key, value);
            Ok(())
        }))
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<()> {
        let name = self.bucket(&bucket)?;
        Ok(self.store.write(&name, |b| {
            b.remove(&key);
            Ok(())
        }))
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Outcome<bool> {
        let name = self.bucket(&bucket)?;
        Ok(Ok(self.store.read(&name, |b| b.contains_key(&key))))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Outcome<store::KeyResponse> {
        let name = self.bucket(&bucket)?;
        let skip = usize::try_from(cursor.unwrap_or(0)).unwrap_or(usize::MAX);
        let keys = self.store.read(&name, |b| {
            b.keys().skip(skip).cloned().collect::<Vec<String>>()
        });
        Ok(Ok(store::KeyResponse { keys, cursor: None }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Outcome<u64> {
        let name = self.bucket(&bucket)?;
        Ok(self.store.write(&name, |b| {
            let current = match b.get(&key) {
                None => 0,
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| other(format!("the value of {key:?} is not a decimal u64")))?,
            };
            let new = current
                .checked_add(delta)
                .ok_or_else(|| other(format!("incrementing {key:?} overflows")))?;
            b.insert(key, new.to_string().into_bytes());
            Ok(new)
        }))
    }
}

impl batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Outcome<Vec<Option<(String, Vec<u8>)>>> {
        let name = self.bucket(&bucket)?;
        Ok(Ok(self.store.read(&name, |b| {
            keys.into_iter()
                .map(|k| b.get(&k).cloned().map(|v| (k, v)))
                .collect()
        })))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Outcome<()> {
        let name = self.bucket(&bucket)?;
        Ok(self.store.write(&name, |b| {
            b.extend(key_values);
            Ok(())
        }))
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Outcome<()> {
        let name = self.bucket(&bucket)?;
        Ok(self.store.write(&name, |b| {
            for k in &keys {
                b.remove(k);
            }
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_are_file_safe() {
        assert_eq!(bucket_name("").unwrap(), "default");
        assert_eq!(bucket_name("counts_1-a").unwrap(), "counts_1-a");
        for bad in ["../x", "a/b", "a.json", &"x".repeat(65)] {
            assert!(bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_persist_and_respect_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = KeyValueStore::open(Some(dir.path()), 64).unwrap();
            store.load("default").unwrap();
            store
                .write("default", |b| {
                    b.insert("k".into(), b"v".to_vec());
                    Ok(())
                })
                .unwrap();
            let err = store
                .write("default", |b| {
                    b.insert("big".into(), vec![0; 100]);
                    Ok(())
                })
                .unwrap_err();
            assert!(matches!(err, store::Error::Other(m) if m.contains("full")));
            assert!(store.read("default", |b| !b.contains_key("big")));
        }
        let store = KeyValueStore::open(Some(dir.path()), 64).unwrap();
        store.load("default").unwrap();
        assert_eq!(
            store.read("default", |b| b.get("k").cloned()),
            Some(b"v".to_vec())
        );
    }
}
