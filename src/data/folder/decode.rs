//! Decoding image files into one byte tensor (N, C, H, W), in parallel.
//!
//! Two passes over the files: first their headers (cheap), to refuse
//! oversized images before anything is allocated and to choose the channel
//! count and size; then the full decode, each image straight into its slot of
//! the output.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;

use image::imageops::FilterType;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

use super::FolderOptions;
use crate::data::file::one_line;
use crate::{Error, Result};

/// One image file of the scan: where it is, and the size and time the
/// cache key is made of.
pub(super) struct FileKey<'a> {
    pub path: &'a Path,
    pub rel: &'a str,
    pub len: u64,
    pub mtime_ns: u128,
}

/// Decoded images, all of one shape.
pub(super) struct Images {
    /// (N, C, H, W) bytes.
    pub pixels: Vec<u8>,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// How many files were decoded to get them (0 when read from a cache).
    pub decoded: usize,
}

/// What an image's header says.
#[derive(Clone, Copy, Debug)]
struct Header {
    h: usize,
    w: usize,
    grey: bool,
}

/// Decode every file, converted to one channel count and resized to one size
/// (both from `opts`, or chosen from the headers). Errors name the file; when
/// several files are bad, the first in file order is reported.
pub(super) fn decode_all(root: &Path, files: &[FileKey], opts: &FolderOptions) -> Result<Images> {
    let headers: Vec<Header> = files
        .par_iter()
        .map(|f| header(f.path, opts.max_pixels))
        .collect::<Vec<_>>()
        .into_iter()
        .collect::<Result<_>>()?;
    let c = opts.channels.unwrap_or(if headers.iter().all(|h| h.grey) { 1 } else { 3 });
    let (h, w) = opts.image_size.unwrap_or_else(|| most_common_size(&headers));
    let k = c * h * w;
    let mut pixels = alloc(root, files.len(), k)?;
    let bar = progress_bar(files.len());
    let results: Vec<Result<()>> = pixels
        .par_chunks_mut(k)
        .zip(files.par_iter())
        .map(|(out, f)| {
            let r = decode_into(f.path, opts.max_pixels, (c, h, w), out);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    results.into_iter().collect::<Result<()>>()?;
    Ok(Images { pixels, c, h, w, decoded: files.len() })
}

/// A zeroed buffer of `n · k` bytes, or an error instead of an abort when it
/// cannot be had (a huge `image_size` over many files).
fn alloc(root: &Path, n: usize, k: usize) -> Result<Vec<u8>> {
    let too_big = |len: Option<usize>| {
        let len = len.map_or("more than the address space".to_string(), |l| format!("{l} bytes"));
        Error::format(root, format!("{n} images of {k} values need {len}, more memory than is available"))
    };
    let len = n.checked_mul(k).ok_or_else(|| too_big(None))?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| too_big(Some(len)))?;
    v.resize(len, 0);
    Ok(v)
}

/// A progress bar on stderr (indicatif draws nothing when it is not a terminal).
fn progress_bar(n: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("decoding images {bar:30} {pos}/{len} [{elapsed}<{eta}]");
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar
}

/// The (h, w) most images have; ties go to the larger area, then the larger h,
/// so the choice does not depend on file order.
fn most_common_size(headers: &[Header]) -> (usize, usize) {
    let mut counts: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for h in headers {
        *counts.entry((h.h, h.w)).or_default() += 1;
    }
    let best = counts.into_iter().max_by_key(|&((h, w), n)| (n, h * w, h));
    best.map_or((1, 1), |(size, _)| size)
}

/// The decoder's own allocation limit, a backstop behind the header check:
/// room for the largest allowed image at 16-bit RGBA, plus decoder scratch.
fn limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    limits
}

fn decode_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("cannot decode image: {}", one_line(&e.to_string())))
}

/// Read only the header: size and colour, refusing an image over `max_pixels`.
fn header(path: &Path, max_pixels: u64) -> Result<Header> {
    let reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    check_format(path, reader.format())?;
    reader.limits(limits(max_pixels));
    let decoder = reader.into_decoder().map_err(|e| decode_error(path, e))?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let pixels = w as u64 * h as u64;
    if pixels == 0 {
        return Err(Error::format(path, format!("image is {w}×{h}: it has no pixels")));
    }
    if pixels > max_pixels {
        let msg = format!("image is {w}×{h} ({pixels} pixels), over the limit of {max_pixels} pixels per image; shrink it first");
        return Err(Error::format(path, msg));
    }
    let grey = !image::ImageDecoder::color_type(&decoder).has_color();
    Ok(Header { h: h as usize, w: w as usize, grey })
}

/// Only PNG and JPEG decoders are built in; name anything else plainly.
fn check_format(path: &Path, format: Option<ImageFormat>) -> Result<()> {
    match format {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => Ok(()),
        Some(f) => Err(Error::format(path, format!("is a {f:?} image; only PNG and JPEG are read"))),
        None => Err(Error::format(path, "is not a PNG or JPEG image")),
    }
}

/// Decode one file into `out` as (c, h, w) bytes.
fn decode_into(path: &Path, max_pixels: u64, (c, h, w): (usize, usize, usize), out: &mut [u8]) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut reader =
        ImageReader::new(Cursor::new(&bytes)).with_guessed_format().map_err(|e| Error::io(path, e))?;
    let format = reader.format();
    check_format(path, format)?;
    reader.limits(limits(max_pixels));
    let img = reader.decode().map_err(|e| decode_error(path, e))?;
    if format == Some(ImageFormat::Jpeg) && !jpeg_is_complete(&bytes) {
        return Err(Error::format(path, "truncated JPEG: no end-of-image marker after the image data"));
    }
    let img = if c == 1 {
        DynamicImage::ImageLuma8(img.to_luma8())
    } else {
        DynamicImage::ImageRgb8(img.to_rgb8())
    };
    let img = if (img.height() as usize, img.width() as usize) == (h, w) {
        img
    } else {
        // Triangle (bilinear) widens its support when shrinking, so it
        // averages rather than skips pixels: no aliasing.
        img.resize_exact(w as u32, h as u32, FilterType::Triangle)
    };
    to_chw(img.as_bytes(), c, out);
    Ok(())
}

/// Interleaved (h, w, c) bytes into planar (c, h, w).
fn to_chw(hwc: &[u8], c: usize, out: &mut [u8]) {
    let hw = out.len() / c;
    for (i, px) in hwc.chunks_exact(c).enumerate() {
        for (ch, &v) in px.iter().enumerate() {
            out[ch * hw + i] = v;
        }
    }
}

/// Whether a JPEG's last scan is followed by an end-of-image marker (FF D9).
/// The JPEG decoder fills a truncated image with grey rather than failing,
/// so a cut-off download would otherwise train as a half-grey picture.
/// Inside entropy-coded data every FF byte is stuffed (FF 00) or a restart
/// marker, so FF DA (start of scan) and FF D9 only occur as real markers;
/// bytes after the EOI (camera trailers) are allowed.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let marker = |m: u8| bytes.windows(2).rposition(|p| p == [0xFF, m]);
    match (marker(0xDA), marker(0xD9)) {
        (Some(sos), Some(eoi)) => eoi > sos,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_planes_and_the_most_common_size() {
        let mut out = [0u8; 6];
        to_chw(&[1, 2, 3, 4, 5, 6], 3, &mut out);
        assert_eq!(out, [1, 4, 2, 5, 3, 6]);
        let hd = |h, w| Header { h, w, grey: true };
        assert_eq!(most_common_size(&[hd(2, 3), hd(5, 5), hd(2, 3)]), (2, 3));
        assert_eq!(most_common_size(&[hd(2, 3), hd(5, 5)]), (5, 5));
    }

    #[test]
    fn a_jpeg_needs_an_eoi_after_its_last_scan() {
        assert!(jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 0xFF, 0xD9]));
        assert!(jpeg_is_complete(&[0xFF, 0xDA, 1, 0xFF, 0xD9, 0, 0, 7]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 3]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD9, 0xFF, 0xDA, 1, 2]));
    }
}
