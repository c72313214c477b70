//! Times reading, preparing (resize to 300x300) and SSD-augmenting a full-size 2048x1024
//! Cityscapes frame of ../shared/data (with the boxes of its labelled val frame, relative),
//! 31 times; prints median, minimum and maximum (BENCHMARKS.md).
//!
//! `cargo run --release -p advent --example detection_augment_time [-- CITYSCAPES_ROOT]`
use advent::detect::data::{DetDataset, DetectionSet};
use std::time::Instant;
fn main() {
    let default = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cityscapes-mini");
    let root = std::env::args().nth(1).map_or(default, std::path::PathBuf::from);
    let root = root.as_path();
    let set = DetectionSet::open("cityscapes", root, "val", 0.02, None, 300, Default::default()).unwrap();
    let frame = set.raw(0).unwrap().frame;
    let path = root.join("leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png");
    let (mut t_raw, mut t_prep, mut t_aug) = (vec![], vec![], vec![]);
    for k in 0..31u64 {
        let t = Instant::now();
        let img = advent::image::read_rgb(&path).unwrap();
        t_raw.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _ = advent::detect::data::prepare(&img, 300).unwrap();
        t_prep.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let _ = advent::detect::augment::ssd_augment(&img, frame.clone(), String::new(), 300, k).unwrap();
        t_aug.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for (n, mut v) in [("read png 2048x1024", t_raw), ("prepare (resize to 300)", t_prep), ("ssd_augment", t_aug)] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!("{n}: median {:.1} ms, min {:.1} ms, max {:.1} ms", v[v.len() / 2], v[0], v[v.len() - 1]);
    }
}
