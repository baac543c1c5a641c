//! In-memory object store with one resourceVersion counter, an event history for watches that
//! resume from a resourceVersion, and a broadcast of live events.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::broadcast;

/// How many past events a watch can resume from before it gets 410 Gone.
const HISTORY: usize = 10_000;

/// (resource index, namespace or "", name).
pub type Key = (usize, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// A change to one object; `old` is the object before it (for selector transitions).
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    pub resource: usize,
    pub kind: EventType,
    pub object: Value,
    pub old: Option<Value>,
}

#[derive(Debug, Default)]
struct Inner {
    objects: BTreeMap<Key, Value>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
}

/// The store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            tx: broadcast::channel(4096).0,
        }
    }
}

/// A consistent view for starting a watch: the events after `since` and a receiver for what
/// comes next (no gap, no overlap), or `None` when `since` is older than the history.
pub struct WatchStart {
    pub backlog: Option<Vec<Arc<Event>>>,
    pub current: Vec<Value>,
    pub rv: u64,
    pub rx: broadcast::Receiver<Arc<Event>>,
}

impl Store {
    /// Runs `f` with exclusive access to the objects; each change it returns is committed with a
    /// new resourceVersion (written into the object) and broadcast.
    pub fn write<R>(&self, f: impl FnOnce(&mut Tx<'_>) -> R) -> R {
        let mut inner = self.inner.lock().expect("store lock");
        let mut tx = Tx {
            inner: &mut inner,
            events: Vec::new(),
        };
        let result = f(&mut tx);
        let events = std::mem::take(&mut tx.events);
        for event in events {
            let event = Arc::new(event);
            inner.history.push_back(event.clone());
            if inner.history.len() > HISTORY {
                inner.history.pop_front();
            }
            let _ = self.tx.send(event);
        }
        result
    }

    pub fn get(&self, key: &Key) -> Option<Value> {
        self.inner
            .lock()
            .expect("store lock")
            .objects
            .get(key)
            .cloned()
    }

    /// All objects of `resource` (in `namespace` if given) and the current resourceVersion.
    pub fn list(&self, resource: usize, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.inner.lock().expect("store lock");
        let items = inner
            .objects
            .iter()
            .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Every object of every resource, for the garbage collector.
    pub fn all(&self) -> Vec<(Key, Value)> {
        let inner = self.inner.lock().expect("store lock");
        inner
            .objects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn watch_from(
        &self,
        resource: usize,
        namespace: Option<&str>,
        since: Option<u64>,
    ) -> WatchStart {
        let inner = self.inner.lock().expect("store lock");
        let rx = self.tx.subscribe();
        let backlog = since.and_then(|since| {
            let oldest = inner.history.front().map_or(inner.rv, |e| e.rv - 1);
            (since >= oldest || since == inner.rv).then(|| {
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > since)
                    .cloned()
                    .collect()
            })
        });
        let current = if since.is_none() {
            inner
                .objects
                .iter()
                .filter(|((r, ns, _), _)| *r == resource && namespace.is_none_or(|n| n == ns))
                .map(|(_, v)| v.clone())
                .collect()
        } else {
            Vec::new()
        };
        WatchStart {
            backlog,
            current,
            rv: inner.rv,
            rx,
        }
    }
}

/// Changes made inside [`Store::write`].
pub struct Tx<'a> {
    inner: &'a mut Inner,
    events: Vec<Event>,
}

impl Tx<'_> {
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.inner.objects.get(key)
    }

    pub fn keys_of(&self, resource: usize) -> Vec<Key> {
        self.inner
            .objects
            .keys()
            .filter(|(r, _, _)| *r == resource)
            .cloned()
            .collect()
    }

    fn bump(&mut self, object: &mut Value) -> u64 {
        self.inner.rv += 1;
        let rv = self.inner.rv;
        object["metadata"]["resourceVersion"] = Value::String(rv.to_string());
        rv
    }

    /// Creates or replaces the object at `key`.
    pub fn put(&mut self, key: Key, mut object: Value) -> Value {
        let rv = self.bump(&mut object);
        let old = self.inner.objects.insert(key.clone(), object.clone());
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.events.push(Event {
            rv,
            resource: key.0,
            kind,
            object: object.clone(),
            old,
        });
        object
    }

    pub fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut object = self.inner.objects.remove(key)?;
        let rv = self.bump(&mut object);
        self.events.push(Event {
            rv,
            resource: key.0,
            kind: EventType::Deleted,
            object: object.clone(),
            old: None,
        });
        Some(object)
    }
}
