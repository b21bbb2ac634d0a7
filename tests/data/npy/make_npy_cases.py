#!/usr/bin/env python3
"""Write the .npy fixtures that tests/test_npy.c reads (NumPy only).

    python3 make_npy_cases.py            # (re)write the fixtures beside this file
    python3 make_npy_cases.py --check D  # check the files test_npy wrote into D

Every array holds value(i) at C-order flat index i (the formulas below are
repeated in tests/test_npy.c), so the test knows what NumPy reads from each
file without a companion file.

Fixtures:
  {c,f}_{le,be}_{f4,f8,i8,i4}.npy  shape (2, 3, 4) in C or Fortran order,
                                   little- or big-endian, every dtype
  v2_*.npy, v3_*.npy               the same with format version 2.0 / 3.0
  d0_f8.npy, d1_i4.npy             0-d and 1-d
  d4_f_be_f8.npy                   4-d (2, 3, 1, 4), Fortran, big-endian
  empty_f4.npy                     shape (0, 3)
  saved_<case>.npy                 np.save of the arrays that test_npy writes
                                   itself (WRITE_CASES): its output must equal
                                   these files byte for byte

--check D: test_npy, run with CPK_TEST_NPY_OUT=D, leaves its written files
D/written_<case>.npy; this checks that np.load reads each back with the
dtype, shape and values it was given and that the bytes equal np.save's.
"""
import io
import os
import sys

import numpy as np
from numpy.lib import format as npformat

HERE = os.path.dirname(os.path.abspath(__file__))

DTYPES = {"f4": np.float32, "f8": np.float64, "i8": np.int64, "i4": np.int32}


def value(i, code):
    """Element at C-order flat index i (arrays of index i)."""
    i = np.asarray(i, dtype=np.int64)
    if code in ("f4", "f8"):
        v = (i * 3 - 7) * 0.25 + i / 3.0  # every byte of a float64 in use
        return v.astype(DTYPES[code])
    if code == "i8":
        return (i * 1000000007 - 3000000000).astype(np.int64)
    return (i * 100003 - 1000000).astype(np.int32)


def array(shape, code):
    n = int(np.prod(shape, dtype=np.int64))
    return value(np.arange(n), code).reshape(shape)


def variant(a, order, endian):
    if endian == "be":
        a = a.astype(a.dtype.newbyteorder(">"))
    if order == "f":
        a = np.asfortranarray(a)
    return a


# The arrays test_npy.c writes itself: name -> (shape, dtype code).
WRITE_CASES = {
    "f4_0d": ((), "f4"),
    "f8_1d": ((5,), "f8"),
    "i8_2d": ((2, 3), "i8"),
    "i4_4d": ((2, 1, 3, 2), "i4"),
    "f8_8d": ((1, 2, 1, 1, 2, 1, 1, 3), "f8"),
    "f4_empty": ((0, 3), "f4"),
    "f8_wide": ((10**12, 0), "f8"),
    "i4_wide8": ((0, 99999, 99999, 99999, 999, 1, 1, 1), "i4"),
}


def save(name, a, version=None):
    path = os.path.join(HERE, name)
    with open(path, "wb") as f:
        if version is None:
            np.save(f, a)
        else:
            npformat.write_array(f, a, version=version)
    back = np.load(path)
    assert back.dtype == a.dtype and back.shape == a.shape, name
    assert np.array_equal(back, a), name


def generate():
    shape = (2, 3, 4)
    for code in DTYPES:
        for order in ("c", "f"):
            for endian in ("le", "be"):
                a = variant(array(shape, code), order, endian)
                save(f"{order}_{endian}_{code}.npy", a)
    save("v2_c_le_f8.npy", array(shape, "f8"), (2, 0))
    save("v2_f_be_i4.npy", variant(array(shape, "i4"), "f", "be"), (2, 0))
    save("v3_c_le_f4.npy", array(shape, "f4"), (3, 0))
    save("v3_f_be_i8.npy", variant(array(shape, "i8"), "f", "be"), (3, 0))
    save("d0_f8.npy", array((), "f8"))
    save("d1_i4.npy", array((7,), "i4"))
    save("d4_f_be_f8.npy", variant(array((2, 3, 1, 4), "f8"), "f", "be"))
    save("empty_f4.npy", array((0, 3), "f4"))
    for name, (shp, code) in WRITE_CASES.items():
        save(f"saved_{name}.npy", array(shp, code))
    print(f"wrote the fixtures into {HERE}")


def check(directory):
    failures = 0
    for name, (shp, code) in WRITE_CASES.items():
        path = os.path.join(directory, f"written_{name}.npy")
        want = array(shp, code)
        got = np.load(path)
        buf = io.BytesIO()
        np.save(buf, want)
        with open(path, "rb") as f:
            same_bytes = f.read() == buf.getvalue()
        ok = (got.dtype == want.dtype and got.shape == want.shape
              and np.array_equal(got, want) and same_bytes)
        print(f"{'ok  ' if ok else 'FAIL'} {path}: {got.dtype} {got.shape}"
              f"{'' if same_bytes else ' (bytes differ from np.save)'}")
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        sys.exit(check(sys.argv[2]))
    if len(sys.argv) != 1:
        sys.exit(__doc__)
    generate()
