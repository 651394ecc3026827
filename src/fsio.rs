//! Writing files so that a crash or an error never leaves a half-written
//! output: write a temporary file beside the target, flush it, then rename.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary path used while `path` is being written.
fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Atomically replace `path` with `bytes`. On error nothing is left behind
/// and the error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Check, before any work starts, that a file can later be written at
/// `path`: it is not a directory, and its parent directory exists and accepts
/// a new file (probed by creating and removing the temporary file).
pub fn check_output_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::io(path, std::io::Error::other("is a directory, not a file")));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::other(format!("directory {} does not exist", parent.display())),
        ));
    }
    let probe = temp_path(path);
    std::fs::File::create(&probe)
        .map(|_| {
            let _ = std::fs::remove_file(&probe);
        })
        .map_err(|e| Error::io(path, std::io::Error::new(e.kind(), format!("cannot write here ({e})"))))
}

/// Check, before any work starts, that `dir` is or can become a directory we
/// can write to: an existing directory, or a path whose nearest existing
/// ancestor is a writable directory.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::io(dir, std::io::Error::other("exists and is not a directory")));
    }
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::other(format!("{} is not a directory", existing.display())),
        ));
    }
    check_output_file(&existing.join(".lwf-engine-write-probe"))
        .map_err(|_| Error::io(dir, std::io::Error::other(format!("cannot write in {}", existing.display()))))
}

/// Create `dir` and its parents, naming it on error.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_names_the_path_on_error() {
        let dir = std::env::temp_dir().join(format!("lwf-fsio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("out.json");
        write_atomic(&p, b"{}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{}");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file may remain");
        let bad = dir.join("missing-dir").join("x.json");
        let msg = write_atomic(&bad, b"x").unwrap_err().to_string();
        assert!(msg.contains("missing-dir/x.json"), "{msg}");
        // The same problems are found before any work starts.
        let msg = check_output_file(&bad).unwrap_err().to_string();
        assert!(msg.contains("missing-dir/x.json") && msg.contains("does not exist"), "{msg}");
        let msg = check_output_file(&dir).unwrap_err().to_string();
        assert!(msg.contains("is a directory"), "{msg}");
        check_output_file(&dir.join("new.json")).unwrap();
        check_output_dir(&dir.join("a").join("b")).unwrap();
        assert!(!dir.join("a").exists(), "checking creates nothing");
        let msg = check_output_dir(&p).unwrap_err().to_string();
        assert!(msg.contains("not a directory"), "{msg}");
        let msg = check_output_dir(&p.join("sub")).unwrap_err().to_string();
        assert!(msg.contains("out.json"), "{msg}");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(leftovers.len(), 1, "no probe file may remain");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
