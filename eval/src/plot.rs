//! A small scatter / line chart written both as SVG and as PNG (drawn here, text from an 8×8
//! bitmap font), so reports need no plotting stack or system fonts.

use std::path::Path;

use anyhow::{Context, Result};
use font8x8::UnicodeFonts;

/// How a series joins its points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Line {
    #[default]
    None,
    Solid,
    Dashed,
}

pub struct Series {
    pub name: String,
    pub color: [u8; 3],
    /// (x, y, label)
    pub points: Vec<(f64, f64, String)>,
    /// Hollow squares instead of discs.
    pub square: bool,
    pub line: Line,
}

pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// The y axis; `None`: from 0 to a little above the highest point.
    pub y_range: Option<(f64, f64)>,
    /// Labelled x ticks (e.g. categories at 0, 1, 2…); empty: five evenly spaced numbers.
    pub x_ticks: Vec<(f64, String)>,
}

const W: usize = 900;
const H: usize = 600;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 240.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;

struct Scale {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Scale {
    fn of(c: &Chart) -> Self {
        let pts = c.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
        for (x, _, _) in pts {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
        }
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        let pad = ((x1 - x0) * 0.1).max(0.05);
        let (y0, y1) = c.y_range.unwrap_or_else(|| {
            let top = c
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.1))
                .fold(0.0f64, f64::max);
            (0.0, if top > 0.0 { top * 1.1 } else { 1.0 })
        });
        Scale {
            x0: x0 - pad,
            x1: x1 + pad,
            y0,
            y1,
        }
    }

    /// The x ticks: the chart's own, or five evenly spaced.
    fn x_ticks(&self, c: &Chart) -> Vec<(f64, String)> {
        if c.x_ticks.is_empty() {
            (0..=5)
                .map(|i| {
                    let x = self.x0 + (self.x1 - self.x0) * i as f64 / 5.0;
                    (x, format!("{x:.2}"))
                })
                .collect()
        } else {
            c.x_ticks.clone()
        }
    }
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * (W as f64 - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H as f64 - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H as f64 - TOP - BOTTOM)
    }
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Places point labels (in pixels, top-left of the text) so that they do not overlap: each goes
/// right of its point and moves down until its box is free. Same placement for SVG and PNG.
fn place_labels(c: &Chart, s: &Scale) -> Vec<Vec<(f64, f64)>> {
    let mut boxes: Vec<(f64, f64, f64, f64)> = Vec::new();
    c.series
        .iter()
        .map(|ser| {
            ser.points
                .iter()
                .map(|(x, y, label)| {
                    let w = 8.0 * label.chars().count() as f64;
                    let (lx, mut ly) = (s.px(*x) + 8.0, s.py(*y) - 14.0);
                    // Points in the lower half stack their labels upwards, the others downwards.
                    let step = if s.py(*y) > H as f64 / 2.0 {
                        -12.0
                    } else {
                        12.0
                    };
                    if !label.is_empty() {
                        while boxes.iter().any(|b| {
                            lx < b.0 + b.2 && b.0 < lx + w && ly < b.1 + b.3 && b.1 < ly + 11.0
                        }) {
                            ly += step;
                        }
                        boxes.push((lx, ly, w, 11.0));
                    }
                    (lx, ly)
                })
                .collect()
        })
        .collect()
}

impl Chart {
    pub fn to_svg(&self) -> String {
        let s = Scale::of(self);
        let mut o = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        o += &format!(
            "<text x=\"{}\" y=\"28\" font-size=\"16\" text-anchor=\"middle\">{}</text>\n",
            W / 2,
            esc(&self.title)
        );
        let (ax0, ax1, ay0, ay1) = (s.px(s.x0), s.px(s.x1), s.py(s.y0), s.py(s.y1));
        o += &format!("<rect x=\"{ax0}\" y=\"{ay1}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n", ax1 - ax0, ay0 - ay1);
        for (x, label) in s.x_ticks(self) {
            o += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
                s.px(x),
                ay0 + 18.0,
                esc(&label)
            );
        }
        for i in 0..=5 {
            let y = s.y0 + (s.y1 - s.y0) * i as f64 / 5.0;
            o += &format!(
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{y:.2}</text>\n",
                ax0 - 6.0,
                s.py(y) + 4.0
            );
            o += &format!(
                "<line x1=\"{ax0}\" x2=\"{ax1}\" y1=\"{0:.1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\n",
                s.py(y)
            );
        }
        o += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            (ax0 + ax1) / 2.0,
            H - 25,
            esc(&self.x_label)
        );
        o += &format!(
            "<text x=\"20\" y=\"{0:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 20 {0:.1})\">{1}</text>\n",
            (ay0 + ay1) / 2.0,
            esc(&self.y_label)
        );
        let labels = place_labels(self, &s);
        for (si, ser) in self.series.iter().enumerate() {
            let c = hex(ser.color);
            let dash = match ser.line {
                Line::Dashed => " stroke-dasharray=\"6 4\"",
                _ => "",
            };
            if ser.line != Line::None && ser.points.len() > 1 {
                let pts: Vec<String> = ser
                    .points
                    .iter()
                    .map(|(x, y, _)| format!("{:.1},{:.1}", s.px(*x), s.py(*y)))
                    .collect();
                o += &format!(
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"{dash}/>\n",
                    pts.join(" ")
                );
            }
            for (pi, (x, y, label)) in ser.points.iter().enumerate() {
                let (px, py) = (s.px(*x), s.py(*y));
                let (lx, ly) = labels[si][pi];
                if !ser.square {
                    o += &format!("<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"5\" fill=\"{c}\"/>\n");
                } else {
                    o += &format!("<rect x=\"{:.1}\" y=\"{:.1}\" width=\"9\" height=\"9\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>\n", px - 4.5, py - 4.5);
                }
                o += &format!(
                    "<text x=\"{lx:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{c}\">{}</text>\n",
                    ly + 9.0,
                    esc(label)
                );
            }
            let ly = TOP + 20.0 + 22.0 * si as f64;
            if ser.line == Line::None {
                o += &format!(
                    "<rect x=\"{}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{c}\"/>\n",
                    W as f64 - RIGHT + 20.0,
                    ly - 9.0
                );
            } else {
                o += &format!(
                    "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{c}\" stroke-width=\"2\"{dash}/>\n",
                    W as f64 - RIGHT + 10.0,
                    W as f64 - RIGHT + 32.0,
                    ly - 4.0,
                    ly - 4.0
                );
            }
            o += &format!(
                "<text x=\"{}\" y=\"{ly:.1}\">{}</text>\n",
                W as f64 - RIGHT + 36.0,
                esc(&ser.name)
            );
        }
        o + "</svg>\n"
    }

    /// RGB pixels of the chart.
    pub fn to_pixels(&self) -> Vec<u8> {
        let s = Scale::of(self);
        let mut c = Canvas {
            px: vec![255; W * H * 3],
        };
        let black = [0, 0, 0];
        c.text(
            W / 2 - self.title.chars().count() * 8,
            16,
            &self.title,
            black,
            2,
        );
        let (ax0, ax1, ay0, ay1) = (s.px(s.x0), s.px(s.x1), s.py(s.y0), s.py(s.y1));
        for (x, lx) in s.x_ticks(self) {
            c.text(
                (s.px(x) as usize).saturating_sub(lx.chars().count() * 4),
                ay0 as usize + 8,
                &lx,
                black,
                1,
            );
        }
        for i in 0..=5 {
            let y = s.y0 + (s.y1 - s.y0) * i as f64 / 5.0;
            c.hline(ax0, ax1, s.py(y), [221, 221, 221]);
            let ly = format!("{y:.2}");
            c.text(
                ax0 as usize - 6 - ly.len() * 8,
                s.py(y) as usize - 4,
                &ly,
                black,
                1,
            );
        }
        c.hline(ax0, ax1, ay0, black);
        c.hline(ax0, ax1, ay1, black);
        c.vline(ax0, ay1, ay0, black);
        c.vline(ax1, ay1, ay0, black);
        c.text(
            ((ax0 + ax1) / 2.0) as usize - self.x_label.len() * 4,
            H - 32,
            &self.x_label,
            black,
            1,
        );
        c.text(4, TOP as usize - 18, &self.y_label, black, 1);
        let labels = place_labels(self, &s);
        for (si, ser) in self.series.iter().enumerate() {
            if ser.line != Line::None {
                for w in ser.points.windows(2) {
                    let (a, b) = ((s.px(w[0].0), s.py(w[0].1)), (s.px(w[1].0), s.py(w[1].1)));
                    c.line(a, b, ser.color, ser.line == Line::Dashed);
                }
            }
            for (pi, (x, y, label)) in ser.points.iter().enumerate() {
                let (px, py) = (s.px(*x), s.py(*y));
                if ser.square {
                    c.square(px, py, 5.0, ser.color);
                } else {
                    c.disc(px, py, 5.0, ser.color);
                }
                let (lx, ly) = labels[si][pi];
                c.text(lx as usize, ly.max(0.0) as usize, label, ser.color, 1);
            }
            let ly = TOP as usize + 12 + 22 * si;
            if ser.line == Line::None {
                c.disc(W as f64 - RIGHT + 25.0, ly as f64 + 4.0, 5.0, ser.color);
            } else {
                let y = ly as f64 + 4.0;
                let x0 = W as f64 - RIGHT + 10.0;
                c.line((x0, y), (x0 + 22.0, y), ser.color, ser.line == Line::Dashed);
            }
            c.text(W - RIGHT as usize + 36, ly, &ser.name, black, 1);
        }
        c.px
    }

    pub fn write_png(&self, path: &Path) -> Result<()> {
        let f = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), W as u32, H as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&self.to_pixels())?;
        Ok(())
    }
}

struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            let i = (y as usize * W + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }
    fn hline(&mut self, x0: f64, x1: f64, y: f64, c: [u8; 3]) {
        for x in x0 as i64..=x1 as i64 {
            self.set(x, y as i64, c);
        }
    }
    fn vline(&mut self, x: f64, y0: f64, y1: f64, c: [u8; 3]) {
        for y in y0 as i64..=y1 as i64 {
            self.set(x as i64, y, c);
        }
    }
    /// A 2-pixel-wide segment; dashed: 6 pixels on, 4 off.
    fn line(&mut self, a: (f64, f64), b: (f64, f64), c: [u8; 3], dashed: bool) {
        let n = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as usize;
        for i in 0..=n {
            if dashed && i % 10 >= 6 {
                continue;
            }
            let t = i as f64 / n as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            self.set(x as i64, y as i64, c);
            self.set(x as i64, y as i64 + 1, c);
        }
    }
    fn disc(&mut self, cx: f64, cy: f64, r: f64, c: [u8; 3]) {
        for dy in -(r as i64)..=r as i64 {
            for dx in -(r as i64)..=r as i64 {
                if (dx * dx + dy * dy) as f64 <= r * r {
                    self.set(cx as i64 + dx, cy as i64 + dy, c);
                }
            }
        }
    }
    fn square(&mut self, cx: f64, cy: f64, r: f64, c: [u8; 3]) {
        let (x0, x1, y0, y1) = (cx - r, cx + r, cy - r, cy + r);
        for t in 0..2 {
            let t = t as f64;
            self.hline(x0, x1, y0 + t, c);
            self.hline(x0, x1, y1 - t, c);
            self.vline(x0 + t, y0, y1, c);
            self.vline(x1 - t, y0, y1, c);
        }
    }
    fn text(&mut self, x: usize, y: usize, s: &str, c: [u8; 3], scale: usize) {
        for (i, ch) in s.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS
                .get(ch)
                .or_else(|| font8x8::GREEK_FONTS.get(ch))
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        for sy in 0..scale {
                            for sx in 0..scale {
                                self.set(
                                    (x + (i * 8 + col) * scale + sx) as i64,
                                    (y + row * scale + sy) as i64,
                                    c,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_svg_and_png() {
        let chart = Chart {
            title: "t".into(),
            x_label: "speedup".into(),
            y_label: "fidelity".into(),
            series: vec![Series {
                name: "fidelity".into(),
                color: [200, 30, 30],
                points: vec![(1.0, 0.5, "exact".into())],
                square: false,
                line: Line::None,
            }],
            y_range: Some((0.0, 1.05)),
            x_ticks: Vec::new(),
        };
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg") && svg.contains("exact") && svg.contains("<circle"));
        let px = chart.to_pixels();
        assert_eq!(px.len(), W * H * 3);
        assert!(
            px.chunks(3).any(|p| p == [200, 30, 30]),
            "the point is drawn"
        );
        let dir = tempfile::tempdir().unwrap();
        chart.write_png(&dir.path().join("a.png")).unwrap();
        assert_eq!(
            &std::fs::read(dir.path().join("a.png")).unwrap()[1..4],
            b"PNG"
        );
    }

    #[test]
    fn draws_dashed_lines_with_category_ticks() {
        let chart = Chart {
            title: "speedup vs RTT".into(),
            x_label: "RTT".into(),
            y_label: "speedup".into(),
            series: vec![
                Series {
                    name: "measured".into(),
                    color: [10, 120, 10],
                    points: vec![(0.0, 1.0, String::new()), (1.0, 0.5, String::new())],
                    square: false,
                    line: Line::Solid,
                },
                Series {
                    name: "predicted".into(),
                    color: [10, 10, 200],
                    points: vec![(0.0, 1.2, String::new()), (1.0, 0.6, String::new())],
                    square: true,
                    line: Line::Dashed,
                },
            ],
            y_range: None,
            x_ticks: vec![(0.0, "0 ms".into()), (1.0, "50 ms".into())],
        };
        let svg = chart.to_svg();
        assert!(svg.contains("<polyline") && svg.contains("stroke-dasharray"));
        assert!(svg.contains("50 ms"));
        let px = chart.to_pixels();
        let count = |c: [u8; 3]| px.chunks(3).filter(|p| *p == c).count();
        // Both lines drawn; the dashed one with fewer pixels per length than a solid one would.
        assert!(count([10, 120, 10]) > 200 && count([10, 10, 200]) > 100);
    }
}
