//! advent: ADVENT (Vu et al., CVPR 2019) unsupervised domain adaptation for semantic
//! segmentation, on libtorch.
//!
//! The data flows one way: files → [`image`] (decoded, resized tensors) → [`model`]
//! (networks) → [`weights`] (PyTorch checkpoints in and out) → [`predict`] (outputs).

pub mod bench;
pub mod classes;
pub mod config;
pub mod dataset;
pub mod demo;
pub mod detect;
pub mod device;
pub mod eval;
pub mod fs;
#[doc(hidden)]
pub mod fuzz;
pub mod image;
pub mod loss;
pub mod model;
pub mod native;
pub mod predict;
pub mod queue;
pub mod rank;
pub mod report;
pub mod tensorboard;
pub mod train;
pub mod weights;
