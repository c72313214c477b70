use advent::dataset::label::{read_label, LabelEncoding};
use advent::image::*;
use std::time::Instant;
fn main() {
    let root = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let n = 8;
    let mut t = [0f64; 5];
    for r in 0..2 {
        for i in 1..=n {
            let p = root.join(format!("images/{i:05}.png"));
            let a = Instant::now();
            let bytes = std::fs::read(&p).unwrap();
            let b = Instant::now();
            let img = read_rgb(&p).unwrap();
            let c = Instant::now();
            let small = resize_bicubic(&img, 1280, 720);
            let d = Instant::now();
            let _t = to_input_tensor(&small, IMG_MEAN_BGR);
            let e = Instant::now();
            let l = read_label(&root.join(format!("labels/{i:05}.png")), LabelEncoding::Ids8).unwrap();
            let f = Instant::now();
            if r == 1 {
                t[0] += (b - a).as_secs_f64();
                t[1] += (c - b).as_secs_f64();
                t[2] += (d - c).as_secs_f64();
                t[3] += (e - d).as_secs_f64();
                t[4] += (f - e).as_secs_f64();
            }
            std::hint::black_box((bytes.len(), l.width));
        }
    }
    let names = ["read bytes", "read_rgb (incl read)", "resize", "tensor", "label read"];
    for (n_, v) in names.iter().zip(t) {
        println!("{n_}: {:.1} ms", v * 1e3 / n as f64);
    }
}
