//! Times the host's share of evaluating or predicting one 2048x1024 image, the work
//! `advent eval` moved onto its scoring threads and `advent predict` onto its reader and
//! writer threads (BENCHMARKS.md): the label tensor (int64, as datasets give it) to
//! train-id bytes, the prediction tensor (uint8) to bytes, the confusion pairs; the
//! `_trainids.png` and `_color.png` of two kinds of maps, random ids (the worst case for
//! PNG) and a real label map (the val frame's of ../shared/data, 256x128, enlarged: piecewise
//! constant, as a network's predictions are); the entropy heat map's PNG, random and smooth;
//! reading a 2048x1024 Cityscapes frame of ../shared/data (or the PNG given) and resizing
//! it to 1024x512. 11 repetitions; prints the medians.
//!
//! `cargo run --release -p advent --example host_costs [-- FRAME.png]`
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let (w, h) = (2048u32, 1024u32);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cityscapes-mini");
    let label = Tensor::randint(19, [i64::from(h), i64::from(w)], (Kind::Int64, Device::Cpu));
    let random_ids =
        Vec::<u8>::try_from(Tensor::randint(19, [i64::from(h) * i64::from(w)], (Kind::Uint8, Device::Cpu))).unwrap();
    let small = image::open(data.join("gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"))
        .unwrap()
        .into_luma8();
    let real_ids: Vec<u8> = image::imageops::resize(&small, w, h, image::imageops::FilterType::Nearest)
        .into_raw()
        .into_iter()
        .map(|v| v % 19)
        .collect();
    let random_entropy =
        Vec::<f32>::try_from(Tensor::rand([i64::from(h) * i64::from(w)], (Kind::Float, Device::Cpu))).unwrap();
    let smooth_entropy: Vec<f32> = (0..h * w)
        .map(|i| {
            let (x, y) = ((i % w) as f32, (i / w) as f32);
            0.5 + 0.5 * (x / 37.0).sin() * (y / 23.0).cos()
        })
        .collect();
    let frame = std::env::args().nth(1).map_or_else(
        || data.join("leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png"),
        std::path::PathBuf::from,
    );
    let prediction = Tensor::from_slice(&random_ids);
    let dir = tempfile::tempdir().unwrap();
    let palette = advent::classes::palette(19);
    let names = [
        "label to bytes",
        "prediction to bytes",
        "confusion pairs",
        "_trainids.png, random",
        "_color.png, random",
        "_trainids.png, real",
        "_color.png, real",
        "_entropy.png, random",
        "_entropy.png, smooth",
        "reading the frame",
        "resize to 1024x512",
    ];
    let mut times = vec![Vec::new(); names.len()];
    for _ in 0..11 {
        let mut t = Instant::now();
        let mut lap = |k: usize| {
            times[k].push(t.elapsed().as_secs_f64() * 1e3);
            t = Instant::now();
        };
        let truth = Vec::<u8>::try_from(label.to_kind(Kind::Uint8).flatten(0, -1)).unwrap();
        lap(0);
        let ids = Vec::<u8>::try_from(&prediction).unwrap();
        lap(1);
        let mut cm = advent::eval::ConfusionMatrix::new(19);
        cm.add(&truth, &ids).unwrap();
        lap(2);
        for (k, map) in [(3, &random_ids), (5, &real_ids)] {
            advent::image::write_png_gray8(&dir.path().join("x_trainids.png"), w, h, map).unwrap();
            lap(k);
            let color = advent::image::colormap::colorize(map, w, h, &palette);
            advent::image::write_png_rgb(&dir.path().join("x_color.png"), &color).unwrap();
            lap(k + 1);
        }
        for (k, entropy) in [(7, &random_entropy), (8, &smooth_entropy)] {
            let heat = advent::image::colormap::heatmap(entropy, w, h);
            advent::image::write_png_rgb(&dir.path().join("x_entropy.png"), &heat).unwrap();
            lap(k);
        }
        let img = advent::image::read_rgb(&frame).unwrap();
        lap(9);
        let _ = advent::image::resize_bicubic(&img, 1024, 512);
        lap(10);
    }
    for (name, mut t) in names.into_iter().zip(times) {
        t.sort_by(f64::total_cmp);
        println!("{name:>22}: median {:.2} ms", t[t.len() / 2]);
    }
}
