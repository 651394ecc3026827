//! Image transforms that make new training views of a split's images.
//!
//! Rotation by quarter turns is the pretext task of rotation
//! self-supervision (`--ssl rotation`): the trunk learns to tell which way
//! up an image is, which shapes features that also tell the classes the
//! model knows from those it does not.

use super::{Pixels, Split};

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
}
