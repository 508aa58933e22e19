//! `keel info`: what wgpu sees and what Keel asks of the device.

use crate::gpu::{adapter_label, Gpu};
use anyhow::Result;

pub fn run(adapter: &Option<String>) -> Result<()> {
    println!("adapters:");
    for (i, a) in pollster::block_on(Gpu::adapters()).iter().enumerate() {
        println!("  [{i}] {} ({:?}, driver {} {})", adapter_label(a), a.device_type, a.driver, a.driver_info);
    }
    let gpu = super::gpu(adapter)?;
    let i = &gpu.info;
    println!("using: {}", adapter_label(i));
    println!("  backend: {:?}", i.backend);
    println!("  device type: {:?}", i.device_type);
    println!("  driver: {} {}", i.driver, i.driver_info);
    println!("  features requested: {:?}", gpu.features);
    let coop = if gpu.coop_offered { "offered" } else { "not offered" };
    println!(
        "  matrix tier: {} (KEEL_TIER=portable|tiled|coop; cooperative matrices, f16 16×16 with f32 sums: {coop})",
        gpu.tier.name()
    );
    let l = &gpu.limits;
    println!("  limits requested:");
    println!("    max_buffer_size: {}", l.max_buffer_size);
    println!("    max_storage_buffer_binding_size: {}", l.max_storage_buffer_binding_size);
    println!("    max_storage_buffers_per_shader_stage: {}", l.max_storage_buffers_per_shader_stage);
    println!("    max_compute_workgroup_storage_size: {}", l.max_compute_workgroup_storage_size);
    println!("    max_compute_invocations_per_workgroup: {}", l.max_compute_invocations_per_workgroup);
    println!("    max_compute_workgroups_per_dimension: {}", l.max_compute_workgroups_per_dimension);
    Ok(())
}
