//! The decoded-image cache: one file holding every image of a folder as the
//! bytes [`super::decode`] produced, so a second load reads one file instead
//! of decoding thousands.
//!
//! The file is named by the options that shape the tensor (size, channels,
//! pixel limit; and the folder, when caches share a `cache_dir`), so each
//! option set keeps its own cache. Inside, a key hashes those options with
//! every file's relative path, size and modification time: any file added,
//! removed, renamed or rewritten makes the cache stale. A payload checksum
//! catches a damaged file. A cache that fails any check is ignored and
//! rebuilt — it is never trusted and never an error.
//!
//! Layout: `MAGIC | key (32) | c, h, w (u32 LE) | n (u64 LE) | sha256(payload) (32) | payload`.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::decode::{self, FileKey, Images};
use super::{CacheStatus, FolderOptions};
use crate::data::file::sha256_hex;
use crate::fsio::{create_dir_all, write_atomic};
use crate::Result;

const MAGIC: &[u8; 8] = b"LWFIMGC1";
const HEADER_LEN: usize = 8 + 32 + 12 + 8 + 32;

/// Where the cache was looked for and what came of it.
pub(super) struct CacheOutcome {
    pub status: CacheStatus,
    pub path: Option<PathBuf>,
    pub error: Option<String>,
}

enum Lookup {
    Hit(Images),
    Missing,
    Invalid,
}

/// The images of `files`, from the cache when it is valid, else decoded (and
/// the cache rewritten; failing to write it is reported, not an error).
pub(super) fn load_or_decode(
    root: &Path,
    files: &[FileKey],
    opts: &FolderOptions,
) -> Result<(Images, CacheOutcome)> {
    if !opts.cache {
        let outcome = CacheOutcome { status: CacheStatus::Off, path: None, error: None };
        return Ok((decode::decode_all(root, files, opts)?, outcome));
    }
    let path = cache_path(root, opts);
    let key = cache_key(files, opts);
    let status = match read(&path, &key, files.len()) {
        Lookup::Hit(images) => {
            return Ok((images, CacheOutcome { status: CacheStatus::Hit, path: Some(path), error: None }))
        }
        Lookup::Missing => CacheStatus::Miss,
        Lookup::Invalid => CacheStatus::Stale,
    };
    let images = decode::decode_all(root, files, opts)?;
    let error = write(&path, &key, &images).err().map(|e| e.to_string());
    Ok((images, CacheOutcome { status, path: Some(path), error }))
}

/// What shapes the decoded tensor, as text for hashing.
fn options_text(opts: &FolderOptions) -> String {
    format!(
        "lwf image cache v1|size {:?}|channels {:?}|max {}",
        opts.image_size, opts.channels, opts.max_pixels
    )
}

/// The cache file for `root` under these options.
fn cache_path(root: &Path, opts: &FolderOptions) -> PathBuf {
    let mut text = options_text(opts);
    // A shared cache directory holds several folders' caches: tell them apart
    // by the folder. Beside the data the folder is implied, and leaving it
    // out lets a moved folder keep its cache.
    let dir = match &opts.cache_dir {
        Some(dir) => {
            let abs = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
            text.push_str(&format!("|root {}", abs.display()));
            dir.as_path()
        }
        None => root,
    };
    dir.join(format!(".lwf-cache-{}.bin", &sha256_hex(text.as_bytes())[..16]))
}

fn cache_key(files: &[FileKey], opts: &FolderOptions) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(options_text(opts).as_bytes());
    for f in files {
        h.update(format!("\n{}\0{}\0{}", f.rel, f.len, f.mtime_ns).as_bytes());
    }
    h.finalize().into()
}

fn read(path: &Path, key: &[u8; 32], n: usize) -> Lookup {
    match std::fs::read(path) {
        Ok(bytes) => parse(bytes, key, n).map_or(Lookup::Invalid, Lookup::Hit),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lookup::Missing,
        Err(_) => Lookup::Invalid,
    }
}

/// The images in a cache file's bytes, or `None` if it is for other files or
/// options, or damaged in any way.
fn parse(mut bytes: Vec<u8>, key: &[u8; 32], n: usize) -> Option<Images> {
    let header = bytes.get(..HEADER_LEN)?;
    let (magic, rest) = header.split_at(8);
    let (stored_key, rest) = rest.split_at(32);
    let (dims, digest) = rest.split_at(20);
    if magic != MAGIC || stored_key != key {
        return None;
    }
    let u32_at = |i: usize| u32::from_le_bytes(dims[i..i + 4].try_into().unwrap()) as usize;
    let (c, h, w) = (u32_at(0), u32_at(4), u32_at(8));
    let count = u64::from_le_bytes(dims[12..20].try_into().unwrap());
    let len = n.checked_mul(c)?.checked_mul(h)?.checked_mul(w)?;
    let shape_ok = count == n as u64 && matches!(c, 1 | 3) && h > 0 && w > 0;
    let payload = &bytes[HEADER_LEN..];
    if !shape_ok || payload.len() != len || Sha256::digest(payload).as_slice() != digest {
        return None;
    }
    bytes.drain(..HEADER_LEN);
    Some(Images { pixels: bytes, c, h, w, decoded: 0 })
}

fn write(path: &Path, key: &[u8; 32], images: &Images) -> Result<()> {
    if let Some(dir) = path.parent() {
        create_dir_all(dir)?;
    }
    let n = images.pixels.len() / (images.c * images.h * images.w);
    let mut bytes = Vec::with_capacity(HEADER_LEN + images.pixels.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(key);
    for d in [images.c, images.h, images.w] {
        bytes.extend_from_slice(&(d as u32).to_le_bytes());
    }
    bytes.extend_from_slice(&(n as u64).to_le_bytes());
    bytes.extend_from_slice(&Sha256::digest(&images.pixels));
    bytes.extend_from_slice(&images.pixels);
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> Images {
        Images { pixels: (0..24).collect(), c: 3, h: 2, w: 2, decoded: 6 }
    }

    fn encode(images: &Images, key: &[u8; 32]) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("lwf-cache-unit-{}", std::process::id()));
        let path = dir.join("c.bin");
        write(&path, key, images).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    }

    #[test]
    fn a_cache_reads_back_and_any_damage_or_other_key_is_refused() {
        let key = [7u8; 32];
        let bytes = encode(&images(), &key);
        let back = parse(bytes.clone(), &key, 2).expect("valid cache");
        assert_eq!((back.pixels, back.c, back.h, back.w, back.decoded), (images().pixels, 3, 2, 2, 0));
        assert!(parse(bytes.clone(), &[8u8; 32], 2).is_none(), "other key");
        assert!(parse(bytes.clone(), &key, 3).is_none(), "other count");
        for cut in [0, 5, HEADER_LEN, bytes.len() - 1] {
            assert!(parse(bytes[..cut].to_vec(), &key, 2).is_none(), "truncated at {cut}");
        }
        for i in [0, 40, 44, HEADER_LEN - 1, HEADER_LEN + 3] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(parse(bad, &key, 2).is_none(), "byte {i} flipped");
        }
    }
}
