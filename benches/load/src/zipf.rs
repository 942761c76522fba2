//! The bench's Zipf key distribution: rand_distr's sampler (rejection-inversion, Hörmann and
//! Derflinger 1996: O(1) memory and O(1) expected time per sample for any number of keys),
//! behind the bench's own rules for the exponent.
//!
//! Why a wrapper at all: rand_distr accepts an exponent of 0 (uniform) and infinity, which
//! `--key-dist zipf:S` refuses with a message that says what to use instead, and it samples
//! floats, where the bench wants an integer rank.

use rand::Rng;
use rand_distr::Distribution;

/// Ranks `1..=n` with probability proportional to `rank^-exponent`; rank 1 is the hottest.
#[derive(Debug, Clone)]
pub struct Zipf {
    inner: rand_distr::Zipf<f64>,
}

impl Zipf {
    /// A sampler over `n` ranks. `exponent` must be finite and greater than 0 (0 would be
    /// uniform: use the uniform distribution for that).
    pub fn new(n: u64, exponent: f64) -> Result<Zipf, String> {
        if n == 0 {
            return Err("a Zipf distribution needs at least one key".into());
        }
        if !exponent.is_finite() || exponent <= 0.0 {
            return Err(format!(
                "the Zipf exponent must be a number greater than 0 (got {exponent}); 0.99 is \
                 the usual skew"
            ));
        }
        let inner = rand_distr::Zipf::new(n, exponent).map_err(|e| {
            format!("no Zipf distribution over {n} keys with exponent {exponent}: {e}")
        })?;
        Ok(Zipf { inner })
    }

    /// One rank in `1..=n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        // The sampler returns an integral float in [1, n]; n < 2^53 keeps it exact
        // (MAX_KEYS is 10^10).
        self.inner.sample(rng) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    /// Sampled frequencies match the exact probabilities `k^-s / sum`.
    fn check(n: u64, exponent: f64) {
        let zipf = Zipf::new(n, exponent).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let samples = 400_000;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..samples {
            let k = zipf.sample(&mut rng);
            assert!((1..=n).contains(&k), "rank {k} out of 1..={n}");
            counts[(k - 1) as usize] += 1;
        }
        let norm: f64 = (1..=n).map(|k| (k as f64).powf(-exponent)).sum();
        for (i, &c) in counts.iter().enumerate() {
            let expected = ((i + 1) as f64).powf(-exponent) / norm;
            let got = c as f64 / samples as f64;
            // Four standard deviations of a binomial proportion, plus a little slack.
            let tolerance = 4.0 * (expected * (1.0 - expected) / samples as f64).sqrt() + 1e-4;
            assert!(
                (got - expected).abs() <= tolerance,
                "n={n} s={exponent} rank {}: got {got:.5}, expected {expected:.5}",
                i + 1
            );
        }
    }

    #[test]
    fn matches_exact_probabilities() {
        check(1, 0.99);
        check(10, 0.5);
        check(10, 0.99);
        check(10, 1.0);
        check(20, 1.01);
        check(50, 2.0);
    }

    #[test]
    fn large_key_spaces_need_no_memory_and_stay_in_range() {
        let zipf = Zipf::new(5_000_000_000, 0.99).unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut ones = 0;
        for _ in 0..10_000 {
            let k = zipf.sample(&mut rng);
            assert!((1..=5_000_000_000).contains(&k));
            ones += u32::from(k == 1);
        }
        assert!(ones > 100, "rank 1 should be hot, got {ones} of 10000");
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Zipf::new(0, 1.0).is_err());
        assert!(Zipf::new(10, 0.0).is_err());
        assert!(Zipf::new(10, -1.0).is_err());
        assert!(Zipf::new(10, f64::NAN).is_err());
        assert!(Zipf::new(10, f64::INFINITY).is_err());
    }
}
