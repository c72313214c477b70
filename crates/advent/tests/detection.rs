//! The detection pieces together on one image: default boxes, matching, the SSD-300 forward
//! pass, the multibox loss and its gradient, and the adaptation quantities.

use advent::detect::{adapt, loss, matching, priors::PriorConfig, ssd::Ssd};
use tch::{Device, Kind, Tensor};

#[test]
fn one_ssd_training_step_on_matched_boxes() {
    tch::manual_seed(1);
    let net = Ssd::new(9, Device::Cpu).unwrap();
    let config = PriorConfig::default();
    let priors = config.priors();
    assert_eq!(priors.len(), 8732);
    // A car, a person and a small rider (0.1 wide: the 38x38 map's default boxes, 30/300),
    // relative corner boxes.
    let truths = [[0.1f32, 0.4, 0.45, 0.7], [0.6, 0.2, 0.7, 0.65], [0.2, 0.2, 0.3, 0.3]];
    let (loc_t, labels) =
        matching::match_priors(&truths, &[3, 1, 2], &priors, matching::MATCH_THRESHOLD, config.variance);
    let positives = labels.iter().filter(|&&l| l > 0).count();
    assert!(positives >= 3, "every truth gets at least its best prior: {positives}");
    assert!(labels[..38 * 38 * 4].contains(&2), "the small box matches on the 38x38 map");
    let loc_t = Tensor::from_slice(loc_t.as_flattened()).reshape([1, 8732, 4]);
    let labels = Tensor::from_slice(&labels).reshape([1, 8732]);

    let x = Tensor::randn([1, 3, 300, 300], (Kind::Float, Device::Cpu)) * 50.0;
    let out = net.forward(&x).unwrap();
    let l = loss::multibox_loss(&out.loc, &out.conf, &loc_t, &labels, 3).unwrap();
    let (loc, conf) = (l.loc.double_value(&[]), l.conf.double_value(&[]));
    assert!(loc.is_finite() && loc > 0.0 && conf.is_finite() && conf > 0.0, "{loc} {conf}");
    let ent = adapt::entropy_loss(&out.conf).unwrap();
    assert!((0.0..=1.0).contains(&ent.double_value(&[])));
    (l.loc + l.conf).backward();
    // Gradient reaches the backbone, and the heads of the scales that hold the matched boxes
    // (for loc) or the mined boxes (for conf).
    let vars = net.vs.variables();
    let grad = |prefix: &str| -> f64 {
        vars.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.grad())
            .filter(Tensor::defined)
            .map(|g| g.abs().sum(Kind::Float).double_value(&[]))
            .sum()
    };
    for prefix in ["loc.0.", "loc.", "conf.", "vgg.0.", "extras.", "L2Norm."] {
        assert!(grad(prefix) > 0.0, "{prefix} got no gradient");
    }
    let maps: Vec<Vec<i64>> = out.conf_maps.iter().map(|m| adapt::self_information_map(m, 9).unwrap().size()).collect();
    assert_eq!(maps[0], [1, 36, 38, 38]);
    assert_eq!(maps[5], [1, 36, 1, 1]);
}
