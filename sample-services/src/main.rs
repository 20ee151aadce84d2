//! `dbps-sample <service>`: runs one sample service. Its database binding is
//! read from `$SERVICE_BINDING_ROOT/<binding>/` (default binding name
//! `<service>-db`, or `--binding`), with environment variables as fallback.

use std::time::Duration;

use clap::{Parser, ValueEnum};
use dbps_samples::binding::Binding;
use dbps_samples::services::{
    alerts, catalog, devices, orders, payments, reporting, search, telemetry,
};
use dbps_samples::{http, outbox, stores};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Service {
    Orders,
    Catalog,
    Payments,
    Devices,
    Telemetry,
    Alerts,
    Reporting,
    Search,
}

#[derive(Parser)]
#[command(
    name = "dbps-sample",
    about = "Sample services that own their databases through dbps"
)]
struct Cli {
    service: Service,
    /// Address to serve the HTTP API on.
    #[arg(long, env = "LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    /// Name of the binding (a directory under $SERVICE_BINDING_ROOT).
    #[arg(long, env = "BINDING_NAME")]
    binding: Option<String>,
    /// orders: base URL of payments.
    #[arg(long, env = "PAYMENTS_URL", default_value = "http://payments:8080")]
    payments_url: String,
    /// orders: base URL of catalog.
    #[arg(long, env = "CATALOG_URL", default_value = "http://catalog:8080")]
    catalog_url: String,
    /// payments: base URL of orders.
    #[arg(long, env = "ORDERS_URL", default_value = "http://orders:8080")]
    orders_url: String,
    /// payments: largest amount accepted, in cents.
    #[arg(long, env = "PAYMENT_LIMIT_CENTS", default_value_t = 100_000)]
    payment_limit_cents: i64,
    /// telemetry: base URL of alerts (readings are offered to it).
    #[arg(long, env = "ALERTS_URL")]
    alerts_url: Option<String>,
    /// catalog: base URL of search, which catalog's changes are delivered to.
    #[arg(long, env = "SEARCH_URL")]
    search_url: Option<String>,
    /// reporting: the read-only binding of orders' database.
    #[arg(
        long,
        env = "ORDERS_READER_BINDING",
        default_value = "orders-db-reader"
    )]
    orders_reader: String,
    /// reporting: the read-only binding of payments' database.
    #[arg(
        long,
        env = "PAYMENTS_READER_BINDING",
        default_value = "payments-db-reader"
    )]
    payments_reader: String,
    /// reporting: the read-only binding of telemetry's database.
    #[arg(
        long,
        env = "TELEMETRY_READER_BINDING",
        default_value = "telemetry-db-reader"
    )]
    telemetry_reader: String,
    /// reporting: seconds between refreshes of the warehouse.
    #[arg(long, env = "REFRESH_SECONDS", default_value_t = 30)]
    refresh_seconds: u64,
    /// Connect with the binding, prepare the service's schema (a write), and
    /// exit: 0 when the service can use its database.
    #[arg(long)]
    check: bool,
    /// With --check: how many times to try (a second apart) before failing,
    /// as a pod that starts before its network policy admits it would.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    check_attempts: u32,
}

/// What a service needs of its database at start: a session as its user
/// and its schema (tables, indexes or a measurement) in place.
async fn check(service: Service, binding: &Binding) -> Result<(), Box<dyn std::error::Error>> {
    match service {
        Service::Orders | Service::Payments | Service::Devices | Service::Reporting => {
            let db = stores::postgres(binding).await?;
            db.lock()
                .await
                .batch_execute("CREATE TABLE IF NOT EXISTS dbps_check (at timestamptz DEFAULT now()); INSERT INTO dbps_check DEFAULT VALUES")
                .await?;
        }
        Service::Catalog | Service::Alerts => {
            let db = stores::Mongo::connect(binding).await?.db().await;
            db.collection::<mongodb::bson::Document>("dbps_check")
                .insert_one(mongodb::bson::doc! { "check": true })
                .await?;
        }
        Service::Search => {
            search::Search::connect(binding)?.setup().await?;
        }
        Service::Telemetry => {
            stores::Influx::connect(binding)
                .await?
                .write("dbps_check value=1".into())
                .await?;
        }
    }
    println!(
        "ok: {} can use {:?} on {}",
        format!("{service:?}").to_lowercase(),
        binding.database,
        binding.host
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let name = format!("{:?}", cli.service).to_lowercase();
    let binding = Binding::read(cli.binding.as_deref().unwrap_or(&format!("{name}-db")))?;
    tracing::info!(service = %name, database = ?binding, "starting");

    if cli.check {
        let mut attempt = 1;
        loop {
            match check(cli.service, &binding).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < cli.check_attempts => {
                    eprintln!("attempt {attempt} of {}: {e}", cli.check_attempts);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let http_client = http::client();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // orders and payments deliver their outbox events in the background.
    let relay = |db: stores::Postgres| {
        tokio::spawn(outbox::relay(
            db,
            http_client.clone(),
            Duration::from_millis(500),
            until_stopped(),
        ));
    };
    let routes = match cli.service {
        Service::Orders => {
            let db = stores::postgres(&binding).await?;
            let svc = orders::Orders {
                db: db.clone(),
                http: http_client.clone(),
                payments_url: cli.payments_url,
                catalog_url: cli.catalog_url,
            };
            svc.setup().await?;
            relay(db);
            svc.routes()
        }
        Service::Payments => {
            let db = stores::postgres(&binding).await?;
            let svc = payments::Payments {
                db: db.clone(),
                orders_url: cli.orders_url,
                limit_cents: cli.payment_limit_cents,
            };
            svc.setup().await?;
            relay(db);
            svc.routes()
        }
        Service::Catalog => {
            let svc = catalog::Catalog {
                db: stores::Mongo::connect(&binding).await?,
            };
            svc.setup().await?;
            if let Some(search_url) = cli.search_url.clone() {
                tokio::spawn(catalog::relay(
                    svc.clone(),
                    http_client.clone(),
                    search_url,
                    Duration::from_millis(500),
                    until_stopped(),
                ));
            }
            svc.routes()
        }
        Service::Search => {
            let svc = search::Search::connect(&binding)?;
            svc.setup().await?;
            svc.routes()
        }
        Service::Devices => {
            let svc = devices::Devices {
                db: stores::postgres(&binding).await?,
            };
            svc.setup().await?;
            svc.routes()
        }
        Service::Telemetry => telemetry::Telemetry {
            influx: stores::Influx::connect(&binding).await?,
            http: http_client,
            alerts_url: cli.alerts_url,
        }
        .routes(),
        Service::Alerts => alerts::Alerts {
            db: stores::Mongo::connect(&binding).await?,
        }
        .routes(),
        Service::Reporting => {
            let svc = reporting::Reporting {
                warehouse: stores::postgres(&binding).await?,
                orders: stores::postgres(&Binding::read(&cli.orders_reader)?).await?,
                payments: stores::postgres(&Binding::read(&cli.payments_reader)?).await?,
                telemetry: stores::Influx::connect(&Binding::read(&cli.telemetry_reader)?).await?,
            };
            svc.setup().await?;
            tokio::spawn(reporting::refresh_loop(
                svc.clone(),
                Duration::from_secs(cli.refresh_seconds.max(1)),
                until_stopped(),
            ));
            svc.routes()
        }
    };
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop.send(true);
    });
    let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
    tracing::info!(service = %name, listen = %cli.listen, "serving");
    http::serve(listener, routes, until_stopped()).await?;
    tracing::info!(service = %name, "stopped");
    Ok(())
}
