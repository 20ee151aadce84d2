//! Server-side apply, skipped when the live object already says everything
//! the desired one does and was last applied from the same desired object,
//! so a steady-state resync writes nothing while a field dropped from the
//! desired object is pruned from the live one (server-side apply removes
//! fields the manager applied before and applies no more).

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::children::FIELD_MANAGER;

/// True when every field set in `desired` has the same value in `actual`
/// (fields only in `actual`, such as server defaults, don't count). Arrays
/// must match element by element.
pub fn is_subset(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d.iter().all(|(k, v)| match a.get(k) {
            Some(av) => is_subset(v, av),
            None => is_empty(v),
        }),
        (Value::Array(d), Value::Array(a)) => {
            d.len() == a.len() && d.iter().zip(a).all(|(dv, av)| is_subset(dv, av))
        }
        (Value::Array(d), Value::Null) => d.is_empty(),
        (Value::Object(d), Value::Null) => d.is_empty(),
        _ => desired == actual,
    }
}

/// Values the apiserver drops when stored: an empty map, list or null.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Annotation holding a hash of the desired object dbps last applied (Secret
/// values left out): a change of the desired object, a removed field
/// included, changes it.
pub const APPLIED_HASH_ANNOTATION: &str = "dbps.io/applied-hash";

/// Hash of a desired object, Secret values left out (only their keys count:
/// the values are compared by [`is_subset`]).
pub fn desired_hash(desired: &Value) -> String {
    let fields = ["data", "stringData"];
    let text = if fields
        .iter()
        .any(|f| desired.get(f).is_some_and(Value::is_object))
    {
        let mut shape = desired.clone();
        for field in fields {
            if let Some(Value::Object(entries)) = shape.get_mut(field) {
                entries.values_mut().for_each(|v| *v = Value::Null);
            }
        }
        serde_json::to_string(&shape)
    } else {
        serde_json::to_string(desired)
    }
    .expect("serializable");
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `current` needs no write to become `desired`: it holds every
/// desired value and was applied from the same desired object.
pub fn up_to_date(desired: &Value, current: &Value) -> bool {
    applied_from(desired, &desired_hash(desired), current)
}

/// [`up_to_date`], with `hash` the [`desired_hash`] of `desired`.
fn applied_from(desired: &Value, hash: &str, current: &Value) -> bool {
    current["metadata"]["annotations"][APPLIED_HASH_ANNOTATION].as_str() == Some(hash)
        && is_subset(desired, current)
}

/// Applies `desired` unless `current` is [`up_to_date`]; returns the live object.
pub async fn apply<K>(api: &Api<K>, desired: &K, current: Option<K>) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let want = serde_json::to_value(desired).expect("serializable");
    let hash = desired_hash(&want);
    apply_value(api, &desired.name_any(), want, hash, current).await
}

/// [`apply`] of `want`, the desired object as a value, whose
/// [`desired_hash`] is `hash`.
async fn apply_value<K>(
    api: &Api<K>,
    name: &str,
    mut want: Value,
    hash: String,
    current: Option<K>,
) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    if let Some(current) = current {
        let have = serde_json::to_value(&current).expect("serializable");
        if applied_from(&want, &hash, &have) {
            return Ok(current);
        }
    }
    want["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = Value::String(hash);
    tracing::debug!(%name, "apply");
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(want),
    )
    .await
}

/// As [`apply`], for an object whose watch brings a reconcile back: a write
/// is recorded in `own` so that its event does not. A cached copy older than
/// this operator's last write of the object, when that write was applied
/// from the same desired object, needs no write either: the cache has not
/// caught up with it yet (a change someone makes after that write comes as
/// an event of its own, after the write's, and brings the reconcile back).
pub async fn apply_recorded<K>(
    api: &Api<K>,
    desired: &K,
    cached: Option<K>,
    own: &super::caches::OwnWrites,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let want = serde_json::to_value(desired).expect("serializable");
    let hash = desired_hash(&want);
    if let Some(cached) = cached.as_ref().filter(|c| own.applied_since(*c, &hash)) {
        return Ok(cached.clone());
    }
    let before = cached.as_ref().and_then(|c| c.resource_version());
    let live = apply_value(api, &desired.name_any(), want, hash.clone(), cached).await?;
    if live.resource_version() != before {
        own.record_applied(&live, hash);
    }
    Ok(live)
}

/// The statuses this operator wrote lately, by object: the cache may not
/// show a write for a moment, and a reconcile in that moment compares with
/// what was written instead of asking the apiserver. An entry goes once the
/// cache shows it, or after [`WRITTEN_STATUS_TTL`].
#[derive(Default)]
pub struct WrittenStatus {
    entries: std::sync::Mutex<WrittenEntries>,
}

#[derive(Default)]
struct WrittenEntries {
    by_object: std::collections::HashMap<(String, String, String), (Value, std::time::Instant)>,
    swept: Option<std::time::Instant>,
}

/// How long a written status stands in for the cached one.
pub const WRITTEN_STATUS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl WrittenStatus {
    /// The status last written for `key` when the cache (`seen`) does not
    /// show it yet; `None` when the cache shows it (the entry goes) or
    /// nothing was written lately.
    fn recall<S: Serialize + DeserializeOwned>(
        &self,
        key: &(String, String, String),
        seen: &S,
    ) -> Option<S> {
        let mut entries = self.entries.lock().unwrap();
        let (value, at) = entries.by_object.get(key)?;
        let seen = serde_json::to_value(seen).ok()?;
        if *value == seen || at.elapsed() > WRITTEN_STATUS_TTL {
            entries.by_object.remove(key);
            return None;
        }
        serde_json::from_value(value.clone()).ok()
    }

    fn remember<S: Serialize>(&self, key: (String, String, String), status: &S) {
        let Ok(value) = serde_json::to_value(status) else {
            return;
        };
        let now = std::time::Instant::now();
        let mut entries = self.entries.lock().unwrap();
        if entries
            .swept
            .is_none_or(|at| now.duration_since(at) > WRITTEN_STATUS_TTL)
        {
            entries
                .by_object
                .retain(|_, (_, at)| now.duration_since(*at) <= WRITTEN_STATUS_TTL);
            entries.swept = Some(now);
        }
        entries.by_object.insert(key, (value, now));
    }
}

/// A cached object's status, `S::default()` when it has none (for
/// [`patch_status_if_changed`]'s `status_of`): borrowed, not copied.
pub fn status_or_default<S: Clone + Default>(status: &Option<S>) -> std::borrow::Cow<'_, S> {
    status
        .as_ref()
        .map_or_else(Default::default, std::borrow::Cow::Borrowed)
}

/// Writes the status `desired` computes from an object's current status
/// when it differs from it (`desired` answers `None` to leave it as it is).
/// The current status is the cached one, or the one this operator wrote
/// lately when the cache does not show it yet (nothing is read from the
/// apiserver). Server-side applied by `dbps-operator`. Returns the status it
/// replaced, or `None` when nothing was written.
pub async fn patch_status_if_changed<K, S>(
    api: &Api<K>,
    cached: &K,
    written: &WrittenStatus,
    status_of: impl for<'a> FnOnce(&'a K) -> std::borrow::Cow<'a, S>,
    desired: impl FnOnce(&S) -> Option<S>,
) -> Result<Option<S>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: PartialEq + Serialize + DeserializeOwned + Clone,
{
    let name = cached.name_any();
    let key = (
        K::kind(&()).into_owned(),
        cached.namespace().unwrap_or_default(),
        name.clone(),
    );
    let seen = status_of(cached);
    let recalled = written.recall(&key, seen.as_ref());
    let current = recalled.as_ref().unwrap_or(seen.as_ref());
    let Some(status) = desired(current).filter(|status| status != current) else {
        return Ok(None);
    };
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    written.remember(key, &status);
    Ok(Some(recalled.unwrap_or_else(|| seen.into_owned())))
}

/// `obj` with `finalizer`, added now when missing (unless it is being
/// deleted), so the reconcile goes on to do its work rather than wait for
/// the event of its own patch. The patch fails when the list changed since
/// it was read, as kube's finalizer helper's does; a cached copy older than
/// a write of this operator (an object brought back before the watch
/// showed its finalizer) is therefore not patched but read live.
pub async fn with_finalizer<K>(
    api: &Api<K>,
    obj: std::sync::Arc<K>,
    finalizer: &str,
    own: &super::caches::OwnWrites,
) -> Result<std::sync::Arc<K>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
{
    let has = |o: &K| o.meta().finalizers.iter().flatten().any(|f| f == finalizer);
    if has(&obj) || obj.meta().deletion_timestamp.is_some() {
        return Ok(obj);
    }
    let obj = match own.wrote_since(obj.as_ref()) {
        false => obj,
        true => match api.get_opt(&obj.name_any()).await? {
            Some(live) => std::sync::Arc::new(live),
            None => return Ok(obj),
        },
    };
    if has(&obj) || obj.meta().deletion_timestamp.is_some() {
        return Ok(obj);
    }
    let pointer = |p: &str| json_patch::jsonptr::PointerBuf::parse(p).expect("valid pointer");
    let (at, value) = match &obj.meta().finalizers {
        None => ("/metadata/finalizers", serde_json::json!([finalizer])),
        Some(_) => ("/metadata/finalizers/-", serde_json::json!(finalizer)),
    };
    let patch = json_patch::Patch(vec![
        json_patch::PatchOperation::Test(json_patch::TestOperation {
            path: pointer("/metadata/finalizers"),
            value: serde_json::json!(obj.meta().finalizers),
        }),
        json_patch::PatchOperation::Add(json_patch::AddOperation {
            path: pointer(at),
            value,
        }),
    ]);
    let patched = api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?;
    own.record(&patched);
    Ok(std::sync::Arc::new(patched))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_do_not_count_as_differences() {
        let desired = json!({ "spec": { "ports": [{ "port": 5432 }], "type": "ClusterIP" } });
        let actual = json!({ "spec": { "ports": [{ "port": 5432, "protocol": "TCP" }], "type": "ClusterIP", "clusterIP": "10.0.0.9" } });
        assert!(is_subset(&desired, &actual));
    }

    #[test]
    fn a_changed_value_or_a_missing_element_is_a_difference() {
        let desired = json!({ "spec": { "ports": [{ "port": 5432 }] } });
        assert!(!is_subset(
            &desired,
            &json!({ "spec": { "ports": [{ "port": 5433 }] } })
        ));
        assert!(!is_subset(&desired, &json!({ "spec": { "ports": [] } })));
        assert!(!is_subset(&desired, &json!({ "spec": {} })));
        assert!(!is_subset(
            &json!({ "matchLabels": { "a": "1", "b": "2" } }),
            &json!({ "matchLabels": { "a": "1" } })
        ));
    }

    #[test]
    fn a_field_dropped_from_the_desired_object_needs_a_write_that_prunes_it() {
        let before = json!({ "metadata": { "name": "x" }, "spec": { "resources": { "limits": { "memory": "1Gi" }, "requests": { "cpu": "1" } } } });
        let mut live = before.clone();
        live["metadata"]["annotations"] = json!({ APPLIED_HASH_ANNOTATION: desired_hash(&before) });
        assert!(up_to_date(&before, &live), "steady state: no write");
        let after = json!({ "metadata": { "name": "x" }, "spec": { "resources": { "requests": { "cpu": "1" } } } });
        assert!(
            is_subset(&after, &live),
            "the subset rule alone misses the removal"
        );
        assert!(!up_to_date(&after, &live));
        // An object dbps applied before the hash existed is applied once.
        assert!(!up_to_date(&before, &before));
    }

    #[test]
    fn secret_values_do_not_enter_the_hash_but_their_keys_do() {
        let a = json!({ "data": { "password": "c2VjcmV0" } });
        let b = json!({ "data": { "password": "b3RoZXI=" } });
        let c = json!({ "data": { "password": "c2VjcmV0", "ca.crt": "eA==" } });
        assert_eq!(desired_hash(&a), desired_hash(&b));
        assert_ne!(desired_hash(&a), desired_hash(&c));
        let mut live = b.clone();
        live["metadata"] = json!({ "annotations": { APPLIED_HASH_ANNOTATION: desired_hash(&a) } });
        assert!(!up_to_date(&a, &live), "an edited value is restored");
    }

    #[test]
    fn empty_desired_values_match_absent_ones() {
        assert!(is_subset(&json!({ "emptyDir": {}, "env": [] }), &json!({})));
        assert!(is_subset(
            &json!({ "emptyDir": {} }),
            &json!({ "emptyDir": {} })
        ));
    }
}
