//! The simulation's tests: many seeds with faults, each checked by the history checker; a
//! run without faults; and the determinism meta-test (one seed twice, the same digest).
//!
//! `PERENNIAL_SIM_SEEDS=N` runs N seeds (default 100), `PERENNIAL_SEED=S` runs only seed S
//! (to replay a failure; the failing seed is printed).

use perennial_sim::{Config, Outcome, run};

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("PERENNIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n: u64 = std::env::var("PERENNIAL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    (1..=n).collect()
}

fn describe(o: &Outcome) -> String {
    format!(
        "seed {}: {}; faults {:?}; db {:?}; {} calls sent again; {:?} simulated; error {:?}",
        o.seed, o.report, o.faults, o.db, o.retries, o.simulated, o.error
    )
}

/// Runs every other seed (`half` 0 or 1), so that two tests share the seeds, one per core.
fn seeds_keep_the_contract(half: u64) {
    let all = seeds();
    let seeds: Vec<u64> = if all.len() == 1 {
        all.into_iter().filter(|_| half == 0).collect()
    } else {
        all.into_iter().filter(|s| s % 2 == half).collect()
    };
    let started = std::time::Instant::now();
    let mut total = perennial_sim::FaultCounts::default();
    let mut fenced = 0;
    let mut acknowledged = 0;
    let mut reads = 0;
    for &seed in &seeds {
        let outcome = run(&Config::new(seed));
        assert!(
            outcome.is_valid(),
            "{}\nreplay it: PERENNIAL_SEED={seed} cargo test -p perennial-sim",
            describe(&outcome)
        );
        total.crashes += outcome.faults.crashes;
        total.db_cuts += outcome.faults.db_cuts;
        total.failed_commits += outcome.faults.failed_commits;
        total.ambiguous_commits += outcome.faults.ambiguous_commits;
        total.clock_skews += outcome.faults.clock_skews;
        total.partitions += outcome.faults.partitions;
        total.stops += outcome.faults.stops;
        reads += outcome.report.reads;
        fenced += outcome.db.fenced;
        acknowledged += outcome.report.acknowledged;
    }
    println!(
        "{} seeds in {:?}: {acknowledged} tokens acknowledged, {reads} reads checked, 0 \
         violations; faults {total:?}; {fenced} commits had writes refused by the fence",
        seeds.len(),
        started.elapsed()
    );
    if seeds.len() >= 40 {
        // A nemesis that never strikes proves nothing.
        assert!(
            total.crashes > 0 && total.db_cuts > 0 && total.clock_skews > 0,
            "{total:?}"
        );
        assert!(
            total.ambiguous_commits > 0 && total.partitions > 0 && total.stops > 0,
            "{total:?}"
        );
        assert!(fenced > 0, "no write was ever fenced");
    }
}

#[test]
fn seeds_with_faults_keep_the_contract_odd() {
    seeds_keep_the_contract(1);
}

#[test]
fn seeds_with_faults_keep_the_contract_even() {
    seeds_keep_the_contract(0);
}

#[test]
fn a_run_without_faults_acknowledges_every_call() {
    let mut config = Config::new(1);
    config.faults = false;
    let outcome = run(&config);
    assert!(outcome.is_valid(), "{}", describe(&outcome));
    assert_eq!(outcome.report.acknowledged, config.clients * config.calls);
    println!("{}", describe(&outcome));
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [3, 42] {
        let first = run(&Config::new(seed));
        let second = run(&Config::new(seed));
        assert_eq!(
            first.digest,
            second.digest,
            "seed {seed} ran differently twice:\n{}\n{}",
            describe(&first),
            describe(&second)
        );
        assert!(first.is_valid(), "{}", describe(&first));
    }
}
