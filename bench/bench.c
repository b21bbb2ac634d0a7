/*
 * bench.c: curvpack-bench, the in-process timer behind bench/compare.
 *
 * Times one forward + backward pass (cpk_compute) with a set of extensions on
 * one of the standard problems (DeepOBS shapes, random data, fixed seed), and
 * prints ONE JSON line:
 *
 *   {"problem":..., "ext":..., "batch":..., "threads":..., "dtype":...,
 *    "device":..., "median_s":..., "min_s":..., "max_s":..., "runs":...,
 *    "peak_bytes":..., "memory_method":..., "params":..., "loss":...,
 *    "results":..., "params_upload":..., "status":"ok"}
 *
 * "status" is "unsupported" (with "reason") when a layer or an extension is
 * not built yet; the program then still exits 0.
 *
 * --device cuda runs the pass on the GPU (cpk_context_options.device =
 * CPK_DEVICE_CUDA): cpk_compute_ex uploads the input once, leaves the
 * results on the GPU (cpk_pass_options.results_on_device, "results":
 * "device"), as PyTorch + BackPACK leave theirs, and returns once the GPU has
 * finished the pass, so the timing is still the wall clock around it. The
 * model keeps its parameters on the GPU from the first (warm-up) pass on.
 * --results-to-host times the download of every result to host memory as
 * well ("results": "host", what a C caller that reads them on the CPU
 * waits for); --params-changed marks the parameters changed before every
 * pass (cpk_model_params_changed), so that each pass uploads them again
 * ("params_upload": "every pass" rather than "once"). hvp and ggnvp hand
 * their products back in host memory either way. A library built without
 * CUDA, or a machine
 * without a usable GPU (CPK_ENODEV), and what has no CUDA path yet (CPK_ENOTSUP
 * from the context, the check or cpk_compute: batch norm, dropout, the
 * hvp/ggnvp products, ...) give a row with status
 * "unsupported" and the library's reason, exit status 0. Memory on the GPU:
 * cpk_memory_peak() counts host allocations only, so for cuda peak_bytes is
 * the high-water mark of the device's default memory pool (the pool the
 * library allocates from with cudaMallocAsync), read through the CUDA driver
 * API (libcuda.so.1, opened at run time) and reset before the timed runs,
 * minus what was in use before them ("memory_method": "cuda-mempool"; cuBLAS
 * workspaces are not counted); when that cannot be read peak_bytes is null
 * and "memory_method" is "none". The host part is in "host_peak_bytes". With --roofline it measures
 * the machine instead: single/double-precision GEMM rate (cblas_sgemm and
 * cblas_dgemm on 2048^3) and memory bandwidth (STREAM copy and triad over
 * arrays far larger than the last-level cache).
 *
 * The model texts below must stay identical to bench/problems.py, which is
 * the source of truth; bench/compare checks this (curvpack-bench
 * --print-model NAME) before every run.
 */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>
#include <dlfcn.h>

#include "curvpack.h"

/* ---------------------------------------------------------------- problems */

typedef struct {
  const char *name;
  int ndim;
  int64_t shape[3];
  int classes;
  const char *model; /* model-file text (contract.md), one layer a line */
} problem;

static const problem problems[] = {
    {"mnist_logreg", 3, {1, 28, 28}, 10,
     "flatten\n"
     "linear 784 10\n"},
    {"mnist_mlp", 3, {1, 28, 28}, 10,
     "flatten\n"
     "linear 784 1000\n"
     "relu\n"
     "linear 1000 500\n"
     "relu\n"
     "linear 500 100\n"
     "relu\n"
     "linear 100 10\n"},
    {"mnist_mlp_sigmoid", 3, {1, 28, 28}, 10,
     "flatten\n"
     "linear 784 1000\n"
     "sigmoid\n"
     "linear 1000 500\n"
     "sigmoid\n"
     "linear 500 100\n"
     "sigmoid\n"
     "linear 100 10\n"},
    {"fmnist_2c2d", 3, {1, 28, 28}, 10,
     "conv2d 1 32 5 padding=2\n"
     "relu\n"
     "maxpool2d 2 stride=2\n"
     "conv2d 32 64 5 padding=2\n"
     "relu\n"
     "maxpool2d 2 stride=2\n"
     "flatten\n"
     "linear 3136 1024\n"
     "relu\n"
     "linear 1024 10\n"},
    {"cifar10_3c3d", 3, {3, 32, 32}, 10,
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
     "linear 256 10\n"},
};
#define NUM_PROBLEMS ((int)(sizeof problems / sizeof problems[0]))

static const problem *find_problem(const char *name) {
  for (int i = 0; i < NUM_PROBLEMS; i++)
    if (strcmp(problems[i].name, name) == 0)
      return &problems[i];
  return NULL;
}

/* ------------------------------------------------------------------ output */

/* Print `s` as a JSON string literal. */
static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': fputs("\\\"", f); break;
    case '\\': fputs("\\\\", f); break;
    case '\n': fputs("\\n", f); break;
    case '\t': fputs("\\t", f); break;
    case '\r': fputs("\\r", f); break;
    default:
      if (*p < 0x20)
        fprintf(f, "\\u%04x", *p);
      else
        fputc(*p, f);
    }
  }
  fputc('"', f);
}

typedef struct {
  const char *problem;
  const char *ext;
  int batch;
  int threads;
  const char *dtype;
  const char *device;
} row_id;

static void print_head(const row_id *id) {
  printf("{\"tool\": \"curvpack\", \"problem\": ");
  json_str(stdout, id->problem);
  printf(", \"ext\": ");
  json_str(stdout, id->ext);
  printf(", \"batch\": %d, \"threads\": %d, \"dtype\": ", id->batch, id->threads);
  json_str(stdout, id->dtype);
  printf(", \"device\": ");
  json_str(stdout, id->device);
}

/* One JSON line for a row that did not run. */
static void print_status(const row_id *id, const char *status, const char *reason) {
  print_head(id);
  printf(", \"status\": ");
  json_str(stdout, status);
  printf(", \"reason\": ");
  json_str(stdout, reason);
  printf("}\n");
  fflush(stdout);
}

/* ------------------------------------------------------------------- utils */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* splitmix64: a small fixed-seed generator, so data is the same every run. */
static uint64_t rng_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s) { /* in (0, 1) */
  return ((double)(rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double rng_normal(uint64_t *s) {
  double u = rng_uniform(s), v = rng_uniform(s);
  return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static int parse_int(const char *s, const char *opt, long lo, long hi, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *s == '\0' || *end != '\0' || v < lo || v > hi) {
    fprintf(stderr, "curvpack-bench: error: %s expects an integer in [%ld, %ld], got '%s'\n",
            opt, lo, hi, s);
    return -1;
  }
  *out = (int)v;
  return 0;
}

static int parse_double(const char *s, const char *opt, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *s == '\0' || *end != '\0' || !(v >= 0)) {
    fprintf(stderr, "curvpack-bench: error: %s expects a number >= 0, got '%s'\n", opt, s);
    return -1;
  }
  *out = v;
  return 0;
}

/* Read a whole file into a NUL-terminated buffer (malloc'd). */
static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t len = 0, cap = 0, n;
  if (f == NULL)
    return NULL;
  do {
    if (cap - len < 4096) {
      char *nb = realloc(buf, cap = cap * 2 + 8192);
      if (nb == NULL) {
        free(buf);
        fclose(f);
        return NULL;
      }
      buf = nb;
    }
    n = fread(buf + len, 1, cap - len - 1, f);
    len += n;
  } while (n > 0);
  fclose(f);
  buf[len] = '\0';
  return buf;
}

/* ----------------------------------------------------- device memory (CUDA)
 * The library allocates device memory with cudaMallocAsync from the default
 * memory pool of device 0. That pool's "used" counters are read through the
 * driver API, opened at run time so that this program needs neither the CUDA
 * headers nor a link against libcuda (the driver is shared by the whole
 * process, whichever runtime the library was linked with). Values of the
 * CUmemPool_attribute enum (cuda.h): USED_MEM_CURRENT 7, USED_MEM_HIGH 8. */

typedef int (*cu_init_fn)(unsigned);
typedef int (*cu_device_get_fn)(int *, int);
typedef int (*cu_default_pool_fn)(void **, int);
typedef int (*cu_pool_attr_fn)(void *, int, void *);

typedef int (*cu_ctx_sync_fn)(void);

typedef struct {
  cu_pool_attr_fn get, set;
  cu_ctx_sync_fn sync;
  void *pool;
} devmem;

enum { CU_POOL_USED_CURRENT = 7, CU_POOL_USED_HIGH = 8 };

/* 0 when the pool can be read; -1 otherwise (peak_bytes is then null). */
static int devmem_open(devmem *m) {
  memset(m, 0, sizeof *m);
  void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL)
    return -1;
  cu_init_fn init = (cu_init_fn)dlsym(lib, "cuInit");
  cu_device_get_fn devget = (cu_device_get_fn)dlsym(lib, "cuDeviceGet");
  cu_default_pool_fn poolget = (cu_default_pool_fn)dlsym(lib, "cuDeviceGetDefaultMemPool");
  m->get = (cu_pool_attr_fn)dlsym(lib, "cuMemPoolGetAttribute");
  m->set = (cu_pool_attr_fn)dlsym(lib, "cuMemPoolSetAttribute");
  m->sync = (cu_ctx_sync_fn)dlsym(lib, "cuCtxSynchronize");
  int dev = 0;
  if (!init || !devget || !poolget || !m->get || !m->set || init(0) != 0 ||
      devget(&dev, 0) != 0 || poolget(&m->pool, dev) != 0 || m->pool == NULL) {
    m->pool = NULL;
    return -1; /* the handle stays open: the driver is in use anyway */
  }
  return 0;
}

static int devmem_get(const devmem *m, int attr, uint64_t *v) {
  *v = 0;
  if (m->pool != NULL && m->sync != NULL)
    (void)m->sync(); /* let stream-ordered frees of the last pass land */
  return m->pool != NULL && m->get(m->pool, attr, v) == 0 ? 0 : -1;
}

/* Reset the pool's high-water mark (it restarts from what is in use). */
static int devmem_reset_peak(const devmem *m) {
  uint64_t zero = 0;
  return m->pool != NULL && m->set(m->pool, CU_POOL_USED_HIGH, &zero) == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- roofline */

static void set_threads(int threads) {
  omp_set_num_threads(threads);
#ifdef OPENBLAS_VERSION
  openblas_set_num_threads(threads);
#endif
}

/* Best GFLOP/s of C := A*B on n x n x n over `reps` runs (after one warm-up). */
static double gemm_gflops(int n, int reps, int dbl) {
  size_t nn = (size_t)n * (size_t)n;
  size_t es = dbl ? sizeof(double) : sizeof(float);
  void *a = malloc(nn * es), *b = malloc(nn * es), *c = malloc(nn * es);
  double best = 0;
  if (!a || !b || !c)
    goto done;
  for (size_t i = 0; i < nn; i++) {
    double va = (double)(i % 7) * 0.01, vb = (double)(i % 5) * 0.02;
    if (dbl) {
      ((double *)a)[i] = va;
      ((double *)b)[i] = vb;
      ((double *)c)[i] = 0;
    } else {
      ((float *)a)[i] = (float)va;
      ((float *)b)[i] = (float)vb;
      ((float *)c)[i] = 0;
    }
  }
  for (int r = 0; r <= reps; r++) {
    double t0 = now_s();
    if (dbl)
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, a, n, b, n, 0.0,
                  c, n);
    else
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
                  0.0f, c, n);
    double t = now_s() - t0;
    double g = 2.0 * n * (double)n * n / t * 1e-9;
    if (r > 0 && g > best) /* run 0 is the warm-up */
      best = g;
  }
done:
  free(a);
  free(b);
  free(c);
  return best;
}

/* STREAM-like copy (b = a) and triad (a = b + s*c) over doubles; best GB/s,
 * counting the bytes STREAM counts (reads + writes, no write-allocate). */
static void stream_gbs(size_t n, int reps, double *copy_gbs, double *triad_gbs) {
  double *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b), *c = malloc(n * sizeof *c);
  *copy_gbs = *triad_gbs = 0;
  if (!a || !b || !c)
    goto done;
  const long ln = (long)n;
#pragma omp parallel for schedule(static)
  for (long i = 0; i < ln; i++) { /* first touch by the threads that use it */
    a[i] = 1.0;
    b[i] = 2.0;
    c[i] = 0.5;
  }
  for (int r = 0; r <= reps; r++) {
    double t0 = now_s();
#pragma omp parallel for schedule(static)
    for (long i = 0; i < ln; i++)
      b[i] = a[i];
    double t1 = now_s();
#pragma omp parallel for schedule(static)
    for (long i = 0; i < ln; i++)
      a[i] = b[i] + 3.0 * c[i];
    double t2 = now_s();
    double cg = 2.0 * sizeof(double) * (double)n / (t1 - t0) * 1e-9;
    double tg = 3.0 * sizeof(double) * (double)n / (t2 - t1) * 1e-9;
    if (r > 0) {
      if (cg > *copy_gbs)
        *copy_gbs = cg;
      if (tg > *triad_gbs)
        *triad_gbs = tg;
    }
  }
  if (!isfinite(a[n / 2]) || b[n / 3] < 1.0) /* keep the loops observable */
    fprintf(stderr, "curvpack-bench: warning: stream check failed\n");
done:
  free(a);
  free(b);
  free(c);
}

/* The curvature-vector products curvpack-bench times (--ext NAME alone):
 * the Hessian by the library's default method, the GGN, and the Hessian by
 * each method (cpk_curvature_op_set_method), to measure one against the
 * other in the same run. */
enum { PROD_NONE, PROD_HVP, PROD_GGNVP, PROD_HVP_ROP, PROD_HVP_DBL };
static const char *const product_names[] = {NULL, "hvp", "ggnvp", "hvp_rop",
                                            "hvp_dbl"};

static int product_of(const char *name) {
  for (int p = PROD_HVP; p <= PROD_HVP_DBL; p++)
    if (!strcmp(name, product_names[p]))
      return p;
  return PROD_NONE;
}

/* One timed unit: a pass with the requested extensions (results in *res,
 * in device memory with opts->results_on_device on the GPU), or, for a
 * product, one curvature-vector product with its forward pass (*res stays
 * NULL). */
static int one_pass(cpk_context *ctx, cpk_model *model,
                    const cpk_pass_spec *spec, const cpk_pass_options *opts,
                    const cpk_tensor *input, const cpk_tensor *target,
                    int product, const double *vec, double *hv,
                    cpk_results **res) {
  if (!product)
    return cpk_compute_ex(ctx, model, spec, opts, input, target, res);
  cpk_curvature_op *op;
  int rc = cpk_curvature_op_new(&op, ctx, model, spec, input, target,
                                product == PROD_GGNVP ? CPK_CURV_GGN
                                                      : CPK_CURV_HESSIAN);
  if (rc == CPK_OK && product == PROD_HVP_ROP)
    rc = cpk_curvature_op_set_method(op, CPK_HVP_ROP);
  if (rc == CPK_OK && product == PROD_HVP_DBL)
    rc = cpk_curvature_op_set_method(op, CPK_HVP_DOUBLE_BACKWARD);
  if (rc == CPK_OK)
    rc = cpk_curvature_op_apply(op, 1, vec, hv);
  cpk_curvature_op_free(op);
  return rc;
}

static int run_roofline(int threads) {
  set_threads(threads);
  double sg = gemm_gflops(2048, 4, 0);
  double dg = gemm_gflops(2048, 2, 1);
  double copy, triad;
  /* 3 arrays of 2^24 doubles: 384 MiB, far beyond any last-level cache. */
  stream_gbs((size_t)1 << 24, 5, &copy, &triad);
  printf("{\"roofline\": true, \"sgemm_gflops\": %.2f, \"dgemm_gflops\": %.2f, "
         "\"bandwidth_gbs\": %.2f, \"copy_gbs\": %.2f, \"triad_gbs\": %.2f, "
         "\"gemm_n\": 2048, \"stream_bytes\": %zu, \"threads\": %d}\n",
         sg, dg, triad, copy, triad, (size_t)3 << 27, threads);
  return 0;
}

/* --------------------------------------------------------------------- main */

static void usage(FILE *f) {
  fprintf(f,
          "usage: curvpack-bench --problem NAME [--batch N] [--threads T]\n"
          "                      [--dtype float32|float64] [--ext LIST]\n"
          "                      [--warmup W] [--repeat R] [--min-repeat M]\n"
          "                      [--budget SECONDS] [--seed S] [--mc-samples M]\n"
          "                      [--device cpu|cuda] [--results-to-host]\n"
          "                      [--params-changed]\n"
          "       curvpack-bench --model FILE --input-shape C,H,W [--classes K] ...\n"
          "       curvpack-bench --roofline [--threads T]\n"
          "       curvpack-bench --print-model NAME | --list\n"
          "\n"
          "Times one forward + backward pass (cpk_compute) with the extensions in\n"
          "LIST (comma-separated; \"\" or \"grad\": the plain gradient), W warm-up\n"
          "runs then R timed runs (stopping early, after at least M runs, once the\n"
          "timed runs add up to SECONDS when --budget is given), and prints one\n"
          "JSON line with median_s, min_s and peak_bytes (the high-water mark of\n"
          "library allocations during the timed runs, above what was held before).\n"
          "--device cuda computes on the GPU (peak_bytes: the device memory pool's\n"
          "high-water mark; \"unsupported\" rows where there is no GPU or no CUDA\n"
          "path for a layer, an extension or a product yet), leaving the results\n"
          "there as BackPACK does; --results-to-host times their download to host\n"
          "memory too, --params-changed an upload of the parameters at every pass\n"
          "(the model keeps them on the GPU otherwise).\n"
          "A product is timed alone, one product of one random vector with its\n"
          "forward pass (and backward pass, for the Hessian): --ext hvp (the\n"
          "Hessian, the library's default method), hvp_rop (R-operator), hvp_dbl\n"
          "(double backward), ggnvp (the GGN).\n"
          "Problems: mnist_logreg mnist_mlp mnist_mlp_sigmoid fmnist_2c2d cifar10_3c3d.\n"
          "Defaults: --batch 128 --threads 2 --dtype float32 --warmup 2 --repeat 10\n"
          "          --min-repeat 3 --seed 0 --device cpu.\n");
}

int main(int argc, char **argv) {
  const char *problem_name = NULL, *model_path = NULL, *ext = "", *dtype_name = "float32";
  const char *shape_arg = NULL, *device_name = "cpu";
  int batch = 128, threads = 2, warmup = 2, repeat = 10, min_repeat = 3, seed = 0;
  int mc_samples = 1, classes = 10, roofline = 0;
  int results_to_host = 0, params_changed = 0;
  double budget = 0;

  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDV()                                                                \
  do {                                                                         \
    if (v == NULL) {                                                           \
      fprintf(stderr, "curvpack-bench: error: %s needs a value\n", a);         \
      return 2;                                                                \
    }                                                                          \
    i++;                                                                       \
  } while (0)
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    } else if (!strcmp(a, "--list")) {
      for (int p = 0; p < NUM_PROBLEMS; p++)
        printf("%s\n", problems[p].name);
      return 0;
    } else if (!strcmp(a, "--print-model")) {
      NEEDV();
      const problem *p = find_problem(v);
      if (p == NULL) {
        fprintf(stderr, "curvpack-bench: error: unknown problem '%s'\n", v);
        return 2;
      }
      fputs(p->model, stdout);
      return 0;
    } else if (!strcmp(a, "--roofline")) {
      roofline = 1;
    } else if (!strcmp(a, "--results-to-host")) {
      results_to_host = 1;
    } else if (!strcmp(a, "--params-changed")) {
      params_changed = 1;
    } else if (!strcmp(a, "--problem")) {
      NEEDV();
      problem_name = v;
    } else if (!strcmp(a, "--model")) {
      NEEDV();
      model_path = v;
    } else if (!strcmp(a, "--input-shape")) {
      NEEDV();
      shape_arg = v;
    } else if (!strcmp(a, "--ext")) {
      NEEDV();
      ext = v;
    } else if (!strcmp(a, "--device")) {
      NEEDV();
      if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
        fprintf(stderr, "curvpack-bench: error: --device expects cpu or cuda, got '%s'\n", v);
        return 2;
      }
      device_name = v;
    } else if (!strcmp(a, "--dtype")) {
      NEEDV();
      dtype_name = v;
    } else if (!strcmp(a, "--batch")) {
      NEEDV();
      if (parse_int(v, a, 1, 1L << 24, &batch))
        return 2;
    } else if (!strcmp(a, "--threads")) {
      NEEDV();
      if (parse_int(v, a, 1, 4096, &threads))
        return 2;
    } else if (!strcmp(a, "--warmup")) {
      NEEDV();
      if (parse_int(v, a, 0, 1000000, &warmup))
        return 2;
    } else if (!strcmp(a, "--repeat")) {
      NEEDV();
      if (parse_int(v, a, 1, 1000000, &repeat))
        return 2;
    } else if (!strcmp(a, "--min-repeat")) {
      NEEDV();
      if (parse_int(v, a, 1, 1000000, &min_repeat))
        return 2;
    } else if (!strcmp(a, "--budget")) {
      NEEDV();
      if (parse_double(v, a, &budget))
        return 2;
    } else if (!strcmp(a, "--seed")) {
      NEEDV();
      if (parse_int(v, a, 0, 2147483647L, &seed))
        return 2;
    } else if (!strcmp(a, "--mc-samples")) {
      NEEDV();
      if (parse_int(v, a, 1, 1000000, &mc_samples))
        return 2;
    } else if (!strcmp(a, "--classes")) {
      NEEDV();
      if (parse_int(v, a, 1, 1000000, &classes))
        return 2;
    } else {
      fprintf(stderr, "curvpack-bench: error: unknown option '%s'\n", a);
      usage(stderr);
      return 2;
    }
#undef NEEDV
  }

  if (roofline)
    return run_roofline(threads);

  /* ---- the problem: built-in, or a model file with an input shape */
  problem custom = {"custom", 0, {0, 0, 0}, classes, NULL};
  const problem *prob = NULL;
  char *model_text = NULL;
  if (model_path != NULL) {
    if (shape_arg == NULL) {
      fprintf(stderr, "curvpack-bench: error: --model needs --input-shape\n");
      return 2;
    }
    model_text = read_text(model_path);
    if (model_text == NULL) {
      fprintf(stderr, "curvpack-bench: error: cannot read model file '%s': %s\n",
              model_path, strerror(errno));
      return 1;
    }
    const char *s = shape_arg;
    while (*s) {
      char *end;
      long d = strtol(s, &end, 10);
      if (end == s || d < 1 || custom.ndim == 3 || (*end != ',' && *end != '\0')) {
        fprintf(stderr, "curvpack-bench: error: --input-shape expects 1 to 3 positive "
                        "integers separated by commas, got '%s'\n",
                shape_arg);
        return 2;
      }
      custom.shape[custom.ndim++] = d;
      s = *end ? end + 1 : end;
    }
    custom.name = problem_name ? problem_name : model_path;
    custom.model = model_text;
    prob = &custom;
  } else {
    if (problem_name == NULL) {
      fprintf(stderr, "curvpack-bench: error: --problem or --roofline is required\n");
      usage(stderr);
      return 2;
    }
    prob = find_problem(problem_name);
    if (prob == NULL) {
      fprintf(stderr, "curvpack-bench: error: unknown problem '%s' (see --list)\n",
              problem_name);
      return 2;
    }
  }

  row_id id = {prob->name, ext, batch, threads, dtype_name, device_name};
  const int on_cuda = !strcmp(device_name, "cuda");
  cpk_dtype dtype;
  if (cpk_dtype_parse(dtype_name, &dtype) != CPK_OK || (dtype != CPK_F32 && dtype != CPK_F64)) {
    fprintf(stderr, "curvpack-bench: error: --dtype expects float32 or float64, got '%s'\n",
            dtype_name);
    return 2;
  }

  /* ---- the extension list: "grad" (or nothing) means the plain gradient */
  char extlist[1024] = "";
  {
    char buf[1024];
    if (strlen(ext) >= sizeof buf) {
      fprintf(stderr, "curvpack-bench: error: --ext list too long\n");
      return 2;
    }
    strcpy(buf, ext);
    for (char *tok = strtok(buf, ","); tok != NULL; tok = strtok(NULL, ",")) {
      while (*tok == ' ')
        tok++;
      if (*tok == '\0' || !strcmp(tok, "grad"))
        continue;
      if (product_of(tok) != PROD_NONE && !extlist[0] &&
          strtok(NULL, ",") == NULL) { /* a product is timed alone */
        strcpy(extlist, tok);
        break;
      }
      if (!cpk_extension_known(tok)) {
        char msg[256];
        snprintf(msg, sizeof msg, "unknown extension '%s'", tok);
        print_status(&id, "error", msg);
        return 2;
      }
      if (!cpk_extension_available(tok)) {
        char msg[256];
        snprintf(msg, sizeof msg, "extension '%s' is not implemented yet", tok);
        print_status(&id, "unsupported", msg);
        return 0;
      }
      if (extlist[0])
        strcat(extlist, ",");
      strcat(extlist, tok);
    }
  }

  int rc, status = 1;
  cpk_model *model = NULL;
  cpk_context *ctx = NULL;
  cpk_tensor *input = NULL, *target = NULL;
  cpk_results *res = NULL;
  double *times = NULL, *vec = NULL, *hv = NULL;
  char reason[512];

  /* ---- model: parse, build, initialise. A layer the library does not know
   * yet shows up as ENOTSUP (or as an unknown layer, EUSAGE): the model text
   * itself is valid by the contract (problems.py builds it in PyTorch). */
  rc = cpk_model_parse(&model, prob->model, prob->name);
  if (rc == CPK_OK)
    rc = cpk_model_build(model, prob->ndim, prob->shape, dtype);
  if (rc == CPK_ENOTSUP || rc == CPK_EUSAGE) {
    snprintf(reason, sizeof reason, "model: %s", cpk_last_error());
    print_status(&id, "unsupported", reason);
    status = 0;
    goto out;
  }
  if (rc == CPK_OK)
    rc = cpk_model_init_params(model, (uint64_t)seed);
  if (rc != CPK_OK) {
    snprintf(reason, sizeof reason, "model: %s: %s", cpk_err_name(rc), cpk_last_error());
    print_status(&id, "error", reason);
    goto out;
  }

  /* ---- data: standard normal inputs, uniform class indices */
  {
    int64_t ishape[4] = {batch, prob->shape[0], prob->shape[1], prob->shape[2]};
    int64_t tshape[1] = {batch};
    rc = cpk_tensor_new(&input, dtype, prob->ndim + 1, ishape);
    if (rc == CPK_OK)
      rc = cpk_tensor_new(&target, CPK_I64, 1, tshape);
    if (rc != CPK_OK) {
      snprintf(reason, sizeof reason, "data: %s", cpk_last_error());
      print_status(&id, "error", reason);
      goto out;
    }
    uint64_t s = 0x5eed0000ULL + (uint64_t)seed;
    int64_t n_in = cpk_tensor_numel(input);
    if (dtype == CPK_F32) {
      float *x = input->data;
      for (int64_t i = 0; i < n_in; i++)
        x[i] = (float)rng_normal(&s);
    } else {
      double *x = input->data;
      for (int64_t i = 0; i < n_in; i++)
        x[i] = rng_normal(&s);
    }
    int64_t *y = target->data;
    for (int64_t i = 0; i < batch; i++)
      y[i] = (int64_t)(rng_next(&s) % (uint64_t)prob->classes);
  }

  /* ---- context and pass */
  cpk_context_options opts;
  memset(&opts, 0, sizeof opts);
  opts.threads = threads;
  opts.device = on_cuda ? CPK_DEVICE_CUDA : CPK_DEVICE_CPU;
  opts.seed = (uint64_t)seed;
  opts.mc_samples = mc_samples;
  rc = cpk_context_new(&ctx, &opts);
  if (rc == CPK_ENODEV || rc == CPK_ENOTSUP) { /* no GPU, or no CUDA in this build */
    snprintf(reason, sizeof reason, "%s", cpk_last_error());
    print_status(&id, "unsupported", reason);
    status = 0;
    goto out;
  }
  if (rc != CPK_OK) {
    snprintf(reason, sizeof reason, "context: %s", cpk_last_error());
    print_status(&id, "error", reason);
    goto out;
  }
  cpk_pass_spec spec;
  memset(&spec, 0, sizeof spec);
  spec.loss = CPK_LOSS_CROSS_ENTROPY;
  spec.reduction = CPK_REDUCTION_MEAN;
  spec.extensions =
      extlist[0] && product_of(extlist) == PROD_NONE ? extlist : NULL;
  spec.training = 0;
  rc = cpk_check_pass(model, &spec, input, target);
  if (rc == CPK_ENOTSUP) {
    snprintf(reason, sizeof reason, "%s", cpk_last_error());
    print_status(&id, "unsupported", reason);
    status = 0;
    goto out;
  }
  if (rc != CPK_OK) {
    snprintf(reason, sizeof reason, "check: %s: %s", cpk_err_name(rc), cpk_last_error());
    print_status(&id, "error", reason);
    goto out;
  }

  /* products: time one curvature-vector product with a fixed random
   * vector, forward pass included (cpk_curvature_op_new + apply). */
  int product = product_of(extlist);
  if (product) {
    spec.extensions = NULL;
    const int64_t dim = cpk_model_param_count(model);
    vec = malloc((size_t)dim * sizeof *vec);
    hv = malloc((size_t)dim * sizeof *hv);
    if (vec == NULL || hv == NULL) {
      print_status(&id, "error", "out of memory for the vectors");
      goto out;
    }
    uint64_t s = (uint64_t)seed + 7;
    for (int64_t i = 0; i < dim; i++)
      vec[i] = rng_normal(&s);
  }

  /* On the GPU the results stay there unless --results-to-host. */
  cpk_pass_options popts;
  memset(&popts, 0, sizeof popts);
  popts.results_on_device = on_cuda && !results_to_host;

  /* ---- warm-up (a single run slower than the budget ends the warm-up) */
  double loss = NAN;
  for (int w = 0; w < warmup; w++) {
    if (params_changed)
      cpk_model_params_changed(model);
    double t0 = now_s();
    rc = one_pass(ctx, model, &spec, &popts, input, target, product, vec, hv,
                  &res);
    double t = now_s() - t0;
    if (rc != CPK_OK)
      break;
    const cpk_tensor *l = res ? cpk_results_find(res, "loss") : NULL;
    if (l != NULL)
      loss = cpk_tensor_get(l, 0);
    cpk_results_free(res);
    res = NULL;
    if (budget > 0 && t > budget)
      break;
  }

  /* ---- timed runs; peak memory above what is held before them */
  times = malloc((size_t)repeat * sizeof *times);
  if (times == NULL) {
    print_status(&id, "error", "out of memory for the timings");
    goto out;
  }
  int runs = 0;
  double total = 0;
  size_t held = 0;
  devmem dm;
  uint64_t dev_held = 0;
  int dev_ok = 0;
  if (rc == CPK_OK) {
    if (on_cuda)
      dev_ok = devmem_open(&dm) == 0 && devmem_get(&dm, CU_POOL_USED_CURRENT, &dev_held) == 0 &&
               devmem_reset_peak(&dm) == 0;
    held = cpk_memory_in_use();
    cpk_memory_reset_peak();
    for (runs = 0; runs < repeat;) {
      if (params_changed)
        cpk_model_params_changed(model);
      double t0 = now_s();
      rc = one_pass(ctx, model, &spec, &popts, input, target, product, vec, hv,
                    &res);
      double t = now_s() - t0;
      if (rc != CPK_OK)
        break;
      times[runs++] = t;
      total += t;
      const cpk_tensor *l = res ? cpk_results_find(res, "loss") : NULL;
      if (l != NULL)
        loss = cpk_tensor_get(l, 0);
      cpk_results_free(res);
      res = NULL;
      if (budget > 0 && total >= budget && runs >= min_repeat)
        break;
    }
  }
  if (rc == CPK_ENOTSUP || (on_cuda && rc == CPK_ENODEV)) {
    snprintf(reason, sizeof reason, "%s", cpk_last_error());
    print_status(&id, "unsupported", reason);
    status = 0;
    goto out;
  }
  if (rc != CPK_OK) {
    snprintf(reason, sizeof reason, "compute: %s: %s", cpk_err_name(rc), cpk_last_error());
    print_status(&id, "error", reason);
    goto out;
  }
  size_t peak = cpk_memory_peak();
  size_t peak_bytes = peak > held ? peak - held : 0;
  uint64_t dev_peak = 0;
  if (dev_ok)
    dev_ok = devmem_get(&dm, CU_POOL_USED_HIGH, &dev_peak) == 0;
  double tmin = times[0], tmax = times[0];
  for (int i = 1; i < runs; i++) {
    if (times[i] < tmin)
      tmin = times[i];
    if (times[i] > tmax)
      tmax = times[i];
  }
  double tmed = median(times, runs);

  print_head(&id);
  printf(", \"median_s\": %.6g, \"min_s\": %.6g, \"max_s\": %.6g, \"runs\": %d, "
         "\"warmup\": %d, ",
         tmed, tmin, tmax, runs, warmup);
  if (!on_cuda)
    printf("\"peak_bytes\": %zu, \"memory_method\": \"cpk-memory-peak\", ", peak_bytes);
  else if (dev_ok)
    printf("\"peak_bytes\": %llu, \"memory_method\": \"cuda-mempool\", "
           "\"host_peak_bytes\": %zu, ",
           (unsigned long long)(dev_peak > dev_held ? dev_peak - dev_held : 0), peak_bytes);
  else
    printf("\"peak_bytes\": null, \"memory_method\": \"none\", \"host_peak_bytes\": %zu, ",
           peak_bytes);
  printf("\"params\": %lld, \"loss\": ", (long long)cpk_model_param_count(model));
  if (isfinite(loss))
    printf("%.8g", loss);
  else
    printf("null");
  if (on_cuda)
    printf(", \"results\": \"%s\", \"params_upload\": \"%s\"",
           product || results_to_host ? "host" : "device",
           params_changed ? "every pass" : "once");
  printf(", \"status\": \"ok\"}\n");
  fflush(stdout);
  status = 0;

out:
  free(times);
  free(vec);
  free(hv);
  cpk_results_free(res);
  cpk_tensor_free(input);
  cpk_tensor_free(target);
  cpk_context_free(ctx);
  cpk_model_free(model);
  free(model_text);
  return status;
}
