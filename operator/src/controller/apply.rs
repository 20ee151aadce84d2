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
    let mut shape = desired.clone();
    for field in ["data", "stringData"] {
        if let Some(Value::Object(entries)) = shape.get_mut(field) {
            entries.values_mut().for_each(|v| *v = Value::Null);
        }
    }
    let text = serde_json::to_string(&shape).expect("serializable");
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `current` needs no write to become `desired`: it holds every
/// desired value and was applied from the same desired object.
pub fn up_to_date(desired: &Value, current: &Value) -> bool {
    let hash = desired_hash(desired);
    current["metadata"]["annotations"][APPLIED_HASH_ANNOTATION].as_str() == Some(hash.as_str())
        && is_subset(desired, current)
}

/// Applies `desired` unless `current` is [`up_to_date`]; returns the live object.
pub async fn apply<K>(api: &Api<K>, desired: &K, current: Option<K>) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let mut want = serde_json::to_value(desired).expect("serializable");
    let hash = desired_hash(&want);
    if let Some(current) = current {
        let have = serde_json::to_value(&current).expect("serializable");
        if up_to_date(&want, &have) {
            return Ok(current);
        }
    }
    want["metadata"]["annotations"][APPLIED_HASH_ANNOTATION] = Value::String(hash);
    let name = desired.name_any();
    tracing::debug!(%name, "apply");
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(want),
    )
    .await
}

/// Reads `name` then applies `desired` when it differs.
pub async fn ensure<K>(api: &Api<K>, desired: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    let current = api.get_opt(&desired.name_any()).await?;
    apply(api, desired, current).await
}

/// Writes the status `desired` computes for an object when it differs from
/// the object's: first compared with the cached copy, then (the cache may not
/// show the last write yet) with the live object. Server-side applied by
/// `dbps-operator`. Returns the live status it replaced, or `None` when
/// nothing was written.
pub async fn patch_status_if_changed<K, S>(
    api: &Api<K>,
    cached: &K,
    status_of: impl Fn(&K) -> S,
    desired: impl Fn(&K) -> S,
) -> Result<Option<S>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: PartialEq + Serialize,
{
    if desired(cached) == status_of(cached) {
        return Ok(None);
    }
    let name = cached.name_any();
    let Some(live) = api.get_opt(&name).await? else {
        return Ok(None);
    };
    let (current, status) = (status_of(&live), desired(&live));
    if status == current {
        return Ok(None);
    }
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
    Ok(Some(current))
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
