//! Applying YAML manifests (several documents) the way `kubectl apply
//! --server-side` does.

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{Scope, pinned_kind};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::Error;

/// Server-side applies every document of `yaml`; namespaced objects land in
/// `namespace`. Returns `kind/name` of each object, in order.
pub async fn apply_yaml(
    client: &Client,
    namespace: &str,
    yaml: &str,
) -> Result<Vec<String>, Error> {
    let mut applied = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(document)
            .map_err(|e| Error::Wait(format!("manifest is not YAML: {e}")))?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value)
            .map_err(|e| Error::Wait(format!("manifest is not a Kubernetes object: {e}")))?;
        let types = object
            .types
            .clone()
            .ok_or_else(|| Error::Wait("manifest without apiVersion/kind".into()))?;
        let gvk = GroupVersionKind::try_from(&types).map_err(|e| Error::Wait(e.to_string()))?;
        let (resource, caps) = pinned_kind(client, &gvk).await?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(client.clone(), namespace, &resource),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = object.name_any();
        api.patch(
            &name,
            &PatchParams::apply("dbps-e2e").force(),
            &Patch::Apply(&object),
        )
        .await?;
        applied.push(format!("{}/{name}", gvk.kind));
    }
    Ok(applied)
}

/// `yaml` with every claim made a dedicated instance placed as `placement`
/// says: no `server`, the version of the image the target holds for its
/// engine, a volume of the target's StorageClass. Also the claims' names.
pub fn dedicated(yaml: &str, placement: &crate::cluster::Placement) -> (String, Vec<String>) {
    let mut out = Vec::new();
    let mut claims = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let Ok(mut value) = serde_yaml::Value::deserialize(doc) else {
            continue;
        };
        if value["kind"] == "DatabaseClaim" {
            let spec = value["spec"].as_mapping_mut().expect("claim spec");
            spec.remove("server");
            // A compliance profile needs a registered server (its TLS and
            // audit are the platform's): a dedicated instance goes without.
            spec.remove("profile");
            let engine = spec["engine"].as_str().unwrap_or_default().to_string();
            spec.insert("version".into(), placement.version(&engine).into());
            let storage = spec
                .entry("storage".into())
                .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()))
                .as_mapping_mut()
                .expect("storage");
            storage.insert(
                "storageClassName".into(),
                placement.storage_class.clone().into(),
            );
            let name = value["metadata"]["name"].as_str().unwrap_or_default();
            claims.push(name.to_string());
        }
        if !value.is_null() {
            out.push(serde_yaml::to_string(&value).expect("yaml"));
        }
    }
    (out.join("---\n"), claims)
}
