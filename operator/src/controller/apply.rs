//! Server-side apply, skipped when the live object already says everything
//! the desired one does, so a steady-state resync writes nothing.

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

/// Applies `desired` unless `current` already matches it; returns the live object.
pub async fn apply<K>(api: &Api<K>, desired: &K, current: Option<K>) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    if let Some(current) = current {
        let want = serde_json::to_value(desired).expect("serializable");
        let have = serde_json::to_value(&current).expect("serializable");
        if is_subset(&want, &have) {
            return Ok(current);
        }
    }
    let name = desired.name_any();
    tracing::debug!(%name, "apply");
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
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
    fn empty_desired_values_match_absent_ones() {
        assert!(is_subset(&json!({ "emptyDir": {}, "env": [] }), &json!({})));
        assert!(is_subset(
            &json!({ "emptyDir": {} }),
            &json!({ "emptyDir": {} })
        ));
    }
}
