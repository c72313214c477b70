//! Times the host's share of evaluating or predicting one 2048x1024 image, the work
//! `advent eval` moved onto its scoring threads and `advent predict` onto its reader and
//! writer threads (BENCHMARKS.md): the label tensor (int64, as datasets give it) to
//! train-id bytes, the prediction tensor (uint8) to bytes, the confusion pairs, the
//! `_trainids.png` and `_color.png`, the entropy heat map's PNG; reading a 2048x1024
//! Cityscapes frame of ../shared/data (or the PNG given) and resizing it to 1024x512. Random labels,
//! predictions and entropies over 19 classes (harder to compress than real ones), 11
//! repetitions; prints the medians.
//!
//! `cargo run --release -p advent --example host_costs [-- FRAME.png]`
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let (w, h) = (2048u32, 1024u32);
    let label = Tensor::randint(19, [i64::from(h), i64::from(w)], (Kind::Int64, Device::Cpu));
    let prediction = Tensor::randint(19, [1, i64::from(h), i64::from(w)], (Kind::Uint8, Device::Cpu));
    let dir = tempfile::tempdir().unwrap();
    let palette = advent::classes::palette(19);
    let entropy =
        Vec::<f32>::try_from(Tensor::rand([i64::from(h) * i64::from(w)], (Kind::Float, Device::Cpu))).unwrap();
    let default = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/cityscapes-mini/leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png");
    let frame = std::env::args().nth(1).map_or(default, std::path::PathBuf::from);
    let mut times: [Vec<f64>; 8] = Default::default();
    for _ in 0..11 {
        let mut lap = {
            let mut t = Instant::now();
            move || {
                let ms = t.elapsed().as_secs_f64() * 1e3;
                t = Instant::now();
                ms
            }
        };
        let truth = Vec::<u8>::try_from(label.to_kind(Kind::Uint8).flatten(0, -1)).unwrap();
        times[0].push(lap());
        let ids = Vec::<u8>::try_from(prediction.flatten(0, -1)).unwrap();
        times[1].push(lap());
        let mut cm = advent::eval::ConfusionMatrix::new(19);
        cm.add(&truth, &ids).unwrap();
        times[2].push(lap());
        advent::image::write_png_gray8(&dir.path().join("x_trainids.png"), w, h, &ids).unwrap();
        times[3].push(lap());
        let color = advent::image::colormap::colorize(&ids, w, h, &palette);
        advent::image::write_png_rgb(&dir.path().join("x_color.png"), &color).unwrap();
        times[4].push(lap());
        let heat = advent::image::colormap::heatmap(&entropy, w, h);
        advent::image::write_png_rgb(&dir.path().join("x_entropy.png"), &heat).unwrap();
        times[5].push(lap());
        let img = advent::image::read_rgb(&frame).unwrap();
        times[6].push(lap());
        let _ = advent::image::resize_bicubic(&img, 1024, 512);
        times[7].push(lap());
    }
    let names = [
        "label to bytes",
        "prediction to bytes",
        "confusion pairs",
        "_trainids.png",
        "_color.png",
        "_entropy.png",
        "reading the frame",
        "resize to 1024x512",
    ];
    for (name, mut t) in names.into_iter().zip(times) {
        t.sort_by(f64::total_cmp);
        println!("{name:>20}: median {:.2} ms", t[t.len() / 2]);
    }
}
