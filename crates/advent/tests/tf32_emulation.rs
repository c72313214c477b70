//! `advent train --emulate-tf32`: TF32 rounding of convolution operands and gradients on the
//! CPU. Reference values come from a rounding written here on `f32` bit patterns and from
//! hand-computed constants. One test function, because the switch is process-wide and the
//! other tests of a binary run in parallel threads.

use advent::model::{Conv2d, ConvInit, ConvSpec};
use advent::native::{tf32_operand, tf32_output};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Round to nearest, ties to even, at the 13th bit of the float32 pattern.
fn tf32(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let bits = x.to_bits();
    let lsb = (bits >> 13) & 1;
    f32::from_bits(bits.wrapping_add(0xFFF + lsb) & !0x1FFF)
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

fn rounded(t: &Tensor) -> Tensor {
    let v: Vec<f32> = values(t).into_iter().map(tf32).collect();
    Tensor::from_slice(&v).reshape(t.size())
}

#[test]
fn tf32_emulation_rounds_operands_and_gradients() {
    // Hand-computed roundings: TF32 keeps 10 of float32's 23 mantissa bits.
    let one = 1.0f32;
    let cases: [(f32, f32); 9] = [
        (one, one),
        (one + 2f32.powi(-11), one),                       // a tie, to the even neighbour 1
        (one + 3.0 * 2f32.powi(-11), one + 2f32.powi(-9)), // a tie, to the even neighbour above
        (one + 2f32.powi(-11) + 2f32.powi(-20), one + 2f32.powi(-10)), // above the tie
        (0.1, f32::from_bits(0x3DCC_C000)),                // 0x3DCCCCCD -> 0.0999755859375
        (-1.0 / 3.0, f32::from_bits(0xBEAA_A000)),         // 0xBEAAAAAB -> -0.333251953125
        (f32::INFINITY, f32::INFINITY),
        (2f32.powi(-130), 2f32.powi(-130)), // a subnormal with no low bits
        (65504.0, 65504.0),
    ];
    for (x, want) in cases {
        assert_eq!(tf32(x), want, "the test's own rounding of {x:e}");
    }
    let x = Tensor::from_slice(&cases.map(|c| c.0));
    let got = values(&tf32_operand(&x).unwrap());
    for ((x, want), got) in cases.iter().zip(got) {
        assert_eq!(got, *want, "tf32_operand({x:e})");
    }
    let nan = values(&tf32_operand(&Tensor::from_slice(&[f32::NAN])).unwrap());
    assert!(nan[0].is_nan(), "NaN stays NaN");
    assert!(tf32_operand(&Tensor::from_slice(&[1.0f64])).is_err(), "float32 only");

    // The operand's gradient passes unchanged; the output's comes back rounded.
    let c = Tensor::from_slice(&[0.1f32, -1.0 / 3.0]);
    let x = Tensor::from_slice(&[0.1f32, 0.2]).set_requires_grad(true);
    (tf32_operand(&x).unwrap() * &c).sum(Kind::Float).backward();
    assert_eq!(values(&x.grad()), vec![0.1, -1.0 / 3.0]);
    let x = Tensor::from_slice(&[0.1f32, 0.2]).set_requires_grad(true);
    let y = tf32_output(&x).unwrap();
    assert_eq!(values(&y), vec![0.1, 0.2], "the output is unchanged going forward");
    (y * &c).sum(Kind::Float).backward();
    assert_eq!(values(&x.grad()), vec![f32::from_bits(0x3DCC_C000), f32::from_bits(0xBEAA_A000)]);

    // A convolution layer with the switch on computes on rounded operands and rounds its
    // incoming gradient: against tch's convolution of operands rounded here.
    tch::manual_seed(5);
    let vs = VarStore::new(Device::Cpu);
    let spec = ConvSpec::new(3, 4, 3).padding(1);
    let conv = Conv2d::new(vs.root().sub("c"), spec, ConvInit::TorchDefault);
    let input = Tensor::randn([2, 3, 6, 5], (Kind::Float, Device::Cpu));
    let upstream = Tensor::randn([2, 4, 6, 5], (Kind::Float, Device::Cpu));
    let plain = conv.forward(&input).unwrap();

    advent::device::set_tf32_emulation(true);
    let emulated = conv.forward(&input).unwrap();
    (&emulated * &upstream).sum(Kind::Float).backward();
    advent::device::set_tf32_emulation(false);
    let emulated_grad = conv.weight.grad().copy();

    let w = rounded(&conv.weight.detach()).set_requires_grad(true);
    let bias = conv.bias.as_ref().unwrap().detach();
    let want = rounded(&input).conv2d(&w, Some(&bias), [1, 1], [1, 1], [1, 1], 1);
    (&want * rounded(&upstream)).sum(Kind::Float).backward();
    let gap = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    // Same operands, same float32 accumulation: equal up to the order of the sums.
    assert!(gap(&emulated, &want) < 1e-6, "forward {:e}", gap(&emulated, &want));
    assert!(gap(&emulated_grad, &w.grad()) < 1e-5, "weight gradient {:e}", gap(&emulated_grad, &w.grad()));
    // ... and not the plain convolution: the rounding moves outputs by ~1e-4 of their size.
    assert!(gap(&plain, &emulated) > 1e-5, "the switch changed nothing: {:e}", gap(&plain, &emulated));
    assert_eq!(conv.forward(&input).unwrap().double_value(&[0, 0, 0, 0]), plain.double_value(&[0, 0, 0, 0]));
}
