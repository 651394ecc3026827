//! The IDX format of MNIST and Fashion-MNIST (LeCun et al.), raw or gzipped.
//!
//! Layout: magic `00 00 <type> <ndim>`, then `ndim` big-endian u32 sizes,
//! then the payload in C order. Only type 0x08 (unsigned byte) is accepted:
//! it is what every MNIST-style data set uses, and anything else is far more
//! likely a wrong file than a deliberate choice.

use std::path::Path;

use super::file::read_decoded;
use crate::{Error, Result};

/// The element type code for unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// A decoded IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxArray {
    /// The sizes from the header, outermost first.
    pub dims: Vec<usize>,
    /// The payload, exactly `dims.iter().product()` bytes.
    pub data: Vec<u8>,
}

/// Read an IDX file (gzip detected by its magic, not its name) with `ndim`
/// dimensions: 1 for labels, 3 for images. `expected_sha256` is checked when given.
pub fn read(path: &Path, ndim: usize, expected_sha256: Option<&str>) -> Result<IdxArray> {
    parse(path, read_decoded(path, expected_sha256)?, ndim)
}

/// Parse decoded IDX bytes; `path` only names the file in errors. Takes the
/// buffer by value so the payload is reused in place, not copied.
pub fn parse(path: &Path, mut bytes: Vec<u8>, ndim: usize) -> Result<IdxArray> {
    let dims = parse_header(path, &bytes, ndim)?;
    let header_len = 4 + 4 * ndim;
    let want = payload_len(path, &dims)?;
    let got = bytes.len() - header_len;
    if got < want {
        let msg = format!(
            "truncated: the header says {} = {want} bytes of data, but the file has {got} bytes after the header",
            shape_text(&dims)
        );
        return Err(Error::format(path, msg));
    }
    if got > want {
        let msg = format!("{} bytes of trailing garbage after the {want} bytes of data", got - want);
        return Err(Error::format(path, msg));
    }
    bytes.drain(..header_len);
    Ok(IdxArray { dims, data: bytes })
}

/// Read a labels file: one dimension, one byte per label.
pub fn read_labels(path: &Path, expected_sha256: Option<&str>) -> Result<Vec<u32>> {
    let a = read(path, 1, expected_sha256)?;
    Ok(a.data.into_iter().map(u32::from).collect())
}

/// Read an images file: (N, H, W) bytes. Returns the pixels and `[n, h, w]`.
pub fn read_images(path: &Path, expected_sha256: Option<&str>) -> Result<(Vec<u8>, [usize; 3])> {
    to_images(path, read(path, 3, expected_sha256)?)
}

/// Check that a parsed 3-d array is an image set (see [`read_images`]).
pub fn to_images(path: &Path, a: IdxArray) -> Result<(Vec<u8>, [usize; 3])> {
    assert_eq!(a.dims.len(), 3, "idx::to_images needs a 3-d array");
    let [n, h, w] = [a.dims[0], a.dims[1], a.dims[2]];
    if h == 0 || w == 0 {
        return Err(Error::format(
            path,
            format!("images of size {h}×{w}: height and width must be non-zero"),
        ));
    }
    Ok((a.data, [n, h, w]))
}

/// Check the magic and element type and read the `ndim` sizes.
fn parse_header(path: &Path, bytes: &[u8], ndim: usize) -> Result<Vec<usize>> {
    if bytes.len() < 4 {
        return Err(Error::format(path, format!("too short to be an IDX file ({} bytes)", bytes.len())));
    }
    let magic = &bytes[..4];
    if magic[0] != 0 || magic[1] != 0 {
        let msg = format!(
            "not an IDX file: bad magic {:02x} {:02x} {:02x} {:02x} (expected 00 00 08 {ndim:02x})",
            magic[0], magic[1], magic[2], magic[3]
        );
        return Err(Error::format(path, msg));
    }
    if magic[2] != TYPE_U8 {
        let msg = format!(
            "unsupported IDX element type 0x{:02x} ({}); only 0x08 (unsigned byte) is supported",
            magic[2],
            type_name(magic[2])
        );
        return Err(Error::format(path, msg));
    }
    if magic[3] as usize != ndim {
        let msg = format!("has {} dimensions, expected {ndim} ({})", magic[3], role(ndim));
        return Err(Error::format(path, msg));
    }
    let header_len = 4 + 4 * ndim;
    if bytes.len() < header_len {
        let msg = format!("truncated header: {} bytes, expected {header_len}", bytes.len());
        return Err(Error::format(path, msg));
    }
    Ok(bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")) as usize)
        .collect())
}

fn payload_len(path: &Path, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::format(path, format!("impossible size {}", shape_text(dims))))
}

/// `60000×28×28`, for messages.
pub(crate) fn shape_text(dims: &[usize]) -> String {
    dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("×")
}

fn type_name(code: u8) -> &'static str {
    match code {
        0x09 => "signed byte",
        0x0b => "short",
        0x0c => "int",
        0x0d => "float",
        0x0e => "double",
        _ => "unknown",
    }
}

fn role(ndim: usize) -> &'static str {
    match ndim {
        1 => "a labels file",
        3 => "an images file",
        _ => "as asked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(ndim: u8, dims: &[u32], payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, TYPE_U8, ndim];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    fn err(bytes: Vec<u8>, ndim: usize) -> String {
        let e = parse(Path::new("f.idx"), bytes, ndim).unwrap_err().to_string();
        assert!(e.starts_with("f.idx: ") && !e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn parses_images_and_labels() {
        let a = parse(Path::new("f"), idx(3, &[2, 1, 3], &[1, 2, 3, 4, 5, 6]), 3).unwrap();
        assert_eq!(a, IdxArray { dims: vec![2, 1, 3], data: vec![1, 2, 3, 4, 5, 6] });
        let l = parse(Path::new("f"), idx(1, &[3], &[7, 8, 9]), 1).unwrap();
        assert_eq!(l.data, [7, 8, 9]);
    }

    #[test]
    fn rejects_bad_headers_and_sizes() {
        assert!(err(vec![1, 0, 8, 1, 0, 0, 0, 0], 1).contains("bad magic"));
        assert!(err(vec![0, 0, 0x0d, 1, 0, 0, 0, 0], 1).contains("element type 0x0d"));
        assert!(err(idx(1, &[3], &[1, 2, 3]), 3).contains("has 1 dimensions, expected 3"));
        assert!(err(vec![0, 0], 1).contains("too short"));
        assert!(err(vec![0, 0, 8, 3, 0, 0, 0, 1], 3).contains("truncated header"));
        let e = err(idx(3, &[2, 2, 2], &[0; 5]), 3);
        assert!(e.contains("truncated") && e.contains("2×2×2 = 8 bytes") && e.contains("has 5 bytes"), "{e}");
        assert!(err(idx(1, &[2], &[0; 4]), 1).contains("2 bytes of trailing garbage"));
        let e = err(idx(3, &[u32::MAX, u32::MAX, u32::MAX], &[]), 3);
        assert!(e.contains("impossible size") || e.contains("truncated"), "{e}");
    }
}
