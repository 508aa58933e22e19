//! Reading a GGUF as its bytes arrive, holding one tensor at a time.

use anyhow::{anyhow, bail, ensure, Result};

use super::convert::hf_tensor;
use super::parse::{parse_header, tensor_range, GgufFile};
use crate::model::weights::HostTensor;

/// A GGUF file read as its bytes arrive, in order, in chunks of any size (the browser's
/// File.stream() or fetch body): the header is buffered until it is complete, then each
/// tensor's bytes, and each finished tensor ([`hf_tensor`]) is handed on and dropped. It
/// holds the header and one tensor at a time. Tensors are read in the order of their data
/// (padding between them skipped); data ranges that overlap are an error.
pub struct GgufReader {
    /// The file's name, in errors.
    name: String,
    size: u64,
    /// Bytes received so far.
    received: u64,
    /// The header's bytes until it parses; then the bytes of the tensor being read.
    buf: Vec<u8>,
    /// The header is parsed again once `buf` holds this many bytes (doubling, so that a
    /// header arriving in many small chunks is parsed a few times, not once per chunk).
    parse_at: usize,
    header: Option<StreamedHeader>,
}

struct StreamedHeader {
    file: GgufFile,
    /// Tensor indices with their byte ranges in the file, in the order of the data.
    order: Vec<(usize, (u64, u64))>,
    /// The next tensor of `order`.
    next: usize,
}

impl GgufReader {
    /// A reader for file `name` of `size` bytes.
    pub fn new(name: &str, size: u64) -> GgufReader {
        GgufReader { name: name.into(), size, received: 0, buf: Vec::new(), parse_at: 64, header: None }
    }

    /// The parsed header, once complete.
    pub fn header(&self) -> Option<&GgufFile> {
        self.header.as_ref().map(|h| &h.file)
    }

    /// The file's next bytes; `on_tensor` gets each tensor they complete, with the header.
    pub fn push(
        &mut self,
        chunk: &[u8],
        on_tensor: &mut dyn FnMut(&GgufFile, HostTensor) -> Result<()>,
    ) -> Result<()> {
        let (name, size) = (&self.name, self.size);
        let end = self.received + chunk.len() as u64;
        ensure!(end <= size, "{name}: more than the {size} bytes the file was said to have arrived");
        let start = self.received;
        self.received = end;
        if self.header.is_some() {
            return self.read_tensors(start, chunk, on_tensor);
        }
        self.buf.extend_from_slice(chunk);
        if self.buf.len() < self.parse_at && end < size {
            return Ok(());
        }
        let size = usize::try_from(size).map_err(|_| anyhow!("{name}: {size} bytes do not fit in memory"))?;
        let Some(file) = parse_header(&self.buf, size).map_err(|e| anyhow!("{name}: {e}"))? else {
            self.parse_at = self.buf.len() * 2;
            return Ok(());
        };
        let order = data_order(&file).map_err(|e| anyhow!("{name}: {e}"))?;
        // What came after the header is the start of the data.
        let data = self.buf.split_off(self.buf.len().min(file.data_offset));
        let at = self.buf.len() as u64;
        self.buf = Vec::new();
        self.header = Some(StreamedHeader { file, order, next: 0 });
        self.read_tensors(at, &data, on_tensor)
    }

    /// Reads `bytes`, which start at offset `at` of the file, into the tensors.
    fn read_tensors(
        &mut self,
        mut at: u64,
        mut bytes: &[u8],
        on_tensor: &mut dyn FnMut(&GgufFile, HostTensor) -> Result<()>,
    ) -> Result<()> {
        let h = self.header.as_mut().expect("read_tensors runs once the header is parsed");
        while let Some(&(i, (start, end))) = h.order.get(h.next) {
            if at >= end {
                let info = &h.file.tensors[i];
                let t = hf_tensor(&h.file, info, &self.buf).map_err(|e| anyhow!("{}: {e}", self.name))?;
                self.buf.clear();
                h.next += 1;
                on_tensor(&h.file, t)?;
                continue;
            }
            if bytes.is_empty() {
                break;
            }
            // Padding before the tensor is skipped; its bytes are kept.
            let (n, keep) = if at < start { (start - at, false) } else { (end - at, true) };
            let n = n.min(bytes.len() as u64) as usize;
            if keep {
                self.buf.reserve_exact((end - start) as usize - self.buf.len());
                self.buf.extend_from_slice(&bytes[..n]);
            }
            (at, bytes) = (at + n as u64, &bytes[n..]);
        }
        Ok(())
    }

    /// The header, once every byte has arrived and every tensor been handed on.
    pub fn finish(self) -> Result<GgufFile> {
        let (name, size, received) = (&self.name, self.size, self.received);
        let Some(h) = self.header else {
            bail!("{name}: only {received} of its {size} bytes arrived, before the end of its header")
        };
        if let Some(&(i, (start, end))) = h.order.get(h.next) {
            bail!(
                "{name}: only {received} of its {size} bytes arrived: tensor '{}' (bytes {start}..{end}) is incomplete",
                h.file.tensors[i].name
            );
        }
        Ok(h.file)
    }
}

/// Every tensor's index and byte range, in the order of the data; ranges must not overlap.
fn data_order(file: &GgufFile) -> Result<Vec<(usize, (u64, u64))>> {
    let mut order = (0..file.tensors.len())
        .map(|i| Ok((i, tensor_range(file, &file.tensors[i])?)))
        .collect::<Result<Vec<_>>>()?;
    order.sort_by_key(|&(_, range)| range);
    for pair in order.windows(2) {
        let [(a, (a_start, a_end)), (b, (b_start, b_end))] = [pair[0], pair[1]];
        ensure!(
            b_start >= a_end,
            "GGUF tensors '{}' (bytes {a_start}..{a_end}) and '{}' (bytes {b_start}..{b_end}) overlap",
            file.tensors[a].name,
            file.tensors[b].name
        );
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::test_files::{fixture, tiny_model, Builder};
    use crate::model::gguf::to_hf;

    /// Pushes `bytes` of a file of `size` bytes through a reader in chunks of `sizes`
    /// (cycled): the tensors, sorted by name, or the first error.
    fn stream(bytes: &[u8], size: usize, sizes: &[usize]) -> Result<Vec<HostTensor>> {
        let mut reader = GgufReader::new("f.gguf", size as u64);
        let mut out = Vec::new();
        let mut rest = bytes;
        for &n in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, r) = rest.split_at(n.min(rest.len()));
            rest = r;
            reader.push(chunk, &mut |_, t| {
                out.push(t);
                Ok(())
            })?;
        }
        reader.finish()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn whole(bytes: &[u8]) -> Vec<HostTensor> {
        let mut tensors = to_hf(bytes).unwrap().1;
        tensors.sort_by(|a, b| a.name.cmp(&b.name));
        tensors
    }

    #[test]
    fn fixture_pushed_in_odd_chunks_converts_like_the_whole_file() {
        let Some(bytes) = fixture() else { return };
        let streamed = stream(bytes, bytes.len(), &[1, 7, 4096, 1 << 20, 3]).unwrap();
        assert!(streamed == whole(bytes), "the same tensors, packed alike");
    }

    /// Where the offset of tensor `name` (one dimension) lies in a built file.
    fn offset_field(bytes: &[u8], name: &str) -> usize {
        let key = [&(name.len() as u64).to_le_bytes()[..], name.as_bytes()].concat();
        bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 8 + 4
    }

    #[test]
    fn pushed_files_in_any_table_order_and_bad_ones() {
        let tiny = tiny_model("llama");
        for sizes in [&[1][..], &[5, 64], &[1 << 20]] {
            assert!(stream(&tiny, tiny.len(), sizes).unwrap() == whole(&tiny), "{sizes:?}");
        }
        // The table lists two tensors of one size with their data swapped: read in data order.
        let mut swapped = tiny.clone();
        let (a, b) =
            (offset_field(&tiny, "blk.0.attn_norm.weight"), offset_field(&tiny, "output_norm.weight"));
        for (from, to) in [(a, b), (b, a)] {
            swapped[to..to + 8].copy_from_slice(&tiny[from..from + 8]);
        }
        assert_ne!(swapped, tiny);
        assert!(stream(&swapped, swapped.len(), &[3]).unwrap() == whole(&swapped));

        let err = |bytes: &[u8], size: usize| stream(bytes, size, &[7]).unwrap_err().to_string();
        let mut overlapping = tiny.clone();
        overlapping[b..b + 8].copy_from_slice(&tiny[a..a + 8]);
        let msg = err(&overlapping, tiny.len());
        assert!(
            msg.starts_with("f.gguf: GGUF tensors 'blk.0.attn_norm.weight' (bytes ")
                && msg.ends_with("overlap"),
            "{msg}"
        );
        let msg = err(&tiny[..tiny.len() - 1], tiny.len());
        assert!(
            msg.contains("f.gguf: only")
                && msg.contains("tensor 'output.weight' (bytes")
                && msg.contains("is incomplete"),
            "{msg}"
        );
        let msg = err(&tiny[..40], tiny.len());
        assert!(msg.contains("only 40 of its") && msg.contains("before the end of its header"), "{msg}");
        let msg = err(&tiny[..tiny.len() - 1], tiny.len() - 1);
        assert!(
            msg.starts_with("f.gguf: GGUF tensor 'output.weight': data [")
                && msg.contains("extends past end of file"),
            "{msg}"
        );
        let msg = err(&[&tiny[..], &[0; 10]].concat(), tiny.len() + 5);
        assert!(msg.contains(&format!("more than the {} bytes", tiny.len() + 5)), "{msg}");
        let zip = [&b"PK\x03\x04"[..], &[0; 100]].concat();
        let msg = err(&zip, 1 << 30);
        assert!(msg.starts_with("f.gguf: not a GGUF file"), "{msg}");
        let q5_0 = Builder::default().tensor("q5_0", &[32], 6, &[0; 22]).build();
        let msg = err(&q5_0, q5_0.len());
        assert!(msg.contains("'q5_0': ggml type 6 (Q5_0) is not supported"), "{msg}");
    }
}
