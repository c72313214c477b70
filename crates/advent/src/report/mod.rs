//! Self-contained HTML reports: tables, line charts drawn as inline SVG, images inlined as
//! PNG data URIs. One file that opens offline, no script.

pub mod chart;
pub mod compare;
pub mod detection;
pub mod run;

pub use chart::{line_chart, Series};

use crate::image::RgbImage;
use anyhow::{Context, Result};
use base64::Engine;

/// `s` with `&`, `<`, `>` and `"` escaped.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// `<img>` of an RGB image, PNG-encoded inline; `scale` enlarges small images (pixelated).
pub fn img_tag(image: &RgbImage, alt: &str, scale: u32) -> Result<String> {
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), ::image::ImageFormat::Png)
        .context("encoding a report image")?;
    let data = base64::engine::general_purpose::STANDARD.encode(&png);
    let (w, h) = image.dimensions();
    Ok(format!(
        r#"<img src="data:image/png;base64,{data}" width="{}" height="{}" alt="{}" title="{}">"#,
        w * scale,
        h * scale,
        escape(alt),
        escape(alt)
    ))
}

/// A whole page: title, a style sheet, and the sections' HTML.
pub fn page(title: &str, sections: &[String]) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }}
th {{ background: #f3f3f3; }} td.name, th.name {{ text-align: left; }}
td.best {{ font-weight: bold; background: #eef6ee; }}
.charts {{ display: flex; flex-wrap: wrap; gap: 1em; }}
.grid {{ display: grid; gap: 4px; align-items: center; font-size: 0.8em; }}
.grid img {{ image-rendering: pixelated; display: inline-block; vertical-align: top; margin-right: 2px; }}
.note {{ color: #555; font-size: 0.9em; max-width: 60em; }}
.legend span {{ display: inline-block; margin-right: 1em; }}
.swatch {{ display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; vertical-align: -0.1em; }}
</style></head>
<body><h1>{t}</h1>
{body}
</body></html>
"#,
        t = escape(title),
        body = sections.join("\n")
    )
}

/// The jet colour bar of entropy maps: 0 (certain) to 1 (uniform over the classes).
pub fn entropy_legend() -> String {
    let stops: Vec<String> = (0..=10)
        .map(|i| {
            let [r, g, b] = crate::image::colormap::jet(i as f32 / 10.0);
            format!("rgb({r},{g},{b}) {}%", i * 10)
        })
        .collect();
    format!(
        r#"<div class="note">Entropy maps: normalised entropy per pixel, <span style="display:inline-block;width:12em;height:0.8em;background:linear-gradient(to right,{})"></span> 0 (certain) → 1 (uniform over the classes).</div>"#,
        stops.join(",")
    )
}

/// Legend of the classes' colours.
pub fn class_legend(names: &[(usize, String)], palette: &[[u8; 3]]) -> String {
    let items: Vec<String> = names
        .iter()
        .map(|(id, name)| {
            let [r, g, b] = palette.get(*id).copied().unwrap_or([0, 0, 0]);
            format!(r#"<span><span class="swatch" style="background:rgb({r},{g},{b})"></span>{}</span>"#, escape(name))
        })
        .collect();
    format!(r#"<div class="legend note">{}</div>"#, items.join(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_and_images() {
        assert_eq!(escape(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
        let tag = img_tag(&RgbImage::new(2, 1), "x<y", 3).unwrap();
        assert!(tag.starts_with(r#"<img src="data:image/png;base64,iVBORw0KGgo"#), "{tag}");
        assert!(tag.contains(r#"width="6" height="3""#) && tag.contains("x&lt;y"));
        let html = page("T", &["<p>body</p>".into()]);
        assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<p>body</p>") && html.ends_with("</html>\n"));
    }
}
