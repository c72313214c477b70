//! Object detection with entropy-based adaptation: SSD-300 on VGG-16 (the paper's detection
//! extension, SPEC §8.4, whose code was never released).
//!
//! Boxes are `[xmin, ymin, xmax, ymax]` in coordinates relative to the image (0..1) unless
//! said otherwise; class 0 is the background, the object classes are 1..=C.

pub mod adapt;
pub mod augment;
pub mod boxes;
pub mod cityscapes;
pub mod config;
pub mod data;
pub mod demo;
pub mod eval;
pub mod loader;
pub mod loss;
pub mod map;
pub mod matching;
pub mod nms;
pub mod predict;
pub mod priors;
pub mod run;
pub mod ssd;
pub mod train;
