//! Fine-tuning: the training step on the GPU ([`graph`]), the optimizer and its state
//! ([`trainer`]).

pub mod graph;
pub mod trainer;
