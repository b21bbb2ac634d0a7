"""The benchmark problems, in one place: model-file text, PyTorch models, cost.

Each problem is written once, as curvpack model-file text (contract.md) plus
the shape of one input sample. From that text this module builds

  * the PyTorch ``nn.Sequential`` with the same layers (``torch_model``), for
    bench/backpack_bench.py;
  * the layer shapes and the analytic cost of a pass (``pass_cost``): FLOPs
    and bytes of output written, for the roofline column of bench/compare.

bench/bench.c keeps a copy of the same text (a C program cannot import this
file); bench/compare checks that ``curvpack-bench --print-model NAME`` prints
exactly ``MODELS[NAME]`` before it measures anything.

Shapes follow DeepOBS (and BackPACK's copy of its networks). TensorFlow
"same" padding is written out explicitly: for 5x5 convolutions with stride 1
it is padding 2 on every side; for the 3x3/stride-2 max-pools of 3c3d it is
one row and one column of zeros at the bottom and on the right (DeepOBS pads
with ``nn.ZeroPad2d`` before ``nn.MaxPool2d``; the inputs are ReLU outputs, so
zero padding equals TensorFlow's -inf padding); for the 2x2/stride-2 pools of
2c2d on even sizes it is no padding at all. Flattened sizes: 7*7*64 = 3136
(2c2d) and 3*3*128 = 1152 (3c3d).

No import of torch at module level: bench/compare uses the cost model without
PyTorch installed.
"""

import math

CLASSES = 10

MODELS = {
    "mnist_logreg": (
        "flatten\n"
        "linear 784 10\n"
    ),
    "mnist_mlp": (
        "flatten\n"
        "linear 784 1000\n"
        "relu\n"
        "linear 1000 500\n"
        "relu\n"
        "linear 500 100\n"
        "relu\n"
        "linear 100 10\n"
    ),
    # mnist_mlp with sigmoid in place of relu: the diagonal Hessian then has
    # residual terms (ReLU's second derivative is zero), the expensive case.
    "mnist_mlp_sigmoid": (
        "flatten\n"
        "linear 784 1000\n"
        "sigmoid\n"
        "linear 1000 500\n"
        "sigmoid\n"
        "linear 500 100\n"
        "sigmoid\n"
        "linear 100 10\n"
    ),
    "fmnist_2c2d": (
        "conv2d 1 32 5 padding=2\n"
        "relu\n"
        "maxpool2d 2 stride=2\n"
        "conv2d 32 64 5 padding=2\n"
        "relu\n"
        "maxpool2d 2 stride=2\n"
        "flatten\n"
        "linear 3136 1024\n"
        "relu\n"
        "linear 1024 10\n"
    ),
    "cifar10_3c3d": (
        "conv2d 3 64 5\n"
        "relu\n"
        "zeropad2d 0,1,0,1\n"
        "maxpool2d 3 stride=2\n"
        "conv2d 64 96 3\n"
        "relu\n"
        "zeropad2d 0,1,0,1\n"
        "maxpool2d 3 stride=2\n"
        "conv2d 96 128 3 padding=1\n"
        "relu\n"
        "zeropad2d 0,1,0,1\n"
        "maxpool2d 3 stride=2\n"
        "flatten\n"
        "linear 1152 512\n"
        "relu\n"
        "linear 512 256\n"
        "relu\n"
        "linear 256 10\n"
    ),
}

INPUT_SHAPES = {
    "mnist_logreg": (1, 28, 28),
    "mnist_mlp": (1, 28, 28),
    "mnist_mlp_sigmoid": (1, 28, 28),
    "fmnist_2c2d": (1, 28, 28),
    "cifar10_3c3d": (3, 32, 32),
}

# The problems of the issue; mnist_mlp_sigmoid is extra (ask for it by name).
DEFAULT_PROBLEMS = ["mnist_logreg", "mnist_mlp", "fmnist_2c2d", "cifar10_3c3d"]

# Quantity name (contract's --ext name; "grad" = plain gradient) -> BackPACK
# extension class name (None: none; batch_dot_grad is timed as BatchGrad
# followed by one Gram matrix per parameter, as Cockpit does).
BACKPACK_EXTENSIONS = {
    "grad": None,
    "batch_grad": "BatchGrad",
    "batch_l2_grad": "BatchL2Grad",
    "sum_grad_squared": "SumGradSquared",
    "variance": "Variance",
    "batch_dot_grad": "BatchGrad",
    "diag_ggn_exact": "DiagGGNExact",
    "diag_ggn_mc": "DiagGGNMC",
    "batch_diag_ggn_exact": "BatchDiagGGNExact",
    "batch_diag_ggn_mc": "BatchDiagGGNMC",
    "diag_hessian": "DiagHessian",
    "batch_diag_hessian": "BatchDiagHessian",
    "kfac": "KFAC",
    "kflr": "KFLR",
    "kfra": "KFRA",
    "sqrt_ggn_exact": "SqrtGGNExact",
    "sqrt_ggn_mc": "SqrtGGNMC",
}
# Curvature-vector products, timed as one product with a random vector
# (forward pass included): curvpack's cpk_curvature_op against BackPACK's
# hessianfree module (double backward for the Hessian; R-op, loss Hessian
# product, L-op for the GGN).
# hvp uses the library's default method; hvp_rop and hvp_dbl force one
# (cpk_curvature_op_set_method: R-operator, double backward) so that the two
# are measured against each other in the same run. BackPACK has one Hessian
# product (double backward through autograd), timed for all three. The two
# are not in the default list: ask for them by name.
HVP_METHODS = ["hvp_rop", "hvp_dbl"]
PRODUCTS = ["hvp", "ggnvp"] + HVP_METHODS
QUANTITIES = list(BACKPACK_EXTENSIONS) + ["hvp", "ggnvp"]  # the default rows
KNOWN_QUANTITIES = QUANTITIES + HVP_METHODS


# ---------------------------------------------------------------- parsing

def _value(text):
    if text in ("true", "false"):
        return text == "true"
    if "," in text:
        return tuple(int(t) for t in text.split(","))
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def parse_model(text):
    """Model-file text -> list of (name, positional args, keyword args)."""
    layers = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        args, kwargs = [], {}
        for w in words[1:]:
            if "=" in w:
                k, v = w.split("=", 1)
                kwargs[k] = _value(v)
            else:
                args.append(_value(w))
        layers.append((words[0], args, kwargs))
    return layers


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


# ---------------------------------------------------------- shapes, costs

def layer_shapes(name):
    """Walk the problem's layers with one sample's shape.

    Returns a list of dicts: kind, in_shape, out_shape, and for linear and
    conv2d layers: macs (multiply-adds of the forward product for one
    sample), in_feat/out_feat (linear: IN/OUT; conv: C_in*k*k/C_out),
    positions L (output positions; 1 for linear), weight and bias sizes.
    """
    shape = tuple(INPUT_SHAPES[name])
    out = []
    for kind, args, kw in parse_model(MODELS[name]):
        rec = {"kind": kind, "in_shape": shape}
        if kind == "flatten":
            shape = (math.prod(shape),)
        elif kind == "linear":
            fin, fout = args[0], args[1]
            assert shape == (fin,), (name, kind, shape, fin)
            rec.update(macs=fin * fout, in_feat=fin, out_feat=fout, positions=1,
                       weight=fin * fout, bias=fout if kw.get("bias", True) else 0)
            shape = (fout,)
        elif kind == "conv2d":
            cin, cout, k = args[0], args[1], _pair(args[2])
            s = _pair(kw.get("stride", 1))
            p = _pair(kw.get("padding", 0))
            assert shape[0] == cin, (name, kind, shape, cin)
            h = (shape[1] + 2 * p[0] - k[0]) // s[0] + 1
            w = (shape[2] + 2 * p[1] - k[1]) // s[1] + 1
            kk = k[0] * k[1]
            rec.update(macs=cout * h * w * cin * kk, in_feat=cin * kk, out_feat=cout,
                       positions=h * w, weight=cout * cin * kk,
                       bias=cout if kw.get("bias", True) else 0)
            shape = (cout, h, w)
        elif kind == "maxpool2d":
            k = _pair(args[0])
            s = _pair(kw.get("stride", args[0]))
            p = _pair(kw.get("padding", 0))
            h = (shape[1] + 2 * p[0] - k[0]) // s[0] + 1
            w = (shape[2] + 2 * p[1] - k[1]) // s[1] + 1
            shape = (shape[0], h, w)
        elif kind == "zeropad2d":
            p = args[0]
            l, r, t, b = (p, p, p, p) if isinstance(p, int) else p
            shape = (shape[0], shape[1] + t + b, shape[2] + l + r)
        elif kind in ("relu", "sigmoid", "tanh"):
            pass
        else:
            raise ValueError(f"problems.py: layer '{kind}' has no shape rule")
        rec["out_shape"] = shape
        out.append(rec)
    return out


def param_count(name):
    return sum(r.get("weight", 0) + r.get("bias", 0) for r in layer_shapes(name))


def param_tensors(name):
    """Number of parameter tensors (weights and biases)."""
    return sum((r["weight"] > 0) + (r["bias"] > 0) for r in layer_shapes(name) if "macs" in r)


def _ext_list(ext):
    return [e for e in (ext or "").split(",") if e and e != "grad"]


def pass_cost(name, ext, batch, classes=CLASSES, mc_samples=1):
    """Lower bounds on the work of one forward + backward pass.

    Returns (flops, bytes_written_elems): the arithmetic (FLOPs) and the
    number of output elements the pass must write (multiply by the element
    size). The model, stated so it can be checked:

    - Forward + backward of the gradient: for each linear/conv layer, one
      product for the forward pass, one for the weight gradient and one for
      the input gradient (that last one skipped for the first layer, whose
      input needs no gradient), each 2*N*macs FLOPs; linear: macs = IN*OUT;
      conv: macs = C_out*H_out*W_out*C_in*k*k.
    - Extensions add what their cheapest known form needs (design.md,
      backpack-reference.md): per-sample gradients N*P (one FLOP per
      entry); linear batch_l2 2N(IN+OUT); second moment 2N*IN*OUT (GEMM of
      squares; conv: via per-sample gradients); batch_dot 2N^2(IN+OUT) for
      linear (Gram of inputs times Gram of output gradients), N^2*P for
      conv; GGN-type quantities propagate V columns (V = classes - 1 for
      exact: the cross-entropy Hessian's rank, the compact root; classes
      for sqrt_ggn_exact, which hands out the contract's root; mc_samples
      for MC) through every layer below the loss (2*V*N*macs per layer,
      first layer excepted) and form the parameter part (linear diagonal
      2N*IN*OUT; per-sample or square-root factors V*N*P; conv:
      2*V*N*macs); Kronecker factors add V*N*OUT^2 and N*L*IN^2 (symmetric
      products, half a GEMM); KFRA propagates a dense averaged matrix
      (2*OUT^2*IN + 2*OUT*IN^2 per linear layer, 2*N*D^2 per activation,
      2*D_out*macs + 2*D_in*macs per conv) and forms A at N*L*IN^2;
      the diagonal Hessian adds, for each activation with nonzero second
      derivative (sigmoid, tanh) of width D, D more columns propagated below.
    - Bytes written: loss, output (N*classes), gradient (P) and each
      extension's outputs with the contract's shapes.
    Elementwise layers and pooling are not counted (they are bandwidth-bound
    and small next to the products).
    """
    N = batch
    layers = layer_shapes(name)
    P = param_count(name)
    exts = _ext_list(ext)
    ptensors = param_tensors(name)
    param_idx = [i for i, r in enumerate(layers) if "macs" in r]
    first = param_idx[0] if param_idx else -1

    flops = 0.0
    for i in param_idx:
        m = layers[i]["macs"]
        flops += 2 * N * m * (2 if i == first else 3)

    def propagate(V, below=None):
        """FLOPs to push V columns backward through the param layers."""
        f = 0.0
        for i in param_idx:
            if i == first or (below is not None and i >= below):
                continue
            f += 2.0 * V * N * layers[i]["macs"]
        return f

    def param_part(V, per_sample, below=None):
        f = 0.0
        for i in param_idx:
            if below is not None and i >= below:
                continue
            r = layers[i]
            if r["kind"] == "linear":
                f += (N * r["weight"] if per_sample else 2.0 * N * r["weight"]) + V * N * r["out_feat"]
            else:
                f += 2.0 * V * N * r["macs"]
        return f

    def kron_part(V):
        f = 0.0
        for i in param_idx:
            r = layers[i]
            f += 1.0 * V * N * r["out_feat"] ** 2 + 1.0 * N * r["positions"] * r["in_feat"] ** 2
        return f

    def hessian_residual_columns():
        """(D, index) for activations with nonzero second derivative."""
        return [(math.prod(r["out_shape"]), i) for i, r in enumerate(layers)
                if r["kind"] in ("sigmoid", "tanh")]

    elems = 1 + N * classes + P  # loss, output, gradient
    for e in exts:
        if e == "batch_grad":
            flops += N * P
            elems += N * P
        elif e == "batch_l2_grad":
            for i in param_idx:
                r = layers[i]
                if r["kind"] == "linear":
                    flops += 2.0 * N * (r["in_feat"] + r["out_feat"])
                else:
                    L = r["positions"]
                    flops += min(3.0 * N * (r["weight"] + r["bias"]),
                                 2.0 * N * L * L * (r["in_feat"] + r["out_feat"]))
            elems += N * ptensors
        elif e in ("sum_grad_squared", "variance"):
            for i in param_idx:
                r = layers[i]
                if r["kind"] == "linear":
                    flops += 2.0 * N * r["weight"] + N * (r["in_feat"] + r["out_feat"])
                else:
                    flops += 3.0 * N * (r["weight"] + r["bias"])
            elems += P
        elif e == "batch_dot_grad":
            for i in param_idx:
                r = layers[i]
                if r["kind"] == "linear":
                    flops += 2.0 * N * N * (r["in_feat"] + r["out_feat"]) + N * N
                else:
                    flops += N * (r["weight"] + r["bias"]) + N * N * (r["weight"] + r["bias"])
            elems += N * N * ptensors
        elif e in ("diag_ggn_exact", "diag_ggn_mc", "batch_diag_ggn_exact", "batch_diag_ggn_mc",
                   "diag_hessian", "batch_diag_hessian"):
            V = mc_samples if e.endswith("_mc") else classes - 1
            per_sample = e.startswith("batch_")
            flops += propagate(V) + param_part(V, per_sample)
            if "hessian" in e:
                for D, idx in hessian_residual_columns():
                    flops += propagate(D, below=idx) + param_part(D, per_sample, below=idx)
            elems += N * P if per_sample else P
        elif e in ("kfac", "kflr"):
            V = mc_samples if e == "kfac" else classes - 1
            flops += propagate(V) + kron_part(V)
            for i in param_idx:
                r = layers[i]
                elems += r["out_feat"] ** 2 + (r["in_feat"] ** 2 if r["weight"] else 0)
                if r["bias"]:
                    elems += r["out_feat"] ** 2
        elif e == "kfra":
            for i, r in enumerate(layers):
                if r["kind"] == "linear":
                    fi, fo = r["in_feat"], r["out_feat"]
                    if i != first:
                        flops += 2.0 * fo * fo * fi + 2.0 * fo * fi * fi
                    flops += 1.0 * N * fi * fi
                elif r["kind"] == "conv2d":
                    d_out, d_in = math.prod(r["out_shape"]), math.prod(r["in_shape"])
                    if i != first:
                        flops += 2.0 * d_out * r["macs"] + 2.0 * d_in * r["macs"]
                    flops += 1.0 * N * r["positions"] * r["in_feat"] ** 2
                elif r["kind"] in ("relu", "sigmoid", "tanh") and i > first:
                    D = math.prod(r["out_shape"])
                    flops += 2.0 * N * D * D
            for i in param_idx:
                r = layers[i]
                elems += r["out_feat"] ** 2 + r["in_feat"] ** 2
                if r["bias"]:
                    elems += r["out_feat"] ** 2
        elif e in ("sqrt_ggn_exact", "sqrt_ggn_mc"):
            V = mc_samples if e.endswith("_mc") else classes
            flops += propagate(V)
            for i in param_idx:
                r = layers[i]
                flops += V * N * r["weight"] if r["kind"] == "linear" else 2.0 * V * N * r["macs"]
            elems += V * N * P
        elif e in PRODUCTS:
            # R-forward (J_x v and J_theta v: 2 products per layer), then a
            # backward of the result (2 products per layer): at least the
            # work of the gradient again; the Hessian adds its second-order
            # terms (2 more products per layer), which this bound leaves out.
            for i in param_idx:
                flops += 2 * N * layers[i]["macs"] * 4
            elems += P
        else:
            raise ValueError(f"problems.py: no cost model for extension '{e}'")
    return flops, elems


def output_elems(name, ext, batch, classes=CLASSES, mc_samples=1):
    return pass_cost(name, ext, batch, classes, mc_samples)[1]


def backpack_working_elems(name, ext, batch):
    """Elements of the largest intermediate BackPACK's algorithm must hold
    (beyond the outputs), where that is what limits it, else 0.

    KFRA propagates one dense averaged matrix over the features of every
    layer output from the loss down to the first parameter layer: D x D for
    the widest such output (D = 25088 after the first convolution of 2c2d,
    50176 in 3c3d). bench/compare skips BackPACK's run when this alone
    exceeds its memory limit.
    """
    if "kfra" not in _ext_list(ext):
        return 0
    layers = layer_shapes(name)
    idx = [i for i, r in enumerate(layers) if "macs" in r]
    if not idx:
        return 0
    return max(math.prod(r["out_shape"]) ** 2 for r in layers[idx[0]:])


# ---------------------------------------------------------------- PyTorch

def torch_model(name, dtype=None):
    """The problem as a PyTorch nn.Sequential, built from the same text."""
    import torch.nn as nn
    mods = []
    for kind, args, kw in parse_model(MODELS[name]):
        if kind == "flatten":
            mods.append(nn.Flatten())
        elif kind == "linear":
            mods.append(nn.Linear(args[0], args[1], bias=kw.get("bias", True)))
        elif kind == "conv2d":
            mods.append(nn.Conv2d(args[0], args[1], args[2], **kw))
        elif kind == "maxpool2d":
            mods.append(nn.MaxPool2d(args[0], **kw))
        elif kind == "zeropad2d":
            mods.append(nn.ZeroPad2d(args[0]))
        elif kind == "relu":
            mods.append(nn.ReLU())
        elif kind == "sigmoid":
            mods.append(nn.Sigmoid())
        elif kind == "tanh":
            mods.append(nn.Tanh())
        else:
            raise ValueError(f"problems.py: layer '{kind}' has no PyTorch mapping")
    model = nn.Sequential(*mods)
    if dtype is not None:
        model = model.to(dtype)
    return model


def data(name, batch, dtype=None, seed=0):
    """Random inputs (standard normal) and class indices of the right shapes."""
    import torch
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch,) + tuple(INPUT_SHAPES[name]), generator=g)
    y = torch.randint(0, CLASSES, (batch,), generator=g)
    if dtype is not None:
        x = x.to(dtype)
    return x, y


if __name__ == "__main__":
    import sys
    names = sys.argv[1:] or list(MODELS)
    for n in names:
        print(f"# {n}: input {INPUT_SHAPES[n]}, {param_count(n)} parameters")
        for r in layer_shapes(n):
            print(f"#   {r['kind']:10s} {r['in_shape']} -> {r['out_shape']}")
        f, e = pass_cost(n, "grad", 128)
        print(f"#   gradient at N=128: {f / 1e9:.3f} GFLOP, {e * 4 / 2**20:.1f} MiB written")
