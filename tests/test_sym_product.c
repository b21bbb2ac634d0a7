/*
 * test_sym_product.c: cpk__gemm_tn_symmetric (ops_cpu.c), C = A^T B for a
 * product known to be symmetric, computed in row panels on and above the
 * diagonal and mirrored where that pays, against a direct sum written here:
 *  - A^T (M A) with M symmetric, for sizes on both sides of the panels'
 *    path (the GEMM below n = 256, panels from there) and sizes that do not
 *    split evenly, with a row stride of C wider than n (the padding left
 *    untouched); float64 and float32;
 *  - through the linear layer's KFRA step (W^T M W, linear 600 -> 320);
 *  - cpk__syrk, C := alpha op(A) op(A)^T + beta C, on each of its paths
 *    (row panels from n = 256, the GEMM's square for small n and k, BLAS
 *    syrk split over k), with A and with A^T, beta 0 and a symmetric C.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "ops.h"
#include "testutil.h"

/* A symmetric [n, n] with entries in [-1, 1). */
static double *symmetric(int64_t n, uint64_t seed) {
  int64_t shape[2] = {n, n};
  cpk_tensor *t = tu_random(CPK_F64, 2, shape, -1, 1, seed);
  double *m = malloc((size_t)(n * n) * sizeof *m), *r = t->data;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++)
      m[i * n + j] = i <= j ? r[i * n + j] : r[j * n + i];
  cpk_tensor_free(t);
  return m;
}

/* ma = M A and want = A^T (M A) for A [k, n], M [k, k]; mag holds the sum
 * of the magnitudes of each entry's terms (for the tolerance). */
static void direct(int64_t n, int64_t k, const double *a, const double *m,
                   double *ma, double *want, double *mag) {
  tu_product(k, n, k, m, k, 1, a, ma, NULL);
  tu_product(n, n, k, a, 1, n, ma, want, mag);
}

/* C [n, n] (row stride ldc) against want within rtol * scale per entry,
 * and its padding still the 0x7f marker. */
static void expect_padded(cpk_dtype dt, int64_t n, int64_t ldc, const void *c,
                          const double *want, const double *scale,
                          double rtol, const char *what) {
  const size_t es = cpk_dtype_size(dt);
  for (int64_t i = 0; i < n; i++) {
    for (int64_t j = 0; j < n; j++) {
      const double got = dt == CPK_F32 ? ((const float *)c)[i * ldc + j]
                                       : ((const double *)c)[i * ldc + j];
      if (!(fabs(got - want[i * n + j]) <= rtol * scale[i * n + j] + 1e-300)) {
        fprintf(stderr, "%s %s: C[%lld,%lld] = %.17g, want %.17g\n", what,
                dt == CPK_F32 ? "f32" : "f64", (long long)i, (long long)j, got,
                want[i * n + j]);
        fail();
      }
    }
    for (int64_t j = n; j < ldc; j++) /* the padding is not written */
      assert_int_equal(
          ((const unsigned char *)c)[(size_t)(i * ldc + j) * es], 0x7f);
  }
}

static void check(cpk_dtype dt, int64_t n, int64_t k, uint64_t seed) {
  int64_t as[2] = {k, n};
  cpk_tensor *at = tu_random(CPK_F64, 2, as, -1, 1, seed);
  double *m = symmetric(k, seed + 1);
  double *ma = malloc((size_t)(k * n) * sizeof *ma);
  double *want = malloc((size_t)(n * n) * sizeof *want);
  double *mag = malloc((size_t)(n * n) * sizeof *mag);
  direct(n, k, at->data, m, ma, want, mag);
  const int64_t ldc = n + 3;
  const size_t es = cpk_dtype_size(dt);
  void *a = malloc((size_t)(k * n) * es), *b = malloc((size_t)(k * n) * es);
  void *c = malloc((size_t)(n * ldc) * es);
  for (int64_t i = 0; i < k * n; i++) {
    const double x = ((double *)at->data)[i];
    if (dt == CPK_F32) {
      ((float *)a)[i] = (float)x;
      ((float *)b)[i] = (float)ma[i];
    } else {
      ((double *)a)[i] = x;
      ((double *)b)[i] = ma[i];
    }
  }
  memset(c, 0x7f, (size_t)(n * ldc) * es); /* a marker in the padding */
  cpk__gemm_tn_symmetric(NULL, dt, n, k, a, n, b, n, c, ldc);
  char what[64];
  snprintf(what, sizeof what, "A^T (M A), n=%lld k=%lld", (long long)n,
           (long long)k);
  expect_padded(dt, n, ldc, c, want, mag, dt == CPK_F32 ? 2e-5 : 1e-12,
                what);
  free(a);
  free(b);
  free(c);
  free(m);
  free(ma);
  free(want);
  free(mag);
  cpk_tensor_free(at);
}

static void test_against_direct_sum(void **state) {
  const int64_t sizes[][2] = {{40, 30},   {255, 100}, {256, 10},
                              {511, 300}, {515, 400}, {600, 100},
                              {800, 500}, {1030, 40}};
  for (int d = 0; d < 2; d++)
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
      check(d ? CPK_F32 : CPK_F64, sizes[s][0], sizes[s][1], 40 + 2 * s);
}

/* KFRA through linear 600 -> 320: out = W^T M W for a symmetric M. */
static void test_linear_kfra_step(void **state) {
  const int64_t fi = 600, fo = 320, n = 2;
  const int64_t sample[1] = {fi};
  cpk_model *mdl;
  cpk_context *ctx;
  tu_ok(cpk_model_parse(&mdl, "linear 600 320\n", "net"));
  tu_ok(cpk_model_build(mdl, 1, sample, CPK_F64));
  tu_ok(cpk_model_init_params(mdl, 6));
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk__layer *l = mdl->layers[0];
  int64_t xs[2] = {n, fi}, ys[2] = {n, fo}, ms[2] = {fo, fo}, os[2] = {fi, fi};
  cpk_tensor *x = tu_random(CPK_F64, 2, xs, -1, 1, 3), *y, *mt, *out;
  tu_ok(cpk_tensor_new(&y, CPK_F64, 2, ys));
  tu_ok(l->kind->forward(l, ctx, x, y, 0));
  double *m = symmetric(fo, 9);
  tu_ok(cpk_tensor_new(&mt, CPK_F64, 2, ms));
  memcpy(mt->data, m, (size_t)(fo * fo) * sizeof *m);
  tu_ok(cpk_tensor_new(&out, CPK_F64, 2, os));
  tu_ok(l->kind->ea_jac_t_mat_jac(l, ctx, x, y, mt, out));
  cpk_tensor *w;
  tu_ok(cpk_model_param(mdl, 0, NULL, &w));
  double *ma = malloc((size_t)(fo * fi) * sizeof *ma);
  double *want = malloc((size_t)(fi * fi) * sizeof *want);
  double *mag = malloc((size_t)(fi * fi) * sizeof *mag);
  direct(fi, fo, w->data, m, ma, want, mag);
  tu_assert_close_array(out->data, want, fi * fi, 1e-12, 1e-14,
                        "linear KFRA step W^T M W");
  free(m);
  free(ma);
  free(want);
  free(mag);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_tensor_free(mt);
  cpk_tensor_free(out);
  cpk_context_free(ctx);
  cpk_model_free(mdl);
}

/* cpk__syrk against direct sums: op(A) [n, k] is A [n, k] (trans 0) or the
 * transpose of A [k, n] (trans 1); C starts symmetric (beta != 0) with a
 * row stride of n + 3 whose padding must stay untouched. */
static void check_syrk(cpk_dtype dt, int trans, int64_t n, int64_t k,
                       double beta, uint64_t seed) {
  int64_t as[2] = {trans ? k : n, trans ? n : k};
  cpk_tensor *at = tu_random(CPK_F64, 2, as, -1, 1, seed);
  const double *ad = at->data, alpha = 0.75;
  double *c0 = symmetric(n, seed + 1);
  double *aat = malloc((size_t)(n * n) * sizeof *aat);
  double *mag = malloc((size_t)(n * n) * sizeof *mag);
  double *opt = malloc((size_t)(k * n) * sizeof *opt); /* op(A)^T, [k, n] */
  for (int64_t i = 0; i < n; i++)
    for (int64_t l = 0; l < k; l++)
      opt[l * n + i] = trans ? ad[l * n + i] : ad[i * k + l];
  tu_product(n, n, k, opt, 1, n, opt, aat, mag); /* op(A) op(A)^T */
  const int64_t ldc = n + 3;
  const size_t es = cpk_dtype_size(dt);
  void *a = malloc((size_t)(k * n) * es), *c = malloc((size_t)(n * ldc) * es);
  memset(c, 0x7f, (size_t)(n * ldc) * es);
  for (int64_t i = 0; i < k * n; i++) {
    if (dt == CPK_F32)
      ((float *)a)[i] = (float)ad[i];
    else
      ((double *)a)[i] = ad[i];
  }
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j < n; j++) {
      if (dt == CPK_F32)
        ((float *)c)[i * ldc + j] = (float)c0[i * n + j];
      else
        ((double *)c)[i * ldc + j] = c0[i * n + j];
    }
  cpk__syrk(NULL, dt, trans, n, k, alpha, a, trans ? n : k, beta, c, ldc);
  for (int64_t e = 0; e < n * n; e++) { /* alpha op(A) op(A)^T + beta C */
    aat[e] = alpha * aat[e] + beta * c0[e];
    mag[e] = alpha * mag[e] + fabs(beta * c0[e]);
  }
  char what[96];
  snprintf(what, sizeof what, "syrk trans=%d n=%lld k=%lld beta=%g", trans,
           (long long)n, (long long)k, beta);
  expect_padded(dt, n, ldc, c, aat, mag, dt == CPK_F32 ? 2e-5 : 1e-12, what);
  free(a);
  free(c);
  free(c0);
  free(aat);
  free(mag);
  free(opt);
  cpk_tensor_free(at);
}

static void test_syrk_paths(void **state) {
  /* 2k < n from n = 256: panels (4 of 64 rows at 256, 16 from 1024,
   * uneven at 517); 2k < n below: the GEMM's square; 2k >= n: BLAS syrk
   * split over k */
  const int64_t sizes[][2] = {{256, 40},  {517, 128}, {1030, 20},
                              {300, 900}, {100, 20},  {75, 3000}};
  for (int d = 0; d < 2; d++)
    for (int trans = 0; trans < 2; trans++)
      for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
        check_syrk(d ? CPK_F32 : CPK_F64, trans, sizes[s][0], sizes[s][1],
                   s % 2 ? 0.5 : 0.0, 70 + 3 * s + trans);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_against_direct_sum),
      cmocka_unit_test(test_linear_kfra_step),
      cmocka_unit_test(test_syrk_paths),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
