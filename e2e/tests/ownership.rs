//! One database, one owner, at the controller: another Service of the same
//! namespace, asking for the same names, cannot take over, drop or reuse a
//! service's database; a retained volume goes back to its own Service only;
//! what a person edits or deletes of what dbps wrote is repaired, never
//! adopted; removed fields are pruned; a major version never changes in place.

use std::time::Duration;

use dbps_e2e::claims::{grant_of, reason_is};
use dbps_e2e::databases::{Kind, LocalServer, behind_dbps, round_trip};
use dbps_e2e::fixtures::{claim, register, secret, service, wait_event};
use dbps_e2e::{RunningOperator, TestContext};
use dbps_operator::api::{ClaimPhase, DatabaseClaim, DatabaseServer, Engine};
use dbps_operator::engines::Grant;
use dbps_operator::servers::Servers;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn setup(test: &str, resync: Duration) -> (TestContext, RunningOperator) {
    dbps_e2e::fixtures::with_operator(test, resync).await
}

/// The ownership tables' entry for `key`.
async fn table_entry(ctx: &TestContext, key: &str) -> Option<String> {
    dbps_e2e::fixtures::table_entry(&ctx.client, &ctx.namespace, key).await
}

async fn delete_claim(ctx: &TestContext, name: &str) {
    let claims = ctx.api::<DatabaseClaim>();
    claims.delete(name, &DeleteParams::default()).await.unwrap();
    ctx.wait_gone(&claims, name, &format!("{name} deleted"))
        .await;
}

/// Per engine, on a shared server: the takeover, the foreign drop and the
/// reuse of a retained database are refused, and the owner keeps working.
async fn another_service_cannot_take_drop_or_reuse(kind: Kind) {
    let engine = kind.engine();
    let (ctx, _operator) = setup(
        &format!("takeover-{}", engine.as_str()),
        Duration::from_secs(300),
    )
    .await;
    let server = LocalServer::start(kind).await.unwrap();
    let name = format!("{}-srv", ctx.namespace);
    register(&ctx, &name, &server, json!({})).await;
    service(&ctx, "orders", json!({})).await;
    service(&ctx, "intruder", json!({})).await;
    let claims = ctx.api::<DatabaseClaim>();
    let spec = |service: &str, policy: &str| {
        json!({ "serviceRef": { "name": service }, "engine": engine.as_str(),
                "server": { "name": name }, "database": "orders_db", "deletionPolicy": policy })
    };
    claim(&ctx, "orders-db", spec("orders", "Retain")).await;
    ctx.wait_for(&claims, "orders-db", "owner Ready", reason_is("Ready"))
        .await;
    let owner = secret(&ctx, "orders-db-binding").await.unwrap();
    let owned = grant_of(&owner);
    let wrote = round_trip(
        &server,
        engine,
        &owned.database,
        &owned.username,
        &owned.password,
    )
    .await;
    assert!(wrote.is_ok(), "{engine:?}: {wrote:?}");

    // The takeover: another Service's claim names the same database.
    claim(&ctx, "intruder-db", spec("intruder", "Delete")).await;
    let refused = ctx
        .wait_for(
            &claims,
            "intruder-db",
            "takeover refused",
            reason_is("DatabaseOwnedByAnotherClaim"),
        )
        .await;
    let status = refused.status.unwrap();
    assert_eq!(status.phase, Some(ClaimPhase::Failed));
    assert!(status.binding.is_none());
    let message = &status.conditions[0].message;
    assert!(
        message.contains(&format!("claim {}/orders-db", ctx.namespace))
            && message.contains("Service \"orders\""),
        "{message}"
    );
    let (type_, _) = wait_event(&ctx, "intruder-db", "DatabaseOwnedByAnotherClaim").await;
    assert_eq!(type_, "Warning");
    assert_eq!(
        secret(&ctx, "intruder-db-binding").await,
        None,
        "nothing written"
    );
    // Accepted at first (its binding's name is its own, and no Secret of
    // that name is another's), refused by the server: its Service's next
    // pass leaves the name out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while table_entry(&ctx, "secret.intruder-db-binding")
        .await
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a claim refused by the server keeps its name in the table"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let admin = server.admin_connection(engine);
    let servers = Servers::default();
    assert!(
        servers.can_login(&admin, &owned).await,
        "{engine:?}: the owner's password changed"
    );

    // Deleting the refused claim (deletionPolicy Delete) drops nothing of the owner's.
    delete_claim(&ctx, "intruder-db").await;
    let read = round_trip(
        &server,
        engine,
        &owned.database,
        &owned.username,
        &owned.password,
    )
    .await;
    assert!(
        read.is_ok(),
        "{engine:?}: the owner lost its database: {read:?}"
    );
    let (_, note) = wait_event(&ctx, "intruder-db", "Deleted").await;
    assert!(note.contains("dropped nothing"), "{note}");
    let still = claims.get("orders-db").await.unwrap();
    assert!(reason_is("Ready")(Some(&still)));

    // Reuse: the owner's claim is deleted (Retain); a claim of the same
    // name for another Service gets neither the database nor the Secret.
    delete_claim(&ctx, "orders-db").await;
    assert_eq!(
        table_entry(&ctx, "secret.orders-db-binding")
            .await
            .as_deref(),
        Some("orders"),
        "the kept Secret stays fenced for its Service"
    );
    // The kept Secret is looked at first (before anything on the server):
    // it is another Service's.
    claim(&ctx, "orders-db", spec("intruder", "Delete")).await;
    let refused = ctx
        .wait_for(
            &claims,
            "orders-db",
            "reuse refused",
            reason_is("ObjectOwnedByAnotherService"),
        )
        .await;
    let message = &refused.status.unwrap().conditions[0].message;
    assert!(message.contains("kept for Service \"orders\""), "{message}");
    assert_eq!(
        secret(&ctx, "orders-db-binding").await,
        Some(owner.clone()),
        "kept Secret untouched"
    );
    assert_eq!(
        table_entry(&ctx, "secret.orders-db-binding")
            .await
            .as_deref(),
        Some("orders")
    );
    delete_claim(&ctx, "orders-db").await;
    assert!(
        behind_dbps::database_exists(&server, engine, &owned.database)
            .await
            .unwrap()
    );
    assert!(servers.can_login(&admin, &owned).await);

    // The owner comes back under the same name: its database and credentials.
    claim(&ctx, "orders-db", spec("orders", "Delete")).await;
    ctx.wait_for(&claims, "orders-db", "owner back", reason_is("Ready"))
        .await;
    assert_eq!(secret(&ctx, "orders-db-binding").await, Some(owner));
    let read = round_trip(
        &server,
        engine,
        &owned.database,
        &owned.username,
        &owned.password,
    )
    .await;
    assert!(read.is_ok(), "{engine:?}: {read:?}");
    // Now deleted with Delete by its owner, the database goes.
    delete_claim(&ctx, "orders-db").await;
    assert!(!servers.can_login(&admin, &owned).await);
}

#[tokio::test]
async fn postgres_another_service_cannot_take_drop_or_reuse() {
    another_service_cannot_take_drop_or_reuse(Kind::Postgres).await;
}

#[tokio::test]
async fn mongodb_another_service_cannot_take_drop_or_reuse() {
    another_service_cannot_take_drop_or_reuse(Kind::FerretDb).await;
}

#[tokio::test]
async fn influxdb_another_service_cannot_take_drop_or_reuse() {
    another_service_cannot_take_drop_or_reuse(Kind::InfluxDb).await;
}

#[tokio::test]
async fn opensearch_another_service_cannot_take_drop_or_reuse() {
    another_service_cannot_take_drop_or_reuse(Kind::OpenSearch).await;
}

#[tokio::test]
async fn a_database_dbps_did_not_make_is_adopted_only_when_the_platform_allows_it() {
    let (ctx, _operator) = setup("adoption", Duration::from_secs(300)).await;
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let engine = Engine::Postgres;
    let name = format!("{}-srv", ctx.namespace);
    register(&ctx, &name, &server, json!({})).await;
    service(&ctx, "orders", json!({})).await;
    let ns = ctx.namespace.replace('-', "_");
    // Made by hand under the very name dbps would give the claim, and a legacy one.
    let squatted = format!("{ns}_orders_db");
    behind_dbps::create(&server, engine, &squatted, "squatter", "SquatPass1")
        .await
        .unwrap();
    behind_dbps::create(
        &server,
        engine,
        "legacy_orders",
        "legacy_user",
        "LegacyPass1",
    )
    .await
    .unwrap();
    let claims = ctx.api::<DatabaseClaim>();
    let spec = json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "server": { "name": name } });
    claim(&ctx, "orders-db", spec.clone()).await;
    claim(&ctx, "legacy-db", spec.clone()).await;
    let refused = ctx
        .wait_for(
            &claims,
            "orders-db",
            "not adopted",
            reason_is("DatabaseExists"),
        )
        .await;
    let message = refused.status.unwrap().conditions[0].message.clone();
    assert!(message.contains("spec.adoptions"), "{message}");
    assert_eq!(secret(&ctx, "orders-db-binding").await, None);
    let legacy = ctx
        .wait_for(
            &claims,
            "legacy-db",
            "Ready on its own database",
            reason_is("Ready"),
        )
        .await;
    assert_eq!(
        legacy.status.unwrap().database.as_deref(),
        Some(format!("{ns}_legacy_db").as_str())
    );
    let squatter = Grant {
        database: squatted.clone(),
        username: "squatter".into(),
        password: "SquatPass1".into(),
    };
    let admin = server.admin_connection(engine);
    assert!(Servers::default().can_login(&admin, &squatter).await);

    // The platform team lets orders-db adopt its database; a legacy database
    // under another name goes to a claim made for it.
    let servers: Api<DatabaseServer> = Api::all(ctx.client.clone());
    let adoptions = json!({ "spec": { "adoptions": [
        { "database": squatted, "claim": { "namespace": ctx.namespace, "name": "orders-db" } },
        { "database": "legacy_orders", "claim": { "namespace": ctx.namespace, "name": "late-db" } },
    ] } });
    servers
        .patch(&name, &PatchParams::default(), &Patch::Merge(adoptions))
        .await
        .unwrap();
    ctx.wait_for(&claims, "orders-db", "adopted", reason_is("Ready"))
        .await;
    let (_, note) = wait_event(&ctx, "orders-db", "Adopted").await;
    assert!(note.contains(&squatted), "{note}");
    let binding = secret(&ctx, "orders-db-binding").await.unwrap();
    assert_eq!(binding["database"], squatted);
    let used = round_trip(
        &server,
        engine,
        &binding["database"],
        &binding["username"],
        &binding["password"],
    )
    .await;
    assert!(used.is_ok(), "{used:?}");
    // The claim already placed keeps its own database.
    let placed = claims.get("legacy-db").await.unwrap();
    assert_eq!(
        placed.status.unwrap().database.as_deref(),
        Some(format!("{ns}_legacy_db").as_str())
    );

    claim(&ctx, "late-db", spec).await;
    let late = ctx
        .wait_for(&claims, "late-db", "legacy adopted", reason_is("Ready"))
        .await;
    assert_eq!(
        late.status.unwrap().database.as_deref(),
        Some("legacy_orders")
    );
    let binding = secret(&ctx, "late-db-binding").await.unwrap();
    assert_eq!(binding["database"], "legacy_orders");
    let used = round_trip(
        &server,
        engine,
        "legacy_orders",
        &binding["username"],
        &binding["password"],
    )
    .await;
    assert!(used.is_ok(), "{used:?}");
}

#[tokio::test]
async fn a_retained_volume_goes_back_to_its_own_service_only() {
    let (ctx, _operator) = setup("retained-volume", Duration::from_secs(300)).await;
    service(&ctx, "orders", json!({})).await;
    service(&ctx, "intruder", json!({})).await;
    let claims = ctx.api::<DatabaseClaim>();
    let spec = |service: &str, policy: &str| json!({ "serviceRef": { "name": service }, "engine": "postgres", "deletionPolicy": policy });
    claim(&ctx, "orders-db", spec("orders", "Retain")).await;
    // On kwok the instance's pod runs no database: the claim is made and
    // waits for it (the same on real database pods: real_node_dedicated.rs).
    ctx.wait_for(
        &claims,
        "orders-db",
        "provisioned",
        reason_is("InstanceUnreachable"),
    )
    .await;
    let admin = secret(&ctx, "orders-db-admin").await.unwrap();
    let binding = secret(&ctx, "orders-db-binding").await.unwrap();
    delete_claim(&ctx, "orders-db").await;
    let pvcs = ctx.api::<PersistentVolumeClaim>();
    let kept = pvcs.get("data-orders-db-0").await.unwrap();
    assert_eq!(
        kept.metadata.labels.unwrap()["dbps.io/service"],
        "orders",
        "the kept volume remembers its Service"
    );

    // Another Service's claim of the same name: refused, nothing attached.
    claim(&ctx, "orders-db", spec("intruder", "Delete")).await;
    let refused = ctx
        .wait_for(
            &claims,
            "orders-db",
            "refused",
            reason_is("ObjectOwnedByAnotherService"),
        )
        .await;
    let message = refused.status.unwrap().conditions[0].message.clone();
    assert!(message.contains("kept for Service \"orders\""), "{message}");
    wait_event(&ctx, "orders-db", "ObjectOwnedByAnotherService").await;
    let statefulsets = ctx.api::<StatefulSet>();
    assert!(statefulsets.get_opt("orders-db").await.unwrap().is_none());
    assert_eq!(secret(&ctx, "orders-db-admin").await, Some(admin.clone()));
    assert_eq!(
        secret(&ctx, "orders-db-binding").await,
        Some(binding.clone())
    );
    assert_eq!(
        table_entry(&ctx, "secret.orders-db-binding")
            .await
            .as_deref(),
        Some("orders")
    );
    // Deleted with Delete, the refused claim leaves the volume alone.
    delete_claim(&ctx, "orders-db").await;
    assert!(pvcs.get_opt("data-orders-db-0").await.unwrap().is_some());

    // The same Service gets it back, with the credentials it was made with.
    claim(&ctx, "orders-db", spec("orders", "Retain")).await;
    ctx.wait_for(
        &claims,
        "orders-db",
        "reattached",
        reason_is("InstanceUnreachable"),
    )
    .await;
    // (Its Service, made again, has another address: the instance's
    // certificate is issued anew, and the binding carries its new CA.)
    let again = secret(&ctx, "orders-db-admin").await.unwrap();
    for key in ["username", "password", "pg_hba.conf"] {
        assert_eq!(again[key], admin[key], "{key}");
    }
    assert_ne!(again["tls.names"], admin["tls.names"]);
    let rebound = secret(&ctx, "orders-db-binding").await.unwrap();
    assert_eq!(rebound["ca.crt"], again["ca.crt"]);
    let without_ca = |mut values: std::collections::BTreeMap<String, String>| {
        values.remove("ca.crt");
        values
    };
    assert_eq!(without_ca(rebound), without_ca(binding));

    // A Secret a person made under the name dbps would use is not taken over.
    let mine: Secret = serde_json::from_value(
        json!({ "metadata": { "name": "mine-binding" }, "stringData": { "password": "hers" } }),
    )
    .unwrap();
    ctx.api::<Secret>()
        .create(&PostParams::default(), &mine)
        .await
        .unwrap();
    claim(&ctx, "mine", spec("orders", "Delete")).await;
    let refused = ctx
        .wait_for(
            &claims,
            "mine",
            "refused",
            reason_is("ObjectOwnedByAnotherService"),
        )
        .await;
    assert!(
        refused.status.unwrap().conditions[0]
            .message
            .contains("not made by dbps")
    );
    assert_eq!(
        secret(&ctx, "mine-binding").await.unwrap()["password"],
        "hers"
    );
    assert!(statefulsets.get_opt("mine").await.unwrap().is_none());
}

/// Writes `value` to `key` of Secret `name`, as a person would.
async fn edit_secret(ctx: &TestContext, name: &str, key: &str, value: &str) {
    ctx.api::<Secret>()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { key: value } })),
        )
        .await
        .unwrap();
}

async fn wait_secret(
    ctx: &TestContext,
    name: &str,
    what: &str,
    check: impl Fn(&std::collections::BTreeMap<String, String>) -> bool + Send + 'static,
) -> std::collections::BTreeMap<String, String> {
    let secret = ctx
        .wait_for(
            &ctx.api::<Secret>(),
            name,
            what,
            move |s: Option<&Secret>| s.is_some_and(|s| check(&dbps_e2e::claims::secret_values(s))),
        )
        .await;
    dbps_e2e::claims::secret_values(&secret)
}

#[tokio::test]
async fn an_edited_or_deleted_binding_of_a_shared_claim_gets_new_credentials_never_the_edited_ones()
{
    let (ctx, _operator) = setup("drift-shared", Duration::from_secs(2)).await;
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let name = format!("{}-srv", ctx.namespace);
    register(&ctx, &name, &server, json!({})).await;
    service(&ctx, "orders", json!({})).await;
    let claims = ctx.api::<DatabaseClaim>();
    claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "server": { "name": name } }),
    )
    .await;
    ctx.wait_for(&claims, "orders-db", "Ready", reason_is("Ready"))
        .await;
    let issued = secret(&ctx, "orders-db-binding").await.unwrap();
    let admin = server.admin_connection(Engine::Postgres);
    let servers = Servers::default();

    edit_secret(&ctx, "orders-db-binding", "password", "weak").await;
    let repaired = wait_secret(&ctx, "orders-db-binding", "new credentials", |s| {
        s["password"] != "weak"
    })
    .await;
    let (type_, note) = wait_event(&ctx, "orders-db", "BindingSecretEdited").await;
    assert_eq!(type_, "Warning");
    assert!(note.contains("did not use the edited password"), "{note}");
    let weak = Grant {
        password: "weak".into(),
        ..grant_of(&issued)
    };
    assert!(
        !servers.can_login(&admin, &weak).await,
        "the database took the hand-set password"
    );
    assert!(servers.can_login(&admin, &grant_of(&repaired)).await);
    assert!(repaired["uri"].contains(&repaired["password"]));

    ctx.api::<Secret>()
        .delete("orders-db-binding", &DeleteParams::default())
        .await
        .unwrap();
    let rewritten = wait_secret(&ctx, "orders-db-binding", "written again", |_| true).await;
    wait_event(&ctx, "orders-db", "BindingSecretDeleted").await;
    assert!(servers.can_login(&admin, &grant_of(&rewritten)).await);
    let claim = claims.get("orders-db").await.unwrap();
    assert_eq!(
        claim.status.unwrap().binding.unwrap().name,
        "orders-db-binding"
    );

    // After a rotation the stable binding is a copy of the credentials in
    // force: edited, it gets them back (never the edited ones, never new
    // ones that would leave `orders-db-binding-1` stale); deleted, it is
    // written again.
    dbps_e2e::fixtures::request_rotation(&ctx, "orders-db", "1").await;
    ctx.wait_for(
        &claims,
        "orders-db",
        "rotation recorded",
        |c: Option<&DatabaseClaim>| {
            c.and_then(|c| c.status.as_ref()?.credentials.as_ref())
                .is_some_and(|c| c.generation == 1)
        },
    )
    .await;
    let in_force = wait_secret(&ctx, "orders-db-binding-1", "rotated", |_| true).await;
    wait_secret(&ctx, "orders-db-binding", "stable binding rotated", {
        let in_force = in_force.clone();
        move |s| *s == in_force
    })
    .await;
    edit_secret(&ctx, "orders-db-binding", "password", "weak").await;
    wait_secret(&ctx, "orders-db-binding", "credentials in force back", {
        let in_force = in_force.clone();
        move |s| *s == in_force
    })
    .await;
    let told = |events: Vec<(String, String, String)>| {
        events.into_iter().any(|(t, r, n)| {
            t == "Warning" && r == "BindingSecretEdited" && n.contains("credentials in force back")
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !told(dbps_e2e::fixtures::events(&ctx, "orders-db").await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the repair was not told: {:#?}",
            dbps_e2e::fixtures::events(&ctx, "orders-db").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !servers
            .can_login(
                &admin,
                &Grant {
                    password: "weak".into(),
                    ..grant_of(&in_force)
                }
            )
            .await,
        "the database took the hand-set password"
    );
    assert_eq!(
        secret(&ctx, "orders-db-binding-1").await,
        Some(in_force.clone()),
        "the Secret in force was not changed"
    );
    ctx.api::<Secret>()
        .delete("orders-db-binding", &DeleteParams::default())
        .await
        .unwrap();
    wait_secret(&ctx, "orders-db-binding", "stable binding written again", {
        let in_force = in_force.clone();
        move |s| *s == in_force
    })
    .await;
    assert!(servers.can_login(&admin, &grant_of(&in_force)).await);
}

#[tokio::test]
async fn an_edited_or_deleted_secret_of_a_dedicated_claim_is_never_believed() {
    let (ctx, _operator) = setup("drift-dedicated", Duration::from_secs(2)).await;
    service(&ctx, "orders", json!({})).await;
    let claims = ctx.api::<DatabaseClaim>();
    claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres" }),
    )
    .await;
    // On kwok the instance runs no database: the binding is issued and the
    // operator keeps trying to set it on the instance. That the instance
    // then takes the new password: real_node_dedicated.rs.
    let waiting = reason_is("InstanceUnreachable");
    ctx.wait_for(&claims, "orders-db", "provisioned", waiting)
        .await;
    let binding = secret(&ctx, "orders-db-binding").await.unwrap();
    let admin = secret(&ctx, "orders-db-admin").await.unwrap();
    // The superuser and what the instance reads (its certificate, its
    // client authentication file): nothing of the app's.
    let keys: Vec<&str> = admin.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "ca.crt",
            "password",
            "pg_hba.conf",
            "tls.crt",
            "tls.key",
            "tls.names",
            "username"
        ],
        "the admin Secret holds the superuser and the instance's files only"
    );
    assert_eq!(admin["username"], "dbps_admin");
    assert_ne!(admin["password"], binding["password"]);

    // An edited binding gets new credentials, never the edited ones.
    edit_secret(&ctx, "orders-db-binding", "password", "weak").await;
    let issued = binding["password"].clone();
    let repaired = wait_secret(&ctx, "orders-db-binding", "new credentials", move |s| {
        s["password"] != "weak" && s["password"] != issued
    })
    .await;
    let (type_, note) = wait_event(&ctx, "orders-db", "BindingSecretEdited").await;
    assert_eq!(type_, "Warning");
    assert!(note.contains("did not use the edited password"), "{note}");
    assert!(repaired["uri"].contains(&repaired["password"]));

    ctx.api::<Secret>()
        .delete("orders-db-binding", &DeleteParams::default())
        .await
        .unwrap();
    wait_secret(&ctx, "orders-db-binding", "written again", |_| true).await;
    wait_event(&ctx, "orders-db", "BindingSecretDeleted").await;

    // The superuser password exists in no other copy: the edit is refused,
    // not believed and not written over; nothing is applied meanwhile.
    edit_secret(&ctx, "orders-db-admin", "password", "weak").await;
    let flagged = ctx
        .wait_for(
            &claims,
            "orders-db",
            "flagged",
            reason_is("AdminSecretEdited"),
        )
        .await;
    let (type_, note) = wait_event(&ctx, "orders-db", "AdminSecretEdited").await;
    assert_eq!(type_, "Warning");
    assert!(note.contains("does not use another value"), "{note}");
    let status = flagged.status.unwrap();
    assert_eq!(status.phase, Some(ClaimPhase::Failed));
    assert_eq!(
        status.credentials.unwrap().admin_fingerprint,
        Some(dbps_operator::password::fingerprint(
            flagged.metadata.uid.as_deref().unwrap(),
            &admin["password"]
        ))
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        secret(&ctx, "orders-db-admin").await.unwrap()["password"],
        "weak"
    );
    // Put back, it is believed again.
    edit_secret(&ctx, "orders-db-admin", "password", &admin["password"]).await;
    ctx.wait_for(
        &claims,
        "orders-db",
        "clean",
        reason_is("InstanceUnreachable"),
    )
    .await;
}

#[tokio::test]
async fn a_field_removed_from_the_claim_leaves_the_statefulset() {
    let (ctx, _operator) = setup("prune", Duration::from_secs(300)).await;
    service(&ctx, "orders", json!({})).await;
    let claims = ctx.api::<DatabaseClaim>();
    claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres",
                "resources": { "requests": { "cpu": "100m", "memory": "128Mi" }, "limits": { "memory": "256Mi" } } }),
    )
    .await;
    let statefulsets = ctx.api::<StatefulSet>();
    let limits = |s: Option<&StatefulSet>| {
        s.and_then(|s| {
            s.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                .resources
                .clone()
        })
        .and_then(|r| r.limits)
    };
    ctx.wait_for(
        &statefulsets,
        "orders-db",
        "limits set",
        move |s: Option<&StatefulSet>| limits(s).is_some(),
    )
    .await;
    claims
        .patch(
            "orders-db",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "resources": { "limits": null } } })),
        )
        .await
        .unwrap();
    let pruned = ctx
        .wait_for(
            &statefulsets,
            "orders-db",
            "limits pruned",
            move |s: Option<&StatefulSet>| s.is_some() && limits(s).is_none(),
        )
        .await;
    let resources = pruned.spec.unwrap().template.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap();
    assert_eq!(
        resources.requests.unwrap()["memory"].0,
        "128Mi",
        "the rest stays"
    );
}

#[tokio::test]
async fn minor_versions_roll_and_a_major_change_is_refused() {
    let (ctx, _operator) = setup("versions", Duration::from_secs(300)).await;
    service(&ctx, "orders", json!({})).await;
    let claims = ctx.api::<DatabaseClaim>();
    let statefulsets = ctx.api::<StatefulSet>();
    let image = |s: Option<&StatefulSet>| {
        s.and_then(|s| {
            s.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                .image
                .clone()
        })
    };
    claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "version": "16" }),
    )
    .await;
    ctx.wait_for(
        &claims,
        "orders-db",
        "provisioned",
        reason_is("InstanceUnreachable"),
    )
    .await;
    let set = |v: &str| json!({ "spec": { "version": v } });
    for (version, expected) in [
        ("15", "a major downgrade cannot start"),
        ("17", "a major upgrade of a running instance is refused"),
    ] {
        let err = claims
            .patch(
                "orders-db",
                &PatchParams::default(),
                &Patch::Merge(set(version)),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains(expected), "{version}: {err}");
    }
    claims
        .patch(
            "orders-db",
            &PatchParams::default(),
            &Patch::Merge(set("16.4")),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &statefulsets,
        "orders-db",
        "minor rolled",
        move |s: Option<&StatefulSet>| image(s).as_deref() == Some("postgres:16.4"),
    )
    .await;

    // An instance whose image is of another major than the claim asks for
    // (e.g. made when the default was another version) is not rolled over.
    statefulsets
        .patch(
            "orders-db",
            &PatchParams::apply("a-person").force(),
            &Patch::Apply(json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "spec": { "template": { "spec": { "containers": [{ "name": "postgres", "image": "postgres:15" }] } } }
            })),
        )
        .await
        .unwrap();
    let refused = ctx
        .wait_for(
            &claims,
            "orders-db",
            "refused",
            reason_is("MajorVersionChange"),
        )
        .await;
    assert_eq!(refused.status.unwrap().phase, Some(ClaimPhase::Failed));
    let live = statefulsets.get("orders-db").await.unwrap();
    assert_eq!(image(Some(&live)).as_deref(), Some("postgres:15"));
}

/// Services `orders` and `intruder`, and claim `orders-db` of `orders`
/// Ready on a PostgreSQL server (returned: it runs while held).
async fn orders_ready_beside_an_intruder(ctx: &TestContext) -> LocalServer {
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let name = format!("{}-srv", ctx.namespace);
    register(ctx, &name, &server, json!({})).await;
    service(ctx, "orders", json!({})).await;
    service(ctx, "intruder", json!({})).await;
    claim(
        ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "server": { "name": name } }),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(&claims, "orders-db", "owner Ready", reason_is("Ready"))
        .await;
    server
}

#[tokio::test]
async fn an_edited_or_deleted_ownership_table_is_written_back_at_once() {
    // A resync far away: only the table's own watch can bring it back.
    let (ctx, _operator) = setup("table", Duration::from_secs(3600)).await;
    let _server = orders_ready_beside_an_intruder(&ctx).await;
    let tables = ctx.api::<ConfigMap>();
    let entry_is = |owner: &'static str| {
        move |c: Option<&ConfigMap>| {
            c.and_then(|c| c.data.as_ref())
                .and_then(|d| d.get("secret.orders-db-binding"))
                .is_some_and(|v| v == owner)
        }
    };
    let fenced = |c: Option<&ConfigMap>| {
        entry_is("orders")(c)
            && c.and_then(|c| c.metadata.labels.as_ref()).is_some_and(|l| {
                l.get("app.kubernetes.io/component").map(String::as_str) == Some("ownership")
            })
    };
    ctx.wait_for(&tables, "dbps-bindings-orders", "entry", fenced)
        .await;
    assert_eq!(
        tables
            .get("dbps-bindings-intruder")
            .await
            .unwrap()
            .data
            .unwrap_or_default()
            .get("secret.orders-db-binding"),
        None,
        "each Service's table holds its own entries"
    );
    // Past the Services' last gathered writes: nothing is pending when the
    // table is edited.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Someone puts another Service in front of the binding Secret.
    let edit = json!({ "data": { "secret.orders-db-binding": "intruder" } });
    tables
        .patch(
            "dbps-bindings-orders",
            &PatchParams::default(),
            &Patch::Merge(&edit),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &tables,
        "dbps-bindings-orders",
        "entry written back",
        entry_is("orders"),
    )
    .await;
    assert_eq!(
        table_entry(&ctx, "account.intruder").await.as_deref(),
        Some("intruder"),
        "the other Service's own entries stay"
    );

    // Someone takes the label off, so the admission policy would no longer
    // read the table.
    let unlabel = json!({ "metadata": { "labels": { "app.kubernetes.io/component": null } } });
    tables
        .patch(
            "dbps-bindings-orders",
            &PatchParams::default(),
            &Patch::Merge(&unlabel),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &tables,
        "dbps-bindings-orders",
        "label written back",
        fenced,
    )
    .await;

    // Someone deletes the table.
    tables
        .delete("dbps-bindings-orders", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_for(
        &tables,
        "dbps-bindings-orders",
        "table written again",
        fenced,
    )
    .await;
    assert_eq!(
        table_entry(&ctx, "account.intruder").await.as_deref(),
        Some("intruder")
    );

    // A table the intruder forges, labelled like the operator's, is left
    // alone: the policy reads it beside the owner's, and a pod must pass
    // both, so it can refuse pods but never let one through. The owner's
    // entry stays.
    let forged: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": "dbps-bindings-forged",
            "labels": { "app.kubernetes.io/managed-by": "dbps-operator", "app.kubernetes.io/component": "ownership" },
        },
        "data": { "secret.orders-db-binding": "intruder" },
    }))
    .unwrap();
    tables
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let owners = tables.get("dbps-bindings-orders").await.unwrap();
    assert!(entry_is("orders")(Some(&owners)));
    assert!(
        tables
            .get_opt("dbps-bindings-forged")
            .await
            .unwrap()
            .is_some()
    );
}

#[tokio::test]
async fn an_edited_or_deleted_reader_role_or_binding_is_written_back_at_once() {
    // A resync far away: only the Roles' and RoleBindings' own watches can
    // bring them back.
    let (ctx, _operator) = setup("reader-role", Duration::from_secs(3600)).await;
    let _server = orders_ready_beside_an_intruder(&ctx).await;
    let roles = ctx.api::<Role>();
    let bindings = ctx.api::<RoleBinding>();
    let names_of = |r: Option<&Role>| -> Option<Vec<Option<Vec<String>>>> {
        Some(
            r?.rules
                .iter()
                .flatten()
                .map(|rule| rule.resource_names.clone())
                .collect(),
        )
    };
    let grants_orders = move |r: Option<&Role>| {
        names_of(r) == Some(vec![Some(vec!["orders-db-binding".to_string()])])
    };
    let grants_nothing = move |r: Option<&Role>| names_of(r) == Some(vec![]);
    ctx.wait_for(
        &roles,
        "dbps-orders-binding-reader",
        "owner's Role",
        grants_orders,
    )
    .await;
    ctx.wait_for(
        &roles,
        "dbps-intruder-binding-reader",
        "intruder's Role",
        grants_nothing,
    )
    .await;
    let subjects = bindings
        .get("dbps-orders-binding-reader")
        .await
        .unwrap()
        .subjects;
    // Past the Services' last gathered writes: nothing is pending when they
    // are edited.
    tokio::time::sleep(Duration::from_secs(5)).await;

    // The intruder's Role is given the owner's binding Secret.
    let grant = json!({ "rules": [{
        "apiGroups": [""], "resources": ["secrets"],
        "resourceNames": ["orders-db-binding"], "verbs": ["get"]
    }] });
    roles
        .patch(
            "dbps-intruder-binding-reader",
            &PatchParams::default(),
            &Patch::Merge(&grant),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &roles,
        "dbps-intruder-binding-reader",
        "the intruder's Role written back to nothing",
        grants_nothing,
    )
    .await;

    // The owner's RoleBinding is given the intruder's account too.
    let mut widened = subjects.clone().unwrap_or_default();
    widened.push(k8s_openapi::api::rbac::v1::Subject {
        kind: "ServiceAccount".into(),
        name: "intruder".into(),
        namespace: Some(ctx.namespace.clone()),
        ..Default::default()
    });
    bindings
        .patch(
            "dbps-orders-binding-reader",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "subjects": widened })),
        )
        .await
        .unwrap();
    let expected = subjects.clone();
    ctx.wait_for(
        &bindings,
        "dbps-orders-binding-reader",
        "the owner's RoleBinding written back to its account",
        move |b: Option<&RoleBinding>| b.is_some_and(|b| b.subjects == expected),
    )
    .await;

    // The owner's Role loses its resourceNames: it would grant every
    // Secret of the namespace.
    let every =
        json!({ "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get"] }] });
    roles
        .patch(
            "dbps-orders-binding-reader",
            &PatchParams::default(),
            &Patch::Merge(&every),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &roles,
        "dbps-orders-binding-reader",
        "the owner's Role written back to its Secret",
        grants_orders,
    )
    .await;

    // The owner's Role is deleted, then edited again at once, while the
    // operator's cache may still show the Role it wrote before.
    roles
        .delete("dbps-orders-binding-reader", &DeleteParams::default())
        .await
        .unwrap();
    ctx.wait_for(
        &roles,
        "dbps-orders-binding-reader",
        "the owner's Role written again",
        grants_orders,
    )
    .await;
    roles
        .patch(
            "dbps-orders-binding-reader",
            &PatchParams::default(),
            &Patch::Merge(&every),
        )
        .await
        .unwrap();
    ctx.wait_for(
        &roles,
        "dbps-orders-binding-reader",
        "the owner's Role written back once more",
        grants_orders,
    )
    .await;
}

#[tokio::test]
async fn a_legacy_ownership_table_gives_up_the_entries_of_each_service() {
    let (ctx, _operator) = setup("legacy", Duration::from_secs(3600)).await;
    let tables = ctx.api::<ConfigMap>();
    // The one table per namespace an earlier release kept: a Service's
    // entries, and those a deleted claim left for it (deletionPolicy Retain).
    let legacy = |data: serde_json::Value| {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "dbps-bindings",
                "labels": { "app.kubernetes.io/managed-by": "dbps-operator", "app.kubernetes.io/component": "ownership" },
            },
            "data": data,
        })
    };
    for (manager, data) in [
        (
            "dbps-operator.service.orders",
            json!({ "account.orders": "orders", "secret.gone-db-binding": "orders" }),
        ),
        (
            "dbps-operator.retained.kept-db",
            json!({ "secret.kept-db-binding": "orders" }),
        ),
    ] {
        tables
            .patch(
                "dbps-bindings",
                &PatchParams::apply(manager).force(),
                &Patch::Apply(legacy(data)),
            )
            .await
            .unwrap();
    }

    service(
        &ctx,
        "orders",
        json!({ "serviceAccountName": "orders-api" }),
    )
    .await;
    ctx.wait_for(
        &tables,
        "dbps-bindings",
        "the Service's entries taken out",
        |c: Option<&ConfigMap>| {
            c.and_then(|c| c.data.as_ref())
                .is_some_and(|d| !d.contains_key("account.orders"))
        },
    )
    .await;
    let left = tables.get("dbps-bindings").await.unwrap().data.unwrap();
    assert_eq!(
        left,
        [("secret.kept-db-binding".to_string(), "orders".to_string())].into(),
        "the retained entry stays, still read by the policy"
    );
    let own = tables
        .get("dbps-bindings-orders")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(
        own.get("account.orders").map(String::as_str),
        Some("orders-api")
    );
    assert_eq!(own.get("secret.gone-db-binding"), None);
}

/// What a watch of Secrets and of the ownership tables saw, in the order of
/// the plane's etcd revisions (its resourceVersions).
#[derive(Default)]
struct Seen {
    /// Each Secret dbps made, at the revision it was created.
    secrets: Vec<(String, u64)>,
    /// Each version of each table: name, revision, entries.
    tables: Vec<(String, u64, std::collections::BTreeMap<String, String>)>,
}

fn revision(meta: &kube::api::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .expect("an etcd revision")
}

/// Watches the namespace's Secrets that dbps made and its ownership tables
/// into `seen`; returns once both watches have listed.
async fn watch_fences(
    ctx: &TestContext,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    let secrets = watcher::watcher(
        ctx.api::<Secret>(),
        watcher::Config::default().labels("app.kubernetes.io/managed-by=dbps-operator"),
    );
    let tables = watcher::watcher(
        ctx.api::<ConfigMap>(),
        watcher::Config::default().labels(dbps_operator::controller::TABLE_SELECTOR),
    );
    let (listed_tx, mut listed) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        enum Watched {
            Secret(Event<Secret>),
            Table(Event<ConfigMap>),
        }
        let mut all = futures::stream::select(
            secrets
                .map(|e| Watched::Secret(e.expect("Secret watch")))
                .boxed(),
            tables
                .map(|e| Watched::Table(e.expect("table watch")))
                .boxed(),
        );
        while let Some(event) = all.next().await {
            let mut seen = seen.lock().unwrap();
            match event {
                Watched::Secret(Event::InitDone) | Watched::Table(Event::InitDone) => {
                    let _ = listed_tx.send(());
                }
                Watched::Secret(Event::Apply(s) | Event::InitApply(s)) => {
                    let name = s.metadata.name.clone().unwrap_or_default();
                    if !seen.secrets.iter().any(|(n, _)| *n == name) {
                        let at = revision(&s.metadata);
                        seen.secrets.push((name, at));
                    }
                }
                Watched::Table(Event::Apply(t) | Event::InitApply(t)) => {
                    let at = revision(&t.metadata);
                    let name = t.metadata.name.clone().unwrap_or_default();
                    seen.tables.push((name, at, t.data.unwrap_or_default()));
                }
                _ => {}
            }
        }
    });
    for _ in 0..2 {
        listed.recv().await.expect("both watches list");
    }
    task
}

#[tokio::test]
async fn no_secret_with_credentials_exists_before_its_ownership_table_names_it() {
    // Every Secret dbps writes with credentials in it (a binding, the one a
    // rotation issues, a read grant, a dedicated instance's admin Secret) is
    // created only after the ownership table its owner is fenced by names
    // it: there is no moment in which another Service's pod referencing it
    // would be admitted. A resync far away: nothing is put right late.
    let (ctx, _operator) = setup("fence", Duration::from_secs(3600)).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let watch = watch_fences(&ctx, seen.clone()).await;
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let name = format!("{}-srv", ctx.namespace);
    register(&ctx, &name, &server, json!({})).await;
    for s in ["orders", "reporting", "cache"] {
        service(&ctx, s, json!({})).await;
    }
    claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "postgres", "server": { "name": name },
                "readers": [{ "service": "reporting", "tables": ["orders"] }] }),
    )
    .await;
    // A dedicated instance: its admin Secret is written before its
    // StatefulSet (no pod runs on this plane).
    claim(
        &ctx,
        "cache-db",
        json!({ "serviceRef": { "name": "cache" }, "engine": "postgres" }),
    )
    .await;
    let claims = ctx.api::<DatabaseClaim>();
    ctx.wait_for(&claims, "orders-db", "Ready", reason_is("Ready"))
        .await;
    ctx.wait_for(
        &claims,
        "orders-db",
        "read grant issued",
        |c: Option<&DatabaseClaim>| {
            c.and_then(|c| c.status.as_ref())
                .is_some_and(|s| !s.readers.is_empty())
        },
    )
    .await;
    dbps_e2e::fixtures::request_rotation(&ctx, "orders-db", "first").await;
    let secrets = ctx.api::<Secret>();
    ctx.wait_for(
        &secrets,
        "orders-db-binding-1",
        "rotated binding",
        |s: Option<&Secret>| s.is_some(),
    )
    .await;
    ctx.wait_for(
        &secrets,
        "cache-db-admin",
        "instance admin Secret",
        |s: Option<&Secret>| s.is_some(),
    )
    .await;
    // The watches catch up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watch.abort();

    let seen = seen.lock().unwrap();
    let names: Vec<&str> = seen.secrets.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["orders-db-binding", "orders-db-binding-1", "cache-db-admin"] {
        assert!(names.contains(&expected), "{expected} seen among {names:?}");
    }
    assert!(
        names.iter().any(|n| n.contains("reporting")),
        "the read grant's Secret seen among {names:?}"
    );
    for (secret, created) in &seen.secrets {
        let key = format!("secret.{secret}");
        // Its owner: what the table that holds it says now.
        let (table, owner) = seen
            .tables
            .iter()
            .rev()
            .find_map(|(t, _, entries)| entries.get(&key).map(|o| (t.clone(), o.clone())))
            .unwrap_or_else(|| panic!("Secret {secret} is in no ownership table"));
        // What that table said when the Secret was created.
        let then = seen
            .tables
            .iter()
            .rev()
            .find(|(t, at, _)| *t == table && at < created)
            .and_then(|(_, _, entries)| entries.get(&key));
        assert_eq!(
            then,
            Some(&owner),
            "when Secret {secret} was created (revision {created}), table {table} did not name it for {owner}"
        );
    }
}

/// A claim is accepted for its Service without a status write of its own:
/// its Service's table is the record. The entry the table has for a claim
/// whose status says nothing yet stays when the operator crashes and another
/// starts (a Secret written before the crash is never left outside its
/// table, where any other Service's pod could use it), and the claim is
/// Ready once its server answers.
#[tokio::test]
async fn an_accepted_claims_table_entry_outlives_a_restart_before_its_status_says_anything() {
    let ctx = TestContext::new("accepted-restart").await.unwrap();
    let first = RunningOperator::start(&ctx, Duration::from_secs(3600))
        .await
        .unwrap();
    let server = LocalServer::start(Kind::InfluxDb).await.unwrap();
    let name = format!("{}-srv", ctx.namespace);
    register(&ctx, &name, &server, json!({})).await;
    let servers: Api<DatabaseServer> = Api::all(ctx.client.clone());
    ctx.wait_for(
        &servers,
        &name,
        "server Reachable",
        |s: Option<&DatabaseServer>| {
            s.and_then(|s| s.status.as_ref())
                .and_then(|s| dbps_operator::api::find_condition(&s.conditions, "Reachable"))
                .is_some_and(|c| c.status == "True")
        },
    )
    .await;
    service(&ctx, "orders", json!({})).await;
    // The claim is named by its table, then waits for a server that answers
    // nothing (its checks give up after 10 s).
    server.freeze();
    claim(
        &ctx,
        "orders-db",
        json!({ "serviceRef": { "name": "orders" }, "engine": "influxdb",
                "server": { "name": name } }),
    )
    .await;
    let key = "secret.orders-db-binding";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while table_entry(&ctx, key).await.as_deref() != Some("orders") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the table never named the claim's binding"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let claims = ctx.api::<DatabaseClaim>();
    let says = |c: &DatabaseClaim| {
        c.status
            .as_ref()
            .and_then(|s| dbps_operator::api::find_condition(&s.conditions, "Ready"))
            .map(|r| r.reason.clone())
    };
    let accepted = claims.get("orders-db").await.unwrap();
    assert_eq!(says(&accepted), None, "accepted without a status write");

    drop(first);
    let _second = RunningOperator::start(&ctx, Duration::from_secs(3600))
        .await
        .unwrap();
    // Until the claim says why it is not Ready (its server does not answer),
    // the table names its binding at every look: the second operator's
    // Service pass, which runs at its start, keeps the entry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut looks = 0;
    loop {
        let said = says(&claims.get("orders-db").await.unwrap());
        assert_eq!(
            table_entry(&ctx, key).await.as_deref(),
            Some("orders"),
            "the entry went after the restart (the claim said {said:?})"
        );
        looks += 1;
        if said.is_some() {
            assert_eq!(said.as_deref(), Some("ServerUnreachable"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the claim never said why"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(looks > 20, "only {looks} looks before the claim said why");
    server.thaw();
    ctx.wait_for(&claims, "orders-db", "claim Ready", reason_is("Ready"))
        .await;
    assert_eq!(table_entry(&ctx, key).await.as_deref(), Some("orders"));
}
