//! orders, payments and catalog against their real databases: each API, the
//! saga's happy path and its compensation, retries and idempotent consumers,
//! API composition, and credentials refused on another service's database.

mod support;

use std::time::Duration;

use dbps_e2e::databases::{Kind, LocalServer};
use dbps_operator::api::Engine;
use dbps_samples::outbox::Event;
use dbps_samples::services::catalog::{Catalog, Product};
use dbps_samples::services::orders::{Order, OrderDetails, Orders};
use dbps_samples::services::payments::{Payment, Payments};
use dbps_samples::stores;
use serde_json::json;
use support::{eventually, get_json, get_status, provision, serve};

#[tokio::test]
async fn the_order_saga_pays_or_compensates_across_three_databases() {
    let root = tempfile::tempdir().unwrap();
    let postgres = LocalServer::start(Kind::Postgres).await.unwrap();
    let mongodb = LocalServer::start(Kind::FerretDb).await.unwrap();
    let orders_db = provision(&postgres, Engine::Postgres, "orders", root.path()).await;
    let payments_db = provision(&postgres, Engine::Postgres, "payments", root.path()).await;
    let catalog_db = provision(&mongodb, Engine::Mongodb, "catalog", root.path()).await;
    let http = dbps_samples::http::client();

    // catalog
    let catalog = Catalog {
        db: stores::Mongo::connect(&catalog_db).await.unwrap(),
    };
    catalog.setup().await.unwrap();
    let catalog_url = serve(catalog.routes()).await;
    for p in [
        json!({ "sku": "mug-red", "name": "Red mug", "price_cents": 1200, "attributes": { "color": "red", "volume_ml": 350 } }),
        json!({ "sku": "tee-blue", "name": "Blue tee", "price_cents": 2500, "attributes": { "color": "blue", "size": "M" } }),
        json!({ "sku": "lamp", "name": "Lamp", "price_cents": 900000, "attributes": { "color": "red" } }),
    ] {
        let r = http
            .post(format!("{catalog_url}/products"))
            .json(&p)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let dup = http
        .post(format!("{catalog_url}/products"))
        .json(&json!({ "sku": "lamp", "name": "x", "price_cents": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status(), 409);
    let red: Vec<Product> = get_json(&http, format!("{catalog_url}/products?color=red")).await;
    let mut skus: Vec<&str> = red.iter().map(|p| p.sku.as_str()).collect();
    skus.sort();
    assert_eq!(skus, ["lamp", "mug-red"]);
    let big: Vec<Product> = get_json(&http, format!("{catalog_url}/products?volume_ml=350")).await;
    assert_eq!(big.len(), 1);

    // payments starts after orders: the first OrderPlaced waits in the outbox, retried.
    let payments_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let payments_url = format!("http://{}", payments_listener.local_addr().unwrap());
    drop(payments_listener);
    let orders = Orders {
        db: stores::postgres(&orders_db).await.unwrap(),
        http: http.clone(),
        payments_url: payments_url.clone(),
        catalog_url: catalog_url.clone(),
    };
    orders.setup().await.unwrap();
    let orders_relay = orders.db.clone();
    tokio::spawn(dbps_samples::outbox::relay(
        orders_relay,
        http.clone(),
        Duration::from_millis(100),
        std::future::pending(),
    ));
    let orders_url = serve(orders.clone().routes()).await;

    let place = |items: serde_json::Value| {
        let (http, url) = (http.clone(), orders_url.clone());
        async move {
            let r = http
                .post(format!("{url}/orders"))
                .json(&json!({ "customer": "ada", "items": items }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Order>().await.unwrap()
        }
    };
    let small = place(json!([{ "sku": "mug-red", "quantity": 2, "unit_price_cents": 1200 }, { "sku": "tee-blue", "quantity": 1, "unit_price_cents": 2500 }])).await;
    assert_eq!(
        (small.status.as_str(), small.total_cents),
        ("PENDING", 4900)
    );
    let bad = http
        .post(format!("{orders_url}/orders"))
        .json(&json!({ "customer": "ada", "items": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Nothing listens for payments yet: the event stays queued and is retried.
    eventually("a failed delivery attempt", || {
        let db = orders.db.clone();
        async move {
            db.lock()
                .await
                .query_one("SELECT max(attempts) FROM outbox", &[])
                .await
                .unwrap()
                .get::<_, Option<i32>>(0)
                .unwrap_or(0)
                >= 1
        }
    })
    .await;

    let payments = Payments {
        db: stores::postgres(&payments_db).await.unwrap(),
        orders_url: orders_url.clone(),
        limit_cents: 100_000,
    };
    payments.setup().await.unwrap();
    tokio::spawn(dbps_samples::outbox::relay(
        payments.db.clone(),
        http.clone(),
        Duration::from_millis(100),
        std::future::pending(),
    ));
    let listener = tokio::net::TcpListener::bind(payments_url.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::spawn(dbps_samples::http::serve(
        listener,
        payments.clone().routes(),
        std::future::pending(),
    ));

    let status_of = |id: String| {
        let (http, url) = (http.clone(), orders_url.clone());
        async move {
            http.get(format!("{url}/orders/{id}"))
                .send()
                .await
                .unwrap()
                .json::<Order>()
                .await
                .unwrap()
        }
    };
    eventually("the small order to be PAID", || {
        let id = small.id.clone();
        async move { status_of(id).await.status == "PAID" }
    })
    .await;

    // Compensation: too large a payment fails and cancels the order.
    let large = place(json!([{ "sku": "lamp", "quantity": 1, "unit_price_cents": 900000 }])).await;
    eventually("the large order to be CANCELLED", || {
        let id = large.id.clone();
        async move { status_of(id).await.status == "CANCELLED" }
    })
    .await;
    let cancelled = status_of(large.id.clone()).await;
    assert!(cancelled.reason.unwrap().contains("exceeds the limit"));
    let recorded: Vec<Payment> = get_json(
        &http,
        format!("{payments_url}/payments?order_id={}", large.id),
    )
    .await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].status, "FAILED");

    // Idempotent consumers: a redelivered event changes nothing.
    let placed: serde_json::Value = orders
        .db
        .lock()
        .await
        .query_one(
            "SELECT body FROM outbox WHERE body->>'order_id' = $1",
            &[&small.id],
        )
        .await
        .unwrap()
        .get(0);
    let event: Event = serde_json::from_value(placed).unwrap();
    for _ in 0..3 {
        let r = http
            .post(format!("{payments_url}/events"))
            .json(&event)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let all: Vec<Payment> = get_json(&http, format!("{payments_url}/payments")).await;
    assert_eq!(all.len(), 2, "one payment per order: {all:?}");
    let answers: i64 = payments
        .db
        .lock()
        .await
        .query_one("SELECT count(*) FROM outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(answers, 2);

    // Lists and API composition.
    let paid: Vec<Order> = get_json(&http, format!("{orders_url}/orders?status=PAID")).await;
    assert_eq!(
        paid.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        [small.id.as_str()]
    );
    let details: OrderDetails =
        get_json(&http, format!("{orders_url}/orders/{}/details", small.id)).await;
    assert_eq!(details.order.status, "PAID");
    let names: Vec<&str> = details
        .products
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["Red mug", "Blue tee"]);
    assert_eq!(
        get_status(&http, format!("{orders_url}/orders/nope")).await,
        404
    );
    assert_eq!(
        get_status(&http, format!("{orders_url}/healthz")).await,
        200
    );
}

#[tokio::test]
async fn a_service_started_with_another_services_credentials_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let postgres = LocalServer::start(Kind::Postgres).await.unwrap();
    let mongodb = LocalServer::start(Kind::FerretDb).await.unwrap();
    let orders_db = provision(&postgres, Engine::Postgres, "orders", root.path()).await;
    let payments_db = provision(&postgres, Engine::Postgres, "payments", root.path()).await;
    let catalog_db = provision(&mongodb, Engine::Mongodb, "catalog", root.path()).await;
    let alerts_db = provision(&mongodb, Engine::Mongodb, "alerts", root.path()).await;

    // orders' credentials on the payments database.
    let mut crossed = payments_db.clone();
    crossed.username = orders_db.username.clone();
    crossed.password = orders_db.password.clone();
    let err = stores::postgres(&crossed)
        .await
        .expect_err("orders reached the payments database");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("permission denied for database"),
        "{err:?}"
    );

    // catalog's credentials on the alerts database.
    let mut crossed = alerts_db.clone();
    crossed.username = catalog_db.username.clone();
    crossed.password = catalog_db.password.clone();
    assert!(
        stores::Mongo::connect(&crossed).await.is_err(),
        "catalog reached the alerts database"
    );

    // Their own credentials work.
    assert!(stores::postgres(&payments_db).await.is_ok());
    assert!(stores::Mongo::connect(&alerts_db).await.is_ok());
}
