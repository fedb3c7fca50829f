//! The built-in training corpus: simple English generated deterministically in code, so a new node
//! trains out of the box with no download. It has real structure (grammar, agreement, arithmetic)
//! for the loss to fall on.

/// SplitMix64: tiny and stable across crate versions, so the corpus is identical everywhere.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    "Ada", "Alan", "Grace", "Linus", "Marie", "Niels", "Emmy", "Kurt", "Rosalind", "Claude",
];
const ADJECTIVES: &[&str] = &[
    "small", "bright", "quiet", "old", "green", "heavy", "quick", "gentle", "red", "clever",
];
const NOUNS: &[&str] = &[
    "fox", "river", "garden", "machine", "letter", "bridge", "lantern", "violin", "map", "engine",
];
const VERBS: &[&str] = &[
    "found", "painted", "repaired", "carried", "watched", "opened", "measured", "followed",
];
const PLACES: &[&str] = &[
    "village", "harbour", "library", "forest", "station", "market", "valley", "workshop",
];
const PREPOSITIONS: &[&str] = &["near", "behind", "inside", "beyond", "under", "beside"];
const TIMES: &[&str] = &[
    "In the morning",
    "At noon",
    "Every evening",
    "Last winter",
    "On Sunday",
    "Before dawn",
];

fn sentence(rng: &mut SplitMix64) -> String {
    match rng.below(5) {
        0 => format!(
            "{} {} the {} {} {} the {}.",
            rng.pick(NAMES),
            rng.pick(VERBS),
            rng.pick(ADJECTIVES),
            rng.pick(NOUNS),
            rng.pick(PREPOSITIONS),
            rng.pick(PLACES)
        ),
        1 => format!(
            "{}, {} walked to the {} with a {} {}.",
            rng.pick(TIMES),
            rng.pick(NAMES),
            rng.pick(PLACES),
            rng.pick(ADJECTIVES),
            rng.pick(NOUNS)
        ),
        2 => {
            let (a, b) = (rng.below(50), rng.below(50));
            format!("{a} plus {b} is {}.", a + b)
        }
        3 => {
            let count = 2 + rng.below(8);
            format!(
                "There are {count} {}s in the {}.",
                rng.pick(NOUNS),
                rng.pick(PLACES)
            )
        }
        _ => format!(
            "The {} {} is {} the {}.",
            rng.pick(ADJECTIVES),
            rng.pick(NOUNS),
            rng.pick(PREPOSITIONS),
            rng.pick(PLACES)
        ),
    }
}

/// `n_documents` paragraphs of 4–12 sentences each, the same for the same seed on every machine.
pub fn builtin_corpus(n_documents: usize, seed: u64) -> Vec<String> {
    let mut rng = SplitMix64::new(seed);
    (0..n_documents)
        .map(|_| {
            let n = 4 + rng.below(9);
            (0..n)
                .map(|_| sentence(&mut rng))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_and_arithmetic_is_right() {
        let a = builtin_corpus(50, 7);
        assert_eq!(a, builtin_corpus(50, 7));
        assert_ne!(a, builtin_corpus(50, 8));
        for doc in &a {
            for s in doc.split(". ").filter(|s| s.contains(" plus ")) {
                let words: Vec<&str> = s.trim_end_matches('.').split(' ').collect();
                let n = |i: usize| words[i].parse::<usize>().unwrap();
                assert_eq!(n(0) + n(2), n(4), "{s}");
            }
        }
    }
}
