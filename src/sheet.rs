//! Pictures of what the model saw: one tile per photo (the photo, the 28x28
//! input enlarged, the model's answer and the right one), and contact
//! sheets of many tiles. A person sees in seconds what a table hides.

use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Baseline, Text};
use image::{GrayImage, Rgb, RgbImage, imageops};

/// The side of the photo thumbnail and of the enlarged model input.
const PANEL: u32 = 112;
const MARGIN: u32 = 6;
const LINE: u32 = 12;
const TILE_WIDTH: u32 = 2 * PANEL + 3 * MARGIN;
const TILE_HEIGHT: u32 = PANEL + 2 * MARGIN + 3 * LINE;
const COLUMNS: u32 = 5;

/// What one tile shows.
pub struct Tile<'a> {
    pub photo: &'a RgbImage,
    pub input: &'a GrayImage,
    pub lines: [String; 3],
    /// Right answers get a green frame, wrong ones red.
    pub correct: bool,
}

/// Draws one tile.
pub fn tile(tile: &Tile) -> RgbImage {
    let mut canvas = RgbImage::from_pixel(TILE_WIDTH, TILE_HEIGHT, Rgb([250, 250, 250]));
    let frame = if tile.correct { Rgb([40, 150, 60]) } else { Rgb([200, 40, 40]) };
    draw_frame(&mut canvas, frame);

    let photo = imageops::thumbnail(tile.photo, PANEL, PANEL);
    let (px, py) = (MARGIN + (PANEL - photo.width()) / 2, MARGIN + (PANEL - photo.height()) / 2);
    imageops::replace(&mut canvas, &photo, i64::from(px), i64::from(py));

    let enlarged = imageops::resize(tile.input, PANEL, PANEL, imageops::FilterType::Nearest);
    let enlarged = image::DynamicImage::ImageLuma8(enlarged).to_rgb8();
    imageops::replace(&mut canvas, &enlarged, i64::from(PANEL + 2 * MARGIN), i64::from(MARGIN));

    for (row, line) in tile.lines.iter().enumerate() {
        let y = PANEL + 2 * MARGIN + row as u32 * LINE;
        write_text(&mut canvas, MARGIN, y, line);
    }
    canvas
}

/// Lays tiles out in a grid under a title line.
pub fn contact_sheet(title: &str, tiles: &[RgbImage]) -> RgbImage {
    let columns = COLUMNS.min(tiles.len().max(1) as u32);
    let rows = (tiles.len() as u32).div_ceil(columns).max(1);
    let header = 2 * LINE;
    let mut sheet = RgbImage::from_pixel(
        columns * TILE_WIDTH,
        header + rows * TILE_HEIGHT,
        Rgb([255, 255, 255]),
    );
    write_text(&mut sheet, MARGIN, MARGIN, title);
    for (index, tile) in tiles.iter().enumerate() {
        let (column, row) = (index as u32 % columns, index as u32 / columns);
        imageops::replace(
            &mut sheet,
            tile,
            i64::from(column * TILE_WIDTH),
            i64::from(header + row * TILE_HEIGHT),
        );
    }
    sheet
}

fn draw_frame(canvas: &mut RgbImage, colour: Rgb<u8>) {
    let (w, h) = canvas.dimensions();
    for x in 0..w {
        for y in [0, 1, h - 2, h - 1] {
            canvas.put_pixel(x, y, colour);
        }
    }
    for y in 0..h {
        for x in [0, 1, w - 2, w - 1] {
            canvas.put_pixel(x, y, colour);
        }
    }
}

/// Writes one line of text, cut to what fits.
fn write_text(canvas: &mut RgbImage, x: u32, y: u32, text: &str) {
    let fits = ((canvas.width().saturating_sub(x)) / 6) as usize;
    let text: String = text.chars().take(fits).collect();
    let style = MonoTextStyle::new(&FONT_6X10, Rgb888::new(20, 20, 20));
    let mut target = Canvas(canvas);
    let position = Point::new(x as i32, y as i32);
    let _ = Text::with_baseline(&text, position, style, Baseline::Top).draw(&mut target);
}

/// Lets embedded-graphics draw into an `RgbImage`.
struct Canvas<'a>(&'a mut RgbImage);

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.0.width(), self.0.height())
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = std::convert::Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Self::Color>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Self::Error> {
        for Pixel(point, colour) in pixels {
            let (Ok(x), Ok(y)) = (u32::try_from(point.x), u32::try_from(point.y)) else { continue };
            if x < self.0.width() && y < self.0.height() {
                self.0.put_pixel(x, y, Rgb([colour.r(), colour.g(), colour.b()]));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tile_shows_photo_input_and_text_in_a_coloured_frame() {
        let photo = RgbImage::from_pixel(300, 200, Rgb([0, 0, 255]));
        let input = GrayImage::from_pixel(28, 28, image::Luma([255]));
        let lines =
            ["shoe.jpg".to_string(), "model: Bag 0.91".to_string(), "right: Sneaker".to_string()];
        let drawn = tile(&Tile { photo: &photo, input: &input, lines, correct: false });

        assert_eq!(drawn.dimensions(), (TILE_WIDTH, TILE_HEIGHT));
        assert_eq!(drawn.get_pixel(0, 0).0, [200, 40, 40], "red frame for a mistake");
        assert_eq!(
            drawn.get_pixel(MARGIN + PANEL / 2, MARGIN + PANEL / 2).0,
            [0, 0, 255],
            "the photo"
        );
        assert_eq!(
            drawn.get_pixel(PANEL + 2 * MARGIN + 5, MARGIN + 5).0,
            [255, 255, 255],
            "the input"
        );
        let text_area =
            (PANEL + 2 * MARGIN..TILE_HEIGHT - 2).flat_map(|y| (MARGIN..60).map(move |x| (x, y)));
        assert!(
            text_area.into_iter().any(|(x, y)| drawn.get_pixel(x, y).0 == [20, 20, 20]),
            "text is drawn"
        );
    }

    #[test]
    fn a_sheet_lays_tiles_in_rows_of_five() {
        let blank = RgbImage::new(TILE_WIDTH, TILE_HEIGHT);
        let sheet = contact_sheet("title", &vec![blank; 7]);
        assert_eq!(sheet.dimensions(), (5 * TILE_WIDTH, 2 * LINE + 2 * TILE_HEIGHT));
    }
}
