//! Weights larger than one storage binding (WebGPU's default is 128 MiB, lavapipe's too):
//! stored as consecutive row shards, each a tensor within the binding limit. A vocabulary's
//! embedding and LM head pass it from about 0.5 B parameters (Qwen2.5-0.5B's f32 embedding
//! is 544 MB); their gradients and AdamW moments are sharded alike. Every other weight is one
//! shard, and reads as the tensor it is (`Deref`); the embedding gather, the LM head's
//! products, AdamW, the gradient norms, dequantization and the read-backs walk the shards.

use super::{DType, Gpu, Tensor, WeightFormat};
use anyhow::Result;

/// A `[rows, cols]` weight (or gradient, or optimizer moment) as row shards: shard `i` holds
/// rows `first(i) ..` in the same format, so a packed weight's blocks stay whole.
#[derive(Clone, Debug)]
pub struct Sharded {
    /// The whole weight's shape.
    pub shape: Vec<usize>,
    /// The element type of every shard.
    pub dtype: DType,
    /// The shards, in row order.
    pub shards: Vec<Tensor>,
}

/// Elements per partial sum of the gradient norm (src/ops/optim.rs). Shards of f32 tensors
/// hold whole runs of them where the binding allows, so that a sharded gradient has the same
/// partial sums, and the same norm to the bit, as one tensor would.
const NORM_CHUNK: usize = 4096;

impl Sharded {
    /// A weight of one shard.
    pub fn one(t: Tensor) -> Sharded {
        Sharded { shape: t.shape.clone(), dtype: t.dtype, shards: vec![t] }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of all shards.
    pub fn bytes(&self) -> u64 {
        self.shards.iter().map(Tensor::bytes).sum()
    }

    /// How the elements are stored: f32 unless packed.
    pub fn format(&self) -> WeightFormat {
        match self.dtype {
            DType::Packed(f) => f,
            _ => WeightFormat::F32,
        }
    }

    /// Each shard with its first row.
    pub fn rows(&self) -> impl Iterator<Item = (usize, &Tensor)> {
        self.shards.iter().scan(0, |first, t| {
            let at = *first;
            *first += t.shape[0];
            Some((at, t))
        })
    }
}

/// A weight of one shard is that tensor. Reading a weight of several shards as one tensor is
/// a bug (only the embedding and the LM head are ever sharded, and their users walk the
/// shards), so it panics, naming the weight.
impl std::ops::Deref for Sharded {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        match &self.shards[..] {
            [one] => one,
            many => {
                panic!("a {:?} weight stored in {} row shards was read as one tensor", self.shape, many.len())
            }
        }
    }
}

impl Gpu {
    /// Rows per shard of a `[rows, cols]` tensor of `dtype`: all of them when it fits one
    /// binding, else the most that do, rounded down to whole runs of the gradient norm's
    /// partial sums when such a run fits (f32: what may be trained). An error, naming `what`, if not one row fits.
    pub fn shard_rows(&self, what: &str, shape: &[usize], dtype: DType) -> Result<usize> {
        if shape.is_empty() {
            return Ok(1);
        }
        let (rows, cols) = (shape[0], shape[1..].iter().product::<usize>());
        let row_bytes = match dtype {
            DType::Packed(f) => f.words(1, cols) as u64 * 4,
            _ => cols as u64 * 4,
        };
        let limit = self.limits.max_storage_buffer_binding_size;
        if row_bytes * rows as u64 <= limit {
            return Ok(rows.max(1));
        }
        if row_bytes > limit {
            // Not even a row fits: the refusal names the tensor and the limit.
            self.check_binding(what, &shape[1..])?;
        }
        let fit = (limit / row_bytes.max(1)) as usize;
        // Packed weights are never trained: no gradient norm to keep.
        let run = match dtype {
            DType::Packed(_) => 1,
            _ => NORM_CHUNK / gcd(cols.max(1), NORM_CHUNK),
        };
        Ok(if fit >= run { fit / run * run } else { fit })
    }

    /// A zero-filled tensor in row shards within the binding limit.
    pub fn zeros_sharded(&self, what: &str, shape: &[usize], dtype: DType) -> Result<Sharded> {
        let per = self.shard_rows(what, shape, dtype)?;
        let shards = shard_spans(shape[0], per)
            .map(|(_, rows)| self.zeros(what, &[&[rows][..], &shape[1..]].concat(), dtype))
            .collect::<Result<_>>()?;
        Ok(Sharded { shape: shape.to_vec(), dtype, shards })
    }

    /// A tensor in `fmt` (its packed words; f32: the bits) in row shards: one, of `shape`,
    /// when it fits a binding.
    pub fn upload_sharded(
        &self,
        what: &str,
        shape: &[usize],
        fmt: WeightFormat,
        words: &[u32],
    ) -> Result<Sharded> {
        let dtype = if fmt == WeightFormat::F32 { DType::F32 } else { DType::Packed(fmt) };
        let (per, cols) = (self.shard_rows(what, shape, dtype)?, shape[1..].iter().product::<usize>());
        let shards = shard_spans(shape[0], per)
            .map(|(first, rows)| {
                let words = &words[fmt.words(first, cols)..fmt.words(first + rows, cols)];
                let shard_shape = [&[rows][..], &shape[1..]].concat();
                self.upload(what, &shard_shape, dtype, bytemuck::cast_slice(words))
            })
            .collect::<Result<_>>()?;
        Ok(Sharded { shape: shape.to_vec(), dtype, shards })
    }

    /// Writes rows from `row` on of a sharded tensor (its words, packed or f32 bits), split
    /// at the shards' boundaries; takes effect before the next submit.
    pub fn write_rows(&self, t: &Sharded, row: usize, words: &[u32]) {
        let (fmt, cols) = (t.format(), t.shape[1..].iter().product::<usize>());
        let row_words = fmt.words(1, cols).max(1);
        let end = row + words.len() / row_words;
        for (first, shard) in t.rows() {
            let (from, to) = (row.max(first), end.min(first + shard.shape[0]));
            if from < to {
                let part = &words[(from - row) * row_words..(to - row) * row_words];
                let offset = ((from - first) * row_words * 4) as u64;
                self.queue.write_buffer(&shard.buf, offset, bytemuck::cast_slice(part));
            }
        }
    }

    /// The f32 values of a sharded tensor, read back shard by shard.
    pub async fn read_sharded_f32_async(&self, t: &Sharded) -> Result<Vec<f32>> {
        let mut all = Vec::with_capacity(t.numel());
        for shard in &t.shards {
            all.extend(self.read_f32_async(shard).await?);
        }
        Ok(all)
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_sharded_f32(&self, t: &Sharded) -> Result<Vec<f32>> {
        pollster::block_on(self.read_sharded_f32_async(t))
    }
}

/// (first row, rows) of each shard of `rows` rows, `per` to a shard (one shard when empty).
pub fn shard_spans(rows: usize, per: usize) -> impl Iterator<Item = (usize, usize)> {
    let per = per.max(1);
    (0..rows.div_ceil(per).max(1)).map(move |i| (i * per, per.min(rows - (i * per).min(rows))))
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_hold_whole_norm_chunks_within_the_limit() {
        let gpu = crate::ops::test_util::gpu_with_binding(20_000);
        // 64 columns: 64 rows make 4096 elements; 78 rows fit 20,000 bytes; shards of 64.
        assert_eq!(gpu.shard_rows("t", &[200, 64], DType::F32).unwrap(), 64);
        assert_eq!(shard_spans(200, 64).collect::<Vec<_>>(), [(0, 64), (64, 64), (128, 64), (192, 8)]);
        // A whole tensor that fits is one shard; so is an empty one.
        assert_eq!(gpu.shard_rows("t", &[70, 64], DType::F32).unwrap(), 70);
        assert_eq!(shard_spans(0, 5).collect::<Vec<_>>(), [(0, 0)]);
        // Q4_0: 64 columns are 2 blocks of 5 words, 40 bytes a row: 500 rows a shard.
        let q4 = DType::Packed(WeightFormat::Q4_0);
        assert_eq!(gpu.shard_rows("t", &[1200, 64], q4).unwrap(), 500);
        // A row over the limit is refused, naming the tensor.
        let e = gpu.shard_rows("wide", &[4, 6000], DType::F32).unwrap_err().to_string();
        assert!(e.contains("wide"), "{e}");
    }

    #[test]
    fn sharded_uploads_and_writes_read_back_whole() {
        let gpu = crate::ops::test_util::gpu_with_binding(20_000);
        let (rows, cols) = (200, 64);
        let values: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
        let t =
            gpu.upload_sharded("t", &[rows, cols], WeightFormat::F32, bytemuck::cast_slice(&values)).unwrap();
        assert_eq!(t.shards.len(), 4);
        assert_eq!(t.bytes(), (rows * cols * 4) as u64);
        assert_eq!(gpu.read_sharded_f32(&t).unwrap(), values);
        // Rows 60..70 straddle the first two shards.
        let z = gpu.zeros_sharded("z", &[rows, cols], DType::F32).unwrap();
        gpu.write_rows(&z, 60, bytemuck::cast_slice(&values[60 * cols..70 * cols]));
        let back = gpu.read_sharded_f32(&z).unwrap();
        assert_eq!(&back[60 * cols..70 * cols], &values[60 * cols..70 * cols]);
        assert!(back[..60 * cols].iter().chain(&back[70 * cols..]).all(|&v| v == 0.0));
    }
}
