//! Finding the garment on a person in a studio shot.
//!
//! Shops photograph most clothes worn: a model from the head to the thighs
//! on a white backdrop, the frame cutting through the legs. Trimmed to the
//! object, that photo is a person (hair, face, arms, the garment, jeans), a
//! shape Fashion-MNIST never shows: its garments were photographed alone.
//! Here the garment is separated from the person by colour. It covers the
//! middle of the figure, so its colour is read there, and the garment is
//! the connected region of that colour around it, with the holes its prints
//! and folds leave filled. Skin, hair and the other garment differ in colour
//! and fall away.
//!
//! It only runs where a worn garment is likely (see [`worn_garment`]) and
//! gives up, leaving the whole figure, when the middle of the figure is not
//! one colour it can follow (a white shirt on a white backdrop, say).
//! [`upper_body`] then bounds the garment by the figure's shape instead:
//! the rows from the shoulders to the hem, where a top is worn.
//!
//! FIXME: the shape rule assumes a top over trousers of another colour. A
//! top over jeans of nearly its colour, an open jacket over a shirt, or a
//! bold horizontal stripe near the waist put the hem in the wrong row, and a
//! shop photo whose figure touches three sides is not taken for a studio
//! shot at all (about a quarter of the worn tops in the model card's shop
//! set are still tagged wrong). A person segmenter would part garment from
//! person directly, at the cost of a second model.

use image::{GrayImage, Luma, RgbImage};

use super::segment;

/// The figure must be at least this much taller than wide: a person from the
/// head to the thighs is about twice as tall as wide, a shoe or a bag is not.
const MIN_FIGURE_ASPECT: f32 = 1.3;

/// The window the garment's colour is read from, as shares of the figure's
/// box: the middle columns, between the shoulders and the waist.
const SEED_COLUMNS: (f32, f32) = (0.3, 0.7);
const SEED_ROWS: (f32, f32) = (0.25, 0.55);

/// The shoulders are the first row at least this share of the figure's
/// widest row, and lie within this share of its height from the top.
const SHOULDER_WIDTH: f32 = 0.6;
const SHOULDERS_BY: f32 = 0.4;

/// The hem is looked for from this share of the rows below the shoulders
/// down, comparing windows of this share of them above and below each row.
const HEM_FROM: f32 = 0.4;
const HEM_WINDOW: f32 = 0.1;

/// The two runs of the hem split must differ at least this much in colour
/// (see [`colour_distance`]): a green T-shirt over blue jeans does, a dress
/// darkening with the light towards its hem does not.
const HEM_CONTRAST: f32 = 15.0;

/// At least this share of the seed window must be object, else the garment
/// is too close to the backdrop to follow by colour.
const MIN_SEED_COVER: f32 = 0.5;

/// How far in colour (see [`colour_distance`]) a pixel may be from the
/// garment's colour and still be garment: enough for folds and shading,
/// not enough to run from a shirt into the jeans below it.
const TOLERANCE: f32 = 40.0;

/// The seed window's commonest colour is found among at most this many of
/// its pixels (evenly spaced), each candidate compared with all of them:
/// a few milliseconds however large the photo.
const SEED_PIXELS: usize = 2000;
const SEED_CANDIDATES: usize = 400;

/// The garment must keep this share of the figure's height and area, else
/// the colour rule found a patch, not a garment.
const MIN_HEIGHT_SHARE: f32 = 0.3;
const MIN_AREA_SHARE: f32 = 0.2;

/// The garment's mask (255 inside) when `object_box`, on a plain backdrop,
/// looks like a person cut by the bottom of the frame and the middle of the
/// figure is one colour to follow. `distances` are from the backdrop's
/// colour; `fuzz` is the distance at which a pixel stops being backdrop.
pub fn worn_garment(
    rgb: &RgbImage,
    distances: &[u16],
    object_box: [u32; 4],
    fuzz: u16,
) -> Option<GrayImage> {
    let (width, height) = rgb.dimensions();
    let [bx, by, bw, bh] = object_box;
    if !looks_like_a_person(height, object_box) {
        return None;
    }

    let object = |x: u32, y: u32| distances[(y * width + x) as usize] > fuzz;
    let seed = seed_colour(rgb, object_box, &object)?;
    // Skin is never the garment, unless the garment itself is skin-coloured.
    let skin_is_garment = is_skin_ycc(seed);

    let candidate: Vec<bool> = rgb
        .enumerate_pixels()
        .map(|(x, y, pixel)| {
            let inside = (bx..bx + bw).contains(&x) && (by..by + bh).contains(&y);
            inside
                && object(x, y)
                && colour_distance(&ycc(pixel.0), &seed) <= TOLERANCE
                && (skin_is_garment || !is_skin(pixel.0))
        })
        .collect();
    // Opening first cuts the thin bridges (a neck, a strap, a seam of
    // blurred colour) through which the garment would leak into the person.
    let candidate = open(width, height, &candidate);
    let garment = seeded_region(width, height, &candidate, seed_window(object_box));
    let garment = segment::fill_holes(width, height, &close(width, height, &garment));

    plausible(&garment, width, object_box, distances, fuzz).then(|| {
        GrayImage::from_fn(width, height, |x, y| {
            Luma([if garment[(y * width + x) as usize] { 255 } else { 0 }])
        })
    })
}

/// A figure cut by the bottom of the frame and clearly taller than wide: a
/// model from the head to the thighs, not a shoe or a bag.
fn looks_like_a_person(frame_height: u32, [_, by, bw, bh]: [u32; 4]) -> bool {
    by + bh == frame_height && bh as f32 >= MIN_FIGURE_ASPECT * bw as f32
}

/// The garment on the upper body, kept to the rows where a person wears
/// it: from the shoulders, where the figure widens below the head, down to
/// the hem, where the middle of the figure changes colour for good (the
/// jeans). `garment` is what [`worn_garment`] found by colour, which can run
/// into dark hair or jeans through a check or a stripe. Without it (a
/// colour it could not follow: a light shirt on white, a bold check) the
/// garment is the figure's outline between those rows, each row from its
/// leftmost to its rightmost object pixel, less the skin (neck, arms,
/// hands). Returns `garment` unchanged when the figure shows no shoulders
/// where a person's would be, or what is left is too small to be a garment.
pub fn upper_body(
    rgb: &RgbImage,
    distances: &[u16],
    object_box: [u32; 4],
    fuzz: u16,
    garment: Option<GrayImage>,
) -> Option<GrayImage> {
    let (width, height) = rgb.dimensions();
    if !looks_like_a_person(height, object_box) {
        return garment;
    }

    let object = |x: u32, y: u32| distances[(y * width + x) as usize] > fuzz;
    let Some(shoulders) = shoulder_row(object_box, &object) else {
        return garment;
    };
    let hem = hem_row(rgb, object_box, shoulders, &object);

    let spans = row_spans(object_box, &object);
    let [_, by, _, _] = object_box;
    let kept: Vec<bool> = rgb
        .enumerate_pixels()
        .map(|(x, y, pixel)| {
            if !(shoulders..hem).contains(&y) {
                return false;
            }
            match &garment {
                Some(mask) => mask.get_pixel(x, y)[0] > 0,
                None => {
                    let in_span = spans[(y - by) as usize]
                        .is_some_and(|(left, right)| (left..=right).contains(&x));
                    in_span && !is_skin(pixel.0)
                }
            }
        })
        .collect();
    let kept =
        segment::fill_holes(width, height, &close(width, height, &open(width, height, &kept)));

    if !plausible(&kept, width, object_box, distances, fuzz) {
        return garment;
    }
    Some(GrayImage::from_fn(width, height, |x, y| {
        Luma([if kept[(y * width + x) as usize] { 255 } else { 0 }])
    }))
}

/// Each row's leftmost and rightmost object pixel within the box.
fn row_spans(
    [bx, by, bw, bh]: [u32; 4],
    object: &impl Fn(u32, u32) -> bool,
) -> Vec<Option<(u32, u32)>> {
    (by..by + bh)
        .map(|y| {
            let mut columns = (bx..bx + bw).filter(|&x| object(x, y));
            let left = columns.next()?;
            Some((left, columns.last().unwrap_or(left)))
        })
        .collect()
}

/// The first row, from the top, where the figure is at least
/// `SHOULDER_WIDTH` of its widest: the head and the neck above it are
/// narrower, hair falling to the shoulders too. `None` when that row lies
/// lower than a person's shoulders could.
fn shoulder_row([bx, by, bw, bh]: [u32; 4], object: &impl Fn(u32, u32) -> bool) -> Option<u32> {
    let extents: Vec<u32> = row_spans([bx, by, bw, bh], object)
        .into_iter()
        .map(|span| span.map_or(0, |(left, right)| right + 1 - left))
        .collect();
    let widest = extents.iter().copied().max()? as f32;

    let shoulders = extents.iter().position(|&e| e as f32 >= SHOULDER_WIDTH * widest)? as u32;
    (shoulders as f32 <= SHOULDERS_BY * bh as f32).then_some(by + shoulders)
}

/// Where the garment on the upper body ends: the strongest change of colour
/// down the middle columns (non-skin pixels only) in the lower part of the
/// rows below the shoulders, where a hem is, away from the chest and its
/// prints. The frame's bottom when no change there reaches `HEM_CONTRAST`:
/// a dress, or a top running off the frame.
fn hem_row(
    rgb: &RgbImage,
    [bx, by, bw, bh]: [u32; 4],
    shoulders: u32,
    object: &impl Fn(u32, u32) -> bool,
) -> u32 {
    let bottom = by + bh;
    let (x0, x1) = (bx + (bw as f32 * 0.3) as u32, bx + (bw as f32 * 0.7) as u32);
    let rows: Vec<Option<[f32; 3]>> = (shoulders..bottom)
        .map(|y| {
            let colours: Vec<[f32; 3]> = (x0..x1.max(x0 + 1))
                .filter(|&x| object(x, y))
                .map(|x| rgb.get_pixel(x, y).0)
                .filter(|&pixel| !is_skin(pixel))
                .map(ycc)
                .collect();
            mean(&colours)
        })
        .collect();

    let window = ((rows.len() as f32 * HEM_WINDOW) as usize).max(2);
    let first = ((rows.len() as f32 * HEM_FROM) as usize).max(window);
    let strongest = (first..rows.len().saturating_sub(window) + 1)
        .filter_map(|split| {
            let above = mean_of(&rows[split - window..split])?;
            let below = mean_of(&rows[split..split + window])?;
            Some((colour_distance(&above, &below), split))
        })
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match strongest {
        Some((contrast, split)) if contrast >= HEM_CONTRAST => shoulders + split as u32,
        _ => bottom,
    }
}

/// The mean colour, `None` for no pixels (a row of skin only).
fn mean(colours: &[[f32; 3]]) -> Option<[f32; 3]> {
    if colours.is_empty() {
        return None;
    }
    let n = colours.len() as f32;
    Some(std::array::from_fn(|c| colours.iter().map(|colour| colour[c]).sum::<f32>() / n))
}

/// The mean of the rows that have one.
fn mean_of(rows: &[Option<[f32; 3]>]) -> Option<[f32; 3]> {
    let colours: Vec<[f32; 3]> = rows.iter().flatten().copied().collect();
    mean(&colours)
}

/// The seed window in image coordinates: x0, y0, x1, y1 (exclusive).
fn seed_window([bx, by, bw, bh]: [u32; 4]) -> [u32; 4] {
    let at = |start: u32, length: u32, share: f32| start + (length as f32 * share) as u32;
    let x0 = at(bx, bw, SEED_COLUMNS.0);
    let y0 = at(by, bh, SEED_ROWS.0);
    let x1 = at(bx, bw, SEED_COLUMNS.1).max(x0 + 1);
    let y1 = at(by, bh, SEED_ROWS.1).max(y0 + 1);
    [x0, y0, x1, y1]
}

/// The garment's colour: the commonest colour among the object pixels of
/// the seed window (the one with the most pixels within half the tolerance
/// of it), skin left out unless most of the window is skin-coloured. `None`
/// when too little of the window is object.
fn seed_colour(
    rgb: &RgbImage,
    object_box: [u32; 4],
    object: &impl Fn(u32, u32) -> bool,
) -> Option<[f32; 3]> {
    let [x0, y0, x1, y1] = seed_window(object_box);
    let pixels: Vec<[u8; 3]> = (y0..y1)
        .flat_map(|y| (x0..x1).map(move |x| (x, y)))
        .filter(|&(x, y)| object(x, y))
        .map(|(x, y)| rgb.get_pixel(x, y).0)
        .collect();
    let window = ((x1 - x0) * (y1 - y0)) as f32;
    if (pixels.len() as f32) < MIN_SEED_COVER * window {
        return None;
    }

    let every = pixels.len().div_ceil(SEED_PIXELS);
    let pixels: Vec<[u8; 3]> = pixels.into_iter().step_by(every).collect();
    let not_skin: Vec<[f32; 3]> =
        pixels.iter().filter(|&&pixel| !is_skin(pixel)).map(|&pixel| ycc(pixel)).collect();
    let colours = if not_skin.len() * 2 >= pixels.len() {
        not_skin
    } else {
        pixels.iter().map(|&pixel| ycc(pixel)).collect()
    };

    let step = colours.len().div_ceil(SEED_CANDIDATES);
    let near =
        |a: [f32; 3]| colours.iter().filter(move |b| colour_distance(&a, b) <= TOLERANCE / 2.0);
    let densest = colours.iter().step_by(step).max_by_key(|&&candidate| near(candidate).count())?;
    let (sum, count) = near(*densest).fold(([0.0f32; 3], 0.0f32), |(sum, n), colour| {
        (std::array::from_fn(|c| sum[c] + colour[c]), n + 1.0)
    });
    Some(sum.map(|total| total / count))
}

/// The classic skin-tone box in YCbCr (Chai and Ngan, 1999): it holds faces,
/// necks and arms across skin tones under studio light.
fn is_skin(pixel: [u8; 3]) -> bool {
    is_skin_ycc(ycc(pixel))
}

fn is_skin_ycc([_, cb, cr]: [f32; 3]) -> bool {
    (77.0..=127.0).contains(&cb) && (133.0..=173.0).contains(&cr)
}

/// BT.601 luma and chroma, 0..=255 each.
fn ycc([r, g, b]: [u8; 3]) -> [f32; 3] {
    let (r, g, b) = (f32::from(r), f32::from(g), f32::from(b));
    [
        0.299 * r + 0.587 * g + 0.114 * b,
        128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b,
        128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b,
    ]
}

/// Distance between two YCbCr colours with luma at half weight: a fold or
/// a shadow changes how light the cloth is far more than its hue.
fn colour_distance(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    let luma = 0.5 * (a[0] - b[0]);
    (luma * luma + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

/// The 4-connected regions of `mask` that reach into the seed window.
fn seeded_region(width: u32, height: u32, mask: &[bool], [x0, y0, x1, y1]: [u32; 4]) -> Vec<bool> {
    let window = (y0..y1).flat_map(|y| (x0..x1).map(move |x| (y * width + x) as usize));
    segment::flood(width, height, mask, window)
}

/// Morphological closing with a 3x3 square: bridges the one-pixel gaps a
/// stripe or a seam leaves between parts of the same garment.
fn close(width: u32, height: u32, mask: &[bool]) -> Vec<bool> {
    let dilated = square_filter(width, height, mask, true);
    square_filter(width, height, &dilated, false)
}

/// Morphological opening with a 3x3 square: removes parts thinner than
/// three pixels.
fn open(width: u32, height: u32, mask: &[bool]) -> Vec<bool> {
    let eroded = square_filter(width, height, mask, false);
    square_filter(width, height, &eroded, true)
}

/// 3x3 dilation (`any`) or erosion (not `any`); outside the frame counts as
/// the mask's own edge pixel, so closing never eats into the frame border.
fn square_filter(width: u32, height: u32, mask: &[bool], any: bool) -> Vec<bool> {
    let (w, h) = (width as i64, height as i64);
    (0..mask.len())
        .map(|at| {
            let (x, y) = (at as i64 % w, at as i64 / w);
            let mut window =
                (-1..=1).flat_map(|dy| (-1..=1).map(move |dx| (dx, dy))).map(|(dx, dy)| {
                    let (nx, ny) = ((x + dx).clamp(0, w - 1), (y + dy).clamp(0, h - 1));
                    mask[(ny * w + nx) as usize]
                });
            if any { window.any(|on| on) } else { window.all(|on| on) }
        })
        .collect()
}

/// A garment keeps a fair part of the figure's height and area; anything
/// less is a patch of colour (a logo, a belt), and the figure is kept whole.
fn plausible(
    garment: &[bool],
    width: u32,
    [bx, by, bw, bh]: [u32; 4],
    distances: &[u16],
    fuzz: u16,
) -> bool {
    let (mut area, mut figure, mut top, mut bottom) = (0usize, 0usize, u32::MAX, 0);
    for y in by..by + bh {
        for x in bx..bx + bw {
            let at = (y * width + x) as usize;
            figure += usize::from(distances[at] > fuzz);
            if garment[at] {
                area += 1;
                (top, bottom) = (top.min(y), bottom.max(y));
            }
        }
    }
    let tall_enough = area > 0 && (bottom + 1 - top) as f32 >= MIN_HEIGHT_SHARE * bh as f32;
    tall_enough && area as f32 >= MIN_AREA_SHARE * figure as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
    const SKIN: Rgb<u8> = Rgb([224, 172, 140]);
    const HAIR: Rgb<u8> = Rgb([30, 25, 20]);
    const SHIRT: Rgb<u8> = Rgb([40, 90, 190]);
    const JEANS: Rgb<u8> = Rgb([35, 40, 60]);

    /// A studio shot 60x80: head and neck, a blue T-shirt with bare arms,
    /// jeans running off the bottom of the frame.
    fn model_in_a_tshirt() -> RgbImage {
        RgbImage::from_fn(60, 80, |x, y| {
            let (x, y) = (x as i32, y as i32);
            let hair = (24..36).contains(&x) && (2..6).contains(&y);
            let face = (25..35).contains(&x) && (6..14).contains(&y);
            let neck = (27..33).contains(&x) && (14..17).contains(&y);
            let shirt = (16..44).contains(&x) && (17..50).contains(&y);
            let sleeves = (10..50).contains(&x) && (17..28).contains(&y);
            let arms = ((8..13).contains(&x) || (47..52).contains(&x)) && (28..52).contains(&y);
            let jeans = (18..42).contains(&x) && (50..80).contains(&y);
            match () {
                _ if hair => HAIR,
                _ if face || neck || arms => SKIN,
                _ if shirt || sleeves => SHIRT,
                _ if jeans => JEANS,
                _ => WHITE,
            }
        })
    }

    fn figure_box(rgb: &RgbImage) -> ([u32; 4], Vec<u16>) {
        let distances = segment::distances(rgb, [255, 255, 255]);
        let mask = GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
            Luma([if distances[(y * rgb.width() + x) as usize] > 22 { 255 } else { 0 }])
        });
        (segment::mask_box(&mask).unwrap(), distances)
    }

    #[test]
    fn the_tshirt_is_separated_from_the_person_wearing_it() {
        let photo = model_in_a_tshirt();
        let (figure, distances) = figure_box(&photo);
        assert_eq!(figure, [8, 2, 44, 78]);

        let garment = worn_garment(&photo, &distances, figure, 22).expect("a worn garment");
        assert_eq!(segment::mask_box(&garment), Some([10, 17, 40, 33]), "sleeves to hem");
        assert_eq!(garment.get_pixel(30, 8)[0], 0, "the face is not the garment");
        assert_eq!(garment.get_pixel(10, 40)[0], 0, "nor the arms");
        assert_eq!(garment.get_pixel(30, 70)[0], 0, "nor the jeans");
    }

    #[test]
    fn a_print_on_the_chest_stays_part_of_the_garment() {
        let mut photo = model_in_a_tshirt();
        for y in 30..40 {
            for x in 24..36 {
                photo.put_pixel(x, y, Rgb([250, 200, 0]));
            }
        }
        let (figure, distances) = figure_box(&photo);
        let garment = worn_garment(&photo, &distances, figure, 22).expect("a worn garment");
        assert_eq!(garment.get_pixel(30, 35)[0], 255, "the print is a hole, filled");
    }

    #[test]
    fn a_shoe_or_a_figure_inside_the_frame_is_left_alone() {
        // The same person, with the frame extended below the jeans.
        let person = model_in_a_tshirt();
        let whole =
            RgbImage::from_fn(60, 90, |x, y| if y < 80 { *person.get_pixel(x, y) } else { WHITE });
        let (figure, distances) = figure_box(&whole);
        assert_eq!(worn_garment(&whole, &distances, figure, 22), None);

        // A wide shape cut by the bottom edge: not a person.
        let wide =
            RgbImage::from_fn(
                80,
                60,
                |x, y| {
                    if (10..70).contains(&x) && y >= 30 { SHIRT } else { WHITE }
                },
            );
        let (figure, distances) = figure_box(&wide);
        assert_eq!(worn_garment(&wide, &distances, figure, 22), None);
    }

    /// The same person in a blue-and-yellow check, which no one colour
    /// covers.
    fn model_in_a_check() -> RgbImage {
        let mut photo = model_in_a_tshirt();
        for (x, y, pixel) in photo.enumerate_pixels_mut() {
            if *pixel == SHIRT && (x / 4 + y / 4) % 2 == 0 {
                *pixel = Rgb([230, 200, 40]);
            }
        }
        photo
    }

    #[test]
    fn a_check_is_kept_from_the_shoulders_to_the_hem_without_head_arms_or_jeans() {
        let photo = model_in_a_check();
        let (figure, distances) = figure_box(&photo);

        let garment = upper_body(&photo, &distances, figure, 22, None).expect("a worn garment");
        assert_eq!(segment::mask_box(&garment), Some([10, 17, 40, 33]), "sleeves to hem");
        assert_eq!(garment.get_pixel(30, 8)[0], 0, "the face is not the garment");
        assert_eq!(garment.get_pixel(10, 40)[0], 0, "nor the arms");
        assert_eq!(garment.get_pixel(30, 70)[0], 0, "nor the jeans");
        assert_eq!(garment.get_pixel(25, 35)[0], 255, "both colours of the check are");
        assert_eq!(garment.get_pixel(29, 35)[0], 255);
    }

    #[test]
    fn a_colour_mask_that_ran_into_the_hair_and_the_jeans_is_cut_to_the_top() {
        let photo = model_in_a_tshirt();
        let (figure, distances) = figure_box(&photo);
        let whole_figure = GrayImage::from_fn(60, 80, |x, y| {
            Luma([if distances[(y * 60 + x) as usize] > 22 { 255 } else { 0 }])
        });

        let garment = upper_body(&photo, &distances, figure, 22, Some(whole_figure)).unwrap();
        assert_eq!(garment.get_pixel(30, 4)[0], 0, "the hair is cut off");
        assert_eq!(garment.get_pixel(30, 70)[0], 0, "so are the jeans");
        assert_eq!(garment.get_pixel(30, 35)[0], 255, "the shirt stays");
    }

    #[test]
    fn a_dress_running_off_the_frame_keeps_its_length() {
        let mut photo = model_in_a_tshirt();
        for (_, _, pixel) in photo.enumerate_pixels_mut() {
            if *pixel == JEANS {
                *pixel = SHIRT;
            }
        }
        let (figure, distances) = figure_box(&photo);

        let garment = upper_body(&photo, &distances, figure, 22, None).unwrap();
        assert_eq!(garment.get_pixel(30, 8)[0], 0, "the face is not the dress");
        assert_eq!(garment.get_pixel(30, 75)[0], 255, "no hem: the dress runs to the bottom");
    }

    #[test]
    fn a_white_shirt_on_white_is_not_followed() {
        let photo = RgbImage::from_fn(60, 80, |x, y| {
            let shirt = (16..44).contains(&x) && (17..50).contains(&y);
            let jeans = (18..42).contains(&x) && y >= 50;
            let head = (25..35).contains(&x) && (2..17).contains(&y);
            match () {
                _ if head => HAIR,
                _ if shirt => Rgb([250, 250, 250]),
                _ if jeans => JEANS,
                _ => WHITE,
            }
        });
        let (figure, distances) = figure_box(&photo);
        assert_eq!(worn_garment(&photo, &distances, figure, 22), None);
    }
}
