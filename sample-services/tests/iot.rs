//! devices, telemetry and alerts against their real databases: the registry,
//! ingest and range queries on InfluxDB, and alert rules evaluated on the
//! MongoDB-wire server as readings arrive.

mod support;

use dbps_e2e::databases::{Kind, LocalServer};
use dbps_operator::api::Engine;
use dbps_samples::services::alerts::{Alert, Alerts, Rule};
use dbps_samples::services::devices::{Device, Devices};
use dbps_samples::services::telemetry::{Reading, Telemetry};
use dbps_samples::stores;
use serde_json::json;
use support::{eventually, get_json, get_status, post_status, provision, serve};

#[tokio::test]
async fn devices_register_and_list() {
    let root = tempfile::tempdir().unwrap();
    let postgres = LocalServer::start(Kind::Postgres).await.unwrap();
    let binding = provision(&postgres, Engine::Postgres, "devices", root.path()).await;
    let devices = Devices {
        db: stores::postgres(&binding).await.unwrap(),
    };
    devices.setup().await.unwrap();
    devices.setup().await.unwrap(); // the schema setup at start is repeatable
    let url = serve(devices.routes()).await;
    let http = dbps_samples::http::client();
    for d in [
        json!({ "id": "th-1", "name": "Greenhouse", "kind": "thermometer", "location": "north" }),
        json!({ "id": "m-7", "name": "Main meter", "kind": "meter", "location": null }),
    ] {
        assert_eq!(post_status(&http, format!("{url}/devices"), &d).await, 201);
    }
    let again = json!({ "id": "th-1", "name": "x", "kind": "y" });
    assert_eq!(
        post_status(&http, format!("{url}/devices"), &again).await,
        409
    );
    let one: Device = get_json(&http, format!("{url}/devices/th-1")).await;
    assert_eq!(one.location.as_deref(), Some("north"));
    let all: Vec<Device> = get_json(&http, format!("{url}/devices")).await;
    assert_eq!(
        all.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["m-7", "th-1"]
    );
    assert_eq!(get_status(&http, format!("{url}/devices/none")).await, 404);
}

#[tokio::test]
async fn readings_round_trip_through_influxdb_and_fire_alert_rules() {
    let root = tempfile::tempdir().unwrap();
    let influxdb = LocalServer::start(Kind::InfluxDb).await.unwrap();
    let mongodb = LocalServer::start(Kind::FerretDb).await.unwrap();
    let telemetry_db = provision(&influxdb, Engine::Influxdb, "telemetry", root.path()).await;
    let alerts_db = provision(&mongodb, Engine::Mongodb, "alerts", root.path()).await;
    let http = dbps_samples::http::client();

    let alerts_url = serve(
        Alerts {
            db: stores::Mongo::connect(&alerts_db).await.unwrap(),
        }
        .routes(),
    )
    .await;
    let rules = [
        json!({ "metric": "temperature", "op": "gt", "threshold": 30.0, "severity": "high", "labels": { "team": "greenhouse" } }),
        json!({ "device_id": "m-7", "metric": "power", "op": "ge", "threshold": 5000.0 }),
    ];
    for rule in rules {
        let r = http
            .post(format!("{alerts_url}/rules"))
            .json(&rule)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let bad = json!({ "metric": "x", "op": "between", "threshold": 1 });
    assert_eq!(
        post_status(&http, format!("{alerts_url}/rules"), &bad).await,
        400
    );
    let stored: Vec<Rule> = get_json(&http, format!("{alerts_url}/rules")).await;
    let flexible = stored.iter().find(|r| r.metric == "temperature").unwrap();
    assert_eq!(flexible.extra["severity"], "high");
    assert_eq!(flexible.extra["labels"]["team"], "greenhouse");

    let telemetry = Telemetry {
        influx: stores::Influx::connect(&telemetry_db).await.unwrap(),
        http: http.clone(),
        alerts_url: Some(alerts_url.clone()),
    };
    let url = serve(telemetry.routes()).await;
    let t0 = 1_700_000_000_000_i64;
    let readings = json!([
        { "device_id": "th-1", "metric": "temperature", "value": 21.5, "timestamp_ms": t0 },
        { "device_id": "th-1", "metric": "temperature", "value": 31.0, "timestamp_ms": t0 + 60_000 },
        { "device_id": "th-1", "metric": "humidity", "value": 55.0, "timestamp_ms": t0 + 60_000 },
        { "device_id": "th 2,x=y", "metric": "temperature", "value": 35.0, "timestamp_ms": t0 + 120_000 },
        { "device_id": "m-7", "metric": "power", "value": 5200.0, "timestamp_ms": t0 + 180_000 },
        { "device_id": "th-1", "metric": "temperature", "value": 18.0, "timestamp_ms": t0 + 240_000 }
    ]);
    let r = http
        .post(format!("{url}/readings"))
        .json(&readings)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);

    // Query by device and time range.
    let range: Vec<Reading> = get_json(
        &http,
        format!(
            "{url}/readings?device_id=th-1&from_ms={}&to_ms={}&metric=temperature",
            t0,
            t0 + 120_000
        ),
    )
    .await;
    let values: Vec<f64> = range.iter().map(|r| r.value).collect();
    assert_eq!(values, [21.5, 31.0]);
    assert_eq!(range[1].timestamp_ms, Some(t0 + 60_000));
    let escaped: Vec<Reading> =
        get_json(&http, format!("{url}/readings?device_id=th%202%2Cx%3Dy")).await;
    assert_eq!(
        escaped.len(),
        1,
        "a device id with a space, comma and equals sign round-trips"
    );
    let quoted: Vec<Reading> = get_json(
        &http,
        format!("{url}/readings?device_id=x'%20OR%20'1'%3D'1"),
    )
    .await;
    assert!(
        quoted.is_empty(),
        "a quote in the device id does not widen the query"
    );

    // The readings over a threshold fired, each once.
    let fired: Vec<Alert> = get_json(&http, format!("{alerts_url}/alerts")).await;
    let mut hits: Vec<(String, f64)> = fired
        .iter()
        .map(|a| (a.reading.device_id.clone(), a.reading.value))
        .collect();
    hits.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        hits,
        [
            ("m-7".to_string(), 5200.0),
            ("th 2,x=y".to_string(), 35.0),
            ("th-1".to_string(), 31.0)
        ]
    );
    let for_meter: Vec<Alert> = get_json(&http, format!("{alerts_url}/alerts?device_id=m-7")).await;
    assert_eq!(for_meter.len(), 1);

    // Ingest keeps working when alerts is down.
    let lonely = Telemetry {
        influx: stores::Influx::connect(&telemetry_db).await.unwrap(),
        http: http.clone(),
        alerts_url: Some("http://127.0.0.1:9".into()),
    };
    let lonely_url = serve(lonely.routes()).await;
    let one = json!([{ "device_id": "th-9", "metric": "temperature", "value": 40.0 }]);
    assert_eq!(
        post_status(&http, format!("{lonely_url}/readings"), &one).await,
        204
    );
    eventually("the reading to be stored", || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r: Vec<Reading> = get_json(&http, format!("{url}/readings?device_id=th-9")).await;
            r.len() == 1
        }
    })
    .await;

    // Another service's credentials are refused on the telemetry database.
    let other = provision(&influxdb, Engine::Influxdb, "metrics", root.path()).await;
    let mut crossed = telemetry_db.clone();
    crossed.username = other.username;
    crossed.password = other.password;
    assert!(
        stores::Influx::connect(&crossed).await.is_err(),
        "another user read the telemetry database"
    );
}

#[tokio::test]
async fn the_binary_reads_its_binding_serves_logs_json_and_stops_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let postgres = LocalServer::start(Kind::Postgres).await.unwrap();
    provision(&postgres, Engine::Postgres, "devices", root.path()).await;
    let port = dbps_e2e::ports::free_port().unwrap();
    let log = root.path().join("devices.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dbps-sample"))
        .arg("devices")
        .env("SERVICE_BINDING_ROOT", root.path())
        .env("LISTEN", format!("127.0.0.1:{port}"))
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let http = dbps_samples::http::client();
    let url = format!("http://127.0.0.1:{port}");
    eventually("the service to be healthy", || {
        let (http, url) = (http.clone(), url.clone());
        async move { matches!(http.get(format!("{url}/healthz")).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;
    let d = json!({ "id": "th-1", "name": "Greenhouse", "kind": "thermometer" });
    assert_eq!(post_status(&http, format!("{url}/devices"), &d).await, 201);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status}");
    let logs = std::fs::read_to_string(&log).unwrap();
    for line in logs.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(v["level"].is_string());
    }
    assert!(logs.contains("\"stopped\""), "{logs}");
    let password = std::fs::read_to_string(root.path().join("devices-db/password")).unwrap();
    assert!(!logs.contains(&password), "the password was logged");
}
