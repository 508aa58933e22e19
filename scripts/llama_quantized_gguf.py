"""Regenerates tests/data/tiny-llama-q4_k_m.gguf and tiny-llama-q5_k_m.gguf: a two-layer llama
of random weights (seeded; hidden 256, 4 heads of 64, 2 kv heads, ffn 256, vocab 256, a GPT-2
vocabulary of made-up tokens and merges) written as F32 with the gguf package, then quantized by
llama.cpp's own quantizer, whose block layouts src/model/gguf/convert.rs's
`llama_quantized_gguf_equals_gguf_py` checks against gguf-py's dequantization.

    python3 scripts/llama_quantized_gguf.py PATH/TO/llama-quantize [OUT_DIR]

llama-quantize comes from the llama.cpp that the PyPI source package llama-cpp-python vendors
(`python3 -m pip download --no-binary :all: --no-deps llama-cpp-python`, unpack, then in
vendor/llama.cpp: `cmake -B build -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF && cmake --build build --target
llama-quantize`). Rows are 256 wide so that every K-quant applies; with two layers Q4_K_M puts
Q6_K in layer 1's attn_v and ffn_down (llama.cpp's `use_more_bits`) and on the head.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFWriter

HIDDEN, HEADS, KV_HEADS, FFN, VOCAB, LAYERS = 256, 4, 2, 256, 256, 2


def write_f32(path: str) -> None:
    rng = np.random.default_rng(19)
    w = GGUFWriter(path, "llama")
    w.add_name("keel-tiny-llama-random")
    w.add_context_length(64)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(0)  # all F32
    w.add_tokenizer_model("gpt2")
    # Digits, "t", the ten "t<digit>" merges, then filler: a vocabulary with real merges
    # (llama-quantize drops an empty merges array, and Keel needs one to build the tokenizer).
    pieces = [str(d) for d in range(10)] + ["t"] + [f"t{d}" for d in range(10)]
    w.add_token_list(pieces + [f"x{i}" for i in range(VOCAB - len(pieces))])
    w.add_token_types([1] * VOCAB)
    w.add_token_merges([f"t {d}" for d in range(10)])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)

    def matrix(name: str, rows: int, cols: int, scale: float) -> None:
        w.add_tensor(name, (rng.standard_normal((rows, cols)) * scale).astype(np.float32))

    def norm(name: str) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))

    kv = KV_HEADS * HIDDEN // HEADS
    matrix("token_embd.weight", VOCAB, HIDDEN, 1.0)
    for l in range(LAYERS):
        norm(f"blk.{l}.attn_norm.weight")
        matrix(f"blk.{l}.attn_q.weight", HIDDEN, HIDDEN, 0.1)
        matrix(f"blk.{l}.attn_k.weight", kv, HIDDEN, 0.1)
        matrix(f"blk.{l}.attn_v.weight", kv, HIDDEN, 0.1)
        matrix(f"blk.{l}.attn_output.weight", HIDDEN, HIDDEN, 0.05)
        norm(f"blk.{l}.ffn_norm.weight")
        matrix(f"blk.{l}.ffn_gate.weight", FFN, HIDDEN, 0.1)
        matrix(f"blk.{l}.ffn_up.weight", FFN, HIDDEN, 0.1)
        matrix(f"blk.{l}.ffn_down.weight", HIDDEN, FFN, 0.05)
    norm("output_norm.weight")
    matrix("output.weight", VOCAB, HIDDEN, 0.2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    quantize = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "tests", "data")
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "tiny-llama-f32.gguf")
        write_f32(f32)
        for kind in ["Q4_K_M", "Q5_K_M"]:
            target = os.path.join(out, f"tiny-llama-{kind.lower()}.gguf")
            subprocess.run([quantize, f32, target, kind], check=True, stdout=subprocess.DEVNULL)
            print(target, os.path.getsize(target), "bytes")


if __name__ == "__main__":
    main()
