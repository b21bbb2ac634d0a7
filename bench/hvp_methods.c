/*
 * hvp_methods.c: bench/hvp-methods, the two Hessian-vector product methods
 * of cpk_curvature_op (the R-operator and double backward) timed against
 * each other in one process, on one operator, in pairs.
 *
 *   bench/hvp-methods MODEL_FILE C[,H[,W]] [--batch N] [--threads T]
 *                     [--pairs R] [--classes K] [--dtype float32|float64]
 *
 * The operator is created once (forward and backward pass: the same for
 * both methods, so left out); then R pairs of one product of one random
 * vector each, the methods alternating which goes first. Other processes
 * on the machine slow both members of a pair alike, so the ratio of a pair
 * is steadier than either time. Prints one JSON line: per method the
 * minimum and median time of one product (ms), and the quartiles of the
 * paired ratio double backward / R-operator. Random normal inputs, uniform
 * class indices, cross-entropy (mean), as curvpack-bench. The problems of
 * curvpack-bench come from `bench/curvpack-bench --print-model NAME`.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "curvpack.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  const double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* xorshift-based uniform in [0, 1) and a Box-Muller normal. */
static double uniform(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return (double)(*s >> 11) * 0x1.0p-53;
}

static double normal(uint64_t *s) {
  double u = uniform(s), v = uniform(s);
  if (u < 1e-300)
    u = 1e-300;
  return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t len = 0, cap = 0;
  if (f == NULL)
    return NULL;
  for (int c; (c = fgetc(f)) != EOF;) {
    if (len + 2 > cap) {
      char *nb = realloc(buf, cap = cap ? 2 * cap : 4096);
      if (nb == NULL)
        break;
      buf = nb;
    }
    buf[len++] = (char)c;
  }
  fclose(f);
  if (buf != NULL)
    buf[len] = '\0';
  return buf;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: hvp-methods MODEL_FILE C[,H[,W]] [--batch N] [--threads T]\n"
          "                   [--pairs R] [--classes K] "
          "[--dtype float32|float64]\n");
}

int main(int argc, char **argv) {
  int64_t batch = 128, classes = 10, shape[3];
  int threads = 2, pairs = 30, ndim = 0;
  const char *dtype_name = "float32";
  if (argc < 3) {
    usage(stderr);
    return 2;
  }
  for (char *s = argv[2]; *s && ndim < 3; ndim++) {
    shape[ndim] = strtoll(s, &s, 10);
    if (*s == ',')
      s++;
  }
  for (int i = 3; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--batch"))
      batch = atoll(argv[i + 1]);
    else if (!strcmp(argv[i], "--threads"))
      threads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--pairs"))
      pairs = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--classes"))
      classes = atoll(argv[i + 1]);
    else if (!strcmp(argv[i], "--dtype"))
      dtype_name = argv[i + 1];
    else {
      usage(stderr);
      return 2;
    }
  }
  char *text = read_text(argv[1]);
  cpk_dtype dt;
  if (text == NULL || pairs < 1 || batch < 1 ||
      cpk_dtype_parse(dtype_name, &dt) != CPK_OK) {
    usage(stderr);
    return 2;
  }

  cpk_context_options o;
  memset(&o, 0, sizeof o);
  o.threads = threads;
  cpk_context *ctx = NULL;
  cpk_model *m = NULL;
  cpk_tensor *x = NULL, *y = NULL;
  cpk_curvature_op *op = NULL;
  int64_t xs[4] = {batch, shape[0], shape[1], shape[2]};
  int rc = cpk_context_new(&ctx, &o);
  if (rc == CPK_OK)
    rc = cpk_model_parse(&m, text, argv[1]);
  if (rc == CPK_OK)
    rc = cpk_model_build(m, ndim, shape, dt);
  if (rc == CPK_OK)
    rc = cpk_model_init_params(m, 0);
  if (rc == CPK_OK)
    rc = cpk_tensor_new(&x, dt, ndim + 1, xs);
  if (rc == CPK_OK)
    rc = cpk_tensor_new(&y, CPK_I64, 1, &batch);
  uint64_t s = 0x5eed0001ULL;
  for (int64_t i = 0; rc == CPK_OK && i < cpk_tensor_numel(x); i++)
    cpk_tensor_set(x, i, normal(&s));
  for (int64_t i = 0; rc == CPK_OK && i < batch; i++)
    ((int64_t *)y->data)[i] = (int64_t)(uniform(&s) * (double)classes);
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 0};
  if (rc == CPK_OK)
    rc = cpk_curvature_op_new(&op, ctx, m, &spec, x, y, CPK_CURV_HESSIAN);
  if (rc != CPK_OK) {
    fprintf(stderr, "hvp-methods: %s\n", cpk_last_error());
    return 1;
  }

  const int64_t p = cpk_curvature_op_dim(op);
  double *v = malloc((size_t)p * sizeof *v),
         *hv = malloc((size_t)p * sizeof *hv);
  double *t[2] = {malloc((size_t)pairs * sizeof(double)),
                  malloc((size_t)pairs * sizeof(double))};
  double *ratio = malloc((size_t)pairs * sizeof *ratio);
  for (int64_t i = 0; i < p; i++)
    v[i] = normal(&s);
  for (int w = 0; w < 4 && rc == CPK_OK; w++) { /* warm-up, both methods */
    rc = cpk_curvature_op_set_method(op, (cpk_hvp_method)(w % 2));
    if (rc == CPK_OK)
      rc = cpk_curvature_op_apply(op, 1, v, hv);
  }
  for (int i = 0; i < pairs && rc == CPK_OK; i++) {
    for (int j = 0; j < 2 && rc == CPK_OK; j++) {
      const int method = (i + j) % 2; /* alternate which goes first */
      rc = cpk_curvature_op_set_method(op, (cpk_hvp_method)method);
      const double t0 = now_s();
      if (rc == CPK_OK)
        rc = cpk_curvature_op_apply(op, 1, v, hv);
      t[method][i] = now_s() - t0;
    }
    ratio[i] = t[CPK_HVP_DOUBLE_BACKWARD][i] / t[CPK_HVP_ROP][i];
  }
  if (rc != CPK_OK) {
    fprintf(stderr, "hvp-methods: %s\n", cpk_last_error());
    return 1;
  }
  qsort(t[0], (size_t)pairs, sizeof(double), cmp_double);
  qsort(t[1], (size_t)pairs, sizeof(double), cmp_double);
  qsort(ratio, (size_t)pairs, sizeof(double), cmp_double);
  printf("{\"model\": \"%s\", \"batch\": %lld, \"threads\": %d, \"dtype\": "
         "\"%s\", "
         "\"pairs\": %d, \"params\": %lld, "
         "\"rop_min_ms\": %.3f, \"rop_median_ms\": %.3f, "
         "\"dbl_min_ms\": %.3f, \"dbl_median_ms\": %.3f, "
         "\"ratio_dbl_rop_q25\": %.4f, \"ratio_dbl_rop_median\": %.4f, "
         "\"ratio_dbl_rop_q75\": %.4f}\n",
         argv[1], (long long)batch, threads, dtype_name, pairs, (long long)p,
         1e3 * t[0][0], 1e3 * t[0][pairs / 2], 1e3 * t[1][0],
         1e3 * t[1][pairs / 2], ratio[pairs / 4], ratio[pairs / 2],
         ratio[3 * pairs / 4]);
  free(v);
  free(hv);
  free(t[0]);
  free(t[1]);
  free(ratio);
  free(text);
  cpk_curvature_op_free(op);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
  return 0;
}
