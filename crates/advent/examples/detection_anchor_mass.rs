//! Where a detector's class probabilities go on the detection demo's held-out target scenes
//! (150 scenes of `detect::demo::VAL_SEED`): over the default boxes matched to an object
//! (IoU >= 0.5, ssd.pytorch's matching) and over the rest, the mean background probability,
//! the mean probability of the true class and the mean entropy (nats); and the default boxes
//! per scene whose best object class has probability > 0.5; and the VOC mAP the demo reports
//! (`detect::demo::score`). The README's detection demo section takes its controls' scores
//! and probabilities from it.
//!
//! `cargo run --release -p advent --example detection_anchor_mass -- A/model.pth B/model.pth ...`
use advent::dataset::synthetic::Domain;
use advent::detect::data::{DetDataset, SyntheticDetection};
use advent::detect::{matching, priors::PriorConfig, ssd::Ssd};
use tch::{Device, Kind, Tensor};
fn main() {
    let val = std::sync::Arc::new(SyntheticDetection::scenes(advent::detect::demo::VAL_SEED, Domain::Target, 150));
    let pc = PriorConfig::ssd300();
    let priors = pc.priors();
    let header = ["matched: P(bg)", "P(class)", "H", "others: P(bg)", "H", "boxes > 0.5", "mAP"];
    println!(
        "{:<40} {:>15} {:>9} {:>7} {:>14} {:>7} {:>12} {:>6}",
        "model", header[0], header[1], header[2], header[3], header[4], header[5], header[6]
    );
    for p in std::env::args().skip(1) {
        let map = advent::detect::demo::score(std::path::Path::new(&p), &val, None, Device::Cpu, 0.0).unwrap().map;
        let ssd = Ssd::from_checkpoint(std::path::Path::new(&p), Device::Cpu).unwrap();
        let (mut pos_bg, mut pos_cls, mut pos_h, mut npos) = (0.0, 0.0, 0.0, 0.0);
        let (mut neg_bg, mut neg_h, mut nneg, mut confident) = (0.0, 0.0, 0.0, 0.0);
        for i in 0..val.len() {
            let s = val.get(i).unwrap();
            let (_, lab) = matching::match_priors(&s.boxes, &s.labels, &priors, matching::MATCH_THRESHOLD, pc.variance);
            let out = tch::no_grad(|| ssd.forward(&s.image.unsqueeze(0))).unwrap();
            let prob = out.conf.softmax(-1, Kind::Float).squeeze_dim(0);
            let h = -(&prob * prob.clamp_min(1e-12).log()).sum_dim_intlist([-1i64].as_slice(), false, Kind::Float);
            let lab_t = Tensor::from_slice(&lab);
            let pos = lab_t.gt(0);
            let neg = pos.logical_not();
            let bg = prob.select(1, 0);
            let cls = prob.gather(1, &lab_t.unsqueeze(1), false).squeeze_dim(1);
            let np = pos.sum(Kind::Float).double_value(&[]);
            npos += np;
            nneg += neg.sum(Kind::Float).double_value(&[]);
            pos_bg += bg.masked_select(&pos).sum(Kind::Float).double_value(&[]);
            pos_cls += cls.masked_select(&pos).sum(Kind::Float).double_value(&[]);
            pos_h += h.masked_select(&pos).sum(Kind::Float).double_value(&[]);
            neg_bg += bg.masked_select(&neg).sum(Kind::Float).double_value(&[]);
            neg_h += h.masked_select(&neg).sum(Kind::Float).double_value(&[]);
            let obj_max = prob.narrow(1, 1, prob.size()[1] - 1).amax([1i64].as_slice(), false);
            confident += obj_max.gt(0.5).sum(Kind::Float).double_value(&[]);
        }
        let tail: String = p.chars().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
        println!(
            "{tail:<40} {:>15.3} {:>9.3} {:>7.3} {:>14.4} {:>7.4} {:>12.2} {:>6}",
            pos_bg / npos,
            pos_cls / npos,
            pos_h / npos,
            neg_bg / nneg,
            neg_h / nneg,
            confident / val.len() as f64,
            map.map_or("-".to_string(), |m| format!("{m:.1}"))
        );
    }
}
