//! GPU tensors: a storage buffer, a shape and an element type. Uploads and read-backs.

use super::Gpu;
use super::WeightFormat;
use anyhow::Result;
use wgpu::util::DeviceExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
    /// A weight matrix in a packed format (src/gpu/wfmt.rs's layout): `shape` stays the
    /// logical `[out, in]`; only the matmul kernels' weight operand reads it.
    Packed(WeightFormat),
}

/// A dense row-major tensor in one storage buffer (4-byte elements, or a packed weight).
#[derive(Clone, Debug)]
pub struct Tensor {
    pub buf: wgpu::Buffer,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

const USAGE: wgpu::BufferUsages =
    wgpu::BufferUsages::STORAGE.union(wgpu::BufferUsages::COPY_SRC).union(wgpu::BufferUsages::COPY_DST);

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        match self.dtype {
            DType::Packed(f) => f.words(self.shape[0], self.shape[1]) as u64 * 4,
            _ => self.numel() as u64 * 4,
        }
    }
    /// How the elements are stored: f32 unless packed.
    pub fn format(&self) -> WeightFormat {
        match self.dtype {
            DType::Packed(f) => f,
            _ => WeightFormat::F32,
        }
    }
}

impl Gpu {
    /// The buffer size of a tensor of this shape, checked against the binding limit; the
    /// error says how many rows (first dimension) would fit.
    pub fn check_binding(&self, what: &str, shape: &[usize]) -> Result<u64> {
        let bytes = shape.iter().fold(4u64, |b, &d| b.saturating_mul(d as u64)).max(4);
        let limit = self.limits.max_storage_buffer_binding_size;
        if bytes > limit {
            let row_bytes = shape.iter().skip(1).fold(4u64, |b, &d| b.saturating_mul(d as u64)).max(1);
            let rows_that_fit = limit / row_bytes;
            return Err(crate::Error::DoesNotFit {
                what: what.into(),
                shape: shape.to_vec(),
                bytes,
                limit,
                rows_that_fit,
            }
            .into());
        }
        Ok(bytes)
    }

    /// [`Gpu::check_binding`] for a tensor of `dtype`: a packed weight by its packed bytes.
    fn check_tensor(&self, what: &str, shape: &[usize], dtype: DType) -> Result<u64> {
        match dtype {
            DType::Packed(f) => {
                let bytes = f.words(shape[0], shape[1]) as u64 * 4;
                if bytes > self.limits.max_storage_buffer_binding_size {
                    // The refusal (f32 bytes are more still) names the tensor and the limit.
                    self.check_binding(what, shape)?;
                }
                Ok(bytes)
            }
            _ => self.check_binding(what, shape),
        }
    }

    /// A zero-filled tensor.
    pub fn zeros(&self, what: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = self.check_tensor(what, shape, dtype)?;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes.max(4).next_multiple_of(4),
            usage: USAGE,
            mapped_at_creation: false,
        });
        self.allocated.fetch_add(buf.size(), std::sync::atomic::Ordering::Relaxed);
        Ok(Tensor { buf, shape: shape.to_vec(), dtype })
    }

    /// A working buffer from the pool (or a new one). Its contents are whatever its last
    /// user left: only for buffers every kernel writes before it reads them (activations,
    /// KV caches indexed by position).
    pub fn scratch(&self, what: &str, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = self.check_binding(what, shape)?.next_multiple_of(4);
        let reused = self.pool.lock().unwrap().get_mut(&bytes).and_then(Vec::pop);
        match reused {
            Some(buf) => Ok(Tensor { buf, shape: shape.to_vec(), dtype }),
            None => self.zeros(what, shape, dtype),
        }
    }

    /// Returns working buffers to the pool for the next [`Gpu::scratch`] of the same size.
    pub fn recycle(&self, tensors: impl IntoIterator<Item = Tensor>) {
        let mut pool = self.pool.lock().unwrap();
        for t in tensors {
            pool.entry(t.buf.size()).or_default().push(t.buf);
        }
    }

    pub(super) fn upload(&self, what: &str, shape: &[usize], dtype: DType, bytes: &[u8]) -> Result<Tensor> {
        self.check_tensor(what, shape, dtype)?;
        // Zero-length tensors still get a 4-byte buffer: bindings cannot be empty.
        let contents: &[u8] = if bytes.is_empty() { &[0; 4] } else { bytes };
        let buf = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(what),
            contents,
            usage: USAGE,
        });
        self.allocated.fetch_add(buf.size(), std::sync::atomic::Ordering::Relaxed);
        Ok(Tensor { buf, shape: shape.to_vec(), dtype })
    }

    pub fn upload_f32(&self, what: &str, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "{what}: shape/data mismatch");
        self.upload(what, shape, DType::F32, bytemuck::cast_slice(data))
    }

    /// A `[rows, cols]` weight in `fmt`, given as its packed words (f32: the bits).
    pub fn upload_weight(
        &self,
        what: &str,
        shape: &[usize],
        fmt: WeightFormat,
        words: &[u32],
    ) -> Result<Tensor> {
        assert!(shape.len() == 2 && words.len() == fmt.words(shape[0], shape[1]), "{what}: packed size");
        let dtype = if fmt == WeightFormat::F32 { DType::F32 } else { DType::Packed(fmt) };
        self.upload(what, shape, dtype, bytemuck::cast_slice(words))
    }

    pub fn upload_u32(&self, what: &str, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "{what}: shape/data mismatch");
        self.upload(what, shape, DType::U32, bytemuck::cast_slice(data))
    }

    /// Overwrites the start of a tensor (takes effect before the next submit).
    pub fn write_u32(&self, t: &Tensor, data: &[u32]) {
        assert!(data.len() <= t.numel());
        self.queue.write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
    }

    pub fn write_f32(&self, t: &Tensor, data: &[f32]) {
        assert!(data.len() <= t.numel());
        self.queue.write_buffer(&t.buf, 0, bytemuck::cast_slice(data));
    }

    /// Copies `elems` elements starting at element `offset` back to the host.
    pub async fn read_range(&self, t: &Tensor, offset: usize, elems: usize) -> Result<Vec<u32>> {
        let encoder = self.device.create_command_encoder(&Default::default());
        let staging = self.staging(elems);
        Ok(self.submit_reading(encoder, t, offset, elems, staging).wait(self).await?.0)
    }

    /// A host-readable buffer for read-backs of up to `elems` elements.
    pub fn staging(&self, elems: usize) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: (elems as u64 * 4).max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Submits `encoder` followed by a copy of `elems` elements of `t` from element `offset`
    /// into `staging` (see [`Gpu::staging`]), and starts mapping it: the read-back is awaited
    /// later, so that several can be in flight.
    pub fn submit_reading(
        &self,
        mut encoder: wgpu::CommandEncoder,
        t: &Tensor,
        offset: usize,
        elems: usize,
        staging: wgpu::Buffer,
    ) -> PendingRead {
        assert!(offset + elems <= t.numel().max(1) && elems as u64 * 4 <= staging.size());
        encoder.copy_buffer_to_buffer(&t.buf, offset as u64 * 4, &staging, 0, (elems as u64 * 4).max(4));
        let submission = self.queue.submit([encoder.finish()]);
        let (tx, done) = futures_channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| tx.send(r));
        PendingRead { staging, elems, submission, done }
    }

    /// [`Gpu::read_range`] as f32: the one read-back path (awaited in the browser, blocked
    /// on by the native wrappers below).
    pub async fn read_f32_range_async(&self, t: &Tensor, offset: usize, elems: usize) -> Result<Vec<f32>> {
        Ok(bytemuck::cast_vec(self.read_range(t, offset, elems).await?))
    }

    pub async fn read_f32_async(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.read_f32_range_async(t, 0, t.numel()).await
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32_async(t))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32_range(&self, t: &Tensor, offset: usize, elems: usize) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32_range_async(t, offset, elems))
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_u32(&self, t: &Tensor) -> Result<Vec<u32>> {
        pollster::block_on(self.read_range(t, 0, t.bytes() as usize / 4))
    }
}

/// A read-back started by [`Gpu::submit_reading`].
pub struct PendingRead {
    staging: wgpu::Buffer,
    elems: usize,
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    submission: wgpu::SubmissionIndex,
    done: OneShotRx<std::result::Result<(), wgpu::BufferAsyncError>>,
}

impl PendingRead {
    /// Waits for the copy (natively: for its submission only, not later ones) and returns
    /// the words and the staging buffer, for reuse.
    pub async fn wait(self, gpu: &Gpu) -> Result<(Vec<u32>, wgpu::Buffer)> {
        // After a loss the submission never happened, and waiting for its index panics in wgpu.
        gpu.check_lost()?;
        #[cfg(not(target_arch = "wasm32"))]
        gpu.device.poll(wgpu::PollType::Wait { submission_index: Some(self.submission), timeout: None })?;
        gpu.check_lost()?;
        self.done.recv().await?.map_err(|e| anyhow::anyhow!("GPU read-back failed: {e}"))?;
        let words = {
            let view = self.staging.get_mapped_range(..)?;
            bytemuck::cast_slice::<u8, u32>(&view)[..self.elems].to_vec()
        };
        self.staging.unmap();
        Ok((words, self.staging))
    }
}

/// A one-shot channel whose receiver is a future (works natively and on wasm, where the
/// map callback runs from the browser's event loop).
fn futures_channel<T>() -> (OneShotTx<T>, OneShotRx<T>) {
    let cell = std::sync::Arc::new(std::sync::Mutex::new((None, None::<std::task::Waker>)));
    (OneShotTx(cell.clone()), OneShotRx(cell))
}

type Slot<T> = std::sync::Arc<std::sync::Mutex<(Option<T>, Option<std::task::Waker>)>>;
struct OneShotTx<T>(Slot<T>);
struct OneShotRx<T>(Slot<T>);

impl<T> OneShotTx<T> {
    fn send(self, value: T) {
        let mut slot = self.0.lock().unwrap();
        slot.0 = Some(value);
        if let Some(w) = slot.1.take() {
            w.wake();
        }
    }
}

impl<T> OneShotRx<T> {
    async fn recv(self) -> Result<T> {
        std::future::poll_fn(|cx| {
            let mut slot = self.0.lock().unwrap();
            match slot.0.take() {
                Some(v) => std::task::Poll::Ready(Ok(v)),
                None => {
                    slot.1 = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_reuses_recycled_buffers_of_the_same_size() {
        let gpu = crate::ops::test_util::gpu();
        let a = gpu.scratch("a", &[123, 7], DType::F32).unwrap();
        let id = a.buf.clone();
        gpu.recycle([a]);
        let b = gpu.scratch("b", &[7, 123], DType::F32).unwrap();
        assert!(b.buf == id, "same byte size: the recycled buffer comes back");
        let c = gpu.scratch("c", &[7, 124], DType::F32).unwrap();
        assert!(c.buf != id, "another size: a new buffer");
    }
}
