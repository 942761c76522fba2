//! Token checkpoint cost: verifying a JWT with the node's real [`Verifier`] (signature, header
//! and claim checks), a [`TokenCache`] hit, the denylist check every admitted token then goes
//! through ([`Revocations`], empty and at its 50,000-entry bound), and minting with the
//! issuer, per algorithm.
//!
//! One verifier holds the keys of every algorithm, as a node with a mixed keyset during a
//! rotation would. Tokens are unbound bearer tokens (`peer = None`): the binding check is a
//! 32-byte constant-time compare and not worth its own line.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use skv_benches::{MEASUREMENT_TIME, SAMPLE_SIZE, WARM_UP_TIME};
use skv_certs::issuer::{mint, Alg, IssuerKey, TokenSpec};
use skv_server::auth::{unix_now, Keyset, Policy, Revocations, TokenCache, Verifier};
use skv_token::denylist::{DenyBy, DenyEntry, Denylist, MAX_DENYLIST_ENTRIES};
use skv_token::{parse_allow, JwkSet};

const AUDIENCE: &str = "bench";
const ISSUER: &str = "skv";

fn spec() -> TokenSpec {
    TokenSpec {
        sub: "alice".into(),
        scopes: vec![
            parse_allow("read,write:users/alice/").expect("valid scope"),
            parse_allow("read:shared/").expect("valid scope"),
        ],
        ttl: Duration::from_secs(3600),
        aud: AUDIENCE.into(),
        iss: ISSUER.into(),
        bind_cert_der: None,
    }
}

fn bench_name(alg: Alg) -> String {
    alg.as_str().to_ascii_lowercase()
}

/// One key per algorithm; RS256 needs the `openssl` command and is skipped without it.
fn issuer_keys() -> Vec<IssuerKey> {
    let mut keys = Vec::new();
    for alg in Alg::ALL {
        match IssuerKey::generate(alg, Some(format!("bench-{}", bench_name(alg)))) {
            Ok(key) => keys.push(key),
            Err(e) => eprintln!("note: skipping {alg} (cannot generate a key: {e})"),
        }
    }
    keys
}

fn jwt(c: &mut Criterion) {
    let keys = issuer_keys();
    let set = JwkSet {
        keys: keys.iter().map(|k| k.public_jwk().clone()).collect(),
    };
    let keyset = Keyset::from_jwks(&set).expect("valid keyset");
    let verifier = Verifier::new(keyset, Policy::new(AUDIENCE, ISSUER)).expect("valid policy");
    let spec = spec();
    let now = unix_now();
    let tokens: Vec<(Alg, String)> = keys
        .iter()
        .map(|k| (k.alg(), mint(k, &spec).expect("mint")))
        .collect();
    for (alg, token) in &tokens {
        let v = verifier
            .verify_for_peer(token.as_bytes(), None, now)
            .expect("a freshly minted token verifies");
        assert_eq!(v.alg(), *alg);
        println!("{alg}: token of {} bytes", token.len());
    }

    let mut group = c.benchmark_group("jwt/verify");
    for (alg, token) in &tokens {
        group.bench_with_input(
            BenchmarkId::from_parameter(bench_name(*alg)),
            token.as_bytes(),
            |b, token| b.iter(|| verifier.verify_for_peer(token, None, now).expect("valid")),
        );
    }
    group.finish();

    let mut group = c.benchmark_group("jwt/verify_cached_hit");
    let (_, eddsa) = tokens
        .iter()
        .find(|(alg, _)| *alg == Alg::EdDSA)
        .expect("EdDSA needs no openssl");
    let cache = TokenCache::new(1024);
    verifier
        .verify_cached(&cache, eddsa.as_bytes(), None, now)
        .expect("valid");
    assert_eq!(cache.len(), 1, "the warming call fills the cache");
    group.bench_with_input(
        BenchmarkId::from_parameter("eddsa"),
        eddsa.as_bytes(),
        |b, token| {
            b.iter(|| {
                verifier
                    .verify_cached(&cache, token, None, now)
                    .expect("valid")
            })
        },
    );
    group.finish();

    // The token is not on the list in either case: what every request pays.
    let mut group = c.benchmark_group("jwt/denylist_check");
    let verified = verifier
        .verify_for_peer(eddsa.as_bytes(), None, now)
        .expect("valid");
    let mut full = Denylist::new();
    for i in 0..MAX_DENYLIST_ENTRIES {
        let by = if i % 2 == 0 {
            DenyBy::Jti(format!("{i:032x}"))
        } else {
            DenyBy::Sub(format!("user-{i}"))
        };
        full.insert(DenyEntry {
            by,
            exp: now + 3600,
        });
    }
    for (name, list) in [
        ("empty", Revocations::none()),
        ("50000", Revocations::from_list(&full, now, 5)),
    ] {
        group.bench_with_input(BenchmarkId::from_parameter(name), &list, |b, list| {
            b.iter(|| list.check(&verified, now).expect("not revoked"))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("jwt/mint");
    for key in &keys {
        group.bench_with_input(
            BenchmarkId::from_parameter(bench_name(key.alg())),
            key,
            |b, key| b.iter(|| mint(key, &spec).expect("mint")),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    targets = jwt
}
criterion_main!(benches);
