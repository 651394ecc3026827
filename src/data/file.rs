//! Reading data files: transparent gzip and `SHA256SUMS` checks.
//!
//! Every file is read into memory once. When a checksum is expected, hashing
//! the raw bytes runs on a second thread while the main thread inflates them,
//! so a checked load costs about as much as an unchecked one. A mismatch wins
//! over a decoding error: "the file was changed" is the more useful message.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The name of the checksum file looked for next to the data.
pub const SHA256SUMS: &str = "SHA256SUMS";

/// Collapse a message onto one line: every error we report is exactly one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Lower-case hex SHA-256 of `bytes`, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `bytes` start with the gzip magic 1f 8b (the name is not trusted).
pub fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

/// Read `path`, check its SHA-256 against `expected` (lower-case hex) when
/// given, and inflate it if it is gzip. Returns the decoded bytes.
pub fn read_decoded(path: &Path, expected: Option<&str>) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (digest, decoded) = std::thread::scope(|s| {
        let hasher = expected.map(|_| s.spawn(|| sha256_hex(&raw)));
        let decoded = gunzip_if_needed(path, &raw);
        (hasher.map(|h| h.join().expect("sha256 thread panicked")), decoded)
    });
    if let (Some(want), Some(got)) = (expected, digest) {
        check_digest(path, want, &got)?;
    }
    decoded
}

fn check_digest(path: &Path, want: &str, got: &str) -> Result<()> {
    if want.eq_ignore_ascii_case(got) {
        return Ok(());
    }
    Err(Error::format(
        path,
        format!("SHA256 mismatch: expected {want} got {got}, the file is corrupt or was changed"),
    ))
}

/// Inflate `raw` when it starts with the gzip magic; otherwise copy it.
/// A broken stream becomes a one-line `Error::Format`, never a panic.
pub fn gunzip_if_needed(path: &Path, raw: &[u8]) -> Result<Vec<u8>> {
    if !is_gzip(raw) {
        return Ok(raw.to_vec());
    }
    let mut out = Vec::with_capacity(gzip_size_hint(raw));
    match MultiGzDecoder::new(raw).read_to_end(&mut out) {
        Ok(_) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::format(
            path,
            format!("corrupt gzip stream: truncated, it ends early after {} decoded bytes ({e})", out.len()),
        )),
        Err(e) => {
            // flate2 may already say "corrupt gzip stream …": don't say it twice.
            let why = one_line(&e.to_string());
            let why = why.strip_prefix("corrupt gzip stream").map_or(why.as_str(), str::trim_start);
            Err(Error::format(path, format!("corrupt gzip stream: {why}")))
        }
    }
}

/// The decoded size recorded in the gzip trailer (ISIZE, mod 2^32), capped by
/// deflate's best ratio so a corrupt trailer cannot trigger a huge allocation.
/// Sizing the buffer up front avoids repeated copies of a 47 MB image file.
fn gzip_size_hint(raw: &[u8]) -> usize {
    let Some(tail) = raw.len().checked_sub(4).map(|i| &raw[i..]) else { return 0 };
    let isize = u32::from_le_bytes(tail.try_into().expect("4 bytes")) as usize;
    isize.min(raw.len().saturating_mul(1032))
}

/// The entries of a `SHA256SUMS` file: file name → lower-case hex digest.
#[derive(Clone, Debug, Default)]
pub struct Checksums {
    /// Where the `SHA256SUMS` file was read from (for error messages).
    pub path: PathBuf,
    entries: BTreeMap<String, String>,
}

impl Checksums {
    /// Read `dir/SHA256SUMS`; `None` when the directory has none.
    pub fn read_dir(dir: &Path) -> Result<Option<Checksums>> {
        let path = dir.join(SHA256SUMS);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Checksums::parse(&path, &text).map(Some)
    }

    /// Parse `sha256sum` output: `<64 hex>  name` or `<64 hex> *name` per line.
    pub fn parse(path: &Path, text: &str) -> Result<Checksums> {
        let mut entries = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (hash, name) = parse_line(line)
                .ok_or_else(|| Error::format(path, format!("line {}: expected '<sha256>  <file>'", i + 1)))?;
            entries.insert(name.to_string(), hash.to_ascii_lowercase());
        }
        Ok(Checksums { path: path.to_path_buf(), entries })
    }

    /// The expected digest of `name`, if listed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(String::as_str)
    }

    /// The listed file names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Verify the listed files not in `done` (those were checked while
    /// loading). A listed but missing file is an error, as with `sha256sum -c`.
    pub fn verify_rest(&self, dir: &Path, done: &[&str]) -> Result<()> {
        for (name, want) in self.entries.iter().filter(|(n, _)| !done.contains(&n.as_str())) {
            let path = dir.join(name);
            if !path.is_file() {
                return Err(Error::format(&self.path, format!("lists {name}, which does not exist")));
            }
            let raw = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            check_digest(&path, want, &sha256_hex(&raw))?;
        }
        Ok(())
    }
}

fn parse_line(line: &str) -> Option<(&str, &str)> {
    let (hash, rest) = line.split_once(' ')?;
    let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
    let ok = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty();
    ok.then_some((hash, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_is_detected_by_magic_and_inflated() {
        let p = Path::new("x.bin");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(gunzip_if_needed(p, &gz(&data)).unwrap(), data);
        assert_eq!(gunzip_if_needed(p, &data).unwrap(), data);
    }

    #[test]
    fn broken_gzip_is_a_one_line_format_error() {
        let p = Path::new("broken.gz");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let z = gz(&data);
        for bad in [z[..z.len() / 2].to_vec(), {
            let mut c = z.clone();
            for b in &mut c[20..60] {
                *b ^= 0x5a;
            }
            c
        }] {
            let msg = gunzip_if_needed(p, &bad).unwrap_err().to_string();
            assert!(msg.contains("broken.gz") && msg.contains("corrupt gzip stream"), "{msg}");
            assert!(!msg.contains('\n'));
        }
    }

    #[test]
    fn sha256sums_parse_both_modes_and_reject_junk() {
        let h = sha256_hex(b"abc");
        assert_eq!(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let text = format!("{h}  a.gz\n{h} *b.gz\n\n");
        let c = Checksums::parse(Path::new("S"), &text).unwrap();
        assert_eq!(c.names().collect::<Vec<_>>(), ["a.gz", "b.gz"]);
        assert_eq!(c.get("b.gz"), Some(h.as_str()));
        let err = Checksums::parse(Path::new("S"), "nothex  a.gz\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
