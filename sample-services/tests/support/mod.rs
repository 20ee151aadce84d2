#![allow(dead_code)] // each test binary uses part of its support
//! Real databases for the sample services: a database and a least-privileged
//! user per service on a local server, handed over as a servicebinding.io
//! binding directory, and the services served on loopback ports.

use std::path::Path;

use dbps_e2e::databases::LocalServer;
use dbps_operator::api::Engine;
use dbps_operator::engines::Grant;
use dbps_operator::servers::Servers;
use dbps_samples::binding::Binding;

/// Creates `database` with its own user on `server` (as dbps does for a
/// shared claim), writes the binding files under `root/<database>-db/`, and
/// reads them back the way the services do.
pub async fn provision(
    server: &LocalServer,
    engine: Engine,
    database: &str,
    root: &Path,
) -> Binding {
    let grant = Grant {
        database: database.to_string(),
        username: format!("{database}_app"),
        password: dbps_operator::password::generate(),
    };
    let owner = dbps_e2e::claims::claimant("samples", database, database, database, false);
    Servers::default()
        .ensure(&server.admin_connection(engine), &grant, &owner)
        .await
        .unwrap();
    let name = format!("{database}-db");
    let dir = root.join(&name);
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
    // What a binding adds for TLS (the CA) and for the engine (OpenSearch's prefix).
    if let Some(ca) = &server.ca_pem {
        std::fs::write(dir.join("ca.crt"), ca).unwrap();
    }
    for (key, value) in engine.instance().binding_entries(&grant.database) {
        std::fs::write(dir.join(key), value).unwrap();
    }
    Binding::read_from(Some(root), &name, |_| None).unwrap()
}

/// Serves `routes` on a free loopback port; returns its base URL.
pub async fn serve(routes: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(dbps_samples::http::serve(
        listener,
        routes,
        std::future::pending(),
    ));
    url
}

/// Polls `check` every 100 ms for up to 30 s.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// GET `url` and decode its JSON answer.
pub async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl,
) -> T {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET `url`; its status.
pub async fn get_status(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> u16 {
    http.get(url).send().await.unwrap().status().as_u16()
}

/// POST `body` as JSON to `url`; its status.
pub async fn post_status(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    body: &serde_json::Value,
) -> u16 {
    http.post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
