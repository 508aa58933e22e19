//! Latent traces (placeholder until the GPU reduction lands).
