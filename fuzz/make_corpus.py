#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/ that are not copies of test data
(run once from the top of the tree; the build never needs Python). The .npy
seeds are tests/data/npy/*.npy plus a few written here."""
import gzip
import os
import struct

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
corpus = os.path.join(here, "corpus")


def put(kind, name, data):
    with open(os.path.join(corpus, kind, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# .npy: a few extra shapes and dtypes beside the test data.
for name, arr in [("f4_3x4.npy", np.arange(12, dtype="<f4").reshape(3, 4)),
                  ("i8_labels.npy", np.array([0, 3, 9, 1], dtype="<i8")),
                  ("f8_nan.npy", np.array([1.0, np.nan, np.inf])),
                  ("f4_fortran.npy", np.asfortranarray(
                      np.arange(24, dtype=">f4").reshape(2, 3, 4)))]:
    path = os.path.join(corpus, "npy", name)
    np.save(path, arr)

# Model files: every layer kind of the contract, in small networks that
# build for the fuzzer's sample shapes (1-d, (C, L), (C, H, W), (C, D, H, W)).
models = {
    "mlp.txt": "flatten\nlinear 6 4\nrelu\nlinear 4 3 bias=false\n",
    "mlp_act.txt": "# activations\nflatten\nlinear in_features=6 out_features=5\n"
                   "sigmoid\nlinear 5 5\ntanh\nlinear 5 4\nleaky_relu negative_slope=0.2\n"
                   "linear 4 4\nelu alpha=0.5\nselu\nlogsigmoid\nidentity\n",
    "exp_log.txt": "flatten\nlinear 6 3\nexp\nlog\n",
    "conv1d.txt": "conv1d 2 3 3 padding=1\nrelu\nmaxpool1d 2\nflatten\n",
    "conv2d.txt": "conv2d 1 2 3 stride=1 padding=same\nrelu\nmaxpool2d 2 stride=2\n"
                  "avgpool2d 1\nflatten\nlinear 18 2\n",
    "conv2d_groups.txt": "conv2d 3 6 3 groups=3 dilation=1 padding=valid bias=false\n"
                         "batchnorm2d 6 eps=1e-5 momentum=0.1\nadaptive_avgpool2d 2\nflatten\n",
    "conv_transpose.txt": "conv_transpose2d 1 2 3 stride=2 padding=1 output_padding=1\n"
                          "zeropad2d 1\nflatten\n",
    "conv3d.txt": "conv3d 2 2 2 padding=1\navgpool3d 2 ceil_mode=true count_include_pad=false\n"
                  "maxpool3d 2 ceil_mode=true\nflatten\n",
    "conv_transpose1d.txt": "conv_transpose1d 2 2 2 stride=2\ndropout p=0.1\nflatten\n",
    "pad_pool.txt": "zeropad2d 1,0,2,1\nmaxpool2d 3 stride=1 padding=1 dilation=1\n"
                    "avgpool2d 2 stride=1 padding=1\nflatten\n",
    "batchnorm1d.txt": "flatten\nlinear 6 4\nbatchnorm1d 4\nrelu\n",
    "bad_kw.txt": "linear 6 4 biass=true\n",
    "bom_crlf.txt": "\ufeffflatten\r\nlinear 6 2\r\n",
}
for name, text in models.items():
    put("modelfile", name, text)


def idx(dims, data, dtype=0x08):
    return bytes([0, 0, dtype, len(dims)]) + b"".join(
        struct.pack(">I", d) for d in dims) + bytes(data)


put("idx", "images.idx", idx([2, 3, 3], range(18)))
put("idx", "labels.idx", idx([4], [0, 1, 2, 9]))
put("idx", "images.idx.gz", gzip.compress(idx([3, 2, 2], range(12)), mtime=0))
put("idx", "labels.idx.gz", gzip.compress(idx([5], [1, 2, 3, 4, 5]), mtime=0))
put("idx", "float.idx", idx([2], [0] * 8, dtype=0x0D))
put("idx", "truncated.idx", idx([4, 4], range(7)))

# Command lines: one argument per line.
clis = {
    "compute.txt": ["--model", "m.txt", "--params", "p", "--input", "x.npy",
                    "--target", "y.npy", "--out", "o", "--ext",
                    "batch_grad,variance,kfac", "--dtype", "float64"],
    "options.txt": ["--loss=mse", "--reduction", "sum", "--threads", "2",
                    "--seed=7", "--mc-samples", "3", "--max-memory", "512M",
                    "--device", "cpu", "--repeat", "4", "--top", "1.5GiB"],
    "help.txt": ["--help"],
    "flag.txt": ["--resume", "--model="],
    "bad.txt": ["--threads", "-1", "--max-memory", "0", "x"],
}
for name, args in clis.items():
    put("cli", name, "\n".join(args))
