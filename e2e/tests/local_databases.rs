//! The local database servers are real, authenticated, and confined to loopback.

use dbps_e2e::databases::{Kind, LocalServer};

#[tokio::test]
async fn postgres_requires_the_admin_password() {
    let server = LocalServer::start(Kind::Postgres).await.unwrap();
    let ok = format!(
        "host=127.0.0.1 port={} user=admin password={} dbname=postgres",
        server.port, server.admin_password
    );
    let (client, conn) = tokio_postgres::connect(&ok, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client.query_one("SHOW server_version", &[]).await.unwrap();
    assert!(!row.get::<_, String>(0).is_empty());
    let bad = format!(
        "host=127.0.0.1 port={} user=admin password=wrong dbname=postgres",
        server.port
    );
    let err = tokio_postgres::connect(&bad, tokio_postgres::NoTls)
        .await
        .err()
        .expect("wrong password accepted");
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(
        message.contains("password authentication failed"),
        "{err:?}"
    );
}

#[tokio::test]
async fn influxdb_requires_authentication() {
    let server = LocalServer::start(Kind::InfluxDb).await.unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/query", server.port);
    let anonymous = http
        .get(&url)
        .query(&[("q", "SHOW DATABASES")])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let admin = http
        .get(&url)
        .query(&[
            ("q", "SHOW DATABASES"),
            ("u", &server.admin_user),
            ("p", &server.admin_password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
}

#[tokio::test]
async fn ferretdb_requires_authentication_and_survives_a_restart() {
    let mut server = LocalServer::start(Kind::FerretDb).await.unwrap();
    let port = server.port;
    let uri = |user: &str, password: &str| {
        format!(
            "mongodb://{user}:{password}@127.0.0.1:{}/?authSource=admin&serverSelectionTimeoutMS=5000",
            port
        )
    };
    let admin = mongodb::Client::with_uri_str(uri("admin", &server.admin_password))
        .await
        .unwrap();
    let docs = admin
        .database("probe")
        .collection::<mongodb::bson::Document>("c");
    docs.insert_one(mongodb::bson::doc! { "n": 1 })
        .await
        .unwrap();
    let wrong = mongodb::Client::with_uri_str(uri("admin", "wrong"))
        .await
        .unwrap();
    let err = wrong
        .database("probe")
        .collection::<mongodb::bson::Document>("c")
        .count_documents(mongodb::bson::doc! {})
        .await;
    assert!(err.is_err(), "wrong password accepted");

    server.pause();
    server.resume().await.unwrap();
    let admin = mongodb::Client::with_uri_str(uri("admin", &server.admin_password))
        .await
        .unwrap();
    let n = admin
        .database("probe")
        .collection::<mongodb::bson::Document>("c")
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(n, 1, "data survives the restart");
}

#[tokio::test]
async fn opensearch_serves_tls_only_and_requires_authentication() {
    use dbps_e2e::opensearch::{client, url};
    let node = LocalServer::start(Kind::OpenSearch).await.unwrap();
    let http = client(&node).unwrap();
    let about: serde_json::Value = http
        .get(url(&node, "/"))
        .basic_auth(&node.admin_user, Some(&node.admin_password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        about["version"]["number"],
        dbps_e2e::binaries::Versions::pinned().opensearch
    );
    assert_eq!(about["version"]["distribution"], "opensearch");
    // The security plugin answers its REST API to the admin.
    let admin = http
        .get(url(&node, "/_plugins/_security/api/internalusers/admin"))
        .basic_auth(&node.admin_user, Some(&node.admin_password))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    for (user, password) in [(None, None), (Some("admin"), Some("wrong"))] {
        let mut request = http.get(url(&node, "/_cluster/health"));
        if let (Some(u), Some(p)) = (user, password) {
            request = request.basic_auth(u, Some(p));
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{user:?}");
    }
    // No plain HTTP.
    let plain = reqwest::Client::builder()
        .tls_backend_preconfigured(
            dbps_operator::engines::Tls::default()
                .client_config()
                .unwrap(),
        )
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}/", node.port))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP answered"
    );
}
