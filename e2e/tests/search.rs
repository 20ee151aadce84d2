//! OpenSearch claims on a real node with its security plugin: each claim's
//! user works freely under its own index prefix and reaches nothing else —
//! not another claim's indices, not the cluster's, not the security
//! configuration — and cannot take another claim's writes with an alias or
//! a template; a reader searches and writes nothing; a rolesmapping that
//! widens a claim's user is caught.

use std::collections::BTreeMap;
use std::time::Duration;

use dbps_e2e::TestContext;
use dbps_e2e::claims::{reason_is, secret_values};
use dbps_e2e::databases::{Kind, LocalServer};
use dbps_e2e::fixtures;
use dbps_e2e::opensearch::{client, url};
use dbps_operator::api::DatabaseClaim;
use k8s_openapi::api::core::v1::Secret;
use reqwest::Method;
use serde_json::{Value, json};

async fn values(ctx: &TestContext, secret: &str) -> BTreeMap<String, String> {
    secret_values(&ctx.api::<Secret>().get(secret).await.unwrap())
}

/// A request as the binding's user (or the admin): its status and answer.
async fn call(
    node: &LocalServer,
    who: (&str, &str),
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client(node)
        .unwrap()
        .request(method, url(node, path))
        .basic_auth(who.0, Some(who.1));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let answer = request.send().await.unwrap();
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn user(b: &BTreeMap<String, String>) -> (&str, &str) {
    (b["username"].as_str(), b["password"].as_str())
}

#[tokio::test]
async fn each_claim_reaches_its_own_prefix_only_and_cannot_take_another_claims_writes() {
    let (ctx, _operator) = fixtures::with_operator("search", Duration::from_secs(3)).await;
    let node = LocalServer::start(Kind::OpenSearch).await.unwrap();
    let name = format!("{}-search", ctx.namespace);
    fixtures::register(&ctx, &name, &node, json!({})).await;
    for service in ["search", "billing", "reporting"] {
        fixtures::service(&ctx, service, json!({})).await;
    }
    let claims = ctx.api::<DatabaseClaim>();
    fixtures::claim(
        &ctx,
        "search-db",
        json!({ "serviceRef": { "name": "search" }, "engine": "opensearch", "server": { "name": name },
                "deletionPolicy": "Delete", "readers": [{ "service": "reporting" }] }),
    )
    .await;
    fixtures::claim(
        &ctx,
        "billing-db",
        json!({ "serviceRef": { "name": "billing" }, "engine": "opensearch", "server": { "name": name }, "deletionPolicy": "Delete" }),
    )
    .await;
    for claim in ["search-db", "billing-db"] {
        ctx.wait_for(&claims, claim, "Ready", reason_is("Ready"))
            .await;
    }
    let search = values(&ctx, "search-db-binding").await;
    let billing = values(&ctx, "billing-db-binding").await;
    assert_eq!(search["type"], "opensearch");
    assert_eq!(search["prefix"], format!("{}-", search["database"]));
    assert!(search["uri"].starts_with("https://"), "{}", search["uri"]);
    assert_eq!(search["ca.crt"], node.ca_pem.clone().unwrap());
    let (mine, theirs) = (search["prefix"].clone(), billing["prefix"].clone());

    // Its own prefix: create, bulk, search, delete.
    let (status, _) = call(
        &node,
        user(&search),
        Method::PUT,
        &format!("/{mine}products"),
        Some(json!({ "mappings": { "properties": { "name": { "type": "text" } } } })),
    )
    .await;
    assert_eq!(status, 200);
    let bulk = format!(
        "{{\"index\":{{\"_index\":\"{mine}products\",\"_id\":\"1\"}}}}\n{{\"name\":\"red wooden chair\"}}\n{{\"index\":{{\"_index\":\"{mine}products\",\"_id\":\"2\"}}}}\n{{\"name\":\"blue mug\"}}\n"
    );
    let answer = client(&node)
        .unwrap()
        .post(url(&node, "/_bulk?refresh=true"))
        .basic_auth(&search["username"], Some(&search["password"]))
        .header("content-type", "application/x-ndjson")
        .body(bulk)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let (status, found) = call(
        &node,
        user(&search),
        Method::POST,
        &format!("/{mine}products/_search"),
        Some(json!({ "query": { "match": { "name": "wooden chair" } } })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(found["hits"]["hits"][0]["_id"], "1", "{found}");
    let (status, _) = call(
        &node,
        user(&billing),
        Method::PUT,
        &format!("/{theirs}invoices/_doc/1?refresh=true"),
        Some(json!({ "customer": "ACME", "total": 42 })),
    )
    .await;
    assert_eq!(status, 201);

    // Nothing else: another claim's indices, everything at once, the
    // cluster, the security configuration; no alias or template that would
    // bring another claim's writes or data into its prefix.
    let refused = [
        (Method::GET, format!("/{theirs}invoices/_search"), None),
        (Method::GET, format!("/{theirs}invoices/_doc/1"), None),
        (
            Method::PUT,
            format!("/{theirs}invoices/_doc/2"),
            Some(json!({ "x": 1 })),
        ),
        (Method::DELETE, format!("/{theirs}invoices"), None),
        (Method::PUT, format!("/{theirs}new"), None),
        (Method::GET, "/_search".to_string(), None),
        (Method::GET, "/*/_search".to_string(), None),
        (Method::GET, "/_cat/indices".to_string(), None),
        (Method::GET, "/_cluster/health".to_string(), None),
        (Method::GET, "/_cluster/state".to_string(), None),
        (
            Method::POST,
            "/_aliases".to_string(),
            Some(
                json!({ "actions": [{ "add": { "index": format!("{mine}products"), "alias": format!("{theirs}invoices-all") } }] }),
            ),
        ),
        (
            Method::PUT,
            format!("/{mine}trojan"),
            Some(json!({ "aliases": { format!("{theirs}current"): {} } })),
        ),
        (
            Method::PUT,
            "/_index_template/spy".to_string(),
            Some(
                json!({ "index_patterns": [format!("{theirs}*")], "template": { "aliases": { format!("{mine}spy"): {} } } }),
            ),
        ),
        (
            Method::POST,
            "/_reindex".to_string(),
            Some(
                json!({ "source": { "index": format!("{theirs}invoices") }, "dest": { "index": format!("{mine}copy") } }),
            ),
        ),
        (
            Method::GET,
            "/_plugins/_security/api/internalusers".to_string(),
            None,
        ),
        (
            Method::PUT,
            "/_plugins/_security/api/rolesmapping/all_access".to_string(),
            Some(json!({ "users": [search["username"]] })),
        ),
    ];
    for (method, path, body) in refused {
        let (status, answer) = call(&node, user(&search), method.clone(), &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {answer}");
    }
    // billing's document is untouched and only billing's.
    let (status, doc) = call(
        &node,
        user(&billing),
        Method::GET,
        &format!("/{theirs}invoices/_doc/1"),
        None,
    )
    .await;
    assert_eq!((status, &doc["_source"]["customer"]), (200, &json!("ACME")));

    // The reader searches and writes nothing.
    let reader = values(&ctx, "search-db-reader-reporting").await;
    let (status, found) = call(
        &node,
        user(&reader),
        Method::GET,
        &format!("/{mine}products/_search?q=name:mug"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(found["hits"]["total"]["value"], 1);
    for (method, path, body) in [
        (
            Method::PUT,
            format!("/{mine}products/_doc/3"),
            Some(json!({ "name": "x" })),
        ),
        (Method::DELETE, format!("/{mine}products"), None),
        (Method::PUT, format!("/{mine}other"), None),
        (Method::GET, format!("/{theirs}invoices/_search"), None),
    ] {
        let (status, answer) = call(&node, user(&reader), method.clone(), &path, body).await;
        assert_eq!(status, 403, "reader: {method} {path}: {answer}");
    }

    // A rolesmapping of the server that widens the claim's user (a platform
    // mistake) is caught: the claim says so, and is Ready again once it goes.
    let admin = (node.admin_user.as_str(), node.admin_password.as_str());
    let (status, _) = call(
        &node,
        admin,
        Method::PUT,
        "/_plugins/_security/api/rolesmapping/readall_and_monitor",
        Some(json!({ "users": [search["username"]] })),
    )
    .await;
    assert!(status == 200 || status == 201, "{status}");
    let flagged = ctx
        .wait_for(
            &claims,
            "search-db",
            "widened user caught",
            reason_is("ServerRefused"),
        )
        .await;
    let message = &flagged.status.unwrap().conditions[0].message;
    assert!(message.contains("rolesmapping"), "{message}");
    let (status, _) = call(
        &node,
        admin,
        Method::DELETE,
        "/_plugins/_security/api/rolesmapping/readall_and_monitor",
        None,
    )
    .await;
    assert_eq!(status, 200);
    ctx.wait_for(&claims, "search-db", "Ready again", reason_is("Ready"))
        .await;

    // Deletion drops the prefix's indices, its users and its roles, and
    // nothing of the other claim's.
    claims
        .delete("search-db", &Default::default())
        .await
        .unwrap();
    ctx.wait_gone(&claims, "search-db", "claim gone").await;
    let (status, _) = call(&node, admin, Method::GET, &format!("/{mine}products"), None).await;
    assert_eq!(status, 404, "the claim's index survived Delete");
    for who in [user(&search), user(&reader)] {
        let (status, _) = call(&node, who, Method::GET, "/", None).await;
        assert_eq!(status, 401, "{} survived Delete", who.0);
    }
    let (status, _) = call(
        &node,
        user(&billing),
        Method::GET,
        &format!("/{theirs}invoices/_doc/1"),
        None,
    )
    .await;
    assert_eq!(status, 200, "the other claim lost its data");
}
