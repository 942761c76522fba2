//! Encryption-at-rest cost: AES-256-GCM seal and open with ring, per value size, with the key
//! name as associated data (binding a ciphertext to its key, so values cannot be swapped
//! between keys on disk).
//!
//! Each op copies the value into a reusable buffer first (seal and open both work in place),
//! which is what a storage layer encrypting a borrowed value would do. Nonces come from a
//! counter: fine for a bench, where only the cost matters.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use skv_benches::{MEASUREMENT_TIME, SAMPLE_SIZE, WARM_UP_TIME};

const KEY_NAME: &[u8] = b"users/alice/profile";

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aead(c: &mut Criterion) {
    let mut key_bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key_bytes)
        .expect("random key");
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key_bytes).expect("32-byte key"));
    let tag_len = AES_256_GCM.tag_len();

    let mut group = c.benchmark_group("aead/aes256gcm");
    for size in [100usize, 1024, 16 * 1024] {
        let value = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));

        let mut buf = Vec::with_capacity(size + tag_len);
        let mut counter = 0u64;
        group.bench_with_input(BenchmarkId::new("seal", size), &value, |b, value| {
            b.iter(|| {
                counter += 1;
                buf.clear();
                buf.extend_from_slice(value);
                key.seal_in_place_append_tag(nonce(counter), Aad::from(KEY_NAME), &mut buf)
                    .expect("seal");
            })
        });

        let mut sealed = value.clone();
        key.seal_in_place_append_tag(nonce(0), Aad::from(KEY_NAME), &mut sealed)
            .expect("seal");
        assert_eq!(sealed.len(), size + tag_len);
        group.bench_with_input(BenchmarkId::new("open", size), &sealed, |b, sealed| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(sealed);
                let plain = key
                    .open_in_place(nonce(0), Aad::from(KEY_NAME), &mut buf)
                    .expect("authentic");
                plain.len()
            })
        });
        assert_eq!(&buf[..size], &value[..], "open returns the value");
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    targets = aead
}
criterion_main!(benches);
