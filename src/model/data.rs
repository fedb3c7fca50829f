//! Data pipeline: .txt / .jsonl files (or directories of them) → byte tokens → fixed-length packed
//! sequences, a held-out validation split, and a deterministic shuffled order with a resumable cursor.

use std::fs;
use std::path::{Path, PathBuf};

use super::corpus::SplitMix64;
use super::tokenizer::{self, EOS};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("data path {0}: does not exist")]
    Missing(PathBuf),
    #[error("data file {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("data file {path}, line {line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("data file {0}: unsupported extension (expected .txt or .jsonl)")]
    UnsupportedFile(PathBuf),
    #[error(
        "corpus too small: {tokens} tokens give no full training and validation sequence of {seq_len}"
    )]
    TooSmall { tokens: usize, seq_len: usize },
}

/// Reads every document under `paths`: a .txt file is one document; each line of a .jsonl file is
/// an object whose "text" field is one document; a directory contributes its .txt/.jsonl files
/// (recursively, in name order).
pub fn load_documents(paths: &[PathBuf]) -> Result<Vec<String>, DataError> {
    let mut docs = Vec::new();
    for path in paths {
        if !path.exists() {
            return Err(DataError::Missing(path.clone()));
        }
        if path.is_dir() {
            for file in files_under(path)? {
                read_file(&file, &mut docs)?;
            }
        } else if is_data_file(path) {
            read_file(path, &mut docs)?;
        } else {
            return Err(DataError::UnsupportedFile(path.clone()));
        }
    }
    Ok(docs)
}

fn is_data_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("txt" | "jsonl")
    )
}

fn files_under(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let unreadable = |e: std::io::Error| DataError::Unreadable {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let mut files = Vec::new();
    for entry in entries {
        if entry.is_dir() {
            files.extend(files_under(&entry)?);
        } else if is_data_file(&entry) {
            files.push(entry);
        }
    }
    Ok(files)
}

fn read_file(path: &Path, docs: &mut Vec<String>) -> Result<(), DataError> {
    let text = fs::read_to_string(path).map_err(|e| DataError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if path.extension().and_then(|e| e.to_str()) == Some("txt") {
        docs.push(text);
        return Ok(());
    }
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |reason: String| DataError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let text = value
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("no string field \"text\"".into()))?;
        docs.push(text.to_string());
    }
    Ok(())
}

/// (training, validation) chunks of `seq_len + 1` tokens in a stream of `tokens`: the last
/// `val_fraction` of them (at least one) are held out; None when there is not one of each.
fn split_chunks(tokens: usize, seq_len: usize, val_fraction: f64) -> Option<(usize, usize)> {
    let chunks = tokens.saturating_sub(1) / seq_len;
    let val_chunks = ((chunks as f64 * val_fraction).ceil() as usize).max(1);
    (chunks > val_chunks).then(|| (chunks - val_chunks, val_chunks))
}

/// Packed token sequences of `seq_len + 1` tokens (inputs and shifted targets), split into training
/// and validation sets by position in the token stream.
pub struct TokenDataset {
    tokens: Vec<u32>,
    seq_len: usize,
    train_chunks: usize,
    val_chunks: usize,
    seed: u64,
}

/// One batch: `inputs` and `targets`, each `batch × seq_len` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub inputs: Vec<i32>,
    pub targets: Vec<i32>,
    pub batch: usize,
    pub seq_len: usize,
}

impl TokenDataset {
    /// Documents are separated by EOS; the last `val_fraction` of the stream is held out.
    pub fn new(
        docs: &[String],
        seq_len: usize,
        val_fraction: f64,
        seed: u64,
    ) -> Result<Self, DataError> {
        let mut tokens = Vec::new();
        for doc in docs {
            tokens.extend(tokenizer::encode(doc));
            tokens.push(EOS);
        }
        let Some((train_chunks, val_chunks)) = split_chunks(tokens.len(), seq_len, val_fraction)
        else {
            return Err(DataError::TooSmall {
                tokens: tokens.len(),
                seq_len,
            });
        };
        Ok(Self {
            tokens,
            seq_len,
            train_chunks,
            val_chunks,
            seed,
        })
    }

    /// The index of the first of `docs` that has a token in the validation split [`new`] makes
    /// of them (`docs.len()` when none has), so a copy of the training documents can leave out
    /// exactly what is held out.
    pub fn first_held_out_document(docs: &[String], seq_len: usize, val_fraction: f64) -> usize {
        // Each document is its bytes then EOS (tokenizer::encode is one token per byte).
        let tokens: usize = docs.iter().map(|d| d.len() + 1).sum();
        let Some((train_chunks, _)) = split_chunks(tokens, seq_len, val_fraction) else {
            return 0;
        };
        let held_out_from = train_chunks * seq_len;
        let mut end = 0;
        docs.iter()
            .position(|doc| {
                end += doc.len() + 1;
                end > held_out_from
            })
            .unwrap_or(docs.len())
    }

    /// The same data in another training order: each node reads the corpus in its own order, so
    /// the peers of a round see different batches (the validation split does not change).
    pub fn with_order_seed(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    pub fn train_sequences(&self) -> usize {
        self.train_chunks
    }

    pub fn val_sequences(&self) -> usize {
        self.val_chunks
    }

    fn chunk(&self, index: usize) -> &[u32] {
        let start = index * self.seq_len;
        &self.tokens[start..start + self.seq_len + 1]
    }

    fn batch_of(&self, chunk_indices: impl Iterator<Item = usize>) -> Batch {
        let (mut inputs, mut targets, mut batch) = (Vec::new(), Vec::new(), 0);
        for index in chunk_indices {
            let chunk = self.chunk(index);
            inputs.extend(chunk[..self.seq_len].iter().map(|&t| t as i32));
            targets.extend(chunk[1..].iter().map(|&t| t as i32));
            batch += 1;
        }
        Batch {
            inputs,
            targets,
            batch,
            seq_len: self.seq_len,
        }
    }

    /// The seeded Fisher–Yates order of the training chunks in `epoch` (a new permutation per epoch).
    fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.train_chunks).collect();
        let mut rng = SplitMix64::new(self.seed ^ epoch.wrapping_mul(0x9E37_79B9));
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        order
    }

    /// The next `batch` training sequences from `cursor` (a position in the endless shuffled order),
    /// which advances; the same cursor gives the same batch, so a resumed node continues exactly
    /// where it stopped.
    pub fn next_batch(&self, cursor: &mut u64, batch: usize) -> Batch {
        let n = self.train_chunks as u64;
        let mut order: Option<(u64, Vec<usize>)> = None;
        let mut indices = Vec::with_capacity(batch);
        for position in *cursor..*cursor + batch as u64 {
            let epoch = position / n;
            if order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                order = Some((epoch, self.epoch_order(epoch)));
            }
            indices.push(order.as_ref().unwrap().1[(position % n) as usize]);
        }
        *cursor += batch as u64;
        self.batch_of(indices.into_iter())
    }

    /// Validation batches over the first `max_sequences` held-out sequences.
    pub fn val_batches(&self, batch: usize, max_sequences: usize) -> Vec<Batch> {
        let first = self.train_chunks;
        let count = self.val_chunks.min(max_sequences.max(1));
        (0..count)
            .step_by(batch)
            .map(|s| self.batch_of(first + s..first + (s + batch).min(count)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_first_held_out_document_is_the_first_with_a_validation_token() {
        for (sizes, seq_len) in [
            (vec![10, 3, 40, 7, 7, 90, 1, 30], 8),
            (vec![200; 20], 32),
            (vec![5; 100], 16),
        ] {
            let docs: Vec<String> = sizes.iter().map(|&n| "x".repeat(n)).collect();
            let data = TokenDataset::new(&docs, seq_len, 0.2, 0).unwrap();
            let held_out_from = data.train_sequences() * seq_len;
            let first = TokenDataset::first_held_out_document(&docs, seq_len, 0.2);
            let end_of = |n: usize| docs[..n].iter().map(|d| d.len() + 1).sum::<usize>();
            assert!(end_of(first) <= held_out_from, "{sizes:?}");
            assert!(end_of(first + 1) > held_out_from, "{sizes:?}");
        }
    }

    #[test]
    fn reads_txt_jsonl_and_directories_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), "hello world").unwrap();
        let mut f = fs::File::create(dir.path().join("b.jsonl")).unwrap();
        writeln!(f, "{{\"text\": \"one\"}}\n\n{{\"text\": \"two\"}}").unwrap();
        fs::write(dir.path().join("ignored.bin"), [0u8, 1]).unwrap();
        let docs = load_documents(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(docs, vec!["hello world", "one", "two"]);

        let bad = dir.path().join("bad.jsonl");
        fs::write(&bad, "{\"text\": \"ok\"}\n{\"title\": 3}\n").unwrap();
        let err = load_documents(&[bad]).unwrap_err().to_string();
        assert!(
            err.contains("bad.jsonl") && err.contains("line 2") && err.contains("text"),
            "{err}"
        );
        let missing = load_documents(&[dir.path().join("nope.txt")]).unwrap_err();
        assert!(matches!(missing, DataError::Missing(_)));
    }

    #[test]
    fn batches_are_shifted_deterministic_and_disjoint_from_validation() {
        let docs: Vec<String> = (0..40)
            .map(|i| format!("document number {i} with some text"))
            .collect();
        let data = TokenDataset::new(&docs, 16, 0.1, 3).unwrap();
        let (mut c1, mut c2) = (0, 0);
        let a = data.next_batch(&mut c1, 4);
        assert_eq!(a, data.next_batch(&mut c2, 4));
        assert_eq!(c1, 4);
        assert_eq!(a.inputs.len(), 64);
        assert_eq!(
            a.inputs[1..16],
            a.targets[..15],
            "targets are inputs shifted by one"
        );

        // one epoch visits every training chunk exactly once, never a validation chunk
        let mut seen = data.epoch_order(0);
        seen.sort();
        assert_eq!(seen, (0..data.train_sequences()).collect::<Vec<_>>());
        let val = data.val_batches(4, 100);
        assert_eq!(
            val.iter().map(|b| b.batch).sum::<usize>(),
            data.val_sequences()
        );
    }

    #[test]
    fn a_tiny_corpus_is_refused() {
        assert!(matches!(
            TokenDataset::new(&["hi".into()], 16, 0.1, 0),
            Err(DataError::TooSmall { .. })
        ));
    }
}
