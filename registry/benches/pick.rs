//! Per-call pick overhead: `WeightedChannel::pick` (smooth weighted round
//! robin, outlier state, the lock) beside tower's `p2c::Balance` choosing
//! among ready services (its `ready` + `call` on trivial services), at 10 and
//! 1,000 nodes. Neither sends anything over the network.
//!
//! Run: `cargo bench -p grpc-registry --features tonic --bench pick`

use std::convert::Infallible;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use registry::balance::{ChannelBuilder, Selector};
use registry::{GrpcServices, Meta, Network, Register, ServiceConf};
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::{Service, ServiceExt};

const SIZES: [usize; 2] = [10, 1_000];

/// `n` registered nodes (addresses nothing listens on: nothing connects).
async fn fleet(n: usize) -> anyhow::Result<(Arc<dyn registry::Discovery>, Vec<Arc<dyn Register>>)> {
    let registry = registry::connect(format!("memory://bench-pick-{n}")).await?;
    let mut registrars = Vec::new();
    for i in 0..n {
        let network = Network { internal: format!("127.0.0.1:{}", 20_000 + i), ..Default::default() };
        let registrar =
            registry.registrar(Meta::new("dev", "bench", "v1"), ServiceConf::default().with_network(network))?;
        registrar.install(GrpcServices::new().service("bench.S", ["M"])?.into_node()).await?;
        registrars.push(registrar);
    }
    let discovery = registry.discoverer("dev", ServiceConf::default())?;
    discovery.watcher().await?;
    Ok((discovery, registrars))
}

fn pick(c: &mut Criterion) {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => return eprintln!("no runtime: {e}"),
    };
    let mut group = c.benchmark_group("pick");
    for n in SIZES {
        let (discovery, _registrars) = match runtime.block_on(fleet(n)) {
            Ok(fleet) => fleet,
            Err(e) => return eprintln!("fleet of {n}: {e}"),
        };
        let channel = runtime.block_on(async { ChannelBuilder::new(discovery, Selector::app("bench")).build() });
        group.bench_with_input(BenchmarkId::new("weighted_channel", n), &n, |b, _| b.iter(|| channel.pick()));

        let services: Vec<_> = (0..n)
            .map(|_| {
                PendingRequests::new(
                    tower::service_fn(|()| async { Ok::<_, Infallible>(()) }),
                    CompleteOnResponse::default(),
                )
            })
            .collect();
        let mut balance = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(services));
        group.bench_with_input(BenchmarkId::new("tower_p2c", n), &n, |b, _| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let started = std::time::Instant::now();
                    for _ in 0..iters {
                        if let Ok(service) = balance.ready().await {
                            let _ = service.call(()).await;
                        }
                    }
                    started.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
