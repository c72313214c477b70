//! The usual initialisation files, as users download them, load with the reference's
//! translation (SPEC §7): DeepLab's `Scale.`-prefixed ImageNet ResNet (its `layer5`
//! skipped, both classifiers left at their initialisation) and a torchvision-layout VGG-16
//! (pool4 removed from the indices, fully connected layers skipped).

use advent::model::{load_into, Arch, AsppSum, LoadOptions, ModelConfig, SegModel, WeightsKind};
use advent::weights::{self, StateDict};
use tch::{Device, Kind, Tensor};

fn resnet50(classes: i64) -> SegModel {
    let config = ModelConfig {
        arch: Arch::DeepLabV2ResNet50,
        num_classes: classes,
        multi_level: true,
        aspp_sum: AsppSum::AllFour,
    };
    SegModel::new(config, Device::Cpu).unwrap()
}

#[test]
fn deeplab_imagenet_init_is_translated_and_keeps_the_classifiers() {
    // A "DeepLab_resnet_pretrained_imagenet.pth": every key under `Scale.`, BatchNorm without
    // num_batches_tracked (pre-0.4.1 files), and a 1000-class `layer5` of its own.
    let donor = resnet50(19);
    let mut init = StateDict::new();
    for (k, t) in donor.state_dict().iter() {
        if k.ends_with("num_batches_tracked") || k.starts_with("layer5.") || k.starts_with("layer6.") {
            continue;
        }
        init.insert(format!("Scale.{k}"), t.f_add_scalar(1.0).unwrap());
    }
    for i in 0..4 {
        init.insert(
            format!("Scale.layer5.conv2d_list.{i}.weight"),
            Tensor::zeros([1000, 2048, 3, 3], (Kind::Float, Device::Cpu)),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("DeepLab_resnet_pretrained_imagenet.pth");
    weights::save(&init, &path).unwrap();

    let model = resnet50(19);
    let heads_before = model.vs.variables()["layer6.conv2d_list.0.weight"].copy();
    let report = load_into(&model.vs, weights::load(&path).unwrap(), LoadOptions::default()).unwrap();
    assert_eq!(report.kind, Some(WeightsKind::DeepLabInit));
    assert_eq!(report.dropped.len(), 4, "the init's layer5 is skipped");
    assert!(report.kept_init.iter().all(|k| k.starts_with("layer5.") || k.starts_with("layer6.")));
    assert_eq!(report.kept_init.len(), 16);
    let vars = model.vs.variables();
    let want = donor.state_dict().get("layer3.2.conv2.weight").unwrap().f_add_scalar(1.0).unwrap();
    assert!(vars["layer3.2.conv2.weight"].equal(&want));
    assert!(
        vars["bn1.running_var"].equal(&donor.state_dict().get("bn1.running_var").unwrap().f_add_scalar(1.0).unwrap())
    );
    assert!(vars["layer6.conv2d_list.0.weight"].equal(&heads_before), "the classifier keeps its initialisation");
}

#[test]
fn torchvision_vgg16_init_skips_pool4_in_the_indices() {
    // torchvision's vgg16 state dict: convs at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28;
    // classifier.{0,3,6} fully connected.
    let convs = [
        (0, 3, 64),
        (2, 64, 64),
        (5, 64, 128),
        (7, 128, 128),
        (10, 128, 256),
        (12, 256, 256),
        (14, 256, 256),
        (17, 256, 512),
        (19, 512, 512),
        (21, 512, 512),
        (24, 512, 512),
        (26, 512, 512),
        (28, 512, 512),
    ];
    let mut init = StateDict::new();
    for (i, (idx, c_in, c_out)) in convs.iter().enumerate() {
        init.insert(
            format!("features.{idx}.weight"),
            Tensor::full([*c_out, *c_in, 3, 3], i as f64, (Kind::Float, Device::Cpu)),
        );
        init.insert(format!("features.{idx}.bias"), Tensor::full([*c_out], i as f64, (Kind::Float, Device::Cpu)));
    }
    for (idx, (o, i)) in [(0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))] {
        init.insert(format!("classifier.{idx}.weight"), Tensor::zeros([o, i], (Kind::Float, Device::Cpu)));
        init.insert(format!("classifier.{idx}.bias"), Tensor::zeros([o], (Kind::Float, Device::Cpu)));
    }
    let config =
        ModelConfig { arch: Arch::DeepLabV2Vgg16, num_classes: 19, multi_level: false, aspp_sum: AsppSum::AllFour };
    let model = SegModel::new(config, Device::Cpu).unwrap();
    let report = load_into(&model.vs, init, LoadOptions::default()).unwrap();
    assert_eq!(report.kind, Some(WeightsKind::Vgg16ImageNet));
    assert_eq!(report.loaded, 26);
    assert_eq!(report.dropped.len(), 6);
    let vars = model.vs.variables();
    // conv5_1 (torchvision index 24) is features.23 here; conv4_3 stays at 21.
    assert_eq!(vars["features.23.weight"].double_value(&[0, 0, 0, 0]), 10.0);
    assert_eq!(vars["features.27.bias"].double_value(&[0]), 12.0);
    assert_eq!(vars["features.21.bias"].double_value(&[0]), 9.0);
    // fc6/fc7 and the classifier keep their initialisation.
    assert!(report.kept_init.iter().any(|k| k == "features.29.weight"));
    assert!(report.kept_init.iter().any(|k| k.starts_with("classifier.conv2d_list.")));
}

#[test]
fn an_init_file_for_another_depth_is_refused_with_the_keys() {
    let donor = resnet50(19);
    let mut init = StateDict::new();
    for (k, t) in donor.state_dict().iter() {
        init.insert(format!("Scale.{k}"), t.shallow_clone());
    }
    let config = ModelConfig::deeplabv2_r101(19);
    let model = SegModel::new(config, Device::Cpu).unwrap();
    let err = format!("{:#}", load_into(&model.vs, init, LoadOptions::default()).unwrap_err());
    // ResNet-101's layer3 has 17 more blocks, each 3 convolutions and 3 BatchNorms of 4
    // tensors (num_batches_tracked is optional): 17 · 15 = 255.
    assert!(err.contains("missing in file (255)") && err.contains("layer3.6.bn1.bias"), "{err}");
}
