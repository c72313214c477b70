//! Sizes and parameter counts of the networks against SPEC §1.1 and §2 (numbers taken from
//! the reference architecture, not from this code).

use advent::model::{output_size, Arch, AsppSum, Discriminator, ModelConfig, SegModel};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

fn numel_by<F: Fn(&str, &Tensor) -> bool>(vars: &HashMap<String, Tensor>, pred: F) -> i64 {
    vars.iter().filter(|(k, t)| pred(k, t)).map(|(_, t)| t.numel() as i64).sum()
}

#[test]
fn resnet101_parameter_counts_match_spec() {
    let model = SegModel::new(ModelConfig::deeplabv2_r101(19), Device::Cpu).unwrap();
    let vars = model.vs.variables();
    let head = |k: &str| k.starts_with("layer5.") || k.starts_with("layer6.");
    let is_bn_affine =
        |k: &str, t: &Tensor| t.dim() == 1 && !head(k) && (k.ends_with(".weight") || k.ends_with(".bias"));
    assert_eq!(numel_by(&vars, |k, t| t.dim() == 4 && !head(k)), 42_394_816, "backbone conv weights");
    assert_eq!(numel_by(&vars, is_bn_affine), 105_344, "BN affine");
    assert_eq!(numel_by(&vars, |k, _| k.starts_with("layer6.")), 1_400_908, "main ASPP");
    assert_eq!(numel_by(&vars, |k, _| k.starts_with("layer5.")), 700_492, "aux ASPP");
    // Trainable: every convolution, no BatchNorm parameter (frozen affine).
    let trainable: i64 = model.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
    assert_eq!(trainable, 42_394_816 + 1_400_908 + 700_492);
}

#[test]
fn default_initialisation_follows_the_reference() {
    tch::manual_seed(0);
    let model = SegModel::new(ModelConfig::deeplabv2_r101(19), Device::Cpu).unwrap();
    let vars = model.vs.variables();
    // Conv weights N(0, 0.01); BN γ = 1, β = 0; ASPP bias U(±1/√(C_in·9)).
    let std = vars["layer3.5.conv2.weight"].std(true).double_value(&[]);
    assert!((std - 0.01).abs() < 2e-4, "std {std}");
    assert_eq!(vars["layer2.1.bn2.weight"].min().double_value(&[]), 1.0);
    assert_eq!(vars["layer2.1.bn2.bias"].abs().max().double_value(&[]), 0.0);
    let bound = vars["layer6.conv2d_list.3.bias"].abs().max().double_value(&[]);
    assert!(bound <= 1.0 / (2048.0f64 * 9.0).sqrt() && bound > 0.005, "bias bound {bound}");
}

/// SPEC §1.1: 720×1280 → 91×161, 512×1024 → 65×129, 760×1280 → 96×161; the discriminator
/// gives 22×40 and 16×32 on the full-resolution maps.
#[test]
fn output_sizes_match_spec() {
    for (h, w, oh, ow) in [(720, 1280, 91, 161), (512, 1024, 65, 129), (760, 1280, 96, 161)] {
        assert_eq!(output_size(Arch::DeepLabV2ResNet101, h, w), (oh, ow));
    }
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let d = Discriminator::new(&vs.root(), 19, 64);
    for (h, w, oh, ow) in [(720, 1280, 22, 40), (512, 1024, 16, 32)] {
        let y = tch::no_grad(|| d.forward(&Tensor::zeros([1, 19, h, w], (Kind::Float, Device::Cpu)))).unwrap();
        assert_eq!(y.size(), [1, 1, oh, ow]);
    }
}

/// The real network at the paper's two input sizes (a few seconds each on 2 cores).
#[test]
fn resnet101_feature_maps_at_paper_sizes() {
    let model = SegModel::new(ModelConfig::deeplabv2_r101(19), Device::Cpu).unwrap();
    for (h, w, oh, ow) in [(512, 1024, 65, 129), (720, 1280, 91, 161)] {
        let x = Tensor::zeros([1, 3, h, w], (Kind::Float, Device::Cpu));
        let heads = tch::no_grad(|| model.forward_t(&x, false)).unwrap();
        assert_eq!(heads.main.size(), [1, 19, oh, ow]);
        assert_eq!(heads.aux.unwrap().size(), [1, 19, oh, ow]);
    }
}

#[test]
fn vgg_is_single_level() {
    let config =
        ModelConfig { arch: Arch::DeepLabV2Vgg16, num_classes: 19, multi_level: true, aspp_sum: AsppSum::AllFour };
    let err = SegModel::new(config, Device::Cpu).err().unwrap();
    assert!(err.to_string().contains("single-level"), "{err}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let config =
        ModelConfig { arch: Arch::DeepLabV2ResNet50, num_classes: 4, multi_level: false, aspp_sum: AsppSum::AllFour };
    let model = SegModel::new(config, Device::Cpu).unwrap();
    let two_channels = Tensor::zeros([1, 2, 32, 32], (Kind::Float, Device::Cpu));
    assert!(model.forward_t(&two_channels, false).is_err());
    let flat = Tensor::zeros([3, 32, 32], (Kind::Float, Device::Cpu));
    assert!(model.forward_t(&flat, false).is_err());
}
