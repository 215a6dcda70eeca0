//! The fonts every plot is drawn with, compiled in: DejaVu Sans regular and bold
//! (`src/report/fonts/`, its license beside them), registered with plotters as `sans-serif`.
//! With plotters' system-font backend a machine without fonts (a container, a headless GPU
//! server) could not draw a single plot: `tunelab experiment` stopped at its first figure, after
//! the runs were written but before the report, and the same report came out in whatever font
//! each machine had.

use plotters::style::FontStyle;

/// The family the plots name (`(FAMILY, size)`).
pub(crate) const FAMILY: &str = "sans-serif";

const REGULAR: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
const BOLD: &[u8] = include_bytes!("fonts/DejaVuSans-Bold.ttf");

/// Registers the compiled-in fonts as [`FAMILY`] (once per process). Every function that draws
/// calls it first.
pub(crate) fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (style, bytes) in [(FontStyle::Normal, REGULAR), (FontStyle::Bold, BOLD)] {
            if plotters::style::register_font(FAMILY, style, bytes).is_err() {
                panic!("the compiled-in DejaVu Sans ({}) does not parse", style.as_str());
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use plotters::prelude::*;

    /// Text is measured and drawn with the compiled-in fonts, whatever the machine has: both
    /// styles are known after `register`, a string's width is DejaVu Sans's, and an SVG and a
    /// bitmap with a caption draw.
    #[test]
    fn plots_draw_text_with_the_compiled_in_font() {
        super::register();
        let regular = FontDesc::new(FontFamily::Name(super::FAMILY), 20.0, FontStyle::Normal);
        let bold = FontDesc::new(FontFamily::Name(super::FAMILY), 20.0, FontStyle::Bold);
        let (w, _) = regular.box_size("tunelab MRR@10").unwrap();
        let (wb, _) = bold.box_size("tunelab MRR@10").unwrap();
        assert!(w > 100 && wb > w, "regular {w} px, bold {wb} px");
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (200, 100)).into_drawing_area();
            root.draw(&Text::new("ndcg_cut_10 → 0.50", (10, 10), (super::FAMILY, 14))).unwrap();
            root.present().unwrap();
        }
        assert!(svg.contains("ndcg_cut_10"), "{svg}");
        let mut pixels = vec![255u8; 200 * 100 * 3];
        {
            let root = BitMapBackend::with_buffer(&mut pixels, (200, 100)).into_drawing_area();
            root.draw(&Text::new("ndcg_cut_10", (10, 10), (super::FAMILY, 14).into_font().color(&BLACK))).unwrap();
            root.present().unwrap();
        }
        assert!(pixels.iter().any(|&p| p < 128), "the text left dark pixels");
    }
}
