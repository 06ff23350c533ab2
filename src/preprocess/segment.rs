//! Separating the object from its background, for photos that are not
//! studio shots.
//!
//! The paper's trim only works on a plain background: on a floor, a bed or
//! a rug nearly every border pixel differs from the corner colour by more
//! than 5%, and the "object" box covers the whole frame. Here the
//! background colour is the median of the whole border, each pixel's colour
//! distance from it is thresholded with Otsu's method (never below the
//! paper's 5%), the largest connected regions are kept, and holes inside
//! them are filled. The result is a mask of the object.

use image::{GrayImage, Luma, RgbImage};

/// The border band is this share of the shorter edge, at least one pixel.
const BORDER_SHARE: f32 = 0.03;

/// Regions at least this share of the largest are kept too: a pair of shoes
/// is two regions.
const KEEP_SHARE: f32 = 0.2;

/// The border band's width: `BORDER_SHARE` of the shorter edge, at least one
/// pixel.
fn band_width(width: u32, height: u32) -> u32 {
    ((width.min(height) as f32 * BORDER_SHARE) as u32).max(1)
}

/// The background colour: the per-channel median of a band along all four
/// edges. Unlike a corner, the band outvotes an object that touches one.
pub fn border_colour(rgb: &RgbImage) -> [u8; 3] {
    let (w, h) = rgb.dimensions();
    let band = band_width(w, h);
    let mut histograms = [[0u32; 256]; 3];
    for (x, y, pixel) in rgb.enumerate_pixels() {
        if x < band || y < band || x >= w - band || y >= h - band {
            for channel in 0..3 {
                histograms[channel][usize::from(pixel[channel])] += 1;
            }
        }
    }
    histograms.map(|histogram| median(&histogram))
}

fn median(histogram: &[u32; 256]) -> u8 {
    let total: u32 = histogram.iter().sum();
    let mut seen = 0;
    for (value, &count) in histogram.iter().enumerate() {
        seen += count;
        if seen * 2 >= total {
            return value as u8;
        }
    }
    255
}

/// The share of the border band within `fuzz` of the background colour: near
/// 1 for a studio shot on a plain backdrop, far lower on a floor or a bed.
pub fn plain_border_share(width: u32, height: u32, distances: &[u16], fuzz: u16) -> f32 {
    let band = band_width(width, height);
    let (mut plain, mut total) = (0u32, 0u32);
    for (index, &d) in distances.iter().enumerate() {
        let (x, y) = (index as u32 % width, index as u32 / width);
        if x < band || y < band || x >= width - band || y >= height - band {
            total += 1;
            plain += u32::from(d <= fuzz);
        }
    }
    plain as f32 / total.max(1) as f32
}

/// The share of the border band farther than `low` from the background
/// colour and no farther than `high`: neither backdrop nor clearly object.
pub fn border_share_between(
    width: u32,
    height: u32,
    distances: &[u16],
    low: u16,
    high: u16,
) -> f32 {
    let band = band_width(width, height);
    let (mut between, mut total) = (0u32, 0u32);
    for (index, &d) in distances.iter().enumerate() {
        let (x, y) = (index as u32 % width, index as u32 / width);
        if x < band || y < band || x >= width - band || y >= height - band {
            total += 1;
            between += u32::from(d > low && d <= high);
        }
    }
    between as f32 / total.max(1) as f32
}

/// The same share for each side's band on its own (top, bottom, left,
/// right), so a photo whose object runs off one edge (a model cut at the
/// thighs) can still be told to stand on a plain backdrop.
pub fn plain_side_shares(width: u32, height: u32, distances: &[u16], fuzz: u16) -> [f32; 4] {
    let band = band_width(width, height);
    let mut plain = [0u32; 4];
    let mut total = [0u32; 4];
    for (index, &d) in distances.iter().enumerate() {
        let (x, y) = (index as u32 % width, index as u32 / width);
        let sides = [y < band, y >= height - band, x < band, x >= width - band];
        for (side, on) in sides.into_iter().enumerate() {
            if on {
                total[side] += 1;
                plain[side] += u32::from(d <= fuzz);
            }
        }
    }
    std::array::from_fn(|side| plain[side] as f32 / total[side].max(1) as f32)
}

/// Colour distance of every pixel from the background, as 0..=441.
pub fn distances(rgb: &RgbImage, background: [u8; 3]) -> Vec<u16> {
    rgb.pixels()
        .map(|pixel| {
            let squared: i32 = (0..3)
                .map(|c| {
                    let d = i32::from(pixel[c]) - i32::from(background[c]);
                    d * d
                })
                .sum();
            (squared as f32).sqrt() as u16
        })
        .collect()
}

/// Otsu's threshold over distances: the split that best separates two
/// groups (background and object).
pub fn otsu_threshold(distances: &[u16]) -> u16 {
    let mut histogram = [0u64; 443];
    for &d in distances {
        histogram[usize::from(d)] += 1;
    }
    let total = distances.len() as f64;
    let sum_all: f64 = histogram.iter().enumerate().map(|(v, &n)| v as f64 * n as f64).sum();

    let (mut best, mut best_variance) = (0u16, -1.0f64);
    let (mut weight_low, mut sum_low) = (0.0f64, 0.0f64);
    for (value, &count) in histogram.iter().enumerate() {
        weight_low += count as f64;
        sum_low += value as f64 * count as f64;
        let weight_high = total - weight_low;
        if weight_low == 0.0 || weight_high == 0.0 {
            continue;
        }
        let mean_low = sum_low / weight_low;
        let mean_high = (sum_all - sum_low) / weight_high;
        let variance = weight_low * weight_high * (mean_low - mean_high).powi(2);
        if variance > best_variance {
            best_variance = variance;
            best = value as u16;
        }
    }
    best
}

/// The object mask: pixels farther than `threshold`, largest regions kept,
/// holes filled. 255 is object.
pub fn object_mask(width: u32, height: u32, distances: &[u16], threshold: u16) -> GrayImage {
    let raw: Vec<bool> = distances.iter().map(|&d| d > threshold).collect();
    let kept = keep_large_regions(width, height, &raw);
    let filled = fill_holes(width, height, &kept);
    GrayImage::from_fn(width, height, |x, y| {
        Luma([if filled[(y * width + x) as usize] { 255 } else { 0 }])
    })
}

/// Labels 4-connected regions and keeps the largest, plus any at least
/// `KEEP_SHARE` of its size.
fn keep_large_regions(width: u32, height: u32, mask: &[bool]) -> Vec<bool> {
    let (w, h) = (width as usize, height as usize);
    let mut region = vec![0u32; mask.len()];
    let mut sizes = vec![0usize]; // region 0 is "none"
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || region[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32;
        let mut size = 0;
        region[start] = id;
        stack.push(start);
        while let Some(at) = stack.pop() {
            size += 1;
            for next in neighbours(at, w, h) {
                if mask[next] && region[next] == 0 {
                    region[next] = id;
                    stack.push(next);
                }
            }
        }
        sizes.push(size);
    }

    let largest = sizes.iter().copied().max().unwrap_or(0);
    let floor = ((largest as f32 * KEEP_SHARE) as usize).max(1);
    region.iter().map(|&id| id != 0 && sizes[id as usize] >= floor).collect()
}

/// Background pixels that cannot reach the frame's edge through other
/// background pixels are holes in the object (a logo, a shadow on the
/// cloth): they become object.
pub(super) fn fill_holes(width: u32, height: u32, mask: &[bool]) -> Vec<bool> {
    let (w, h) = (width as usize, height as usize);
    let background: Vec<bool> = mask.iter().map(|&on| !on).collect();
    let frame_edge = (0..w)
        .flat_map(|x| [x, (h - 1) * w + x])
        .chain((0..h).flat_map(|y| [y * w, y * w + w - 1]));
    let outside = flood(width, height, &background, frame_edge);
    outside.iter().map(|&out| !out).collect()
}

/// The pixels of `passable` reachable from the `seeds` that are passable,
/// through 4-connected passable pixels.
pub(super) fn flood(
    width: u32,
    height: u32,
    passable: &[bool],
    seeds: impl IntoIterator<Item = usize>,
) -> Vec<bool> {
    let (w, h) = (width as usize, height as usize);
    let mut reached = vec![false; passable.len()];
    let mut stack: Vec<usize> = seeds.into_iter().filter(|&at| passable[at]).collect();
    for &at in &stack {
        reached[at] = true;
    }
    while let Some(at) = stack.pop() {
        for next in neighbours(at, w, h) {
            if passable[next] && !reached[next] {
                reached[next] = true;
                stack.push(next);
            }
        }
    }
    reached
}

/// The 4-connected neighbours of pixel `at` in a `w` x `h` raster.
fn neighbours(at: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = (at % w, at / w);
    [
        (x > 0).then(|| at - 1),
        (x + 1 < w).then(|| at + 1),
        (y > 0).then(|| at - w),
        (y + 1 < h).then(|| at + w),
    ]
    .into_iter()
    .flatten()
}

/// The bounding box of the mask's object pixels: x, y, width, height.
pub fn mask_box(mask: &GrayImage) -> Option<[u32; 4]> {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, pixel) in mask.enumerate_pixels() {
        if pixel[0] > 0 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
        }
    }
    (x0 != u32::MAX).then(|| [x0, y0, x1 - x0 + 1, y1 - y0 + 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A blue square with a yellow logo on a noisy brown "floor".
    fn shirt_on_floor() -> RgbImage {
        RgbImage::from_fn(200, 160, |x, y| {
            let noise = ((x * 7919 + y * 104_729) % 23) as u8;
            let shirt = (60..140).contains(&x) && (40..120).contains(&y);
            let logo = (90..110).contains(&x) && (70..90).contains(&y);
            match (shirt, logo) {
                (true, true) => Rgb([150 + noise, 110 + noise, 70]),
                (true, false) => Rgb([30, 60, 200 - noise]),
                _ => Rgb([140 + noise, 100 + noise, 60 + noise / 2]),
            }
        })
    }

    #[test]
    fn the_border_outvotes_an_object_touching_a_corner() {
        let mut image = RgbImage::from_pixel(100, 100, Rgb([200, 200, 200]));
        for x in 0..30 {
            for y in 0..30 {
                image.put_pixel(x, y, Rgb([0, 0, 0]));
            }
        }
        assert_eq!(border_colour(&image), [200, 200, 200]);
    }

    #[test]
    fn otsu_splits_two_groups() {
        let mut values = vec![10u16; 500];
        values.extend(vec![200u16; 300]);
        let threshold = otsu_threshold(&values);
        assert!((10..200).contains(&threshold), "{threshold}");
    }

    #[test]
    fn the_mask_finds_the_shirt_on_a_textured_floor_and_fills_its_logo() {
        let image = shirt_on_floor();
        let background = border_colour(&image);
        let distances = distances(&image, background);
        let threshold = otsu_threshold(&distances).max(22);
        let mask = object_mask(image.width(), image.height(), &distances, threshold);
        assert_eq!(mask_box(&mask), Some([60, 40, 80, 80]));
        assert_eq!(mask.get_pixel(100, 80)[0], 255, "the logo is a hole, filled");
        assert_eq!(mask.get_pixel(10, 10)[0], 0, "the floor is background");
    }

    #[test]
    fn specks_are_dropped_and_a_pair_is_kept() {
        let (w, h) = (50u32, 20u32);
        let mut mask = vec![false; (w * h) as usize];
        let mut paint = |x0: u32, x1: u32| {
            for y in 5..15 {
                for x in x0..x1 {
                    mask[(y * w + x) as usize] = true;
                }
            }
        };
        paint(2, 12); // a shoe
        paint(20, 29); // the other shoe, a little smaller
        mask[(2 * w + 45) as usize] = true; // a speck
        let kept = keep_large_regions(w, h, &mask);
        assert!(kept[(10 * w + 5) as usize] && kept[(10 * w + 25) as usize]);
        assert!(!kept[(2 * w + 45) as usize]);
    }
}
