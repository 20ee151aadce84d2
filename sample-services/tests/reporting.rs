//! reporting against real databases: it aggregates orders, payments and
//! telemetry, read through read-only users (as dbps's `spec.readers` grants
//! make them), into its own warehouse; it can read nothing it was not
//! granted and write nothing but its warehouse; without a grant, or once it
//! is revoked, a refresh fails and the last snapshot stays.

mod support;

use std::path::Path;

use dbps_e2e::databases::{Kind, LocalServer};
use dbps_operator::api::Engine;
use dbps_operator::engines::ReadGrant;
use dbps_operator::servers::Servers;
use dbps_samples::binding::Binding;
use dbps_samples::services::reporting::{MetricSummary, Reporting, StatusTotal};
use dbps_samples::services::{orders, payments};
use dbps_samples::stores;
use support::provision;

/// A read-only user of `reader` on `owner`'s database, made as dbps makes
/// one for a claim's `readers` entry, and its binding under `root/<name>/`.
async fn grant(
    server: &LocalServer,
    engine: Engine,
    owner: &Binding,
    tables: &[&str],
    name: &str,
    root: &Path,
) -> Binding {
    let grant = ReadGrant {
        database: owner.database.clone(),
        username: format!("{}_r_reporting", owner.database),
        password: dbps_operator::password::generate(),
        tables: tables.iter().map(|t| t.to_string()).collect(),
    };
    let claimant = dbps_e2e::claims::claimant(
        "samples",
        &owner.database,
        &owner.database,
        &owner.database,
        false,
    );
    Servers::default()
        .ensure_reader(&server.admin_connection(engine), &grant, &claimant)
        .await
        .unwrap();
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for (key, value) in [
        ("type", engine.instance().binding_type().to_string()),
        ("host", server.host.clone()),
        ("port", server.port.to_string()),
        ("database", grant.database.clone()),
        ("username", grant.username.clone()),
        ("password", grant.password.clone()),
    ] {
        std::fs::write(dir.join(key), value).unwrap();
    }
    Binding::read_from(Some(root), name, |_| None).unwrap()
}

#[tokio::test]
async fn reporting_aggregates_what_it_is_granted_into_its_own_warehouse() {
    let root = tempfile::tempdir().unwrap();
    let postgres = LocalServer::start(Kind::Postgres).await.unwrap();
    let influxdb = LocalServer::start(Kind::InfluxDb).await.unwrap();
    let orders_db = provision(&postgres, Engine::Postgres, "orders", root.path()).await;
    let payments_db = provision(&postgres, Engine::Postgres, "payments", root.path()).await;
    let telemetry_db = provision(&influxdb, Engine::Influxdb, "telemetry", root.path()).await;
    let warehouse_db = provision(&postgres, Engine::Postgres, "reporting", root.path()).await;

    // The owners' data, written as the owners.
    let orders_owner = stores::postgres(&orders_db).await.unwrap();
    orders_owner
        .lock()
        .await
        .batch_execute(&format!(
            "{}{}
             INSERT INTO orders (id, customer, items, total_cents, status) VALUES
               ('o1', 'ada', '[]', 2400, 'PAID'), ('o2', 'bob', '[]', 1600, 'PAID'),
               ('o3', 'cy', '[]', 900000, 'CANCELLED');",
            orders::SCHEMA,
            dbps_samples::outbox::SCHEMA
        ))
        .await
        .unwrap();
    let payments_owner = stores::postgres(&payments_db).await.unwrap();
    payments_owner
        .lock()
        .await
        .batch_execute(&format!(
            "{}
             INSERT INTO payments (id, order_id, amount_cents, status) VALUES
               ('p1', 'o1', 2400, 'PROCESSED'), ('p2', 'o2', 1600, 'PROCESSED'),
               ('p3', 'o3', 900000, 'FAILED');",
            payments::SCHEMA
        ))
        .await
        .unwrap();
    stores::Influx::connect(&telemetry_db)
        .await
        .unwrap()
        .write(
            "readings,device_id=th-1,metric=temperature value=20 1000\n\
             readings,device_id=th-1,metric=temperature value=22 2000\n\
             readings,device_id=th-2,metric=humidity value=55 1000"
                .into(),
        )
        .await
        .unwrap();

    // The grants: the orders table, the payments table, the telemetry database.
    let orders_reader = grant(
        &postgres,
        Engine::Postgres,
        &orders_db,
        &["orders"],
        "orders-db-reader",
        root.path(),
    )
    .await;
    let payments_reader = grant(
        &postgres,
        Engine::Postgres,
        &payments_db,
        &["payments"],
        "payments-db-reader",
        root.path(),
    )
    .await;
    let telemetry_reader = grant(
        &influxdb,
        Engine::Influxdb,
        &telemetry_db,
        &[],
        "telemetry-db-reader",
        root.path(),
    )
    .await;

    let reporting = Reporting {
        warehouse: stores::postgres(&warehouse_db).await.unwrap(),
        orders: stores::postgres(&orders_reader).await.unwrap(),
        payments: stores::postgres(&payments_reader).await.unwrap(),
        telemetry: stores::Influx::connect(&telemetry_reader).await.unwrap(),
    };
    reporting.setup().await.unwrap();
    let report = reporting.refresh().await.unwrap();
    let total = |status: &str, count: i64, cents: i64| StatusTotal {
        status: status.into(),
        count,
        cents,
    };
    assert_eq!(
        report.orders,
        [total("CANCELLED", 1, 900000), total("PAID", 2, 4000)]
    );
    assert_eq!(
        report.payments,
        [total("FAILED", 1, 900000), total("PROCESSED", 2, 4000)]
    );
    assert_eq!(
        report.telemetry,
        [
            MetricSummary {
                device_id: "th-1".into(),
                metric: "temperature".into(),
                readings: 2,
                mean: 21.0
            },
            MetricSummary {
                device_id: "th-2".into(),
                metric: "humidity".into(),
                readings: 1,
                mean: 55.0
            },
        ]
    );
    assert!(report.refreshed_at.is_some());
    // The snapshot is in the warehouse, served from there.
    assert_eq!(reporting.report().await.unwrap(), report);

    // Read only, and only what was granted.
    let reader = reporting.orders.lock().await;
    for (what, sql) in [
        ("read the outbox", "SELECT * FROM outbox"),
        (
            "write an order",
            "INSERT INTO orders (id, customer, items, total_cents, status) VALUES ('x', 'x', '[]', 1, 'PAID')",
        ),
        ("change an order", "UPDATE orders SET total_cents = 0"),
        ("drop the table", "DROP TABLE orders"),
    ] {
        assert!(
            reader.batch_execute(sql).await.is_err(),
            "the reader could {what}"
        );
    }
    drop(reader);
    let influx_write = reporting
        .telemetry
        .write("readings,device_id=x,metric=temperature value=99".into())
        .await;
    assert!(influx_write.is_err(), "the telemetry reader wrote");
    // The grant of one database opens no other.
    let mut crossed = orders_reader.clone();
    crossed.database = payments_db.database.clone();
    assert!(stores::postgres(&crossed).await.is_err());

    // A service without a grant: its own user on the orders database is
    // refused, and a refresh through it fails, keeping the last snapshot.
    let mut ungranted = payments_db.clone();
    ungranted.database = orders_db.database.clone();
    assert!(stores::postgres(&ungranted).await.is_err());

    // Revoked: the next refresh fails and the warehouse keeps the last snapshot.
    let owner = dbps_e2e::claims::claimant("samples", "orders", "orders", "orders", false);
    Servers::default()
        .drop_reader(
            &postgres.admin_connection(Engine::Postgres),
            &orders_db.database,
            &orders_reader.username,
            &owner.mark,
        )
        .await
        .unwrap();
    assert!(
        reporting.refresh().await.is_err(),
        "a revoked grant still reads"
    );
    assert_eq!(reporting.report().await.unwrap(), report);
}
