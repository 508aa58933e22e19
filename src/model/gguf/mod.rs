//! GGUF (llama.cpp) model files: the container (`parse`), conversion to Keel's layout
//! with Hugging Face names (`convert`: config.json, tensors kept packed or decoded to f32),
//! reading a file as it streams in ([`GgufReader`]), and the tokenizer.json of a GGUF's own
//! vocabulary ([`tokenizer_json`]).
//!
//! Input bytes are untrusted: errors are one line naming what was wrong. No `std::fs` here,
//! so this works on wasm32 as well.

mod convert;
mod parse;
mod reader;
#[cfg(test)]
mod test_files;
mod tokenizer;

pub use convert::{
    hf_config, hf_formats, hf_name_and_shape, hf_tensor, is_rope_factors, to_hf, whole_file_config,
};
pub use parse::{parse, parse_header, tensor_data, GgufFile, GgufTensorInfo, GgufValue};
pub use reader::GgufReader;
pub use tokenizer::tokenizer_json;
