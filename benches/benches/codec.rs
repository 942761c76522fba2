//! Frame encode/decode cost: the floor every request pays before TLS and auth.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use skv_proto::{encode_frame, FrameCodec, Request, RequestBody, Response, ResponseBody};
use tokio_util::codec::Decoder;

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [100usize, 1024, 16 * 1024] {
        let request = Request {
            id: 42,
            token: None,
            handle: None,
            session: None,
            consistency: skv_proto::Consistency::Linearizable,
            body: RequestBody::Put {
                key: Bytes::from_static(b"users/alice/profile"),
                value: Bytes::from(vec![7u8; size]),
            },
        };
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode_put", size), &request, |b, req| {
            let mut buf = BytesMut::with_capacity(size + 64);
            b.iter(|| {
                buf.clear();
                encode_frame(req, &mut buf, usize::MAX).expect("fits");
            })
        });
        let mut wire = BytesMut::new();
        encode_frame(&request, &mut wire, usize::MAX).expect("fits");
        let wire = wire.freeze();
        group.bench_with_input(BenchmarkId::new("decode_put", size), &wire, |b, wire| {
            let mut codec = FrameCodec::default();
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                let payload = codec.decode(&mut buf).expect("valid").expect("whole frame");
                Request::decode(payload).expect("valid request")
            })
        });
        let response = Response {
            id: 42,
            body: ResponseBody::Value {
                version: 9,
                value: Bytes::from(vec![7u8; size]),
            },
        };
        group.bench_with_input(
            BenchmarkId::new("encode_value", size),
            &response,
            |b, resp| {
                let mut buf = BytesMut::with_capacity(size + 64);
                b.iter(|| {
                    buf.clear();
                    encode_frame(resp, &mut buf, usize::MAX).expect("fits");
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
