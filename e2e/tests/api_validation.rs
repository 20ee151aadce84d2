//! The apiserver itself rejects malformed dbps objects with a message a
//! person can act on: the CRD schema and its CEL rules, not the operator.

use dbps_e2e::TestContext;
use dbps_e2e::operator::install_crds;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

struct Case {
    what: &'static str,
    kind: &'static str,
    /// Created first; the object below is then written as an update of it.
    before: Option<Value>,
    object: Value,
    message: &'static str,
}

fn claim(name: &str, spec: Value) -> Value {
    json!({ "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseClaim", "metadata": { "name": name }, "spec": spec })
}

fn pg(extra: Value) -> Value {
    let mut spec = json!({ "serviceRef": { "name": "orders" }, "engine": "postgres" });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    spec
}

fn server(name: &str, extra: Value) -> Value {
    let mut spec = json!({ "engine": "postgres", "host": "db.example", "adminSecretRef": { "namespace": "dbps", "name": "pg" } });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({ "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseServer", "metadata": { "name": name }, "spec": spec })
}

fn server_case(what: &'static str, name: &str, extra: Value, message: &'static str) -> Case {
    Case {
        what,
        kind: "DatabaseServer",
        before: None,
        object: server(name, extra),
        message,
    }
}

fn cases() -> Vec<Case> {
    let create = |what, name: &str, spec, message| Case {
        what,
        kind: "DatabaseClaim",
        before: None,
        object: claim(name, spec),
        message,
    };
    let update = |what, name: &str, before, after, message| Case {
        what,
        kind: "DatabaseClaim",
        before: Some(claim(name, before)),
        object: claim(name, after),
        message,
    };
    vec![
        create(
            "unknown engine",
            "c1",
            json!({ "serviceRef": { "name": "orders" }, "engine": "mysql" }),
            r#"spec.engine: Unsupported value: "mysql": supported values: "postgres", "mongodb", "influxdb", "opensearch""#,
        ),
        create(
            "missing engine",
            "c2",
            json!({ "serviceRef": { "name": "orders" } }),
            "spec.engine: Required value",
        ),
        create(
            "missing serviceRef",
            "c3",
            json!({ "engine": "postgres" }),
            "spec.serviceRef: Required value",
        ),
        create(
            "serviceRef not a DNS label",
            "c4",
            json!({ "serviceRef": { "name": "Orders_Svc" }, "engine": "postgres" }),
            "spec.serviceRef.name: Invalid value: \"Orders_Svc\": spec.serviceRef.name in body should match",
        ),
        create(
            "claim name with a dot",
            "orders.db",
            pg(json!({})),
            "metadata.name must be a DNS label of at most 40 characters",
        ),
        create(
            "claim name too long",
            "a-claim-name-that-is-much-longer-than-forty-characters",
            pg(json!({})),
            "metadata.name must be a DNS label of at most 40 characters",
        ),
        create(
            "negative size",
            "c7",
            pg(json!({ "storage": { "size": "-1Gi" } })),
            "size must be a positive quantity such as 10Gi",
        ),
        create(
            "garbage size",
            "c8",
            pg(json!({ "storage": { "size": "lots" } })),
            "size must be a positive quantity such as 10Gi",
        ),
        create(
            "zero size",
            "c9",
            pg(json!({ "storage": { "size": "0" } })),
            "size must be a positive quantity such as 10Gi",
        ),
        create(
            "storage with server",
            "c10",
            pg(json!({ "server": { "name": "shared-pg" }, "storage": { "size": "1Gi" } })),
            "storage and resources apply to dedicated instances only",
        ),
        create(
            "resources with server",
            "c11",
            pg(
                json!({ "server": { "name": "shared-pg" }, "resources": { "limits": { "memory": "1Gi" } } }),
            ),
            "storage and resources apply to dedicated instances only",
        ),
        create(
            "unknown deletion policy",
            "c12",
            pg(json!({ "deletionPolicy": "Destroy" })),
            r#"spec.deletionPolicy: Unsupported value: "Destroy": supported values: "Retain", "Delete""#,
        ),
        create(
            "version is not a number",
            "c13",
            pg(json!({ "version": "latest" })),
            "spec.version in body should match",
        ),
        create(
            "database name with capitals",
            "c14",
            pg(json!({ "database": "Orders-DB" })),
            "spec.database in body should match",
        ),
        create(
            "empty server name",
            "c15",
            pg(json!({ "server": { "name": "" } })),
            "spec.server.name in body should be at least 1 chars long",
        ),
        update(
            "engine changed",
            "u1",
            pg(json!({})),
            json!({ "serviceRef": { "name": "orders" }, "engine": "mongodb" }),
            "engine is immutable",
        ),
        update(
            "serviceRef changed",
            "u2",
            pg(json!({})),
            json!({ "serviceRef": { "name": "payments" }, "engine": "postgres" }),
            "serviceRef is immutable: a database cannot change owner",
        ),
        update(
            "server added",
            "u3",
            pg(json!({})),
            pg(json!({ "server": { "name": "shared-pg" } })),
            "server is immutable: placement cannot change after creation",
        ),
        update(
            "storage changed",
            "u4",
            pg(json!({ "storage": { "size": "1Gi" } })),
            pg(json!({ "storage": { "size": "2Gi" } })),
            "storage is immutable",
        ),
        update(
            "database changed",
            "u5",
            pg(json!({ "database": "orders" })),
            pg(json!({ "database": "orders2" })),
            "database is immutable",
        ),
        create(
            "version on a shared claim",
            "c16",
            pg(json!({ "server": { "name": "shared-pg" }, "version": "16" })),
            "version describes a dedicated instance",
        ),
        create(
            "rotation of a dedicated claim more often than a minute",
            "c17",
            pg(json!({ "rotation": { "everySeconds": 30 } })),
            "spec.rotation.everySeconds in body should be greater than or equal to 60",
        ),
        create(
            "rotation more often than a minute",
            "c18",
            pg(json!({ "server": { "name": "shared-pg" }, "rotation": { "everySeconds": 5 } })),
            "spec.rotation.everySeconds in body should be greater than or equal to 60",
        ),
        create(
            "grace period over a day",
            "c19",
            pg(
                json!({ "server": { "name": "shared-pg" }, "rotation": { "gracePeriodSeconds": 90000 } }),
            ),
            "spec.rotation.gracePeriodSeconds in body should be less than or equal to 86400",
        ),
        create(
            "storage class not a DNS name",
            "c20",
            pg(json!({ "storage": { "storageClassName": "Fast_SSD" } })),
            "spec.storage.storageClassName in body should match",
        ),
        update(
            "major downgrade",
            "u6",
            pg(json!({ "version": "17" })),
            pg(json!({ "version": "16" })),
            "a major downgrade cannot start on the data directory of a newer major version",
        ),
        update(
            "major upgrade",
            "u7",
            pg(json!({ "version": "16" })),
            pg(json!({ "version": "17.2" })),
            "a major upgrade of a running instance is refused",
        ),
        update(
            "downgrade from the default version",
            "u8",
            pg(json!({})),
            pg(json!({ "version": "16" })),
            "a major downgrade cannot start",
        ),
        update(
            "version removed, so the default's major applies",
            "u9",
            pg(json!({ "version": "16" })),
            pg(json!({})),
            "a major upgrade of a running instance is refused",
        ),
        update(
            "mongodb major downgrade",
            "u10",
            json!({ "serviceRef": { "name": "orders" }, "engine": "mongodb", "version": "8.0" }),
            json!({ "serviceRef": { "name": "orders" }, "engine": "mongodb", "version": "7.0" }),
            "a major downgrade cannot start",
        ),
        update(
            "influxdb major upgrade",
            "u11",
            json!({ "serviceRef": { "name": "orders" }, "engine": "influxdb" }),
            json!({ "serviceRef": { "name": "orders" }, "engine": "influxdb", "version": "2.7" }),
            "a major upgrade of a running instance is refused",
        ),
        update(
            "server removed",
            "u12",
            pg(json!({ "server": { "name": "shared-pg" } })),
            pg(json!({})),
            "server is immutable",
        ),
        update(
            "version added to a shared claim",
            "u13",
            pg(json!({ "server": { "name": "shared-pg" } })),
            pg(json!({ "server": { "name": "shared-pg" }, "version": "15" })),
            "version describes a dedicated instance",
        ),
        update(
            "storage added",
            "u14",
            pg(json!({})),
            pg(json!({ "storage": { "size": "1Gi" } })),
            "storage is immutable",
        ),
        create(
            "extensions on another engine",
            "x1",
            json!({ "serviceRef": { "name": "orders" }, "engine": "mongodb", "extensions": [{ "name": "pg_partman" }] }),
            "extensions are PostgreSQL's",
        ),
        create(
            "extension in a schema of PostgreSQL's",
            "x2",
            pg(json!({ "extensions": [{ "name": "pg_partman", "schema": "pg_catalog" }] })),
            "pg_* and information_schema are PostgreSQL's own",
        ),
        create(
            "extension name that is not one",
            "x3",
            pg(json!({ "extensions": [{ "name": "pg_partman; DROP DATABASE x" }] })),
            "spec.extensions[0].name in body should match",
        ),
        create(
            "one extension twice",
            "x4",
            pg(
                json!({ "extensions": [{ "name": "citext" }, { "name": "citext", "schema": "x" }] }),
            ),
            "spec.extensions[1]: Duplicate value",
        ),
        update(
            "an extension's schema changed",
            "x5",
            pg(json!({ "extensions": [{ "name": "pg_partman", "schema": "partman" }] })),
            pg(json!({ "extensions": [{ "name": "pg_partman", "schema": "public" }] })),
            "an extension's schema is immutable",
        ),
        create(
            "PCI with Delete",
            "p1",
            pg(
                json!({ "server": { "name": "pg" }, "profile": "PCI", "deletionPolicy": "Delete", "rotation": { "everySeconds": 86400 } }),
            ),
            "profile PCI keeps the data: deletionPolicy must be Retain",
        ),
        create(
            "PCI without rotation",
            "p2",
            pg(json!({ "server": { "name": "pg" }, "profile": "PCI" })),
            "profile PCI rotates credentials at least every 90 days",
        ),
        create(
            "PCI rotating every 100 days",
            "p3",
            pg(
                json!({ "server": { "name": "pg" }, "profile": "PCI", "rotation": { "everySeconds": 8640000 } }),
            ),
            "profile PCI rotates credentials at least every 90 days",
        ),
        create(
            "PCI on a dedicated instance",
            "p4",
            pg(json!({ "profile": "PCI", "rotation": { "everySeconds": 86400 } })),
            "profile PCI needs a PostgreSQL database on a registered DatabaseServer",
        ),
        create(
            "PCI on MongoDB",
            "p5",
            json!({ "serviceRef": { "name": "orders" }, "engine": "mongodb", "server": { "name": "m" }, "profile": "PCI", "rotation": { "everySeconds": 86400 } }),
            "profile PCI needs a PostgreSQL database on a registered DatabaseServer",
        ),
        create(
            "an unknown profile",
            "p6",
            pg(json!({ "server": { "name": "pg" }, "profile": "HIPAA" })),
            r#"spec.profile: Unsupported value: "HIPAA": supported values: "PCI""#,
        ),
        update(
            "PCI removed",
            "p7",
            pg(
                json!({ "server": { "name": "pg" }, "profile": "PCI", "rotation": { "everySeconds": 86400 } }),
            ),
            pg(json!({ "server": { "name": "pg" }, "rotation": { "everySeconds": 86400 } })),
            "profile cannot be removed or changed once set",
        ),
        update(
            "PCI's rotation removed",
            "p8",
            pg(
                json!({ "server": { "name": "pg" }, "profile": "PCI", "rotation": { "everySeconds": 86400 } }),
            ),
            pg(json!({ "server": { "name": "pg" }, "profile": "PCI" })),
            "profile PCI rotates credentials at least every 90 days",
        ),
        create(
            "readers on MongoDB",
            "r1",
            json!({ "serviceRef": { "name": "orders" }, "engine": "mongodb", "readers": [{ "service": "reporting" }] }),
            "readers: read-only grants are made on postgres and influxdb",
        ),
        create(
            "a PostgreSQL reader without tables",
            "r2",
            pg(json!({ "readers": [{ "service": "reporting" }] })),
            "readers: on postgres each reader names the tables or views it may read",
        ),
        create(
            "an InfluxDB reader with tables",
            "r3",
            json!({ "serviceRef": { "name": "orders" }, "engine": "influxdb", "readers": [{ "service": "reporting", "tables": ["cpu"] }] }),
            "readers: InfluxDB and OpenSearch grant read on the whole database",
        ),
        create(
            "the owner as its own reader",
            "r4",
            pg(json!({ "readers": [{ "service": "orders", "tables": ["t"] }] })),
            "readers: the owning Service reads its database already",
        ),
        create(
            "a table name that is not one",
            "r5",
            pg(
                json!({ "readers": [{ "service": "reporting", "tables": ["orders; DROP TABLE x"] }] }),
            ),
            "spec.readers[0].tables[0] in body should match",
        ),
        create(
            "one reader twice",
            "r6",
            pg(
                json!({ "readers": [{ "service": "reporting", "tables": ["a"] }, { "service": "reporting", "tables": ["b"] }] }),
            ),
            "spec.readers[1]: Duplicate value",
        ),
        create(
            "an OpenSearch reader with tables",
            "o2",
            json!({ "serviceRef": { "name": "search" }, "engine": "opensearch", "server": { "name": "os" }, "readers": [{ "service": "reporting", "tables": ["x"] }] }),
            "readers: InfluxDB and OpenSearch grant read on the whole database",
        ),
        server_case(
            "extensions allowed on another engine",
            "ext-mongo",
            json!({ "engine": "mongodb", "allowedExtensions": ["pg_partman"] }),
            "allowedExtensions are PostgreSQL's",
        ),
        server_case(
            "an allowed extension that is not a name",
            "ext-name",
            json!({ "allowedExtensions": ["pg_partman", "x y"] }),
            "allowedExtensions: each entry is an extension's name",
        ),
        server_case(
            "adopting a server's own database",
            "adopt-postgres",
            json!({ "adoptions": [{ "database": "postgres", "claim": { "namespace": "shop", "name": "orders-db" } }] }),
            "a server's own databases cannot be adopted",
        ),
        server_case(
            "adopting the catalog or a name with a dash",
            "adopt-dash",
            json!({ "adoptions": [{ "database": "dbps-catalog", "claim": { "namespace": "shop", "name": "orders-db" } }] }),
            "spec.adoptions[0].database in body should match",
        ),
        server_case(
            "adopting one database twice",
            "adopt-twice",
            json!({ "adoptions": [
                { "database": "legacy", "claim": { "namespace": "shop", "name": "a" } },
                { "database": "legacy", "claim": { "namespace": "shop", "name": "b" } }] }),
            "Duplicate value",
        ),
        server_case(
            "adoption for a claim name that is not a DNS label",
            "adopt-bad-claim",
            json!({ "adoptions": [{ "database": "legacy", "claim": { "namespace": "shop", "name": "Orders_DB" } }] }),
            "spec.adoptions[0].claim.name in body should match",
        ),
        server_case(
            "adoption without a claim",
            "adopt-no-claim",
            json!({ "adoptions": [{ "database": "legacy" }] }),
            "spec.adoptions[0].claim: Required value",
        ),
        Case {
            what: "DatabaseServer without a host",
            kind: "DatabaseServer",
            before: None,
            object: json!({ "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseServer", "metadata": { "name": "no-host" },
                "spec": { "engine": "postgres", "adminSecretRef": { "namespace": "dbps", "name": "pg" } } }),
            message: "spec.host: Required value",
        },
        Case {
            what: "DatabaseServer engine changed",
            kind: "DatabaseServer",
            before: Some(server("engine-change", json!({}))),
            object: json!({ "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseServer", "metadata": { "name": "engine-change" },
                "spec": { "engine": "mongodb", "host": "db.example", "adminSecretRef": { "namespace": "dbps", "name": "pg" } } }),
            message: "engine is immutable",
        },
        Case {
            what: "Service with an empty selector",
            kind: "Service",
            before: None,
            object: json!({ "apiVersion": "dbps.io/v1alpha1", "kind": "Service", "metadata": { "name": "s1" }, "spec": { "selector": {} } }),
            message: "selector must name at least one label",
        },
        Case {
            what: "Service with a bad account name",
            kind: "Service",
            before: None,
            object: json!({ "apiVersion": "dbps.io/v1alpha1", "kind": "Service", "metadata": { "name": "s2" }, "spec": { "serviceAccountName": "Bad_SA" } }),
            message: "spec.serviceAccountName in body should match",
        },
        Case {
            what: "DatabaseServer port out of range",
            kind: "DatabaseServer",
            before: None,
            object: json!({ "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseServer", "metadata": { "name": "bad-port" },
                "spec": { "engine": "postgres", "host": "db.example", "port": 70000, "adminSecretRef": { "namespace": "dbps", "name": "pg" } } }),
            message: "spec.port: Invalid value: 70000: spec.port in body should be less than or equal to 65535",
        },
        Case {
            what: "DatabaseServer with both namespace rules",
            kind: "DatabaseServer",
            before: None,
            object: json!({ "apiVersion": "dbps.io/v1alpha1", "kind": "DatabaseServer", "metadata": { "name": "both-rules" },
                "spec": { "engine": "postgres", "host": "db.example", "adminSecretRef": { "namespace": "dbps", "name": "pg" },
                          "allowedNamespaces": ["a"], "namespaceSelector": { "matchLabels": { "team": "a" } } } }),
            message: "set allowedNamespaces or namespaceSelector, not both",
        },
    ]
}

fn api(ctx: &TestContext, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("dbps.io", "v1alpha1", kind));
    if kind == "DatabaseServer" {
        Api::all_with(ctx.client.clone(), &resource)
    } else {
        Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &resource)
    }
}

#[tokio::test]
async fn malformed_objects_are_rejected_by_the_apiserver_with_a_clear_message() {
    let ctx = TestContext::new("validation").await.unwrap();
    install_crds(&ctx.client).await.unwrap();
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let api = api(&ctx, case.kind);
        let mut object: DynamicObject = serde_json::from_value(case.object.clone()).unwrap();
        let result = match &case.before {
            None => api.create(&PostParams::default(), &object).await,
            Some(before) => {
                let before: DynamicObject = serde_json::from_value(before.clone()).unwrap();
                let created = api
                    .create(&PostParams::default(), &before)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{}: the valid original was refused: {e}", case.what)
                    });
                object.metadata.resource_version = created.metadata.resource_version;
                let name = object.metadata.name.clone().unwrap();
                api.replace(&name, &PostParams::default(), &object).await
            }
        };
        match result {
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(case.message) => {}
            Err(kube::Error::Api(status)) => failures.push(format!(
                "{}: HTTP {} {:?}",
                case.what, status.code, status.message
            )),
            Err(e) => failures.push(format!("{}: {e}", case.what)),
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // Valid objects of every kind pass, so the rules above reject only what they should.
    for object in [
        claim(
            "ok-dedicated",
            pg(
                json!({ "version": "16.4", "database": "orders", "deletionPolicy": "Delete",
            "storage": { "size": "500Mi", "storageClassName": "fast" }, "resources": { "requests": { "cpu": "250m" } } }),
            ),
        ),
        claim(
            "ok-shared",
            pg(json!({ "server": { "name": "shared-pg" } })),
        ),
        claim(
            "ok-dedicated-rotation",
            pg(json!({ "rotation": { "everySeconds": 86400, "gracePeriodSeconds": 600 } })),
        ),
        claim(
            "ok-dedicated-opensearch",
            json!({ "serviceRef": { "name": "search" }, "engine": "opensearch", "version": "2.19.4" }),
        ),
    ] {
        let o: DynamicObject = serde_json::from_value(object).unwrap();
        api(&ctx, "DatabaseClaim")
            .create(&PostParams::default(), &o)
            .await
            .unwrap();
    }
    let adopting = server(
        "ok-adoptions",
        json!({ "adoptions": [{ "database": "legacy_orders", "claim": { "namespace": "shop", "name": "orders-db" } }] }),
    );
    api(&ctx, "DatabaseServer")
        .create(
            &PostParams::default(),
            &serde_json::from_value(adopting).unwrap(),
        )
        .await
        .unwrap();
    // A minor change of the same major version rolls.
    let claims = api(&ctx, "DatabaseClaim");
    let mut minor = claims.get("ok-dedicated").await.unwrap();
    minor.data["spec"]["version"] = json!("16.6");
    claims
        .replace("ok-dedicated", &PostParams::default(), &minor)
        .await
        .unwrap();
}
