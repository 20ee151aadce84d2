//! How long the local control plane takes to start: etcd + kube-apiserver
//! (`api-only`), and the whole plane with a Ready kwok node (`full`).
//! `DBPS_BENCH_RUNS` sets the number of starts per kind (default 5).

use std::time::{Duration, Instant};

use dbps_e2e::{ControlPlane, Options};

fn summary(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "control_plane_startup/{name}: runs={} min={:.0}ms median={:.0}ms max={:.0}ms",
        samples.len(),
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1]),
    );
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("DBPS_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    for (name, options) in [
        ("api-only", Options::api_only()),
        ("full", Options::default()),
    ] {
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let started = Instant::now();
            let plane = ControlPlane::start_with(options.clone()).await.unwrap();
            samples.push(started.elapsed());
            drop(plane);
        }
        summary(name, samples);
    }
}
