//! `run_seeds`: runs a scenario over many seeds, or over the one named by
//! `RINGKV_SIM_SEED`, and on failure names the seed and the command that
//! replays it.

/// Runs only this seed (replay).
pub const SEED_ENV: &str = "RINGKV_SIM_SEED";
/// Overrides how many seeds each scenario runs (CI can ask for more).
pub const SEEDS_ENV: &str = "RINGKV_SIM_SEEDS";

/// Runs `scenario` for seeds `1..=default_count` (or `RINGKV_SIM_SEEDS`
/// of them, or only `RINGKV_SIM_SEED`).
///
/// # Panics
/// On the first seed whose run returns `Err`, with the seed, the error and
/// the replay command; or when an environment variable is not a number.
pub fn run_seeds(
    test: &str,
    default_count: u64,
    mut scenario: impl FnMut(u64) -> Result<(), String>,
) {
    let seeds: Vec<u64> = match std::env::var(SEED_ENV) {
        Ok(seed) => vec![
            seed.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_ENV}={seed:?} is not a number")),
        ],
        Err(_) => {
            let count = match std::env::var(SEEDS_ENV) {
                Ok(count) => count
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{SEEDS_ENV}={count:?} is not a number")),
                Err(_) => default_count,
            };
            (1..=count).collect()
        }
    };
    for seed in seeds {
        if let Err(failure) = scenario(seed) {
            panic!(
                "{test} failed with seed {seed}:\n{failure}\n\
                 replay: {SEED_ENV}={seed} cargo test -p ringkv-sim {test}"
            );
        }
    }
}
