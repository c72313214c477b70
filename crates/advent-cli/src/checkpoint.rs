//! `advent checkpoint info|convert`.

use advent::detect::ssd::{Ssd, FULL_WIDTH};
use advent::model::{ModelConfig, SegModel};
use advent::weights;
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Command {
    /// What a checkpoint holds: tensors, parameters and the network it describes.
    Info {
        /// .pth (PyTorch zip or legacy format) or .safetensors.
        file: PathBuf,
    },
    /// Rewrite a checkpoint in another format, keys unchanged: .pth (PyTorch zip format,
    /// which torch.load reads) or .safetensors, chosen by the output's extension.
    Convert { input: PathBuf, output: PathBuf },
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Info { file } => {
            let dict = weights::load(&file)?;
            let numel: i64 = dict.iter().map(|(_, t)| t.numel() as i64).sum();
            println!("{}: {} tensors, {} values", file.display(), dict.len(), numel);
            match ModelConfig::detect(&dict) {
                Ok(c) => {
                    let model = SegModel::new(c, tch::Device::Cpu)?;
                    let trainable: i64 = model.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
                    println!(
                        "network: {}, {} classes, {}, {} trainable parameters",
                        c.arch,
                        c.num_classes,
                        if c.multi_level { "multi-level (aux head on layer3)" } else { "single-level" },
                        trainable
                    );
                }
                Err(e) => match Ssd::shape_of(&dict) {
                    Some((num_classes, width)) => {
                        let ssd = Ssd::with_width(num_classes, width, tch::Device::Cpu)?;
                        let trainable: i64 = ssd.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
                        let vgg =
                            if width == FULL_WIDTH { "VGG-16".to_string() } else { format!("VGG-16 at width {width}") };
                        println!(
                            "network: SSD-300 detector on {vgg}, {num_classes} classes (the background included), \
                         {trainable} trainable parameters"
                        );
                    }
                    None => println!("network: not recognised ({e:#})"),
                },
            }
            Ok(())
        }
        Command::Convert { input, output } => {
            let dict = weights::load(&input)?;
            weights::save(&dict, &output)?;
            eprintln!("wrote {} ({} tensors)", output.display(), dict.len());
            Ok(())
        }
    }
}
