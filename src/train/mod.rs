//! Fine-tuning: the data ([`data`]), gradient constriction ([`constrict`]), the training step on the GPU ([`graph`]), the
//! optimizer and its state ([`trainer`]), the learning-rate schedule ([`schedule`]), the
//! step log ([`log`]), mixed precision's loss scale ([`precision`]) and the whole run with
//! checkpoints and resume ([`run`]).

pub mod constrict;
pub mod data;
pub mod graph;
#[cfg(not(target_arch = "wasm32"))]
pub mod log;
pub mod memory;
pub mod precision;
#[cfg(not(target_arch = "wasm32"))]
pub mod run;
pub mod schedule;
pub mod trainer;
