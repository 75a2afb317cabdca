//! Codec micro-benchmarks: frames decoded and encoded per second, single and batched.
//! `cargo bench -p switchboard-protocol` (criterion prints throughput in elements/s).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use switchboard_protocol::Payload;

/// A payload from a `json!` literal.
macro_rules! pj {
    ($($t:tt)*) => {
        Payload::from(json!($($t)*))
    };
}
use switchboard_protocol::{ClientFrame, Limits, ServerFrame, codec};

fn publish() -> ClientFrame {
    ClientFrame::Publish {
        id: Some("3f2a9c1e7b4d5a60918273645f0e1d2c-m17".into()),
        channel: "room:lobby".into(),
        data: pj!({"name": "Ada", "text": "hello there, how is everyone doing today?"}),
        ephemeral: false,
        skip_self: false,
    }
}

fn message() -> ServerFrame {
    ServerFrame::Message {
        channel: "room:lobby".into(),
        offset: Some(42),
        epoch: Some("18bcfe56800-2".into()),
        from: None,
        data: pj!({"name": "Ada", "text": "hello there, how is everyone doing today?"}),
        ts: 1_700_000_000_000,
        ephemeral: false,
    }
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let one = codec::encode(&publish());
    let batch: Vec<ClientFrame> = (0..50).map(|_| publish()).collect();
    let batch_text = codec::encode_batch(&batch);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode publish", |b| {
        b.iter(|| codec::decode_client(black_box(&one), &limits))
    });
    g.bench_function("encode message", |b| {
        b.iter(|| codec::encode(black_box(&message())))
    });
    g.bench_function("decode message (client side)", |b| {
        let text = codec::encode(&message());
        b.iter(|| codec::decode_server(black_box(&text)))
    });
    g.bench_function("decode malformed", |b| {
        b.iter(|| codec::decode_client(black_box(r#"{"type":"publish","channel":"a b"}"#), &limits))
    });
    g.throughput(Throughput::Elements(50));
    g.bench_function("decode batch of 50 publishes", |b| {
        b.iter(|| codec::decode_client(black_box(&batch_text), &limits))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
