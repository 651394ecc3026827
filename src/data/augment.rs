//! Image transforms that make new training views of a split's images.
//!
//! Rotation by quarter turns is the pretext task of rotation
//! self-supervision (`--ssl rotation`): the trunk learns to tell which way
//! up an image is, which shapes features that also tell the classes the
//! model knows from those it does not.
//!
//! Random crops and horizontal flips (`--augment`) make a new view of every
//! training image at every step. They work on a batch already staged and
//! normalised on the host, so the CPU and GPU backends train on the very
//! same values, drawn from the run's seeded random stream.

use super::{Normalization, Pixels, Split};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How many quarter turns keep an `h × w` image's shape: all four for a
/// square image, 0 and 2 (upright and upside down) otherwise.
pub fn shape_keeping_turns(h: usize, w: usize) -> Vec<usize> {
    if h == w {
        vec![0, 1, 2, 3]
    } else {
        vec![0, 2]
    }
}

/// Images `idx` of `split` turned `turns` quarter turns anticlockwise (as
/// numpy's `rot90`), labels kept. A quarter turn of a non-square image would
/// change its shape, so only 0 and 2 turns are allowed there.
pub fn rotated(split: &Split, idx: &[usize], turns: usize) -> Split {
    let (h, w) = (split.h, split.w);
    let turns = turns % 4;
    assert!(
        h == w || turns.is_multiple_of(2),
        "rotated: {turns} quarter turns of a {h}×{w} image change its shape"
    );
    let hw = h * w;
    // Where output pixel (y, x) of one plane reads from in the input plane.
    let source: Vec<usize> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (y, x)))
        .map(|(y, x)| match turns {
            0 => y * w + x,
            // Anticlockwise: the output's top row is the input's right column.
            1 => x * w + (w - 1 - y),
            2 => (h - 1 - y) * w + (w - 1 - x),
            _ => (h - 1 - x) * w + y,
        })
        .collect();
    let pixels = match &split.pixels {
        Pixels::U8(v) => Pixels::U8(turn_plane(v, idx, split.c, hw, &source)),
        Pixels::F32(v) => Pixels::F32(turn_plane(v, idx, split.c, hw, &source)),
    };
    let labels =
        if split.labels.is_empty() { Vec::new() } else { idx.iter().map(|&i| split.labels[i]).collect() };
    Split::new(pixels, labels, split.c, h, w)
}

/// Planes of images `idx` (`c` planes of `hw` values each) read through `source`.
fn turn_plane<T: Copy>(v: &[T], idx: &[usize], c: usize, hw: usize, source: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(idx.len() * c * hw);
    for &i in idx {
        for ch in 0..c {
            let at = (i * c + ch) * hw;
            out.extend(source.iter().map(|&s| v[at + s]));
        }
    }
    out
}

/// `--augment`: the random transforms of the training views.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Augment {
    /// Every step sees the images as they are.
    #[default]
    Off,
    /// The policy for the data ([`Augment::views`]): crop and flip for
    /// colour images, crop alone for grey ones (a flip would turn digits and
    /// letters into other shapes).
    Auto,
    /// The transforms named.
    Set { crop: bool, flip: bool },
}

impl Augment {
    /// `off`, `auto`, or a comma list of `crop` and `flip`.
    pub fn parse(s: &str) -> Result<Augment, String> {
        match s.trim() {
            "off" | "none" => return Ok(Augment::Off),
            "auto" | "" => return Ok(Augment::Auto),
            _ => {}
        }
        let (mut crop, mut flip) = (false, false);
        for part in s.split(',').map(str::trim) {
            match part {
                "crop" => crop = true,
                "flip" => flip = true,
                other => {
                    return Err(format!(
                    "unknown augmentation '{other}' (expected auto, off, or a comma list of crop and flip)"
                ))
                }
            }
        }
        Ok(Augment::Set { crop, flip })
    }

    /// The transforms for images of `c` channels and `h × w` pixels, `None`
    /// when there are none. A crop pads every side by an eighth of the
    /// shorter side (4 pixels of a 32×32 image, as the usual CIFAR recipe;
    /// 3 of a 28×28 one) and cuts an `h × w` window at a random offset.
    pub fn views(self, c: usize, h: usize, w: usize) -> Option<Views> {
        let (crop, flip) = match self {
            Augment::Off => return None,
            Augment::Auto => (true, c == 3),
            Augment::Set { crop, flip } => (crop, flip),
        };
        let pad = if crop { (h.min(w) / 8).max(1) } else { 0 };
        (pad > 0 || flip).then_some(Views { pad, flip })
    }

    /// What this asks for on images of `c × h × w`, named (`auto` resolved):
    /// `None` when the views are the images themselves.
    pub fn resolved(self, c: usize, h: usize, w: usize) -> Option<Augment> {
        self.views(c, h, w).map(|v| Augment::Set { crop: v.pad > 0, flip: v.flip })
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Augment::Off => f.write_str("off"),
            Augment::Auto => f.write_str("auto"),
            Augment::Set { crop, flip } => {
                let names: Vec<&str> = [(crop, "crop"), (flip, "flip")]
                    .into_iter()
                    .filter_map(|(on, n)| on.then_some(n))
                    .collect();
                f.write_str(if names.is_empty() { "off" } else { "" })?;
                f.write_str(&names.join(","))
            }
        }
    }
}

impl From<Augment> for String {
    fn from(a: Augment) -> String {
        a.to_string()
    }
}

impl TryFrom<String> for Augment {
    type Error = String;
    fn try_from(s: String) -> Result<Augment, String> {
        Augment::parse(&s)
    }
}

/// The random transforms of one run's training views, resolved for its
/// images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Views {
    /// Pixels of padding on each side before a crop (0: no crop).
    pub pad: usize,
    /// Flip left-right with probability ½.
    pub flip: bool,
}

impl Views {
    /// Replace each of the `n` normalised `c × h × w` images in `xs` by a
    /// view of it: shifted by a crop offset drawn uniformly in `[-pad, pad]`
    /// on each axis (pixels shifted in from outside read as black, the
    /// padding of torchvision's `RandomCrop`, normalised by `norm`), then
    /// flipped left-right with probability ½. Draws from `rng` in a fixed
    /// order (per image: row offset, column offset, flip), so a seed gives
    /// the same views on any backend.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &self,
        xs: &mut [f32],
        [n, c, h, w]: [usize; 4],
        norm: &Normalization,
        rng: &mut Rng,
        scratch: &mut Vec<f32>,
    ) {
        let hw = h * w;
        let p = self.pad as isize;
        for image in xs[..n * c * hw].chunks_exact_mut(c * hw) {
            let (dy, dx) = if p > 0 {
                (rng.below(2 * self.pad + 1) as isize - p, rng.below(2 * self.pad + 1) as isize - p)
            } else {
                (0, 0)
            };
            let flip = self.flip && rng.below(2) == 1;
            if dy == 0 && dx == 0 && !flip {
                continue;
            }
            scratch.clear();
            scratch.extend_from_slice(image);
            for (ch, plane) in image.chunks_exact_mut(hw).enumerate() {
                let (mean, std) = norm.channel(ch);
                let black = -mean / std;
                let src = &scratch[ch * hw..(ch + 1) * hw];
                for y in 0..h {
                    let sy = y as isize + dy;
                    let row = &mut plane[y * w..(y + 1) * w];
                    if sy < 0 || sy >= h as isize {
                        row.fill(black);
                        continue;
                    }
                    for (x, out) in row.iter_mut().enumerate() {
                        // The crop window first, then the flip of the window.
                        let cx = if flip { w - 1 - x } else { x };
                        let sx = cx as isize + dx;
                        *out = if sx < 0 || sx >= w as isize {
                            black
                        } else {
                            src[sy as usize * w + sx as usize]
                        };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(h: usize, w: usize) -> Split {
        Split::new(Pixels::U8((0..(h * w) as u8).collect()), vec![7], 1, h, w)
    }

    fn px(s: &Split) -> Vec<u8> {
        match &s.pixels {
            Pixels::U8(v) => v.clone(),
            Pixels::F32(_) => unreachable!(),
        }
    }

    #[test]
    fn quarter_turns_match_numpy_rot90() {
        // [[0, 1], [2, 3]]: np.rot90 gives [[1, 3], [0, 2]], twice [[3, 2], [1, 0]],
        // three times [[2, 0], [3, 1]].
        let s = image(2, 2);
        assert_eq!(px(&rotated(&s, &[0], 0)), vec![0, 1, 2, 3]);
        assert_eq!(px(&rotated(&s, &[0], 1)), vec![1, 3, 0, 2]);
        assert_eq!(px(&rotated(&s, &[0], 2)), vec![3, 2, 1, 0]);
        assert_eq!(px(&rotated(&s, &[0], 3)), vec![2, 0, 3, 1]);
        assert_eq!(rotated(&s, &[0], 1).labels, vec![7]);
    }

    #[test]
    fn four_quarter_turns_are_the_identity_and_half_turns_fit_any_shape() {
        let s = image(5, 5);
        let mut r = s.clone();
        for _ in 0..4 {
            r = rotated(&r, &[0], 1);
        }
        assert_eq!(px(&r), px(&s));
        let wide = image(2, 3);
        let half = rotated(&rotated(&wide, &[0], 2), &[0], 2);
        assert_eq!(px(&half), px(&wide));
        assert_eq!(px(&rotated(&wide, &[0], 2)), vec![5, 4, 3, 2, 1, 0]);
        assert_eq!(shape_keeping_turns(2, 3), vec![0, 2]);
    }

    #[test]
    fn augment_parses_names_and_round_trips() {
        assert_eq!(Augment::parse("auto"), Ok(Augment::Auto));
        assert_eq!(Augment::parse("off"), Ok(Augment::Off));
        assert_eq!(Augment::parse("flip, crop"), Ok(Augment::Set { crop: true, flip: true }));
        assert_eq!(Augment::parse("flip"), Ok(Augment::Set { crop: false, flip: true }));
        assert!(Augment::parse("crop,blur").unwrap_err().contains("'blur'"));
        for a in [Augment::Off, Augment::Auto, Augment::Set { crop: true, flip: false }] {
            assert_eq!(Augment::parse(&a.to_string()), Ok(a));
            let json = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Augment>(&json).unwrap(), a);
        }
        assert_eq!(Augment::Set { crop: true, flip: true }.to_string(), "crop,flip");
    }

    #[test]
    fn auto_flips_colour_images_only_and_pads_by_an_eighth() {
        assert_eq!(Augment::Auto.views(3, 32, 32), Some(Views { pad: 4, flip: true }));
        assert_eq!(Augment::Auto.views(1, 28, 28), Some(Views { pad: 3, flip: false }));
        assert_eq!(Augment::Off.views(3, 32, 32), None);
        assert_eq!(Augment::Set { crop: false, flip: false }.views(3, 32, 32), None);
        assert_eq!(
            Augment::Set { crop: true, flip: false }.views(1, 4, 6),
            Some(Views { pad: 1, flip: false })
        );
    }

    fn planes(n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
        (0..n * c * h * w).map(|v| v as f32 + 1.0).collect()
    }

    #[test]
    fn every_view_is_a_shifted_possibly_flipped_window_with_black_padding() {
        let (n, c, h, w) = (40, 2, 5, 6);
        let norm = Normalization { mean: vec![0.5, 0.25], std: vec![0.5, 0.25] };
        let orig = planes(n, c, h, w);
        let mut xs = orig.clone();
        let views = Views { pad: 2, flip: true };
        views.apply(&mut xs, [n, c, h, w], &norm, &mut Rng::new(3), &mut Vec::new());
        let (mut flips, mut moved) = (0, 0);
        for i in 0..n {
            let k = c * h * w;
            let (src, out) = (&orig[i * k..(i + 1) * k], &xs[i * k..(i + 1) * k]);
            // Find the one (dy, dx, flip) that explains the whole image.
            let explains = |dy: isize, dx: isize, flip: bool| {
                (0..c).all(|ch| {
                    (0..h).all(|y| {
                        (0..w).all(|x| {
                            let cx = if flip { w - 1 - x } else { x };
                            let (sy, sx) = (y as isize + dy, cx as isize + dx);
                            let want = if sy < 0 || sy >= h as isize || sx < 0 || sx >= w as isize {
                                -1.0 // (0 - mean) / std for both channels
                            } else {
                                src[ch * h * w + sy as usize * w + sx as usize]
                            };
                            out[ch * h * w + y * w + x] == want
                        })
                    })
                })
            };
            let found: Vec<(isize, isize, bool)> = (-2..=2)
                .flat_map(|dy| (-2..=2).flat_map(move |dx| [(dy, dx, false), (dy, dx, true)]))
                .filter(|&(dy, dx, f)| explains(dy, dx, f))
                .collect();
            assert_eq!(found.len(), 1, "image {i}: {found:?}");
            let (dy, dx, f) = found[0];
            flips += usize::from(f);
            moved += usize::from(dy != 0 || dx != 0);
        }
        // 40 fair coin flips and 24 of 25 offsets that move: both happen.
        assert!((8..=32).contains(&flips), "{flips} flips of 40");
        assert!(moved >= 30, "{moved} of 40 moved");
    }

    #[test]
    fn the_same_seed_gives_the_same_views_and_another_seed_others() {
        let (n, c, h, w) = (16, 3, 8, 8);
        let norm = Normalization::identity();
        let run = |seed| {
            let mut xs = planes(n, c, h, w);
            Views { pad: 1, flip: true }.apply(
                &mut xs,
                [n, c, h, w],
                &norm,
                &mut Rng::new(seed),
                &mut Vec::new(),
            );
            xs
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        // A flip alone keeps every row's values, reversed.
        let mut xs = planes(1, 1, 2, 3);
        let mut rng = Rng::new(0);
        while xs == planes(1, 1, 2, 3) {
            Views { pad: 0, flip: true }.apply(&mut xs, [1, 1, 2, 3], &norm, &mut rng, &mut Vec::new());
        }
        assert_eq!(xs, vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0]);
    }
}
