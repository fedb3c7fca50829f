//! Checkpoints: one safetensors file holding the model weights (by parameter name), the inner
//! AdamW moments, DiLoCo's θ₀ and outer momentum, and the counters in its metadata. Written to a
//! temporary file, synced, then renamed, so a crash never leaves a half-written checkpoint.

use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::{self, Dtype, SafeTensors, TensorInfo, TensorView};
use serde::{Deserialize, Serialize};

use super::optim::AdamWState;
use super::params::ParamSpec;

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The checkpoint's directory inside a node's state directory.
pub const CHECKPOINT_DIR: &str = "checkpoints";

/// Everything the trainer needs to continue exactly where it stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSnapshot {
    /// Current inner parameters θ.
    pub params: Vec<f32>,
    pub adam: AdamWState,
    pub counters: TrainerCounters,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct TrainerCounters {
    pub global_step: u64,
    /// Inner steps done in the current round.
    pub inner_step: u64,
    /// The DiLoCo round these parameters belong to.
    pub round: u64,
    pub data_cursor: u64,
    pub tokens_seen: u64,
    pub initial_val_loss: Option<f32>,
    pub val_loss: Option<f32>,
    pub loss: Option<f32>,
}

/// DiLoCo's outer state, owned by the SyncActor.
#[derive(Debug, Clone, PartialEq)]
pub struct OuterState {
    /// Completed outer steps; the round now being trained.
    pub round: u64,
    pub theta0: Vec<f32>,
    pub momentum: Vec<f32>,
    /// The error-feedback residual as of the start of `round` (what a lossy codec still owes the
    /// network); `None` for a lossless codec, or when it was taken mid-round and would count that
    /// round's error twice after a restart.
    pub residual: Option<Vec<f32>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// The trainer's last snapshot, shared (a checkpoint write does not copy it), written as the
    /// resume point for `outer.round` ([`TrainerSnapshot::resume_point`]).
    pub trainer: Arc<TrainerSnapshot>,
    pub outer: OuterState,
}

impl TrainerSnapshot {
    /// The parameters and counters this snapshot resumes `round` from: its own, or, for a
    /// snapshot from an earlier round (taken before that round's outer step), `theta0` at the
    /// start of `round`, keeping the step counters and the data cursor.
    pub fn resume_point<'a>(
        &'a self,
        round: u64,
        theta0: &'a [f32],
    ) -> (&'a [f32], TrainerCounters) {
        if self.counters.round < round {
            let counters = TrainerCounters {
                round,
                inner_step: 0,
                ..self.counters
            };
            (theta0, counters)
        } else {
            (&self.params, self.counters)
        }
    }

    /// This snapshot as a resume point for `round`, with the optimizer moments: an owned copy,
    /// for the trainer.
    pub fn aligned_to(&self, round: u64, theta0: &[f32]) -> TrainerSnapshot {
        let (params, counters) = self.resume_point(round, theta0);
        TrainerSnapshot {
            params: params.to_vec(),
            adam: self.adam.clone(),
            counters,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("checkpoint {path} is for another model (hash {found}, this node trains {expected})")]
    OtherModel {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
struct Metadata {
    model_hash: String,
    counters: TrainerCounters,
    outer_round: u64,
    adam_t: u64,
}

fn view<'a>(values: &'a [f32], shape: Vec<usize>) -> TensorView<'a> {
    TensorView::new(Dtype::F32, shape, bytemuck::cast_slice(values)).expect("shape matches data")
}

const RESIDUAL: &str = "diloco.residual";

/// Writes `checkpoint` to `dir/checkpoint.safetensors` atomically.
pub fn save(
    dir: &Path,
    model_hash: &str,
    layout: &[ParamSpec],
    checkpoint: &Checkpoint,
) -> Result<PathBuf, CheckpointError> {
    let path = dir.join(CHECKPOINT_FILE);
    let io = |e: std::io::Error| CheckpointError::Io {
        path: path.clone(),
        reason: e.to_string(),
    };
    let (trainer, outer) = (&checkpoint.trainer, &checkpoint.outer);
    let (params, counters) = trainer.resume_point(outer.round, &outer.theta0);
    let mut tensors: Vec<(String, TensorView)> = Vec::with_capacity(layout.len() + 4);
    let mut offset = 0;
    for spec in layout {
        tensors.push((
            format!("model.{}", spec.name),
            view(
                &params[offset..offset + spec.num_elements()],
                spec.shape.clone(),
            ),
        ));
        offset += spec.num_elements();
    }
    for (name, values) in [
        ("adamw.m", &trainer.adam.m),
        ("adamw.v", &trainer.adam.v),
        ("diloco.theta0", &outer.theta0),
        ("diloco.momentum", &outer.momentum),
    ] {
        tensors.push((name.to_string(), view(values, vec![values.len()])));
    }
    if let Some(residual) = &outer.residual {
        tensors.push((RESIDUAL.to_string(), view(residual, vec![residual.len()])));
    }
    let meta = Metadata {
        model_hash: model_hash.to_string(),
        counters,
        outer_round: outer.round,
        adam_t: trainer.adam.t,
    };
    let info = HashMap::from([(
        "neuroshard".to_string(),
        serde_json::to_string(&meta).expect("metadata serialises"),
    )]);
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = temp_path(dir);
    let written = write_safetensors(&tmp, &tensors, info).and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        // A partial file (a full disk, a file-size limit) would only keep the disk full.
        let _ = fs::remove_file(&tmp);
        return Err(io(e));
    }
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all(); // persist the rename; not every filesystem supports syncing a directory
    }
    Ok(path)
}

/// Where `save` writes before renaming.
/// Writes `tensors` as a safetensors file at `path` (the header from the crate's own `Metadata`,
/// then each tensor's bytes in the order given) and syncs it. Streamed: a copy of the whole file
/// in memory would be a node's largest allocation (a checkpoint is 6–7 parameter-sized vectors,
/// 2.4 GB for the bootstrap preset).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, TensorView)],
    info: HashMap<String, String>,
) -> std::io::Result<()> {
    let mut offset = 0;
    let infos = tensors
        .iter()
        .map(|(name, view)| {
            let len = view.data().len();
            let info = TensorInfo {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                data_offsets: (offset, offset + len),
            };
            offset += len;
            (name.clone(), info)
        })
        .collect();
    let metadata = tensor::Metadata::new(Some(info), infos).map_err(std::io::Error::other)?;
    let mut header = serde_json::to_vec(&metadata)?;
    // The format aligns the data to 8 bytes with spaces after the header.
    header.resize(header.len().next_multiple_of(8), b' ');
    let file = fs::File::create(path)?;
    let mut out = BufWriter::with_capacity(1 << 20, &file);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for (_, view) in tensors {
        out.write_all(view.data())?;
    }
    out.flush()?;
    drop(out);
    file.sync_all()
}

fn temp_path(dir: &Path) -> PathBuf {
    dir.join(format!("{CHECKPOINT_FILE}.tmp"))
}

/// Loads `dir/checkpoint.safetensors` if it exists; refuses one written for another model.
pub fn load(
    dir: &Path,
    model_hash: &str,
    layout: &[ParamSpec],
) -> Result<Option<Checkpoint>, CheckpointError> {
    // A temporary file left by a crash mid-write is never read: remove it, so it does not hold
    // disk space.
    let _ = fs::remove_file(temp_path(dir));
    let path = dir.join(CHECKPOINT_FILE);
    match read_bytes(&path)? {
        Some(bytes) => parse(&path, &bytes, model_hash, layout).map(Some),
        None => Ok(None),
    }
}

/// The bytes of the checkpoint file `path`, `None` when there is none. Reads only, so a reader
/// beside a running node (`neuroshard export`) never disturbs its writes.
pub fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, CheckpointError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CheckpointError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn metadata(path: &Path, bytes: &[u8]) -> Result<Metadata, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("neuroshard"))
        .ok_or_else(|| corrupt("no neuroshard metadata".into()))?;
    serde_json::from_str(meta_json).map_err(|e| corrupt(format!("neuroshard metadata: {e}")))
}

/// The hash of the model the checkpoint `bytes` (read from `path`) was written for.
pub fn model_hash_in(path: &Path, bytes: &[u8]) -> Result<String, CheckpointError> {
    Ok(metadata(path, bytes)?.model_hash)
}

/// The checkpoint in `bytes` (read from `path`); refuses one written for another model.
pub fn parse(
    path: &Path,
    bytes: &[u8],
    model_hash: &str,
    layout: &[ParamSpec],
) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let meta = metadata(path, bytes)?;
    if meta.model_hash != model_hash {
        return Err(CheckpointError::OtherModel {
            path: path.to_path_buf(),
            found: meta.model_hash,
            expected: model_hash.to_string(),
        });
    }
    let tensors = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let read = |name: &str, len: usize| -> Result<Vec<f32>, CheckpointError> {
        let t = tensors
            .tensor(name)
            .map_err(|e| corrupt(format!("{name}: {e}")))?;
        if t.dtype() != Dtype::F32 || t.data().len() != len * 4 {
            return Err(corrupt(format!("{name}: expected {len} f32 values")));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    };
    let total: usize = layout.iter().map(ParamSpec::num_elements).sum();
    let mut params = Vec::with_capacity(total);
    for spec in layout {
        params.extend(read(&format!("model.{}", spec.name), spec.num_elements())?);
    }
    Ok(Checkpoint {
        trainer: Arc::new(TrainerSnapshot {
            params,
            adam: AdamWState {
                m: read("adamw.m", total)?,
                v: read("adamw.v", total)?,
                t: meta.adam_t,
            },
            counters: meta.counters,
        }),
        outer: OuterState {
            round: meta.outer_round,
            theta0: read("diloco.theta0", total)?,
            momentum: read("diloco.momentum", total)?,
            // Optional: checkpoints of a lossless codec (and older ones) have none.
            residual: match tensors.tensor(RESIDUAL) {
                Ok(_) => Some(read(RESIDUAL, total)?),
                Err(_) => None,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<ParamSpec>, Checkpoint) {
        let layout = vec![
            ParamSpec {
                name: "a.weight".into(),
                shape: vec![2, 3],
            },
            ParamSpec {
                name: "b.gamma".into(),
                shape: vec![2],
            },
        ];
        let v = |k: f32| (0..8).map(|i| i as f32 * k).collect::<Vec<_>>();
        let checkpoint = Checkpoint {
            trainer: Arc::new(TrainerSnapshot {
                params: v(1.0),
                adam: AdamWState {
                    m: v(0.5),
                    v: v(0.25),
                    t: 42,
                },
                counters: TrainerCounters {
                    global_step: 120,
                    inner_step: 20,
                    round: 5,
                    data_cursor: 960,
                    tokens_seen: 61_440,
                    initial_val_loss: Some(5.5),
                    val_loss: Some(2.0),
                    loss: Some(2.1),
                },
            }),
            outer: OuterState {
                round: 5,
                theta0: v(2.0),
                momentum: v(-1.0),
                residual: Some(v(0.125)),
            },
        };
        (layout, checkpoint)
    }

    #[test]
    fn round_trips_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, checkpoint) = sample();
        assert!(load(dir.path(), "h", &layout).unwrap().is_none());
        save(dir.path(), "h", &layout, &checkpoint).unwrap();
        assert_eq!(load(dir.path(), "h", &layout).unwrap().unwrap(), checkpoint);
        assert!(!dir.path().join(format!("{CHECKPOINT_FILE}.tmp")).exists());
    }

    #[test]
    fn a_checkpoint_without_a_residual_loads_with_none() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, mut checkpoint) = sample();
        checkpoint.outer.residual = None;
        save(dir.path(), "h", &layout, &checkpoint).unwrap();
        assert_eq!(load(dir.path(), "h", &layout).unwrap().unwrap(), checkpoint);
    }

    #[test]
    fn a_snapshot_from_an_earlier_round_resumes_at_the_start_of_the_current_one() {
        let (_, checkpoint) = sample();
        let snapshot = checkpoint.trainer;
        assert_eq!(
            snapshot.aligned_to(5, &[9.0; 8]),
            *snapshot,
            "same round: unchanged"
        );
        let next = snapshot.aligned_to(6, &[9.0; 8]);
        assert_eq!(next.params, vec![9.0; 8]);
        assert_eq!((next.counters.round, next.counters.inner_step), (6, 0));
        assert_eq!(next.counters.global_step, snapshot.counters.global_step);
        assert_eq!(next.adam, snapshot.adam);
    }

    #[test]
    fn a_checkpoint_of_an_earlier_rounds_snapshot_is_written_as_its_resume_point() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, mut checkpoint) = sample();
        checkpoint.outer.round = 6;
        save(dir.path(), "h", &layout, &checkpoint).unwrap();
        let loaded = load(dir.path(), "h", &layout).unwrap().unwrap();
        assert_eq!(
            *loaded.trainer,
            checkpoint.trainer.aligned_to(6, &checkpoint.outer.theta0)
        );
        assert_eq!(loaded.outer, checkpoint.outer);
    }

    #[test]
    fn a_failed_rename_keeps_the_previous_checkpoint_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, checkpoint) = sample();
        // A directory in the checkpoint's place: the temp file is written, the rename fails.
        fs::create_dir(dir.path().join(CHECKPOINT_FILE)).unwrap();
        let e = save(dir.path(), "h", &layout, &checkpoint).unwrap_err();
        assert!(matches!(e, CheckpointError::Io { .. }), "{e}");
        assert!(!temp_path(dir.path()).exists());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_partial_write_on_a_full_disk_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, checkpoint) = sample();
        save(dir.path(), "h", &layout, &checkpoint).unwrap();
        // The temp name leads to /dev/full: every write fails with ENOSPC, as on a full disk.
        std::os::unix::fs::symlink("/dev/full", temp_path(dir.path())).unwrap();
        let mut newer = checkpoint.clone();
        Arc::make_mut(&mut newer.trainer).counters.global_step += 1;
        let e = save(dir.path(), "h", &layout, &newer).unwrap_err();
        assert!(e.to_string().contains("No space left"), "{e}");
        assert!(fs::symlink_metadata(temp_path(dir.path())).is_err());
        // The last good checkpoint is still the one that loads.
        assert_eq!(load(dir.path(), "h", &layout).unwrap().unwrap(), checkpoint);
    }

    #[test]
    fn loading_removes_a_temp_file_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, _) = sample();
        fs::write(temp_path(dir.path()), b"half a checkpoint").unwrap();
        assert!(load(dir.path(), "h", &layout).unwrap().is_none());
        assert!(!temp_path(dir.path()).exists());
    }

    #[test]
    fn refuses_another_model_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, checkpoint) = sample();
        save(dir.path(), "h", &layout, &checkpoint).unwrap();
        assert!(matches!(
            load(dir.path(), "other", &layout),
            Err(CheckpointError::OtherModel { .. })
        ));
        fs::write(dir.path().join(CHECKPOINT_FILE), b"garbage").unwrap();
        assert!(matches!(
            load(dir.path(), "h", &layout),
            Err(CheckpointError::Corrupt { .. })
        ));
    }
}
