//! A step: every kernel of one forward (or training) step, recorded in order and then
//! encoded into one command encoder with one compute pass, with all kernels' uniform
//! parameters packed into one buffer written once.

use super::{Gpu, Tensor};
use anyhow::Result;

/// Uniform blocks are placed at this alignment (WebGPU's minimum uniform offset alignment).
const PARAM_ALIGN: usize = 256;

enum Command {
    Dispatch {
        pipeline: wgpu::ComputePipeline,
        params_at: usize,
        params_len: usize,
        buffers: Vec<wgpu::Buffer>,
        groups: [u32; 3],
    },
    Copy {
        src: wgpu::Buffer,
        src_offset: u64,
        dst: wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    },
    Clear {
        buf: wgpu::Buffer,
    },
}

pub struct Step<'g> {
    pub gpu: &'g Gpu,
    commands: Vec<Command>,
    params: Vec<u8>,
}

/// Workgroup counts for `n` workgroups in 1-D, folded into y when x would pass the limit.
/// Kernels recover the linear index as `wid.x + wid.y * nwg.x`.
pub fn groups_for(n: u32) -> [u32; 3] {
    const MAX: u32 = 65535;
    if n <= MAX {
        [n.max(1), 1, 1]
    } else {
        [MAX, n.div_ceil(MAX), 1]
    }
}

impl<'g> Step<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        Step { gpu, commands: Vec::new(), params: Vec::new() }
    }

    /// Records one kernel: `params` is the uniform block at binding 0, `buffers` the storage
    /// bindings 1.. in order.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        pipeline: wgpu::ComputePipeline,
        params: &P,
        buffers: &[&Tensor],
        groups: [u32; 3],
    ) {
        let params_at = self.params.len().next_multiple_of(PARAM_ALIGN);
        self.params.resize(params_at, 0);
        self.params.extend_from_slice(bytemuck::bytes_of(params));
        self.params.resize(self.params.len().next_multiple_of(16), 0);
        self.commands.push(Command::Dispatch {
            pipeline,
            params_at,
            params_len: std::mem::size_of::<P>(),
            buffers: buffers.iter().map(|t| t.buf.clone()).collect(),
            groups,
        });
    }

    /// Records a copy of `elems` 4-byte elements between tensors.
    pub fn copy(&mut self, src: &Tensor, src_at: usize, dst: &Tensor, dst_at: usize, elems: usize) {
        assert!(src_at + elems <= src.numel() && dst_at + elems <= dst.numel());
        if elems == 0 {
            return;
        }
        self.commands.push(Command::Copy {
            src: src.buf.clone(),
            src_offset: src_at as u64 * 4,
            dst: dst.buf.clone(),
            dst_offset: dst_at as u64 * 4,
            bytes: elems as u64 * 4,
        });
    }

    /// Records zero-filling a whole tensor (gradients before they accumulate).
    pub fn clear(&mut self, t: &Tensor) {
        self.commands.push(Command::Clear { buf: t.buf.clone() });
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Encodes everything and submits it. Runs of dispatches share one compute pass;
    /// copies and clears split the pass.
    pub fn submit(self) -> Result<()> {
        let gpu = self.gpu;
        gpu.check_lost()?;
        if self.commands.is_empty() {
            return Ok(());
        }
        let params_buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step params"),
            size: self.params.len().max(16).next_multiple_of(16) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue.write_buffer(&params_buf, 0, &self.params);
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        let mut commands = self.commands.iter().peekable();
        while commands.peek().is_some() {
            match commands.peek() {
                Some(Command::Copy { src, src_offset, dst, dst_offset, bytes }) => {
                    encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *bytes);
                    commands.next();
                    continue;
                }
                Some(Command::Clear { buf }) => {
                    encoder.clear_buffer(buf, 0, None);
                    commands.next();
                    continue;
                }
                _ => {}
            }
            let mut pass = encoder.begin_compute_pass(&Default::default());
            while let Some(Command::Dispatch { pipeline, params_at, params_len, buffers, groups }) =
                commands.peek()
            {
                let layout = pipeline.get_bind_group_layout(0);
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params_buf,
                        offset: *params_at as u64,
                        size: wgpu::BufferSize::new(params_len.next_multiple_of(16) as u64),
                    }),
                }];
                for (i, b) in buffers.iter().enumerate() {
                    entries.push(wgpu::BindGroupEntry {
                        binding: i as u32 + 1,
                        resource: b.as_entire_binding(),
                    });
                }
                let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &layout,
                    entries: &entries,
                });
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, &bind_group, &[]);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                commands.next();
            }
        }
        gpu.queue.submit([encoder.finish()]);
        Ok(())
    }
}
