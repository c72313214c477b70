//! SSD-300 against a PyTorch transcription of ssd.pytorch's `ssd.py` (run by hand):
//!
//! ```sh
//! ADVENT_SSD_PARITY=/tmp/ssd scripts/test --test ssd_parity -- --ignored
//! .venv/bin/python tools/parity/ssd_reference.py /tmp/ssd
//! ```
//!
//! The test writes our randomly initialised network (`ssd.pth`, reference keys), an input
//! and our outputs; the script loads the same weights into its network and compares.

use advent::detect::ssd::Ssd;
use tch::{Device, Kind, Tensor};

#[test]
#[ignore = "writes files for tools/parity/ssd_reference.py; run by hand"]
fn write_ssd_outputs_for_the_reference() {
    let dir = std::path::PathBuf::from(std::env::var("ADVENT_SSD_PARITY").expect("ADVENT_SSD_PARITY=DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    tch::manual_seed(3);
    let net = Ssd::new(9, Device::Cpu).unwrap();
    // Biases are zero at initialisation: give them values so that they are compared too.
    tch::no_grad(|| {
        for (name, mut t) in net.vs.variables() {
            if name.ends_with("bias") {
                let _ = t.uniform_(-0.1, 0.1);
            }
        }
    });
    advent::weights::save(&net.state_dict(), &dir.join("ssd.pth")).unwrap();
    let x = Tensor::randn([2, 3, 300, 300], (Kind::Float, Device::Cpu)) * 50.0;
    let out = tch::no_grad(|| net.forward(&x)).unwrap();
    x.write_npy(dir.join("input.npy")).unwrap();
    out.loc.write_npy(dir.join("loc.npy")).unwrap();
    out.conf.write_npy(dir.join("conf.npy")).unwrap();
}
