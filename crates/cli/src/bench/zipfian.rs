//! Zipfian key choice as YCSB makes it: Gray et al.'s "Quickly generating
//! billion-record synthetic databases" generator (θ = 0.99), and YCSB's
//! scrambled variant that spreads the popular items over the key space with an
//! FNV-1a hash so that hot keys are not neighbours. Pure: the caller supplies
//! the uniform draws.

/// YCSB's `ZIPFIAN_CONSTANT`.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// Items of the underlying generator of the scrambled variant (YCSB's
/// `ScrambledZipfianGenerator.ITEM_COUNT`) and its precomputed ζ(n, 0.99).
const SCRAMBLED_ITEMS: u64 = 10_000_000_000;
const SCRAMBLED_ZETA: f64 = 26.469_028_201_783_02;

/// Ranks 0..items with P(rank = i) ∝ 1 / (i + 1)^θ: rank 0 is the most popular.
#[derive(Clone, Debug)]
pub struct Zipfian {
    items: u64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipfian {
    /// Computes ζ(items, θ) by summation: O(items). (Runs use the scrambled
    /// variant, whose ζ is a constant; this one shows the shape in tests.)
    #[cfg(test)]
    pub fn new(items: u64, theta: f64) -> Zipfian {
        assert!(items >= 1, "a zipfian distribution needs at least one item");
        Zipfian::with_zeta(items, theta, zeta(items, theta))
    }

    fn with_zeta(items: u64, theta: f64, zeta_n: f64) -> Zipfian {
        assert!(theta > 0.0 && theta < 1.0, "theta must be in (0, 1)");
        let zeta_2 = zeta(2, theta);
        let eta = (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n);
        Zipfian {
            items,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta,
            half_pow_theta: 0.5f64.powf(theta),
        }
    }

    /// Maps a uniform draw `u` in [0, 1) to a rank.
    pub fn rank(&self, u: f64) -> u64 {
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.items - 1);
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }
}

fn zeta(items: u64, theta: f64) -> f64 {
    (1..=items).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// YCSB's scrambled zipfian over keys 0..keys: a zipfian rank over ten
/// billion items, hashed and reduced modulo the key count.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    ranks: Zipfian,
    keys: u64,
}

impl ScrambledZipfian {
    pub fn new(keys: u64) -> ScrambledZipfian {
        assert!(keys >= 1, "a key space needs at least one key");
        ScrambledZipfian {
            ranks: Zipfian::with_zeta(SCRAMBLED_ITEMS, ZIPFIAN_THETA, SCRAMBLED_ZETA),
            keys,
        }
    }

    pub fn key(&self, u: f64) -> u64 {
        fnv1a_64(self.ranks.rank(u)) % self.keys
    }
}

/// YCSB's `Utils.fnvhash64`: FNV-1a over the 8 little-endian bytes, then |x| as a signed long.
fn fnv1a_64(value: u64) -> u64 {
    const OFFSET_BASIS: u64 = 0xCBF2_9CE4_8422_2325;
    const PRIME: u64 = 1_099_511_628_211;
    let hash = value
        .to_le_bytes()
        .iter()
        .fold(OFFSET_BASIS, |hash, &octet| {
            (hash ^ u64::from(octet)).wrapping_mul(PRIME)
        });
    (hash as i64).unsigned_abs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::SmallRng};

    const DRAWS: usize = 100_000;

    fn counts(keys: u64, mut draw: impl FnMut(f64) -> u64) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut counts = vec![0u64; keys as usize];
        for _ in 0..DRAWS {
            let key = draw(rng.random::<f64>());
            assert!(key < keys, "draw {key} outside 0..{keys}");
            counts[key as usize] += 1;
        }
        counts
    }

    #[test]
    fn rank_zero_is_far_more_frequent_than_the_median_rank() {
        let keys = 10_000;
        let zipfian = Zipfian::new(keys, ZIPFIAN_THETA);
        let counts = counts(keys, |u| zipfian.rank(u));
        let median = counts[keys as usize / 2];
        assert!(
            counts[0] > 100 * median.max(1),
            "rank 0: {}, median rank: {median}",
            counts[0]
        );
        // P(rank 0) = 1 / ζ(n, θ): about 10% for 10,000 items.
        let expected = DRAWS as f64 / zeta(keys, ZIPFIAN_THETA);
        let got = counts[0] as f64;
        assert!(
            (got - expected).abs() < expected * 0.05,
            "rank 0 drawn {got} times, expected about {expected}"
        );
        // Popularity falls with rank.
        assert!(counts[0] > counts[1] && counts[1] > counts[10] && counts[10] > counts[1000]);
    }

    #[test]
    fn scrambled_keys_are_skewed_but_the_hottest_is_not_key_zero_by_construction() {
        let keys = 10_000;
        let scrambled = ScrambledZipfian::new(keys);
        let mut counts = counts(keys, |u| scrambled.key(u));
        let hottest_key = counts
            .iter()
            .enumerate()
            .max_by_key(|(_, c)| **c)
            .map(|(k, _)| k)
            .unwrap();
        assert_eq!(
            hottest_key as u64,
            fnv1a_64(0) % keys,
            "the most popular rank lands where its hash says"
        );
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let median = counts[keys as usize / 2];
        assert!(
            counts[0] > 100 * median.max(1),
            "hottest: {}, median: {median}",
            counts[0]
        );
        // Skewed, yet many distinct keys are touched.
        assert!(counts.iter().filter(|c| **c > 0).count() > 1_000);
    }

    #[test]
    fn tiny_key_spaces_stay_in_range() {
        for keys in [1, 2, 3] {
            let zipfian = Zipfian::new(keys, ZIPFIAN_THETA);
            counts(keys, |u| zipfian.rank(u));
            let scrambled = ScrambledZipfian::new(keys);
            counts(keys, |u| scrambled.key(u));
        }
    }
}
