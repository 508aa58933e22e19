//! A step: every kernel of one forward (or training) step, recorded in order and then
//! encoded into one command encoder with one compute pass, with all kernels' uniform
//! parameters packed into one buffer written once. A finished step ([`Recording`]) keeps
//! its bind groups, so that a decode step can be submitted again every token.

use super::{Gpu, Pipeline, Tensor};
use anyhow::Result;

/// Uniform blocks are placed at this alignment (WebGPU's minimum uniform offset alignment).
const PARAM_ALIGN: usize = 256;

#[derive(Clone)]
enum Command {
    Dispatch {
        pipeline: Pipeline,
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
    /// The matrix products recorded into this step round their operands to f16 (mixed-precision
    /// training, `ops::matmul`); accumulation and outputs stay f32.
    pub f16_operands: bool,
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
        Step { gpu, f16_operands: false, commands: Vec::new(), params: Vec::new() }
    }

    /// Records one kernel: `params` is the uniform block at binding 0, `buffers` the storage
    /// bindings 1.. in order, each with the name the shader gives it. A dispatch that differs
    /// from the shader's declarations (a swapped or missing buffer, a uniform block of another
    /// size) panics naming the difference: it is a bug in the op, never bad input.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        pipeline: Pipeline,
        params: &P,
        buffers: &[(&str, &Tensor)],
        groups: [u32; 3],
    ) {
        if let Some(contract) = &pipeline.contract {
            let names: Vec<&str> = buffers.iter().map(|(name, _)| *name).collect();
            if let Err(e) = contract.check(std::mem::size_of::<P>(), &names) {
                panic!("dispatch of {}: {e}", pipeline.name);
            }
        }
        let params_at = self.params.len().next_multiple_of(PARAM_ALIGN);
        self.params.resize(params_at, 0);
        self.params.extend_from_slice(bytemuck::bytes_of(params));
        self.params.resize(self.params.len().next_multiple_of(16), 0);
        self.commands.push(Command::Dispatch {
            pipeline,
            params_at,
            params_len: std::mem::size_of::<P>(),
            buffers: buffers.iter().map(|(_, t)| t.buf.clone()).collect(),
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
        #[cfg(not(target_arch = "wasm32"))]
        if PROFILED.with_borrow(Option::is_some) {
            let (timing, times) = self.finish()?.profile()?;
            PROFILED.with_borrow_mut(|p| {
                if let Some((kind, all)) = p {
                    *kind = timing;
                    all.extend(times);
                }
            });
            return Ok(());
        }
        self.finish()?.submit()
    }

    /// Turns the step into a [`Recording`]: the parameters written to their buffer once and
    /// every bind group created once, so that it can be submitted again and again (a decode
    /// step whose inputs already live on the GPU).
    pub fn finish(self) -> Result<Recording<'g>> {
        let gpu = self.gpu;
        gpu.check_lost()?;
        let params = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("step params"),
            size: self.params.len().max(16).next_multiple_of(16) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        gpu.queue.write_buffer(&params, 0, &self.params);
        let bind_groups = self
            .commands
            .iter()
            .map(|c| {
                let Command::Dispatch { pipeline, params_at, params_len, buffers, .. } = c else {
                    return None;
                };
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &params,
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
                Some(gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &pipeline.raw.get_bind_group_layout(0),
                    entries: &entries,
                }))
            })
            .collect();
        Ok(Recording { gpu, commands: self.commands, bind_groups, _params: params })
    }
}

/// A finished [`Step`], ready to be encoded any number of times.
pub struct Recording<'g> {
    pub gpu: &'g Gpu,
    commands: Vec<Command>,
    /// Per command: its bind group (dispatches only).
    bind_groups: Vec<Option<wgpu::BindGroup>>,
    /// Held for the bind groups that point into it.
    _params: wgpu::Buffer,
}

/// How [`Recording::profile`] timed the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// GPU timestamps between the dispatches of one compute pass.
    InsidePasses,
    /// GPU timestamps at the start and end of a compute pass per dispatch.
    PerPass,
    /// Wall clock around a submit of each dispatch alone, waited for (includes the
    /// submission and wait overhead of every dispatch).
    WallClock,
}

/// One dispatch's time in a profile.
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// Shader family and defines.
    pub name: std::sync::Arc<str>,
    pub seconds: f64,
}

impl Recording<'_> {
    /// Number of kernel dispatches.
    pub fn dispatches(&self) -> usize {
        self.bind_groups.iter().flatten().count()
    }

    /// Encodes every command into `encoder`: runs of dispatches share one compute pass,
    /// copies and clears split the pass. With `timestamps`, writes query `2k` before and
    /// `2k + 1` after dispatch `k` (inside the pass, or around a pass of its own).
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        self.encode_timed(encoder, None);
    }

    fn encode_timed(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        timestamps: Option<(&wgpu::QuerySet, Timing)>,
    ) {
        let mut k = 0u32;
        let mut i = 0;
        while i < self.commands.len() {
            match &self.commands[i] {
                Command::Copy { src, src_offset, dst, dst_offset, bytes } => {
                    encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *bytes);
                    i += 1;
                    continue;
                }
                Command::Clear { buf } => {
                    encoder.clear_buffer(buf, 0, None);
                    i += 1;
                    continue;
                }
                Command::Dispatch { .. } => {}
            }
            let per_pass = match timestamps {
                Some((set, Timing::PerPass)) => Some(wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(2 * k),
                    end_of_pass_write_index: Some(2 * k + 1),
                }),
                _ => None,
            };
            let one_per_pass = per_pass.is_some();
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: per_pass });
            while let (Some(Command::Dispatch { pipeline, groups, .. }), Some(bind_group)) =
                (self.commands.get(i), self.bind_groups.get(i).and_then(|b| b.as_ref()))
            {
                let inside = timestamps.filter(|(_, t)| *t == Timing::InsidePasses).map(|(set, _)| set);
                if let Some(set) = inside {
                    pass.write_timestamp(set, 2 * k);
                }
                pass.set_pipeline(&pipeline.raw);
                pass.set_bind_group(0, bind_group, &[]);
                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                if let Some(set) = inside {
                    pass.write_timestamp(set, 2 * k + 1);
                }
                i += 1;
                k += 1;
                if one_per_pass {
                    break;
                }
            }
        }
    }

    /// Encodes and submits the recording once.
    pub fn submit(&self) -> Result<()> {
        self.gpu.check_lost()?;
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        self.encode(&mut encoder);
        self.gpu.queue.submit([encoder.finish()]);
        Ok(())
    }

    /// Runs the recording once and times every dispatch, with timestamp queries where the
    /// adapter has them, else by wall clock. Returns the times in dispatch order.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profile(&self) -> Result<(Timing, Vec<KernelTime>)> {
        let gpu = self.gpu;
        let names: Vec<_> = self
            .commands
            .iter()
            .filter_map(|c| match c {
                Command::Dispatch { pipeline, .. } => Some(pipeline.name.clone()),
                _ => None,
            })
            .collect();
        let timing = if gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES) {
            Timing::InsidePasses
        } else if gpu.features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            Timing::PerPass
        } else {
            Timing::WallClock
        };
        let queries = 2 * names.len() as u32;
        let (timing, seconds) = if timing == Timing::WallClock || queries > wgpu::QUERY_SET_MAX_QUERIES {
            (Timing::WallClock, self.wall_clock()?)
        } else {
            (timing, self.timestamps(timing, queries)?)
        };
        gpu.check_lost()?;
        Ok((
            timing,
            names.into_iter().zip(seconds).map(|(name, seconds)| KernelTime { name, seconds }).collect(),
        ))
    }

    /// Per dispatch, the GPU time between its two timestamps (`queries` of them in all).
    #[cfg(not(target_arch = "wasm32"))]
    fn timestamps(&self, timing: Timing, queries: u32) -> Result<Vec<f64>> {
        let gpu = self.gpu;
        let count = queries.max(2);
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile timestamps"),
            size: 8 * count as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        self.encode_timed(&mut encoder, Some((&set, timing)));
        encoder.resolve_query_set(&set, 0..queries, &resolved, 0);
        gpu.queue.submit([encoder.finish()]);
        let words = Tensor { buf: resolved, shape: vec![2 * count as usize], dtype: super::DType::U32 };
        let ticks: Vec<u64> =
            gpu.read_u32(&words)?.chunks(2).map(|w| w[0] as u64 | (w[1] as u64) << 32).collect();
        let period = gpu.queue.get_timestamp_period() as f64 * 1e-9;
        Ok(ticks[..queries as usize].chunks(2).map(|t| t[1].saturating_sub(t[0]) as f64 * period).collect())
    }

    /// Submits each command alone and waits for it; the dispatches' wall-clock times.
    #[cfg(not(target_arch = "wasm32"))]
    fn wall_clock(&self) -> Result<Vec<f64>> {
        let gpu = self.gpu;
        let mut times = Vec::new();
        for i in 0..self.commands.len() {
            let one = Recording {
                gpu,
                commands: vec![self.commands[i].clone()],
                bind_groups: vec![self.bind_groups[i].clone()],
                _params: self._params.clone(),
            };
            let t0 = std::time::Instant::now();
            one.submit()?;
            gpu.device.poll(wgpu::PollType::wait_indefinitely())?;
            if one.dispatches() == 1 {
                times.push(t0.elapsed().as_secs_f64());
            }
        }
        Ok(times)
    }
}

thread_local! {
    /// While this thread profiles ([`Gpu::start_profiling`]), its submitted steps' kernel times.
    static PROFILED: std::cell::RefCell<Option<(Timing, Vec<KernelTime>)>> = const { std::cell::RefCell::new(None) };
}

impl Gpu {
    /// From now on every [`Step::submit`] of this thread runs its step through
    /// [`Recording::profile`] (whole training steps, whose steps are not at hand to profile
    /// one by one).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn start_profiling(&self) {
        PROFILED.set(Some((Timing::WallClock, Vec::new())));
    }

    /// Ends profiling: how the kernels were timed and their times, in submission order.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn stop_profiling(&self) -> (Timing, Vec<KernelTime>) {
        PROFILED.take().unwrap_or((Timing::WallClock, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::DType;
    use crate::ops::{stats, test_util::*};

    /// A recording submitted again after its input changed gives what a fresh step gives;
    /// its profile times every dispatch, named by shader and defines.
    #[test]
    fn recording_replays_and_profiles() {
        let gpu = gpu();
        let (n, v) = (2, 300);
        let z = gpu.upload_f32("z", &[n, v], &rand_vec(1, n * v, 3.0)).unwrap();
        let targets = gpu.upload_u32("t", &[n], &[4, 5]).unwrap();
        let out = gpu.zeros("out", &[n, 4], DType::F32).unwrap();
        let kept = gpu.zeros("kept", &[n, 4], DType::F32).unwrap();
        let partials = gpu.zeros("partials", &[stats::partials_len(n, v)], DType::F32).unwrap();
        // Two passes (two dispatches each) split by a copy.
        let record = || {
            let mut step = Step::new(gpu);
            stats::logit_stats(&mut step, &z, &targets, (&partials, &kept), n);
            step.copy(&kept, 4, &out, 0, 4);
            stats::logit_stats(&mut step, &z, &targets, (&partials, &out), 1);
            step
        };
        let recording = record().finish().unwrap();
        assert_eq!(recording.dispatches(), 4);
        for seed in 2..4 {
            gpu.write_f32(&z, &rand_vec(seed, n * v, 3.0));
            record().submit().unwrap();
            let fresh = [gpu.read_f32(&out).unwrap(), gpu.read_f32(&kept).unwrap()];
            gpu.write_f32(&out, &[0.0; 8]);
            gpu.write_f32(&kept, &[0.0; 8]);
            recording.submit().unwrap();
            assert_eq!([gpu.read_f32(&out).unwrap(), gpu.read_f32(&kept).unwrap()], fresh, "seed {seed}");
        }
        let (timing, times) = recording.profile().unwrap();
        assert_eq!(times.len(), recording.dispatches(), "{timing:?}");
        assert!(times
            .iter()
            .all(|t| t.name.starts_with("stats SPLIT=") && t.seconds >= 0.0 && t.seconds < 10.0));
    }

    /// While profiling, submitted steps still run (same results) and every dispatch is timed.
    #[test]
    fn profiling_times_submitted_steps() {
        let gpu = gpu();
        let (n, v) = (2, 300);
        let z = gpu.upload_f32("z", &[n, v], &rand_vec(5, n * v, 3.0)).unwrap();
        let targets = gpu.upload_u32("t", &[n], &[4, 5]).unwrap();
        let partials = gpu.zeros("partials", &[stats::partials_len(n, v)], DType::F32).unwrap();
        let out = gpu.zeros("out", &[n, 4], DType::F32).unwrap();
        let run = || {
            let mut step = Step::new(gpu);
            stats::logit_stats(&mut step, &z, &targets, (&partials, &out), n);
            step.submit().unwrap();
            gpu.read_f32(&out).unwrap()
        };
        let plain = run();
        gpu.start_profiling();
        let profiled = [run(), run()];
        let (_, times) = gpu.stop_profiling();
        assert_eq!(profiled, [plain.clone(), plain]);
        assert_eq!(times.len(), 4);
        assert!(gpu.stop_profiling().1.is_empty(), "profiling stopped");
    }
}
