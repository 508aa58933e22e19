"""The oracle of Keel's ggml block formats (src/gpu/wfmt.rs's tests): the gguf package's NumPy
dequantization (pip install gguf numpy).

    python3 scripts/gguf_dequantize.py TYPE IN OUT

IN holds whole blocks of ggml type TYPE (a name such as Q4_K); OUT gets their values as
little-endian f32.
"""

import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize


def main() -> None:
    qtype, source, target = sys.argv[1:]
    blocks = np.fromfile(source, dtype=np.uint8)
    values = dequantize(blocks, GGMLQuantizationType[qtype])
    np.asarray(values, dtype="<f4").tofile(target)


if __name__ == "__main__":
    main()
