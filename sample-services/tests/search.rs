//! search, catalog's CQRS read view, against a real OpenSearch node with its
//! security plugin and a real MongoDB-wire server: catalog's changes reach
//! search through the outbox in each product's document, delivered again
//! until search takes them; a redelivered or late event changes nothing;
//! full-text queries find products by name and attributes; another
//! service's credentials reach neither the view nor its prefix.

mod support;

use std::time::Duration;

use dbps_e2e::databases::{Kind, LocalServer};
use dbps_operator::api::Engine;
use dbps_samples::services::catalog::{Catalog, Product, ProductChanged};
use dbps_samples::services::search::{Hit, Search};
use dbps_samples::stores;
use serde_json::json;
use support::{get_json, provision, serve};

fn skus(hits: &[Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.product.sku.as_str()).collect()
}

#[tokio::test]
async fn the_catalog_is_searchable_through_its_events_and_nobody_else_reaches_the_view() {
    let root = tempfile::tempdir().unwrap();
    let (opensearch, mongodb) = tokio::join!(
        LocalServer::start(Kind::OpenSearch),
        LocalServer::start(Kind::FerretDb)
    );
    let (opensearch, mongodb) = (opensearch.unwrap(), mongodb.unwrap());
    let catalog_db = provision(&mongodb, Engine::Mongodb, "catalog", root.path()).await;
    let search_db = provision(&opensearch, Engine::Opensearch, "search", root.path()).await;
    let billing_db = provision(&opensearch, Engine::Opensearch, "billing", root.path()).await;
    assert_eq!(search_db.prefix.as_deref(), Some("search-"));
    let http = dbps_samples::http::client();

    let catalog = Catalog {
        db: stores::Mongo::connect(&catalog_db).await.unwrap(),
    };
    catalog.setup().await.unwrap();
    let catalog_url = serve(catalog.clone().routes()).await;
    for p in [
        json!({ "sku": "chair", "name": "Red wooden chair", "price_cents": 4900, "attributes": { "material": "oak" } }),
        json!({ "sku": "mug", "name": "Blue mug", "price_cents": 1200, "attributes": { "color": "blue" } }),
        json!({ "sku": "lamp", "name": "Desk lamp", "price_cents": 2500, "attributes": { "material": "brass" } }),
    ] {
        let r = http
            .post(format!("{catalog_url}/products"))
            .json(&p)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    // search is down: nothing is delivered, and nothing is lost.
    let down = "http://127.0.0.1:9"; // discard port: refused
    assert_eq!(catalog.deliver_pending(&http, down).await.unwrap(), 0);

    let search = Search::connect(&search_db).unwrap();
    search.setup().await.unwrap();
    search.setup().await.unwrap(); // a restart finds its index
    let search_url = serve(search.clone().routes()).await;
    assert_eq!(
        catalog.deliver_pending(&http, &search_url).await.unwrap(),
        3
    );
    assert_eq!(
        catalog.deliver_pending(&http, &search_url).await.unwrap(),
        0
    );
    let hits: Vec<Hit> = get_json(&http, format!("{search_url}/search?q=wooden")).await;
    assert_eq!(skus(&hits), ["chair"]);
    let hits: Vec<Hit> = get_json(&http, format!("{search_url}/search?q=brass")).await;
    assert_eq!(skus(&hits), ["lamp"], "attributes are searchable");

    // A change: the view follows it.
    let r = http
        .put(format!("{catalog_url}/products/by-sku/chair"))
        .json(&json!({ "name": "Green garden chair" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        catalog.deliver_pending(&http, &search_url).await.unwrap(),
        1
    );
    let hits: Vec<Hit> = get_json(&http, format!("{search_url}/search?q=garden")).await;
    assert_eq!(skus(&hits), ["chair"]);
    let hits: Vec<Hit> = get_json(&http, format!("{search_url}/search?q=wooden")).await;
    assert!(hits.is_empty(), "the old name is still found");

    // A redelivered or late event (an older version) changes nothing.
    let late = ProductChanged {
        id: "chair@1".into(),
        kind: "ProductChanged".into(),
        version: 1,
        product: Product {
            sku: "chair".into(),
            name: "Red wooden chair".into(),
            price_cents: 4900,
            attributes: Default::default(),
        },
    };
    for _ in 0..2 {
        let r = http
            .post(format!("{search_url}/events"))
            .json(&late)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    assert!(!search.apply(&late).await.unwrap());
    let hits: Vec<Hit> = get_json(&http, format!("{search_url}/search?q=wooden")).await;
    assert!(hits.is_empty(), "a late event rolled the view back");

    // The relay delivers by itself.
    let r = http
        .post(format!("{catalog_url}/products"))
        .json(&json!({ "sku": "rug", "name": "Woollen rug", "price_cents": 9900 }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    tokio::spawn(dbps_samples::services::catalog::relay(
        catalog.clone(),
        http.clone(),
        search_url.clone(),
        Duration::from_millis(100),
        std::future::pending(),
    ));
    support::eventually("the relay delivers the rug", || {
        let (http, url) = (http.clone(), search_url.clone());
        async move {
            let hits: Vec<Hit> = get_json(&http, format!("{url}/search?q=rug")).await;
            skus(&hits) == ["rug"]
        }
    })
    .await;

    // Another service's credentials: they open neither search's view...
    let mut intruder = billing_db.clone();
    intruder.prefix = search_db.prefix.clone();
    let as_billing = Search::connect(&intruder).unwrap();
    assert!(
        as_billing.query("chair").await.is_err(),
        "billing searched the view"
    );
    assert!(
        as_billing.apply(&late).await.is_err(),
        "billing wrote into the view"
    );
    // ... and search's credentials open nothing of billing's prefix.
    let mut reaching = search_db.clone();
    reaching.prefix = billing_db.prefix.clone();
    let into_billing = Search::connect(&reaching).unwrap();
    assert!(
        into_billing.setup().await.is_err(),
        "search made an index in billing's prefix"
    );
}
