//! Errors at the edges: files, checkpoints, CLI input, devices, diverging
//! training. Inside the engine, shape mismatches between calls are programmer
//! errors and `assert!` with both shapes instead.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The OS refused a file operation.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A data file is corrupt, truncated or not what it claims to be.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    /// A checkpoint that cannot be read or does not fit the data/model.
    #[error("{}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// Bad user input that is not tied to one file (flags, class ranges).
    #[error("{0}")]
    Config(String),
    /// A report that breaks its own rules (an accuracy matrix with a
    /// missing cell, a negative time), e.g. a hand-edited run file given to
    /// `merge`.
    #[error("{0}")]
    Report(String),
    /// No usable GPU adapter, or the device failed.
    #[error("{0}")]
    Device(String),
    /// SIGINT or SIGTERM stopped training at the end of a step.
    #[error("interrupted at epoch {epoch}, step {step} ({context}); {saved}")]
    Interrupted { epoch: usize, step: usize, context: String, saved: String },
    /// Training diverged; the last good checkpoint is left as it was.
    #[error("loss became {value} at epoch {epoch}, step {step} ({context}); stopped, nothing written — try a lower {remedy}")]
    NonFiniteLoss { value: f32, epoch: usize, step: usize, context: String, remedy: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), source }
    }
    pub fn format(path: &Path, msg: impl Into<String>) -> Self {
        Error::Format { path: path.to_path_buf(), msg: msg.into() }
    }
    pub fn checkpoint(path: &Path, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.to_path_buf(), msg: msg.into() }
    }
}
