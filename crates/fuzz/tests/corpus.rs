//! Replays every fuzz target's corpus (`fuzz/corpus/NAME/*`), then inputs derived from it by
//! a seeded generator (bytes flipped, cut, spliced, repeated), so that `cargo test` checks
//! on stable what the fuzzer found and explores a little further. A failure prints the
//! input, to add to the corpus once fixed.

use std::path::PathBuf;

use perennial_fuzz::TARGETS;

/// Derived inputs per target.
const DERIVED: usize = 1_500;

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read(f).expect("a corpus file"))
        .collect()
}

/// A small, seeded generator (xorshift64*), so a run is the same every time.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// An input derived from the corpus.
    fn derive(&mut self, corpus: &[Vec<u8>]) -> Vec<u8> {
        let mut input = corpus[self.below(corpus.len())].clone();
        for _ in 0..1 + self.below(4) {
            let at = self.below(input.len() + 1);
            match self.below(6) {
                0 if !input.is_empty() => {
                    let i = at.min(input.len() - 1);
                    input[i] ^= 1 << self.below(8);
                }
                1 => input.truncate(at),
                2 => {
                    let other = &corpus[self.below(corpus.len())];
                    let from = self.below(other.len() + 1);
                    input.splice(at..at, other[from..].iter().copied());
                }
                3 => {
                    let byte = [0, 0xFF, b'"', b'{', b'[', b'9', b'\\', 0x80][self.below(8)];
                    input.insert(at, byte);
                }
                4 => {
                    let piece = input[at..].to_vec();
                    input.extend_from_slice(&piece);
                }
                _ => {
                    if at < input.len() {
                        input.remove(at);
                    }
                }
            }
        }
        input
    }
}

#[test]
fn every_target_survives_its_corpus_and_inputs_derived_from_it() {
    for (n, target) in TARGETS.iter().enumerate() {
        let corpus = corpus(target.name);
        assert!(!corpus.is_empty(), "{}: the corpus is empty", target.name);
        let mut generator = Gen(0x9e37_79b9_7f4a_7c15 ^ n as u64);
        let derived: Vec<Vec<u8>> = (0..DERIVED).map(|_| generator.derive(&corpus)).collect();
        for input in corpus.iter().chain(&derived) {
            let run = std::panic::catch_unwind(|| (target.run)(input));
            assert!(
                run.is_ok(),
                "{} failed on the input {:?} (bytes {input:?})",
                target.name,
                String::from_utf8_lossy(input)
            );
        }
        println!(
            "{}: {} corpus inputs and {DERIVED} derived ones, no failure",
            target.name,
            corpus.len()
        );
    }
}
