//! The agent's pipeline on one core, without the kernel: raw ring-buffer events -> spans with
//! resources (decoded by the instrumentation the event's kind names) -> OTLP-encoded batches
//! of 512, and the same events counted in the request-duration histograms and the service
//! graph (each a root: an edge from `user`); `whole` is all of it, as the agent's main thread
//! does it. Reports events per second.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use probes::event::SpanHeader;
use probes::instrumentations::net_http::server::event::{encode, HttpServerEvent};
use probes::{Assembler, SpanOptions};
use trace::{AgentIdentity, ResourceCache};

fn raw_events(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            encode(&HttpServerEvent {
                header: SpanHeader {
                    pid: std::process::id(),
                    start_ns: 1_000_000 + i as u64,
                    end_ns: 2_000_000 + i as u64,
                    trace_id: [(i % 251) as u8 + 1; 16],
                    span_id: [(i % 241) as u8 + 1; 8],
                    parent_span_id: [0; 8],
                },
                status: 200,
                proto_major: 1,
                proto_minor: 1,
                tls: false,
                panicked: false,
                method: "GET".into(),
                path: format!("/users/{i}"),
                query: "fields=name".into(),
                host: "shop.internal:8080".into(),
                remote_addr: "10.1.2.3:45678".into(),
                pattern: "GET /users/{id}".into(),
                tracestate: String::new(),
            })
        })
        .collect()
}

fn pipeline(c: &mut Criterion) {
    const BATCH: usize = 512;
    let events = raw_events(BATCH);
    let resources = ResourceCache::new(AgentIdentity::from_env(None));
    let mut assembler = Assembler::new(resources, SpanOptions::default());
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("assemble", |b| {
        b.iter(|| {
            for e in &events {
                black_box(assembler.assemble(e).unwrap());
            }
        });
    });
    let mut histograms = export::metrics::Histograms::new(2000, 0);
    let mut graph = export::metrics::ServiceGraph::default();
    group.bench_function("assemble+metrics", |b| {
        b.iter(|| {
            for e in &events {
                let a = assembler.assemble(e).unwrap();
                histograms.record(&a.resource, a.metric.unwrap(), &a.span);
                graph.observe(&a.resource, &a.span, std::time::Instant::now(), &mut histograms);
                black_box(a);
            }
        });
    });
    // As the agent does: each span encoded into the open request as it is assembled.
    let mut request = export::RequestEncoder::default();
    group.bench_function("assemble+otlp-encode", |b| {
        b.iter(|| {
            for e in &events {
                let a = assembler.assemble(e).unwrap();
                request.push(&a.resource, &a.span);
            }
            request.finish().len()
        });
    });
    group.bench_function("whole", |b| {
        b.iter(|| {
            for e in &events {
                let a = assembler.assemble(e).unwrap();
                histograms.record(&a.resource, a.metric.unwrap(), &a.span);
                graph.observe(&a.resource, &a.span, std::time::Instant::now(), &mut histograms);
                request.push(&a.resource, &a.span);
            }
            request.finish().len()
        });
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
