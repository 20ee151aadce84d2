//! The admin Secret (instance superuser, for the operator) and the
//! servicebinding.io binding Secret (for the service).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::{Inputs, names};
use crate::engines::{PASSWORD_KEY, USERNAME_KEY};

/// Passwords of an instance: its superuser (dedicated only) and the app user
/// of the credentials generation in force.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub admin_password: String,
    pub app_password: String,
    /// What a dedicated instance reads besides its superuser's password.
    pub instance: InstanceFiles,
}

/// What a dedicated instance reads from its admin Secret besides the
/// superuser's password: its TLS, when it serves TLS only, and its files
/// (see [`crate::engines::InstanceFile`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceFiles {
    pub tls: Option<super::tls::InstanceTls>,
    /// (key in the admin Secret, contents).
    pub files: Vec<(&'static str, String)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// Value of the servicebinding.io `provider` key.
pub const PROVIDER: &str = "dbps";

pub fn admin_secret(inputs: &Inputs) -> Secret {
    let engine = inputs.claim.spec.engine;
    Secret {
        metadata: inputs.meta(
            names::admin_secret(&inputs.claim_name()),
            "admin-credentials",
        ),
        type_: Some("Opaque".into()),
        data: Some({
            let instance = &inputs.credentials.instance;
            let mut data = data([
                (USERNAME_KEY, engine.admin_username().to_string()),
                (PASSWORD_KEY, inputs.credentials.admin_password.clone()),
            ]);
            data.extend(
                instance
                    .tls
                    .iter()
                    .flat_map(|t| t.entries())
                    .chain(instance.files.iter().cloned())
                    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes()))),
            );
            data
        }),
        ..Default::default()
    }
}

/// Where and as whom the service connects.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    /// TLS to the server, with the CA (PEM) to verify it when not a public one.
    pub tls: Option<Option<String>>,
}

impl Inputs<'_> {
    /// The endpoint of a dedicated instance, for credentials generation `generation`.
    pub fn dedicated_endpoint(&self, generation: i64) -> Endpoint {
        let engine = self.claim.spec.engine;
        let database = self.claim.database_name();
        Endpoint {
            host: self.host(),
            port: engine.instance().port(),
            username: engine.app_username(&database, generation),
            database,
            tls: None,
        }
    }
}

/// The servicebinding.io Secret for `endpoint` and the app password, of
/// credentials generation `generation` (rotations so far). Generation 0 is
/// `<claim>-binding`, the stable binding: after each rotation it is written
/// again with the credentials in force, so a pod that mounts it sees them
/// without a restart. Later ones are `<claim>-binding-<n>` and immutable:
/// `status.binding.name` names the one in force, so a ServiceBinding
/// controller re-projects on a rotation, as servicebinding.io expects.
pub fn binding_secret_generation(inputs: &Inputs, endpoint: &Endpoint, generation: i64) -> Secret {
    let engine = inputs.claim.spec.engine;
    let password = inputs.credentials.app_password.clone();
    let Endpoint {
        host,
        port,
        database,
        username,
        tls,
    } = endpoint.clone();
    let uri = engine.uri_with_tls(&username, &password, &host, port, &database, tls.is_some());
    let mut secret = Secret {
        metadata: inputs.meta(
            names::binding_secret_of(&inputs.claim_name(), generation),
            "binding",
        ),
        type_: Some(format!(
            "servicebinding.io/{}",
            engine.instance().binding_type()
        )),
        immutable: (generation > 0).then_some(true),
        data: Some(data([
            ("type", engine.instance().binding_type().to_string()),
            ("provider", PROVIDER.to_string()),
            ("host", host),
            ("port", port.to_string()),
            ("database", database),
            (USERNAME_KEY, username),
            (PASSWORD_KEY, password),
            ("uri", uri),
        ])),
        ..Default::default()
    };
    // servicebinding.io optional keys for TLS: the CA, and the engine's own.
    let entries = secret.data.get_or_insert_with(Default::default);
    for (key, value) in engine.instance().binding_entries(&endpoint.database) {
        entries.insert(key.to_string(), ByteString(value.into_bytes()));
    }
    if let Some(ca) = tls.as_ref().and_then(Option::as_ref) {
        entries.insert("ca.crt".into(), ByteString(ca.clone().into_bytes()));
    }
    if tls.is_some() {
        for (key, value) in engine.instance().tls_binding_entries() {
            entries.insert(key.to_string(), ByteString(value.as_bytes().to_vec()));
        }
    }
    secret
}

/// Label of a reader's binding Secret: the namespace of the claim that issued it.
pub const CLAIM_NAMESPACE_LABEL: &str = "dbps.io/claim-namespace";

/// The binding Secret of the read-only user of Service `namespace/reader`:
/// the servicebinding.io keys of a binding, in the reader's namespace,
/// labelled for the reading Service (the ownership table puts it, not the
/// claim's owner, in front of it) and for the claim that issued it. No
/// owner reference (it may live in another namespace): the claim deletes it.
pub fn reader_secret(
    inputs: &Inputs,
    endpoint: &Endpoint,
    namespace: &str,
    reader: &str,
) -> Secret {
    let mut secret = binding_secret_generation(inputs, endpoint, 0);
    secret.metadata.name = Some(names::reader_secret(
        &inputs.namespace(),
        &inputs.claim_name(),
        namespace,
        reader,
    ));
    secret.metadata.namespace = Some(namespace.into());
    secret.metadata.owner_references = None;
    let labels = secret.metadata.labels.get_or_insert_with(Default::default);
    labels.insert(crate::api::SERVICE_LABEL.into(), reader.into());
    labels.insert(CLAIM_NAMESPACE_LABEL.into(), inputs.namespace());
    labels.insert(
        "app.kubernetes.io/component".into(),
        "reader-binding".into(),
    );
    secret
}

/// Why `secret`, found under the name of a reader's binding, is not the
/// claim's to write: `None` when dbps made it for this claim and reader.
pub fn foreign_reader_secret(secret: &Secret, inputs: &Inputs, reader: &str) -> Option<String> {
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    let ours = labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some(super::MANAGED_BY)
        && labels.get(crate::api::CLAIM_LABEL) == Some(&inputs.claim_name())
        && labels.get(CLAIM_NAMESPACE_LABEL) == Some(&inputs.namespace())
        && labels.get(crate::api::SERVICE_LABEL).map(String::as_str) == Some(reader)
        && secret
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(|o| o.is_empty());
    (!ours).then(|| {
        format!(
            "Secret {:?} in namespace {:?} exists and was not made by dbps for this claim's reader {reader:?}; nothing was changed. Give the claim another name, or remove the Secret",
            secret.metadata.name.clone().unwrap_or_default(),
            secret.metadata.namespace.clone().unwrap_or_default(),
        )
    })
}

fn data<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, ByteString> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect()
}

/// A string value of a Secret.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    fn decoded(secret: &Secret) -> BTreeMap<String, String> {
        secret
            .data
            .as_ref()
            .unwrap()
            .keys()
            .map(|k| (k.clone(), secret_value(secret, k).unwrap()))
            .collect()
    }

    #[test]
    fn binding_secret_follows_servicebinding_io() {
        let json = build_json(ORDERS_CLAIM, ORDERS_SERVICE, |i| {
            binding_secret_generation(i, &i.dedicated_endpoint(0), 0)
        });
        let secret: Secret = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(
            secret.type_.as_deref(),
            Some("servicebinding.io/postgresql")
        );
        assert_eq!(json["metadata"]["name"], "orders-db-binding");
        assert_eq!(json["metadata"]["labels"]["dbps.io/service"], "orders");
        assert_eq!(json["metadata"]["labels"]["dbps.io/claim"], "orders-db");
        assert_eq!(
            json["metadata"]["ownerReferences"][0]["kind"],
            "DatabaseClaim"
        );
        assert_eq!(json["metadata"]["ownerReferences"][0]["controller"], true);
        let expected: BTreeMap<String, String> = [
            ("type", "postgresql"),
            ("provider", "dbps"),
            ("host", "orders-db.shop.svc.cluster.local"),
            ("port", "5432"),
            ("database", "orders_db"),
            ("username", "orders_db_app"),
            ("password", "app-secret-pw"),
            ("uri", "postgresql://orders_db_app:app-secret-pw@orders-db.shop.svc.cluster.local:5432/orders_db"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(decoded(&secret), expected);
    }

    #[test]
    fn admin_secret_holds_the_superuser_only() {
        let json = build_json(ORDERS_CLAIM, ORDERS_SERVICE, admin_secret);
        let secret: Secret = serde_json::from_value(json).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("orders-db-admin"));
        let values = decoded(&secret);
        assert_eq!(values.len(), 2);
        assert_eq!(values["username"], "dbps_admin");
        assert_eq!(values["password"], "admin-secret-pw");
    }

    #[test]
    fn a_rotation_binds_the_other_user_in_an_immutable_secret() {
        let json = build_json(ORDERS_CLAIM, ORDERS_SERVICE, |i| {
            binding_secret_generation(i, &i.dedicated_endpoint(1), 1)
        });
        let secret: Secret = serde_json::from_value(json).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("orders-db-binding-1"));
        assert_eq!(secret.immutable, Some(true));
        assert_eq!(decoded(&secret)["username"], "orders_db_app2");
    }

    #[test]
    fn credentials_never_print() {
        assert_eq!(format!("{:?}", credentials()), "Credentials { .. }");
    }
}
