//! NumPy `.npy` files (format versions 1.0 and 2.0), the easiest way for a
//! user to bring their own images: `np.save("train_images.npy", x)`.
//!
//! The header is a tiny Python dict literal such as
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28), }`;
//! it is parsed by hand (strings, booleans and tuples of integers are all it
//! ever holds). Only little-endian data in C order is accepted.

use std::path::Path;

use super::file::{one_line, read_decoded};
use super::Pixels;
use crate::{Error, Result};

/// The first bytes of every `.npy` file.
pub const MAGIC: &[u8] = b"\x93NUMPY";

/// The element types this reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    U8,
    F32,
    I32,
    I64,
    U32,
    U64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::F32 | Dtype::I32 | Dtype::U32 => 4,
            Dtype::I64 | Dtype::U64 => 8,
        }
    }

    /// Map a `descr` string. One-byte types may carry any byte-order mark.
    fn parse(path: &Path, descr: &str) -> Result<Dtype> {
        let (order, code) = descr.split_at(descr.len().min(1));
        let dtype = match code {
            "u1" => return Ok(Dtype::U8),
            "f4" => Dtype::F32,
            "i4" => Dtype::I32,
            "i8" => Dtype::I64,
            "u4" => Dtype::U32,
            "u8" => Dtype::U64,
            _ => {
                let msg = format!(
                    "unsupported dtype '{descr}': images must be '<f4' or '|u1', labels '|u1', '<i4', '<i8', '<u4' or '<u8'"
                );
                return Err(Error::format(path, msg));
            }
        };
        match order {
            "<" => Ok(dtype),
            ">" => Err(Error::format(
                path,
                format!("big-endian dtype '{descr}' is not supported; save with '<{code}'"),
            )),
            _ => Err(Error::format(path, format!("dtype '{descr}' has no explicit little-endian '<'"))),
        }
    }
}

/// The decoded elements of an array.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    U8(Vec<u8>),
    F32(Vec<f32>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

/// A decoded `.npy` array in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

/// Read a `.npy` file (a gzipped one works too). `expected_sha256` is checked when given.
pub fn read(path: &Path, expected_sha256: Option<&str>) -> Result<NpyArray> {
    parse(path, read_decoded(path, expected_sha256)?)
}

/// Parse `.npy` bytes; `path` only names the file in errors. `|u1` data is
/// moved, not copied.
pub fn parse(path: &Path, mut bytes: Vec<u8>) -> Result<NpyArray> {
    let (header, data_start) = split_header(path, &bytes)?;
    let header = Header::parse(path, header)?;
    let want = header
        .shape
        .iter()
        .try_fold(header.dtype.size(), |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::format(path, format!("impossible shape {}", py_shape(&header.shape))))?;
    check_payload_len(path, &header.shape, want, bytes.len() - data_start)?;
    bytes.drain(..data_start);
    Ok(NpyArray { shape: header.shape, data: decode(header.dtype, bytes) })
}

/// Read images of shape (N,H,W) (one channel) or (N,C,H,W), `|u1` or `<f4`.
/// Returns the pixels and `[n, c, h, w]`. Float pixels must be finite.
pub fn read_images(path: &Path, expected_sha256: Option<&str>) -> Result<(Pixels, [usize; 4])> {
    to_images(path, read(path, expected_sha256)?)
}

/// A shape as Python prints it: `(3,)`, `(60000, 28, 28)`.
fn py_shape(shape: &[usize]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// Check that a parsed array is an image set (see [`read_images`]).
pub fn to_images(path: &Path, a: NpyArray) -> Result<(Pixels, [usize; 4])> {
    let dims = match a.shape[..] {
        [n, h, w] => [n, 1, h, w],
        [n, c, h, w] => [n, c, h, w],
        _ => {
            let msg = format!("images must have shape (N,H,W) or (N,C,H,W), got {}", py_shape(&a.shape));
            return Err(Error::format(path, msg));
        }
    };
    if dims[1..].contains(&0) {
        let msg = format!("images of shape {}: C, H and W must be non-zero", py_shape(&a.shape));
        return Err(Error::format(path, msg));
    }
    let pixels = match a.data {
        NpyData::U8(v) => Pixels::U8(v),
        NpyData::F32(v) => Pixels::F32(check_finite(path, v)?),
        _ => return Err(Error::format(path, "images must be uint8 ('|u1') or float32 ('<f4')")),
    };
    Ok((pixels, dims))
}

/// Read labels of shape (N,) with any supported integer dtype; they must be
/// non-negative and fit in u32.
pub fn read_labels(path: &Path, expected_sha256: Option<&str>) -> Result<Vec<u32>> {
    to_labels(path, read(path, expected_sha256)?)
}

/// Check that a parsed array is a label vector (see [`read_labels`]).
pub fn to_labels(path: &Path, a: NpyArray) -> Result<Vec<u32>> {
    if a.shape.len() != 1 {
        let msg = format!("labels must have shape (N,), got {}", py_shape(&a.shape));
        return Err(Error::format(path, msg));
    }
    match a.data {
        NpyData::U8(v) => Ok(v.into_iter().map(u32::from).collect()),
        NpyData::U32(v) => Ok(v),
        NpyData::I32(v) => to_u32(path, v.into_iter().map(i64::from)),
        NpyData::I64(v) => to_u32(path, v.into_iter()),
        NpyData::U64(v) => to_u32(path, v.into_iter().map(|x| i64::try_from(x).unwrap_or(i64::MAX))),
        NpyData::F32(_) => Err(Error::format(path, "labels must be integers, got float32 ('<f4')")),
    }
}

fn to_u32(path: &Path, labels: impl Iterator<Item = i64>) -> Result<Vec<u32>> {
    labels
        .enumerate()
        .map(|(i, l)| {
            u32::try_from(l)
                .map_err(|_| Error::format(path, format!("label {l} at index {i} is not a class index")))
        })
        .collect()
}

fn check_finite(path: &Path, v: Vec<f32>) -> Result<Vec<f32>> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(v),
        Some(i) => Err(Error::format(path, format!("pixel {i} is {}: images must be finite", v[i]))),
    }
}

fn check_payload_len(path: &Path, shape: &[usize], want: usize, got: usize) -> Result<()> {
    if got < want {
        let msg = format!(
            "truncated: shape {} needs {want} bytes of data, but the file has {got} bytes after the header",
            py_shape(shape)
        );
        return Err(Error::format(path, msg));
    }
    if got > want {
        let msg = format!("{} bytes of trailing garbage after the {want} bytes of data", got - want);
        return Err(Error::format(path, msg));
    }
    Ok(())
}

/// Reinterpret little-endian payload bytes as elements.
fn decode(dtype: Dtype, bytes: Vec<u8>) -> NpyData {
    fn le<const K: usize, T>(b: &[u8], f: fn([u8; K]) -> T) -> Vec<T> {
        b.chunks_exact(K).map(|c| f(c.try_into().expect("chunk size"))).collect()
    }
    match dtype {
        Dtype::U8 => NpyData::U8(bytes),
        Dtype::F32 => NpyData::F32(le(&bytes, f32::from_le_bytes)),
        Dtype::I32 => NpyData::I32(le(&bytes, i32::from_le_bytes)),
        Dtype::I64 => NpyData::I64(le(&bytes, i64::from_le_bytes)),
        Dtype::U32 => NpyData::U32(le(&bytes, u32::from_le_bytes)),
        Dtype::U64 => NpyData::U64(le(&bytes, u64::from_le_bytes)),
    }
}

/// Check the magic and version; return the header text and where data starts.
fn split_header<'a>(path: &Path, bytes: &'a [u8]) -> Result<(&'a str, usize)> {
    let truncated = || Error::format(path, "truncated NPY header");
    if !bytes.starts_with(MAGIC) {
        return Err(Error::format(path, "not an NPY file: it does not start with \\x93NUMPY"));
    }
    let (major, minor) = (bytes.get(6).ok_or_else(truncated)?, bytes.get(7).ok_or_else(truncated)?);
    let start = match (major, minor) {
        (1, 0) => 10,
        (2, 0) => 12,
        (major, minor) => {
            let msg = format!("unsupported NPY format version {major}.{minor} (1.0 and 2.0 are supported)");
            return Err(Error::format(path, msg));
        }
    };
    let len_field = bytes.get(8..start).ok_or_else(truncated)?;
    let mut len = [0u8; 4];
    len[..len_field.len()].copy_from_slice(len_field);
    let end = start + u32::from_le_bytes(len) as usize;
    let text = bytes.get(start..end).ok_or_else(truncated)?;
    let text = std::str::from_utf8(text).map_err(|_| Error::format(path, "NPY header is not ASCII"))?;
    Ok((text, end))
}

/// The three keys of an NPY header.
#[derive(Debug)]
struct Header {
    dtype: Dtype,
    shape: Vec<usize>,
}

impl Header {
    fn parse(path: &Path, text: &str) -> Result<Header> {
        let bad = |why: String| Error::format(path, format!("bad NPY header ({why}): {}", one_line(text)));
        let entries = Literal::new(text).dict().map_err(bad)?;
        let get = |key: &str| {
            entries.iter().find(|(k, _)| k == key).map(|(_, v)| v).ok_or_else(|| bad(format!("no '{key}'")))
        };
        let Value::Str(descr) = get("descr")? else { return Err(bad("'descr' is not a string".into())) };
        let Value::Bool(fortran) = get("fortran_order")? else {
            return Err(bad("'fortran_order' is not True/False".into()));
        };
        let Value::Tuple(shape) = get("shape")? else { return Err(bad("'shape' is not a tuple".into())) };
        if *fortran {
            let msg =
                "fortran_order is True: only C-order arrays are supported; save np.ascontiguousarray(x)";
            return Err(Error::format(path, msg));
        }
        Ok(Header { dtype: Dtype::parse(path, descr)?, shape: shape.clone() })
    }
}

/// A value in the header dict.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
}

/// A recursive-descent reader for the header's Python literal.
struct Literal<'a> {
    s: &'a [u8],
    pos: usize,
}

type LitResult<T> = std::result::Result<T, String>;

impl<'a> Literal<'a> {
    fn new(text: &'a str) -> Self {
        Literal { s: text.as_bytes(), pos: 0 }
    }

    /// `{ key: value, ... }` with an optional trailing comma.
    fn dict(&mut self) -> LitResult<Vec<(String, Value)>> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        while !self.eat(b'}') {
            let key = self.string()?;
            self.expect(b':')?;
            entries.push((key, self.value()?));
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
        }
        self.skip_ws();
        match self.pos == self.s.len() {
            true => Ok(entries),
            false => Err(format!("unexpected text at byte {}", self.pos)),
        }
    }

    fn value(&mut self) -> LitResult<Value> {
        match self.peek() {
            Some(b'\'' | b'"') => self.string().map(Value::Str),
            Some(b'(') => self.tuple().map(Value::Tuple),
            Some(b'T' | b'F') => self.boolean().map(Value::Bool),
            _ => Err(format!("unexpected value at byte {}", self.pos)),
        }
    }

    fn string(&mut self) -> LitResult<String> {
        let quote = self.peek().filter(|q| matches!(q, b'\'' | b'"'));
        let quote = quote.ok_or_else(|| format!("expected a string at byte {}", self.pos))?;
        self.pos += 1;
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(|&b| b != quote) {
            self.pos += 1;
        }
        let text = String::from_utf8_lossy(&self.s[start..self.pos]).into_owned();
        self.expect(quote)?;
        Ok(text)
    }

    fn boolean(&mut self) -> LitResult<bool> {
        for (word, v) in [("True", true), ("False", false)] {
            if self.s[self.pos..].starts_with(word.as_bytes()) {
                self.pos += word.len();
                return Ok(v);
            }
        }
        Err(format!("expected True or False at byte {}", self.pos))
    }

    /// `()`, `(3,)`, `(60000, 28, 28)`; Python 2's `60000L` is accepted too.
    fn tuple(&mut self) -> LitResult<Vec<usize>> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        while !self.eat(b')') {
            dims.push(self.integer()?);
            self.eat(b'L');
            if !self.eat(b',') {
                self.expect(b')')?;
                break;
            }
        }
        Ok(dims)
    }

    fn integer(&mut self) -> LitResult<usize> {
        self.skip_ws();
        let start = self.pos;
        while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.pos]).expect("ASCII digits");
        digits.parse().map_err(|_| format!("expected a size at byte {start}"))
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    /// Consume `b` (after whitespace) if it is next.
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.pos += hit as usize;
        hit
    }

    fn expect(&mut self, b: u8) -> LitResult<()> {
        match self.eat(b) {
            true => Ok(()),
            false => Err(format!("expected '{}' at byte {}", b as char, self.pos)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(header: &str, payload: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[1, 0]);
        v.extend_from_slice(&(h.len() as u16).to_le_bytes());
        v.extend_from_slice(h.as_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn err(bytes: Vec<u8>) -> String {
        let e = parse(Path::new("a.npy"), bytes).unwrap_err().to_string();
        assert!(e.starts_with("a.npy: ") && !e.contains('\n'), "{e}");
        e
    }

    #[test]
    fn header_literal_parses_numpy_output() {
        let d = Literal::new("{'descr': '<f4', 'fortran_order': False, 'shape': (60000, 28, 28), }  \n")
            .dict()
            .unwrap();
        assert_eq!(d[0], ("descr".into(), Value::Str("<f4".into())));
        assert_eq!(d[1], ("fortran_order".into(), Value::Bool(false)));
        assert_eq!(d[2], ("shape".into(), Value::Tuple(vec![60000, 28, 28])));
        let d = Literal::new("{\"shape\": (3L,), \"x\": ()}").dict().unwrap();
        assert_eq!(d[0].1, Value::Tuple(vec![3]));
        assert_eq!(d[1].1, Value::Tuple(vec![]));
        assert!(Literal::new("{'a': (1, 2}").dict().is_err());
        assert!(Literal::new("{'a': 1}").dict().is_err());
    }

    #[test]
    fn parses_each_dtype() {
        let h = |d: &str, s: &str| format!("{{'descr': '{d}', 'fortran_order': False, 'shape': {s}, }}");
        let a = parse(Path::new("a"), npy(&h("|u1", "(2,)"), &[3, 4])).unwrap();
        assert_eq!(a.data, NpyData::U8(vec![3, 4]));
        let f: Vec<u8> = [0.5f32, -1.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            parse(Path::new("a"), npy(&h("<f4", "(2,)"), &f)).unwrap().data,
            NpyData::F32(vec![0.5, -1.0])
        );
        let i: Vec<u8> = [7i64, -2].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(
            parse(Path::new("a"), npy(&h("<i8", "(2,)"), &i)).unwrap().data,
            NpyData::I64(vec![7, -2])
        );
        let u: Vec<u8> = [9u32].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(parse(Path::new("a"), npy(&h("<u4", "(1,)"), &u)).unwrap().data, NpyData::U32(vec![9]));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        let h =
            |d: &str, f: &str, s: &str| format!("{{'descr': '{d}', 'fortran_order': {f}, 'shape': {s}, }}");
        assert!(err(npy(&h("<f4", "True", "(1,)"), &[0; 4])).contains("fortran_order is True"));
        assert!(err(npy(&h(">f4", "False", "(1,)"), &[0; 4])).contains("big-endian"));
        assert!(err(npy(&h("<f8", "False", "(1,)"), &[0; 8])).contains("unsupported dtype '<f8'"));
        assert!(err(npy(&h("|u1", "False", "(2, 2)"), &[0; 3])).contains("truncated"));
        assert!(err(npy(&h("|u1", "False", "(2,)"), &[0; 3])).contains("trailing garbage"));
        assert!(err(npy("{'descr': '|u1', 'shape': (2,)}", &[0; 2])).contains("no 'fortran_order'"));
        assert!(err(b"\x93NUMPY\x03\x00\x00\x00".to_vec()).contains("version 3.0"));
        assert!(err(b"PK\x03\x04 not numpy".to_vec()).contains("not an NPY file"));
        let mut short = npy(&h("|u1", "False", "(2,)"), &[0; 2]);
        short.truncate(20);
        assert!(err(short).contains("truncated NPY header"));
    }
}
