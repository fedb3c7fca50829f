//! `neuroshard experiment` end to end at toy scale: one single worker run and one DiLoCo run of two
//! real nodes on a small corpus in the fortune format, written here; the CSV, the plot and the
//! table must come out. And a DiLoCo run of three with the data split by topic.

mod common;

use std::process::Command;

use common::BIN;

/// Runs `neuroshard experiment` with `args` at toy scale (nano, batch 4, 1 s heartbeats) on
/// `corpus` into `out`; fails the test unless it succeeds. Returns what it printed on stderr.
fn experiment(args: &[&str], corpus: &std::path::Path, out: &std::path::Path) -> String {
    let result = Command::new(BIN)
        .arg("experiment")
        .args(args)
        .args(["--batch", "4", "--preset", "nano", "--corpus"])
        .arg(corpus)
        .arg("--out")
        .arg(out)
        .env("NEUROSHARD_NETWORK__HEARTBEAT_INTERVAL_S", "1")
        .output()
        .expect("run neuroshard experiment");
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "{stderr}");
    stderr
}

#[test]
fn the_experiment_runs_end_to_end_and_writes_its_results() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    let sayings: Vec<String> = (0..400)
        .map(|i| {
            format!(
                "Saying number {i}: the quick brown fox jumps over the lazy dog {}.\n",
                i % 7
            )
        })
        .collect();
    std::fs::write(corpus.join("sayings"), sayings.join("%\n")).unwrap();
    std::fs::write(corpus.join("sayings.dat"), [0u8, 159, 146, 150]).unwrap();
    let out = dir.path().join("out");

    // Two workers, two rounds of five steps.
    let schedule = ["--workers", "2", "--rounds", "2", "--inner-steps", "5"];
    let stderr = experiment(
        &[&["--runs", "A1,C"], &schedule[..]].concat(),
        &corpus,
        &out,
    );
    assert!(stderr.contains("corpus: 400 documents"), "{stderr}");

    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert!(
        rows[0].starts_with("run,label,seed,round,step,tokens,val_loss"),
        "{csv}"
    );
    // Rounds 0, 1 and 2 of each run: θ₀ before training and after each outer step.
    for run in ["A1", "C"] {
        let points: Vec<&str> = rows[1..]
            .iter()
            .filter(|r| r.starts_with(&format!("{run},")))
            .copied()
            .collect();
        assert_eq!(points.len(), 3, "{run}: {csv}");
        assert!(
            points[0].contains("neuroshard experiment --corpus"),
            "{csv}"
        );
    }
    // Field `from_end` of `run`'s last row (labels hold quoted commas: count from the end;
    // tokens is the sixth, val_loss the fifth).
    let last_field = |csv: &str, run: &str, from_end: usize| -> String {
        let last = csv.lines().rfind(|r| r.starts_with(&format!("{run},")));
        last.unwrap().rsplit(',').nth(from_end).unwrap().to_string()
    };
    // C's two workers read twice A1's tokens by its last round.
    let tokens = |run: &str| -> u64 { last_field(&csv, run, 5).parse().unwrap() };
    assert_eq!(tokens("C"), 2 * tokens("A1"));

    // Evaluating only every second round leaves training as it was: the same last point.
    let sparse = dir.path().join("sparse");
    let args = [&["--runs", "C", "--eval-every", "2"], &schedule[..]].concat();
    experiment(&args, &corpus, &sparse);
    let sparse_csv = std::fs::read_to_string(sparse.join("results.csv")).unwrap();
    let rounds: Vec<&str> = (sparse_csv.lines().skip(1))
        .map(|r| r.rsplit(',').nth(7).unwrap())
        .collect();
    assert_eq!(rounds, ["0", "2"], "{sparse_csv}");
    assert!(sparse_csv.contains("--eval-every 2"), "{sparse_csv}");
    assert_eq!(
        last_field(&sparse_csv, "C", 4),
        last_field(&csv, "C", 4),
        "{sparse_csv}\n{csv}"
    );

    let svg = std::fs::read_to_string(out.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("A1") && svg.contains('C'));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("| A1 |") && summary.contains("| C |"),
        "{summary}"
    );
}

/// `--split topics`: node 1 reads the whole corpus, each other worker whole files of it (topics),
/// and none of node 1's held-out documents reach a worker.
#[test]
fn a_topic_split_gives_each_other_worker_whole_topics_and_none_of_the_held_out_text() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    for (topic, count) in [("cats", 300), ("dogs", 200), ("zebras", 100)] {
        let sayings: Vec<String> = (0..count)
            .map(|i| format!("About {topic}, saying {i}: they are what they are.\n"))
            .collect();
        std::fs::write(corpus.join(topic), sayings.join("%\n")).unwrap();
    }
    let out = dir.path().join("out");
    let stderr = experiment(
        &[
            "--runs",
            "C",
            "--workers",
            "3",
            "--rounds",
            "1",
            "--inner-steps",
            "3",
            "--split",
            "topics",
        ],
        &corpus,
        &out,
    );
    let read = |name: &str| -> Vec<String> {
        std::fs::read_to_string(out.join(name))
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["text"].to_string()
            })
            .collect()
    };
    let (part2, part3) = (read("corpus-part2.jsonl"), read("corpus-part3.jsonl"));
    // cats (the largest) alone; dogs and what is not held out of zebras (the corpus's tail).
    assert!(part2.iter().all(|d| d.contains("About cats")), "{stderr}");
    assert_eq!(part2.len(), 300);
    assert!(part3.iter().any(|d| d.contains("About dogs")));
    assert!(part3.iter().all(|d| !d.contains("About cats")));
    assert!(!part3.iter().any(|d| d.contains("About zebras, saying 99:")));
    assert!(part3.len() < 300, "zebras' tail is node 1's validation");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(
        csv.contains("data split by topic") && csv.contains("--split topics"),
        "{csv}"
    );
}
