#!/usr/bin/env python3
"""Writes a float32 Hugging Face model (config.json + model.safetensors) as a GGUF laid out the
way llama.cpp's converter lays out its architecture: its tensor names and metadata keys, q/k
rows permuted for the models it ropes in adjacent pairs (llama, smollm3), Gemma's norm weights
stored as 1 + w, GPT-NeoX's fused QKV as [q; k; v] rows, Llama 3's rope scaling baked into a
rope_freqs tensor. Keel's tests load these files and compare them with the golden outputs of
the Hugging Face model (tests/gguf_families.rs).

usage: hf_to_gguf.py MODEL_DIR OUT.gguf
"""

import json
import math
import struct
import sys

import gguf
import numpy as np

ARCHES = {
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma3ForCausalLM": "gemma3",
    "Phi3ForCausalLM": "phi3",
    "GPTNeoXForCausalLM": "gptneox",
    "SmolLM3ForCausalLM": "smollm3",
}


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", f"{name}: only F32 files are written"
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(info["shape"]).copy()
    return out


def pair_rows(w, n_head):
    """HF's rotate-half rows of each head to llama.cpp's adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_divisors(c, dim):
    """Llama 3's scaling as the divisor of each inverse frequency."""
    p = c.get("rope_parameters") or c.get("rope_scaling")
    inv = 1.0 / (p["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    old = p["original_max_position_embeddings"]
    low, high, factor = p["low_freq_factor"], p["high_freq_factor"], p["factor"]
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def main(model_dir, out):
    c = json.load(open(f"{model_dir}/config.json"))
    arch = ARCHES[c["architectures"][0]]
    t = read_safetensors(f"{model_dir}/model.safetensors")
    w = gguf.GGUFWriter(out, arch)
    heads, hidden = c["num_attention_heads"], c["hidden_size"]
    kv_heads = c.get("num_key_value_heads", heads)
    head_dim = c.get("head_dim") or hidden // heads
    rope = c.get("rope_parameters") or {}
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(c["num_hidden_layers"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    if arch == "gptneox":
        w.add_layer_norm_eps(c["layer_norm_eps"])
        w.add_parallel_residual(c.get("use_parallel_residual", True))
    else:
        w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    if arch == "gemma3":
        w.add_rope_freq_base(rope["full_attention"]["rope_theta"])
        w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
        w.add_sliding_window(c["sliding_window"])
        w.add_sliding_window_pattern([t == "sliding_attention" for t in c["layer_types"]])
    else:
        w.add_rope_freq_base(rope["rope_theta"])
    partial = rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        w.add_rope_dimension_count(int(head_dim * partial))
    w.add_bos_token_id(c["bos_token_id"])
    w.add_eos_token_id(c["eos_token_id"])
    if rope.get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_divisors(c, head_dim))

    def put(name, x):
        w.add_tensor(name, np.ascontiguousarray(x, dtype=np.float32))

    neox = arch == "gptneox"
    top = {
        "embed_in" if neox else "embed_tokens": "token_embd",
        "final_layer_norm" if neox else "norm": "output_norm",
    }
    prefix = "gpt_neox." if neox else "model."
    layer_names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.qkv_proj": "attn_qkv",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.gate_up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "attention.query_key_value": "attn_qkv",
        "attention.dense": "attn_output",
        "mlp.dense_h_to_4h": "ffn_up",
        "mlp.dense_4h_to_h": "ffn_down",
        "post_attention_layernorm": "post_attention_norm" if arch == "gemma3" else "ffn_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    }
    for name, x in t.items():
        if name in ("lm_head.weight", "embed_out.weight"):
            put("output.weight", x)
            continue
        if not name.startswith(prefix + "layers."):
            base, kind = name[len(prefix):].rsplit(".", 1)
            x = x + 1 if arch == "gemma3" and base == "norm" else x
            put(f"{top[base]}.{kind}", x)
            continue
        layer, rest = name[len(prefix + "layers."):].split(".", 1)
        part, kind = rest.rsplit(".", 1)
        if arch == "gemma3" and part.endswith("norm"):
            x = x + 1
        if arch in ("llama", "smollm3") and part in ("self_attn.q_proj", "self_attn.k_proj"):
            x = pair_rows(x, heads if part == "self_attn.q_proj" else kv_heads)
        if neox and part == "attention.query_key_value":
            x = x.reshape(heads, 3, head_dim, *x.shape[1:]).swapaxes(0, 1).reshape(x.shape)
        put(f"blk.{layer}.{layer_names[part]}.{kind}", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
