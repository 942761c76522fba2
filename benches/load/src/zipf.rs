//! A Zipf sampler by rejection-inversion (W. Hörmann and G. Derflinger, "Rejection-inversion
//! to generate variates from monotone discrete distributions", 1996), as in Apache Commons RNG.
//!
//! Why this method: it needs O(1) memory and O(1) expected time per sample for any number of
//! keys, where a precomputed CDF costs 8 bytes per key and a binary search per sample. The
//! idea: sample a continuous variable whose density `h(x) = x^-s` hugs the discrete masses
//! `k^-s` from above, by inverting the integral of `h`, round it to the nearest rank, and
//! reject the few samples that fall in the gap between the two; the acceptance rate is high
//! (well above 90 %) for every exponent.

use rand::Rng;

/// Ranks `1..=n` with probability proportional to `rank^-exponent`; rank 1 is the hottest.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: f64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    /// Samples whose continuous value is within this of their rank are accepted at once.
    shortcut: f64,
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
        let mut zipf = Zipf {
            n: n as f64,
            exponent,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            shortcut: 0.0,
        };
        zipf.h_integral_x1 = zipf.h_integral(1.5) - 1.0;
        zipf.h_integral_n = zipf.h_integral(zipf.n + 0.5);
        zipf.shortcut = 2.0 - zipf.h_integral_inverse(zipf.h_integral(2.5) - zipf.h(2.0));
        Ok(zipf)
    }

    /// One rank in `1..=n`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        loop {
            // Uniform in (h_integral_x1, h_integral_n].
            let u = self.h_integral_n + rng.gen::<f64>() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.shortcut || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }

    /// `h(x) = x^-s`, the continuous hull of the masses.
    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    /// `H(x) = (x^(1-s) - 1) / (1-s)`, an integral of `h`, computed stably near `s = 1`
    /// (where it becomes `ln x`).
    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.exponent) * log_x) * log_x
    }

    /// The inverse of `H`.
    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// `ln(1+x)/x`, with its Taylor series near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// `(e^x - 1)/x`, with its Taylor series near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + 0.25 * x))
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
