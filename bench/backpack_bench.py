#!/usr/bin/env python3
"""Time one forward + backward pass with PyTorch + BackPACK, like curvpack-bench.

Prints ONE JSON line:
  {"tool": "backpack", "problem": ..., "ext": ..., "batch": ..., "threads": ...,
   "dtype": ..., "device": ..., "median_s": ..., "min_s": ..., "max_s": ..., "runs": ...,
   "peak_bytes": ..., "memory_method": ..., "status": "ok"}

The timed region is what a BackPACK user runs per step:
    loss = lossfunc(model(x), y)
    with backpack(*exts):          # plain loss.backward() for "grad"
        loss.backward()
(plus, for batch_dot_grad, which BackPACK lacks, the Gram matrix of the
per-sample gradients of each parameter, as Cockpit computes it). Gradients and
BackPACK's results of the previous run are dropped before each run, outside
the timed region, as curvpack-bench frees its results.

Peak memory: the first warm-up pass runs under torch.profiler with
profile_memory=True (its time is not used); the peak of the CPU allocator's "Total Allocated" over
that pass (allocations made during the pass; model, data and anything held
before it do not count, as with curvpack's cpk_memory_peak() minus what was
in use). If the profiler gives nothing, the fallback is the growth of the
process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
over the timed runs; "memory_method" says which one was used.

--device cuda: the model (after backpack.extend, which extends the modules in
place), x and y are moved to the GPU before anything is timed; every timed or
warm-up step ends with torch.cuda.synchronize() inside its timed region, so
times are the wall clock of finished GPU work, as curvpack-bench's (whose
cpk_compute returns with the results on the host; BackPACK's stay on the
GPU). TF32 is switched off (cuDNN allows it by default) so both compute in
strict FP32. Peak memory is then torch.cuda.max_memory_allocated() over one
warmed-up step (the last warm-up step, or one extra untimed step after a
single warm-up), reset with torch.cuda.reset_peak_memory_stats() before it,
minus torch.cuda.memory_allocated() before it ("memory_method": "torch-cuda");
the CPU profiler is not used. Without a usable GPU the row has status
"unavailable" and a reason.

Run one measurement per process (bench/compare does by default) so rows do not
share allocator state. --ext may be repeated to measure several rows in one
process (bench/compare --one-python), one JSON line each: PyTorch's import and
CUDA initialisation (seconds) are then paid once.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import problems  # noqa: E402


def emit(row):
    print(json.dumps(row), flush=True)


def read_status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def profiled_peak(step):
    """Peak bytes the torch CPU allocator held during one step, or None."""
    try:
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    except Exception:  # no usable trace: the caller falls back to RSS
        return None
    finally:
        os.unlink(path)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    mem = [e for e in events if e.get("name") == "[memory]"
           and e.get("args", {}).get("Device Type", 0) == 0]
    if not mem:
        return None
    mem.sort(key=lambda e: e["ts"])
    first = mem[0]["args"]
    base = first.get("Total Allocated", 0) - first.get("Bytes", 0)
    peak = max(e["args"].get("Total Allocated", 0) for e in mem)
    return max(0, peak - base)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problem", required=True, choices=sorted(problems.MODELS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--ext", action="append",
                    help='comma-separated quantities ("" or "grad": plain gradient); '
                         'repeat the option to measure several rows in this one process, '
                         'one JSON line each (saves the start-up of PyTorch per row)')
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--min-repeat", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.0,
                    help="stop repeating once the timed runs add up to this (s)")
    ap.add_argument("--mc-samples", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory", choices=["auto", "profiler", "rss", "none"], default="auto",
                    help="CPU peak-memory method (with --device cuda: the CUDA allocator's "
                         "peak unless none)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    rc = 0
    for i, ext in enumerate(args.ext or [""]):
        if i > 0:  # drop what the previous row left behind
            import gc
            gc.collect()
            if "torch" in sys.modules and args.device == "cuda":
                import torch
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        rc = max(rc, measure(args, ext))
    return rc


def measure(args, ext):
    """Measure one row (quantities `ext`) and print its JSON line; exit status."""
    row = {"tool": "backpack", "problem": args.problem, "ext": ext,
           "batch": args.batch, "threads": args.threads, "dtype": args.dtype,
           "device": args.device}
    quantities = [q for q in ext.split(",") if q and q != "grad"]
    products = [q for q in quantities if q in problems.PRODUCTS]
    if products and len(quantities) > 1:
        row.update(status="error", reason="a product is timed alone")
        emit(row)
        return 2
    for q in quantities:
        if q not in problems.BACKPACK_EXTENSIONS and q not in problems.PRODUCTS:
            row.update(status="error", reason=f"unknown quantity '{q}'")
            emit(row)
            return 2

    try:
        import torch
        import backpack
        from backpack import extensions as bpext
    except ImportError as e:
        row.update(status="unavailable", reason=f"import failed: {e}")
        emit(row)
        return 0

    warnings.filterwarnings("ignore")
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        why = ("PyTorch was built without CUDA" if torch.version.cuda is None
               else f"torch.cuda.is_available() is false (PyTorch built for CUDA "
                    f"{torch.version.cuda}; no usable GPU or driver)")
        row.update(status="unavailable", reason=f"--device cuda: {why}")
        emit(row)
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = torch.float32 if args.dtype == "float32" else torch.float64
    model = problems.torch_model(args.problem, dtype)
    x, y = problems.data(args.problem, args.batch, dtype, args.seed)
    lossfunc = torch.nn.CrossEntropyLoss()

    exts, names = [], []
    for q in quantities:
        if q in problems.PRODUCTS:
            continue
        clsname = problems.BACKPACK_EXTENSIONS[q]
        if clsname in names:  # batch_grad and batch_dot_grad share BatchGrad
            continue
        names.append(clsname)
        cls = getattr(bpext, clsname)
        if clsname in ("DiagGGNMC", "BatchDiagGGNMC", "KFAC", "SqrtGGNMC"):
            exts.append(cls(mc_samples=args.mc_samples))
        else:
            exts.append(cls())
    if exts:
        model = backpack.extend(model)
        lossfunc = backpack.extend(lossfunc)
    if cuda:
        dev = torch.device("cuda")
        model = model.to(dev)  # in place for nn.Module: BackPACK's hooks stay
        lossfunc = lossfunc.to(dev)
        x, y = x.to(dev), y.to(dev)
        # Strict FP32 like curvpack's CUDA path (cuBLAS default math): no
        # TF32 in cuDNN convolutions (on by default) or in matrix products.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        row.update(gpu=torch.cuda.get_device_name(dev), tf32=False)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    batch_dot = "batch_dot_grad" in quantities
    savefields = [e.savefield for e in exts]
    if batch_dot:
        savefields.append("batch_dot")
    params = list(model.parameters())

    def clear():
        for p in params:
            p.grad = None
            for f in savefields:
                if hasattr(p, f):
                    delattr(p, f)

    vec = [torch.randn_like(p) for p in params]
    sync()

    def product_step():
        from backpack.hessianfree.ggnvp import ggn_vector_product_from_plist
        from backpack.hessianfree.hvp import hessian_vector_product
        out = model(x)
        loss = lossfunc(out, y)
        if products[0].startswith("hvp"):  # hvp, hvp_rop, hvp_dbl: its one way
            hessian_vector_product(loss, params, vec)
        else:
            ggn_vector_product_from_plist(loss, out, params, vec)
        return loss

    def step():
        if products:
            return product_step()
        loss = lossfunc(model(x), y)
        if exts:
            with backpack.backpack(*exts):
                loss.backward()
        else:
            loss.backward()
        if batch_dot:
            for p in params:
                gb = p.grad_batch.flatten(start_dim=1)
                p.batch_dot = gb @ gb.T
        return loss

    def timed_step():
        """One step that ends when its GPU work has finished."""
        loss = step()
        sync()
        return loss

    # ---- warm-up (also the support check: BackPACK raises on what it lacks).
    # On cpu the first warm-up run is the one measured for memory, under the
    # profiler; on cuda a warmed-up one (see the docstring). Their times are
    # not used.
    loss = None
    peak, method = None, None
    rss_base = rss_peak = None
    want_prof = args.memory in ("auto", "profiler") and not cuda
    want_cuda_mem = cuda and args.memory != "none"

    def measure_memory():
        nonlocal peak, method
        clear()
        peak = profiled_peak(step)
        if peak is not None:
            method = "torch-profiler"

    def measure_cuda_memory():
        # The allocator's growth over one step: intermediates plus results,
        # not the model, data or anything held before it.
        nonlocal peak, method
        clear()
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        timed_step()
        peak = max(0, torch.cuda.max_memory_allocated() - base)
        method = "torch-cuda"

    try:
        for w in range(args.warmup):
            if w == 0 and want_prof:
                t0 = time.perf_counter()
                measure_memory()
                if args.budget > 0 and time.perf_counter() - t0 > args.budget:
                    break
                continue
            if w == args.warmup - 1 and w > 0 and want_cuda_mem:  # last warm-up: memory
                t0 = time.perf_counter()
                measure_cuda_memory()
                if args.budget > 0 and time.perf_counter() - t0 > args.budget:
                    break
                continue
            clear()
            t0 = time.perf_counter()
            loss = timed_step()
            t = time.perf_counter() - t0
            if args.budget > 0 and t > args.budget:
                break
        if args.warmup == 0 and want_prof:
            measure_memory()
        if want_cuda_mem and method is None:  # one warm-up or none, or the budget cut it
            measure_cuda_memory()
        clear()
        if peak is None and not cuda and args.memory in ("auto", "rss") and reset_hwm():
            rss_base = read_status_kib("VmRSS")
        # ---- timed runs
        times = []
        total = 0.0
        for r in range(args.repeat):
            clear()
            sync()
            t0 = time.perf_counter()
            loss = timed_step()
            t = time.perf_counter() - t0
            times.append(t)
            total += t
            if args.budget > 0 and total >= args.budget and len(times) >= args.min_repeat:
                break
    except Exception as e:  # BackPACK raises NotImplementedError where it stops
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        row.update(status="unsupported" if isinstance(e, NotImplementedError) else "error",
                   reason=msg)
        emit(row)
        return 0
    if rss_base is not None:
        rss_peak = read_status_kib("VmHWM")
        if rss_peak is not None:
            peak, method = max(0, rss_peak - rss_base) * 1024, "rss-hwm"

    row.update(median_s=statistics.median(times), min_s=min(times), max_s=max(times),
               runs=len(times), warmup=args.warmup, peak_bytes=peak, memory_method=method,
               params=sum(p.numel() for p in params), loss=float(loss.item()),
               torch=torch.__version__, status="ok")
    emit(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
