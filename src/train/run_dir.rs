//! A run owns its output directory: an exclusive lock on `out_dir/.gradscope.lock` (held while
//! the run lives, released by the OS if the process dies) keeps a second run from writing the
//! same checkpoints and metrics, and a fresh run refuses a directory that holds another run's
//! checkpoints or metrics unless asked to overwrite them (`--overwrite`) or to continue them
//! (`--resume`).

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::trainer::periodic_step;

/// The lock file inside an output directory.
pub const LOCK_FILE: &str = ".gradscope.lock";

/// How a run starts in its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// From step 0; `overwrite` replaces an earlier run's files.
    Fresh { overwrite: bool },
    /// From a checkpoint: the directory's files are the run's own.
    Resume,
}

/// An output directory claimed for one run (the lock is released when this is dropped).
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    _lock: File,
}

/// The files of an earlier run in `dir`: checkpoints and metrics.
pub fn previous_run_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            periodic_step(p).is_some()
                || ["ckpt.safetensors", "ckpt-last-good.safetensors", "metrics.jsonl", "metrics.csv"].contains(&n)
        })
        .collect();
    v.sort();
    v
}

impl RunDir {
    /// Create `dir` if needed and take its lock; refuse when another process holds it (naming
    /// that process), or when a fresh run without `overwrite` finds an earlier run's files.
    pub fn claim(dir: &Path, start: Start) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create out_dir {}: {e}", dir.display()))?;
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                anyhow::bail!(
                    "out_dir {} is in use by another gradscope run ({}); give this run another out_dir, or wait for that one to end",
                    dir.display(),
                    if holder.trim().is_empty() { "a process that holds its lock".to_string() } else { holder.trim().to_string() }
                );
            }
            Err(TryLockError::Error(e)) => anyhow::bail!("cannot lock {}: {e}", lock_path.display()),
        }
        if start == (Start::Fresh { overwrite: false }) {
            let old = previous_run_files(dir);
            if !old.is_empty() {
                let names: Vec<String> = old.iter().filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
                anyhow::bail!(
                    "out_dir {} holds another run's files ({}); pass --overwrite to replace them, --resume {} to continue \
                     that run, or another out_dir",
                    dir.display(), names.join(", "), dir.join("ckpt.safetensors").display()
                );
            }
        }
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = writeln!(lock, "process {}", std::process::id());
        Ok(Self { path: dir.to_path_buf(), _lock: lock })
    }

    /// Remove an earlier run's checkpoints and metrics (a fresh run with `--overwrite`, once its
    /// model has been built: a run that fails before that destroys nothing).
    pub fn clear_previous(&self) -> anyhow::Result<()> {
        for p in previous_run_files(&self.path) {
            std::fs::remove_file(&p).map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", p.display()))?;
        }
        Ok(())
    }
}
