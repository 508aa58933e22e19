#!/usr/bin/env python3
"""transformers' strided-perplexity recipe (the "Perplexity of fixed-length models" guide) on a
text file, for comparison with `keel perplexity --model DIR --text-file FILE --json`.

The file is read whole (its bytes as they are: CRLF stays CRLF) and encoded as one sequence (the tokenizer's special tokens included,
as Keel's `score` encodes); windows of WINDOW tokens start every STRIDE tokens; each token
after the first is scored once, in the first window that reaches it. The negative
log-likelihoods are summed token by token (not `loss * count`, whose "- batch_size" in the
guide drops one token per window after the first), so the count equals Keel's `scored`.

    pip install torch transformers
    python3 scripts/wikitext_perplexity.py MODEL_DIR FILE [WINDOW [STRIDE]] [--limit-tokens N]

Prints one JSON line {"tokens", "scored", "nll", "perplexity", "window", "stride"}.
"""
import json
import math
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    limit = None
    if "--limit-tokens" in sys.argv:
        limit = int(sys.argv[sys.argv.index("--limit-tokens") + 1])
        args.remove(str(limit))
    path, file = args[0], args[1]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    window = int(args[2]) if len(args) > 2 else model.config.max_position_embeddings
    stride = int(args[3]) if len(args) > 3 else window // 2
    # newline="": the bytes as they are (WikiText-2 raw has CRLF line ends), as Keel reads them.
    text = open(file, encoding="utf-8", newline="").read()
    ids = tok(text, return_tensors="pt").input_ids
    if limit:
        ids = ids[:, :limit]
    n = ids.size(1)
    nll, scored, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, n, stride):
            end = min(begin + window, n)
            logits = model(ids[:, begin:end]).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1)
            # Targets prev_end .. end-1 (never token 0), each predicted from the position before.
            first = max(prev_end, 1)
            targets = ids[0, first:end]
            picked = logp[first - 1 - begin : end - 1 - begin].gather(1, targets[:, None])
            nll -= picked.sum().item()
            scored += end - first
            prev_end = end
            if end == n:
                break
    mean = nll / scored
    print(json.dumps({"tokens": n, "scored": scored, "nll": mean, "perplexity": math.exp(mean),
                      "window": window, "stride": stride}))


if __name__ == "__main__":
    main()
