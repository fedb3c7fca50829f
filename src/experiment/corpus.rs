//! Turning a directory of plain text (Debian's `fortunes` package, /usr/share/games/fortunes) into
//! the node's training-data format: `.jsonl`, one `{"text": "..."}` object per line (read back by
//! `model::data::load_documents`).

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// What [`build_corpus`] read and wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusStats {
    /// Text files read (each gave zero or more documents).
    pub files: usize,
    /// Documents written, one JSONL line each.
    pub documents: usize,
    /// UTF-8 bytes of document text written (after trimming, before JSON escaping).
    pub bytes: u64,
    /// File names passed over because they are not valid UTF-8. Index files (`.dat`, `.u8`, `.gz`)
    /// and subdirectories are ignored silently and not listed here.
    pub skipped_files: Vec<String>,
}

/// The corpus as read: what [`build_corpus`] counted, and the documents of each text file, in
/// file-name order (fortunes' files are topics: art, computers, love, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corpus {
    pub stats: CorpusStats,
    pub files: Vec<Vec<String>>,
}

/// Extensions of files that are never text documents: the strfile indexes `fortune` reads (`.dat`),
/// the `.u8` symlinks to the UTF-8 originals (reading them would duplicate every document), and
/// compressed files.
const INDEX_EXTENSIONS: [&str; 3] = ["dat", "u8", "gz"];

/// Reads every regular file directly in `dir` (sorted by name; not recursive; symlinks to regular
/// files are followed), splits each into documents on lines that hold only `%` (the fortune format;
/// a file without such lines is one document), trims them, drops empty ones and writes them to
/// `out` as JSONL. `out` is written only when at least one document was found.
pub fn build_corpus(dir: &Path, out: &Path) -> Result<Corpus, String> {
    if !dir.is_dir() {
        let what = if dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(format!("corpus directory {} {what}", dir.display()));
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list corpus directory {}: {e}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot list corpus directory {}: {e}", dir.display()))?;
    entries.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    // An output file inside `dir` from an earlier run must not be read back in.
    let out_canonical = fs::canonicalize(out).ok();

    let mut stats = CorpusStats {
        files: 0,
        documents: 0,
        bytes: 0,
        skipped_files: Vec::new(),
    };
    let mut files = Vec::new();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // `metadata` follows symlinks: a link to a regular file counts as one.
        let meta =
            fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if !meta.is_file() || is_index_file(&path) {
            continue;
        }
        if out_canonical.is_some() && fs::canonicalize(&path).ok() == out_canonical {
            continue;
        }
        let raw = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let Ok(text) = String::from_utf8(raw) else {
            stats.skipped_files.push(name);
            continue;
        };
        stats.files += 1;
        let documents = split_documents(&text);
        stats.bytes += documents.iter().map(|d| d.len() as u64).sum::<u64>();
        files.push(documents);
    }
    let documents: Vec<String> = files.iter().flatten().cloned().collect();
    if documents.is_empty() {
        return Err(format!(
            "no documents in corpus directory {} ({} text files read)",
            dir.display(),
            stats.files
        ));
    }
    stats.documents = documents.len();
    write_documents(out, &documents)?;
    Ok(Corpus { stats, files })
}

/// Non-i.i.d. parts of the corpus (`neuroshard experiment --split topics`): its files, each a
/// topic, dealt to `parts` parts, the largest first to the part with the fewest bytes so far
/// (ties to the lower part), so every part holds whole topics and about the same amount of text.
/// The documents from `held_out_from` on, in the corpus's order, are in no part: they are the
/// validation split of the node that reads the whole corpus, which must not leak into training.
pub fn deal_topics(files: &[Vec<String>], held_out_from: usize, parts: usize) -> Vec<Vec<String>> {
    let mut kept = Vec::with_capacity(files.len());
    let mut seen = 0;
    for documents in files {
        let keep = held_out_from.saturating_sub(seen).min(documents.len());
        kept.push(&documents[..keep]);
        seen += documents.len();
    }
    let bytes = |documents: &[String]| documents.iter().map(|d| d.len()).sum::<usize>();
    let mut order: Vec<usize> = (0..kept.len()).collect();
    // Stable: equal sizes stay in file order.
    order.sort_by_key(|&f| std::cmp::Reverse(bytes(kept[f])));
    let mut dealt: Vec<Vec<usize>> = vec![Vec::new(); parts];
    let mut sizes = vec![0usize; parts];
    for f in order {
        let Some(part) = (0..parts).min_by_key(|&p| (sizes[p], p)) else {
            break;
        };
        sizes[part] += bytes(kept[f]);
        dealt[part].push(f);
    }
    dealt
        .into_iter()
        .map(|mut files_of_part| {
            // Each part reads its topics in the corpus's file order.
            files_of_part.sort_unstable();
            files_of_part
                .into_iter()
                .flat_map(|f| kept[f].iter().cloned())
                .collect()
        })
        .collect()
}

/// Writes `documents` as the node reads them (JSONL, one `{"text": …}` a line).
pub fn write_documents(out: &Path, documents: &[String]) -> Result<(), String> {
    write_jsonl(out, documents).map_err(|e| format!("cannot write {}: {e}", out.display()))
}

fn is_index_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| INDEX_EXTENSIONS.contains(&e))
}

/// Splits fortune-format text on lines holding only `%` and returns the trimmed, non-empty parts.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut flush = |lines: &mut Vec<&str>| {
        let doc = lines.join("\n");
        let doc = doc.trim();
        if !doc.is_empty() {
            docs.push(doc.to_string());
        }
        lines.clear();
    };
    for line in text.lines() {
        if line.trim() == "%" {
            flush(&mut current);
        } else {
            current.push(line);
        }
    }
    flush(&mut current);
    docs
}

fn write_jsonl(out: &Path, documents: &[String]) -> std::io::Result<()> {
    let mut writer = BufWriter::new(fs::File::create(out)?);
    for doc in documents {
        serde_json::to_writer(&mut writer, &serde_json::json!({ "text": doc }))?;
        writer.write_all(b"\n")?;
    }
    writer.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::data::load_documents;

    fn read_texts(out: &Path) -> Vec<String> {
        load_documents(&[out.to_path_buf()]).unwrap()
    }

    #[test]
    fn splits_on_percent_lines_trims_and_drops_empty_documents() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("quotes"),
            "  first one\nsecond line  \n%\n\n%\n\"quoted\" \\ and\ttab\r\n%\r\nlast\n%\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("plain.txt"),
            "\nno separators here\n50% off\n",
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let out = out.path().join("corpus.jsonl");

        let stats = build_corpus(dir.path(), &out).unwrap().stats;
        let docs = read_texts(&out);
        assert_eq!(
            docs,
            vec![
                "no separators here\n50% off",
                "first one\nsecond line",
                "\"quoted\" \\ and\ttab",
                "last",
            ]
        );
        assert_eq!(stats.files, 2);
        assert_eq!(stats.documents, 4);
        let bytes: usize = docs.iter().map(String::len).sum();
        assert_eq!(stats.bytes, bytes as u64);
        assert!(stats.skipped_files.is_empty());
        // One JSON object per line.
        assert_eq!(fs::read_to_string(&out).unwrap().lines().count(), 4);
    }

    #[test]
    fn topics_are_dealt_whole_and_even_and_the_held_out_documents_to_no_part() {
        let file = |name: &str, count: usize, size: usize| -> Vec<String> {
            (0..count)
                .map(|i| format!("{name}{i}:{}", "x".repeat(size)))
                .collect()
        };
        let files = vec![
            file("art", 10, 10),
            file("computers", 40, 10),
            file("love", 20, 10),
            file("people", 20, 10),
            file("wisdom", 30, 10),
        ];
        let all: Vec<String> = files.iter().flatten().cloned().collect();
        // The last 25 documents (wisdom's last 25) are held out.
        let parts = deal_topics(&files, all.len() - 25, 3);
        assert_eq!(parts.len(), 3);
        let topic = |doc: &String| {
            doc.split(|c: char| c.is_ascii_digit())
                .next()
                .unwrap()
                .to_string()
        };
        let topics: Vec<std::collections::BTreeSet<String>> = parts
            .iter()
            .map(|part| part.iter().map(topic).collect())
            .collect();
        // Largest first: computers (40 documents) alone; people (20, longer than love's) and
        // wisdom's 5 kept; love (20) and art (10).
        assert_eq!(topics[0], ["computers".to_string()].into());
        assert_eq!(
            topics[1],
            ["people".to_string(), "wisdom".to_string()].into()
        );
        assert_eq!(topics[2], ["art".to_string(), "love".to_string()].into());
        let dealt: Vec<&String> = parts.iter().flatten().collect();
        assert_eq!(dealt.len(), all.len() - 25);
        assert!(
            all[all.len() - 25..]
                .iter()
                .all(|held_out| !dealt.contains(&held_out))
        );
        // A part reads its topics in the corpus's order.
        assert!(parts[2][0].starts_with("art0"), "{:?}", &parts[2][..2]);
    }

    #[test]
    fn skips_index_and_binary_files_and_ignores_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("jokes"), "a\n%\nb\n").unwrap();
        fs::write(dir.path().join("jokes.dat"), b"\x00\x00\x00\x02text").unwrap();
        fs::write(dir.path().join("old.gz"), "looks like text\n").unwrap();
        fs::write(dir.path().join("blob"), b"\xff\xfe\x00binary\x80").unwrap();
        fs::create_dir(dir.path().join("off")).unwrap();
        fs::write(
            dir.path().join("off").join("rude"),
            "hidden\n%\nalso hidden\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("jokes"), dir.path().join("jokes.u8"))
                .unwrap();
            std::os::unix::fs::symlink(dir.path().join("jokes"), dir.path().join("link")).unwrap();
        }
        let out = dir.path().join("corpus.jsonl");

        let stats = build_corpus(dir.path(), &out).unwrap().stats;
        assert_eq!(stats.skipped_files, vec!["blob".to_string()]);
        let docs = read_texts(&out);
        #[cfg(unix)]
        {
            // `link` (a symlink to a regular file) is read; `jokes.u8` is not.
            assert_eq!(docs, vec!["a", "b", "a", "b"]);
            assert_eq!(stats.files, 2);
        }
        #[cfg(not(unix))]
        assert_eq!(docs, vec!["a", "b"]);

        // A second run must not read its own earlier output back in.
        let again = build_corpus(dir.path(), &out).unwrap().stats;
        assert_eq!(again, stats);
    }

    #[test]
    fn output_is_sorted_by_file_name_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["zeta", "alpha", "Mid", "beta"] {
            fs::write(dir.path().join(name), format!("{name} 1\n%\n{name} 2\n")).unwrap();
        }
        let out_dir = tempfile::tempdir().unwrap();
        let first = out_dir.path().join("first.jsonl");
        let second = out_dir.path().join("second.jsonl");
        build_corpus(dir.path(), &first).unwrap();
        build_corpus(dir.path(), &second).unwrap();
        assert_eq!(fs::read(&first).unwrap(), fs::read(&second).unwrap());
        assert_eq!(
            read_texts(&first),
            vec![
                "Mid 1", "Mid 2", "alpha 1", "alpha 2", "beta 1", "beta 2", "zeta 1", "zeta 2"
            ]
        );
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.jsonl");

        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let err = build_corpus(&empty, &out).unwrap_err();
        assert!(
            err.contains("no documents") && err.contains(&empty.display().to_string()),
            "{err}"
        );
        assert!(!out.exists(), "no output is written without documents");

        // Only blank documents and index files: still no documents.
        fs::write(empty.join("blank"), "\n%\n  \n%\n").unwrap();
        fs::write(empty.join("blank.dat"), "x").unwrap();
        assert!(
            build_corpus(&empty, &out)
                .unwrap_err()
                .contains("no documents")
        );

        let missing = dir.path().join("missing");
        let err = build_corpus(&missing, &out).unwrap_err();
        assert!(
            err.contains("does not exist") && err.contains(&missing.display().to_string()),
            "{err}"
        );

        let file = dir.path().join("a-file");
        fs::write(&file, "text").unwrap();
        let err = build_corpus(&file, &out).unwrap_err();
        assert!(err.contains("is not a directory"), "{err}");

        fs::write(empty.join("doc"), "text").unwrap();
        let bad_out = dir.path().join("no-such-dir").join("out.jsonl");
        let err = build_corpus(&empty, &bad_out).unwrap_err();
        assert!(err.contains(&bad_out.display().to_string()), "{err}");
    }
}
