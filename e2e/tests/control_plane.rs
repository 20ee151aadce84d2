//! The local control plane behaves like Kubernetes: schema validation, RBAC,
//! scheduling onto kwok nodes, garbage collection.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::json;

use dbps_e2e::TestContext;

const WAIT: Duration = Duration::from_secs(90);

fn from<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("valid fixture")
}

async fn wait<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn apiserver_is_ready_and_reports_pinned_version() {
    let ctx = TestContext::new("health").await.unwrap();
    let readyz = ctx
        .client
        .request_text(http::Request::get("/readyz?verbose").body(vec![]).unwrap())
        .await
        .unwrap();
    assert!(readyz.contains("readyz check passed"), "{readyz}");
    let version = ctx.client.apiserver_version().await.unwrap();
    let pinned = dbps_e2e::binaries::Versions::pinned().kubernetes;
    assert_eq!(version.git_version, pinned);
}

#[tokio::test]
async fn crd_becomes_established_and_its_schema_rejects_bad_objects() {
    let ctx = TestContext::new("crd").await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(ctx.client.clone());
    let crd: CustomResourceDefinition = from(json!({
        "metadata": { "name": "widgets.e2e.dbps.io" },
        "spec": {
            "group": "e2e.dbps.io",
            "scope": "Namespaced",
            "names": { "plural": "widgets", "singular": "widget", "kind": "Widget" },
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": { "size": { "type": "integer", "minimum": 1 } }
                    }}
                }}
            }]
        }
    }));
    crds.create(&PostParams::default(), &crd).await.unwrap();
    wait(
        "CRD Established",
        await_condition(
            crds,
            "widgets.e2e.dbps.io",
            conditions::is_crd_established(),
        ),
    )
    .await
    .unwrap();

    let gvk = GroupVersionKind::gvk("e2e.dbps.io", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        &ctx.namespace,
        &ApiResource::from_gvk(&gvk),
    );
    let widget = |name: &str, size: serde_json::Value| -> DynamicObject {
        from(json!({
            "apiVersion": "e2e.dbps.io/v1", "kind": "Widget",
            "metadata": { "name": name }, "spec": { "size": size }
        }))
    };
    // The CRD was just established; discovery may lag a moment.
    let mut created = None;
    for _ in 0..50 {
        match widgets
            .create(&PostParams::default(), &widget("good", json!(3)))
            .await
        {
            Ok(w) => {
                created = Some(w);
                break;
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("valid widget refused: {e}"),
        }
    }
    assert_eq!(created.expect("valid widget created").name_any(), "good");

    for (name, size, expect) in [
        ("zero", json!(0), "should be greater than or equal to 1"),
        ("text", json!("big"), "must be of type integer"),
    ] {
        let err = widgets
            .create(&PostParams::default(), &widget(name, size))
            .await
            .expect_err("invalid widget accepted");
        let kube::Error::Api(status) = err else {
            panic!("unexpected error {err}")
        };
        assert_eq!(status.code, 422, "{status:?}");
        assert!(status.message.contains(expect), "{}", status.message);
    }
}

#[tokio::test]
async fn rbac_denies_until_a_role_binding_allows() {
    let ctx = TestContext::new("rbac").await.unwrap();
    let alice = ctx
        .plane()
        .client_for("alice", &["developers"])
        .await
        .unwrap();
    let as_alice: Api<ConfigMap> = Api::namespaced(alice, &ctx.namespace);

    let err = as_alice.list(&Default::default()).await.unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("unexpected error {err}")
    };
    assert_eq!(status.code, 403);
    assert!(
        status
            .message
            .contains("User \"alice\" cannot list resource \"configmaps\""),
        "{}",
        status.message
    );

    let role: Role = from(json!({
        "metadata": { "name": "read-configmaps" },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"] }]
    }));
    let binding: RoleBinding = from(json!({
        "metadata": { "name": "developers-read-configmaps" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "developers" }]
    }));
    ctx.api::<Role>()
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    ctx.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // The authorizer's cache follows the binding within moments.
    let allowed = wait("RBAC to allow alice", async {
        loop {
            if as_alice.list(&Default::default()).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    allowed.await;
    // The grant is exactly list: writing is still refused.
    let cm: ConfigMap = from(json!({ "metadata": { "name": "x" } }));
    let err = as_alice
        .create(&PostParams::default(), &cm)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err}"
    );
}

#[tokio::test]
async fn statefulset_gets_a_volume_and_its_pod_is_scheduled_on_a_kwok_node_and_becomes_ready() {
    let ctx = TestContext::new("sts").await.unwrap();
    let sts: StatefulSet = from(json!({
        "metadata": { "name": "db" },
        "spec": {
            "replicas": 1,
            "serviceName": "db",
            "selector": { "matchLabels": { "app": "db" } },
            "template": {
                "metadata": { "labels": { "app": "db" } },
                "spec": { "containers": [{
                    "name": "db", "image": "postgres:18",
                    "volumeMounts": [{ "name": "data", "mountPath": "/var/lib/postgresql" }]
                }] }
            },
            "volumeClaimTemplates": [{
                "metadata": { "name": "data" },
                "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } }
            }]
        }
    }));
    let api = ctx.api::<StatefulSet>();
    api.create(&PostParams::default(), &sts).await.unwrap();
    let ready = wait(
        "StatefulSet readyReplicas 1",
        await_condition(api, "db", |s: Option<&StatefulSet>| {
            s.and_then(|s| s.status.as_ref())
                .and_then(|s| s.ready_replicas)
                == Some(1)
        }),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ready.status.unwrap().ready_replicas, Some(1));

    let pod = ctx
        .api::<k8s_openapi::api::core::v1::Pod>()
        .get("db-0")
        .await
        .unwrap();
    let node = pod.spec.unwrap().node_name.unwrap();
    assert!(node.starts_with("kwok-node-"), "scheduled on {node}");
    let ip = pod.status.unwrap().pod_ip.unwrap();
    assert!(ip.starts_with("127."), "pod IP {ip} is not loopback");
    // The default StorageClass provisioned and bound the volume.
    let pvc = ctx
        .api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>()
        .get("data-db-0")
        .await
        .unwrap();
    assert_eq!(
        pvc.spec.unwrap().storage_class_name.as_deref(),
        Some(dbps_e2e::control_plane::STORAGE_CLASS)
    );
    assert_eq!(pvc.status.unwrap().phase.as_deref(), Some("Bound"));
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() {
    let ctx = TestContext::new("gc").await.unwrap();
    let cms = ctx.api::<ConfigMap>();
    let owner = cms
        .create(
            &PostParams::default(),
            &from(json!({ "metadata": { "name": "owner" } })),
        )
        .await
        .unwrap();
    let dependent: ConfigMap = from(json!({
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap",
                "name": "owner", "uid": owner.uid().unwrap()
            }]
        }
    }));
    let dependent = cms
        .create(&PostParams::default(), &dependent)
        .await
        .unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let uid = dependent.uid().unwrap();
    wait(
        "dependent to be collected",
        await_condition(cms.clone(), "dependent", conditions::is_deleted(&uid)),
    )
    .await
    .unwrap();
}
