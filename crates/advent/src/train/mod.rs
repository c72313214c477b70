//! Training: one loop for source-only, MinEnt, AdvEnt and their combination.

pub mod optim;
mod step;

pub use step::{Detached, DomainDiscriminator, GraphGrads, Losses, Trainer, GRAPH_WARMUP, SOURCE_LABEL, TARGET_LABEL};
pub use stop::Signal;
pub(crate) mod run;
pub mod stop;

pub use run::{
    check_run_task, checkpoint_model, checkpoints, resolve_resume, run, run_task, Progress, RunOptions, RunSummary,
    Start, Task, TrainState,
};
