/*
 * test_skip_zero.c: cpk__block_times_skip_zero (ops_tiles.c), the
 * product of a block [V, R, K] with w [K, M] that skips each batch row's
 * zero columns, against a direct sum written here:
 *  - shapes around the edges of the tiles: V from 4 to 30 (chunks of at
 *    most 12 rows), M around the tile width of two vectors, odd K; batch
 *    rows wholly zero; columns zero in some of the V rows only; float64
 *    and float32; every output element written (NaN before the call);
 *  - where it must decline (fewer than 4 block rows, a dense block): it
 *    returns 0 and writes nothing;
 *  - through the linear layer's jac_t_mat on inputs with a leading axis
 *    (batch rows = N * R), a block zeroed like a ReLU's against W's product.
 * The kernels run under each instruction set the CPU has (AVX-512, AVX2
 * with FMA, and capped to none, where every call declines, which is then
 * what is asserted).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "ops.h"
#include "testutil.h"

static int level = 2; /* the cap in force */
static int usable(void) {
  return tu_cpu_tile_level() < level ? tu_cpu_tile_level() : level;
}

/* A block [v, rows, k] of draws in [-1, 1), where column c of batch row r
 * is zero in every v row when (c + r) % 2 == 1 (at most 2/3 of a row's
 * columns stay), batch rows r % 5 == 3 are zero throughout, and of the
 * remaining entries those with v odd and a draw below -0.5 are zero too
 * (a column zero in some rows only). */
static double *masked_block(int64_t v, int64_t rows, int64_t k, uint64_t seed) {
  int64_t shape[3] = {v, rows, k};
  cpk_tensor *t = tu_random(CPK_F64, 3, shape, -1, 1, seed);
  double *b = malloc((size_t)(v * rows * k) * sizeof *b);
  memcpy(b, t->data, (size_t)(v * rows * k) * sizeof *b);
  cpk_tensor_free(t);
  for (int64_t q = 0; q < v; q++)
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < k; c++) {
        double *e = b + (q * rows + r) * k + c;
        if ((c + r) % 2 == 1 || r % 5 == 3 || (q % 2 == 1 && *e < -0.5))
          *e = 0;
      }
  return b;
}

/* Buffer of n elements of dt holding x (converted), or NaN when x is NULL. */
static void *typed(cpk_dtype dt, int64_t n, const double *x) {
  void *p = malloc((size_t)n * cpk_dtype_size(dt));
  for (int64_t i = 0; i < n; i++) {
    double e = x ? x[i] : NAN;
    if (dt == CPK_F32)
      ((float *)p)[i] = (float)e;
    else
      ((double *)p)[i] = e;
  }
  return p;
}

static double elem(cpk_dtype dt, const void *p, int64_t i) {
  return dt == CPK_F32 ? ((const float *)p)[i] : ((const double *)p)[i];
}

static void check_shape(cpk_dtype dt, int64_t v, int64_t rows, int64_t k,
                        int64_t m, uint64_t seed) {
  double *in = masked_block(v, rows, k, seed);
  int64_t ws[2] = {k, m};
  cpk_tensor *wt = tu_random(CPK_F64, 2, ws, -1, 1, seed + 1);
  /* the reference takes the operands as the kernel sees them (rounded) */
  void *tin = typed(dt, v * rows * k, in), *tw = typed(dt, k * m, wt->data);
  for (int64_t i = 0; i < v * rows * k; i++)
    in[i] = elem(dt, tin, i);
  double *w = malloc((size_t)(k * m) * sizeof *w);
  for (int64_t i = 0; i < k * m; i++)
    w[i] = elem(dt, tw, i);
  double *want = malloc((size_t)(v * rows * m) * sizeof *want);
  double *mag = malloc((size_t)(v * rows * m) * sizeof *mag);
  tu_product(v * rows, m, k, in, k, 1, w, want, mag);
  void *out = typed(dt, v * rows * m, NULL);
  int done = cpk__block_times_skip_zero(NULL, dt, v, rows, k, m, tin, tw, out);
  char what[128];
  snprintf(what, sizeof what, "%s V=%lld R=%lld K=%lld M=%lld",
           dt == CPK_F32 ? "f32" : "f64", (long long)v, (long long)rows,
           (long long)k, (long long)m);
  if (done != (usable() > 0)) {
    fprintf(stderr, "%s: returned %d\n", what, done);
    fail();
  }
  const double rtol = dt == CPK_F32 ? 1e-5 : 1e-13;
  for (int64_t i = 0; done && i < v * rows * m; i++) {
    const double got = elem(dt, out, i);
    if (!(fabs(got - want[i]) <= rtol * mag[i] + 1e-300)) {
      fprintf(stderr, "%s: element %lld is %.17g, want %.17g\n", what,
              (long long)i, got, want[i]);
      fail();
    }
  }
  for (int64_t i = 0; !done && i < v * rows * m; i++)
    assert_true(isnan(elem(dt, out, i))); /* declined: nothing written */
  free(in);
  free(w);
  free(tin);
  free(tw);
  free(want);
  free(mag);
  free(out);
  cpk_tensor_free(wt);
}

/* Every shape under each instruction set the CPU has (and none). */
static void test_against_direct_sum(void **state) {
  const int64_t vs[] = {4, 6, 7, 9, 12, 13, 30};
  const int64_t ks[] = {2, 3, 64, 129};
  const int64_t ms[] = {1, 3, 7, 8, 16, 31, 32, 33, 70};
  for (level = 0; level <= tu_cpu_tile_level(); level++) {
    cpk__tiles_cap_isa(level);
    uint64_t seed = 10;
    for (int d = 0; d < 2; d++)
      for (size_t a = 0; a < sizeof vs / sizeof *vs; a++)
        for (size_t b = 0; b < sizeof ks / sizeof *ks; b++)
          for (size_t c = 0; c < sizeof ms / sizeof *ms; c++, seed += 2)
            check_shape(d ? CPK_F32 : CPK_F64, vs[a], a % 2 ? 40 : 7, ks[b],
                        ms[c], seed);
  }
  cpk__tiles_cap_isa(2);
  level = 2;
}

/* Declines write nothing: three block rows, and a block without zeros. */
static void test_declines(void **state) {
  const int64_t rows = 6, k = 10, m = 20;
  double *in = masked_block(3, rows, k, 3);
  double *w = malloc((size_t)(k * m) * sizeof *w);
  for (int64_t i = 0; i < k * m; i++)
    w[i] = 0.5;
  void *out = typed(CPK_F64, 3 * rows * m, NULL);
  assert_int_equal(
      cpk__block_times_skip_zero(NULL, CPK_F64, 3, rows, k, m, in, w, out), 0);
  for (int64_t i = 0; i < 3 * rows * m; i++)
    assert_true(isnan(((double *)out)[i]));
  free(in);
  free(out);
  const int64_t v = 8;
  double *dense = malloc((size_t)(v * rows * k) * sizeof *dense);
  for (int64_t i = 0; i < v * rows * k; i++)
    dense[i] = 1.0 + (double)(i % 7);
  out = typed(CPK_F64, v * rows * m, NULL);
  assert_int_equal(
      cpk__block_times_skip_zero(NULL, CPK_F64, v, rows, k, m, dense, w, out),
      0);
  for (int64_t i = 0; i < v * rows * m; i++)
    assert_true(isnan(((double *)out)[i]));
  free(dense);
  free(out);
  free(w);
}

/* linear 33 -> 20 on samples [3, 33], under each instruction set: jac_t_mat of a block [6, N, 3, 20]
 * whose batch rows (n, r) are zero in alternate units. */
static void test_linear_layer(void **state) {
  const int64_t n = 5, r = 3, in_f = 33, out_f = 20, v = 6;
  const int64_t sample[2] = {r, in_f};
  cpk_model *mdl;
  cpk_context *ctx;
  tu_ok(cpk_model_parse(&mdl, "linear 33 20\n", "net"));
  tu_ok(cpk_model_build(mdl, 2, sample, CPK_F64));
  tu_ok(cpk_model_init_params(mdl, 4));
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk__layer *l = mdl->layers[0];
  int64_t xs[3] = {n, r, in_f}, ys[3] = {n, r, out_f};
  cpk_tensor *x = tu_random(CPK_F64, 3, xs, -1, 1, 8), *y, *u, *out;
  tu_ok(cpk_tensor_new(&y, CPK_F64, 3, ys));
  tu_ok(l->kind->forward(l, ctx, x, y, 0));
  int64_t us[4] = {v, n, r, out_f}, os[4] = {v, n, r, in_f};
  tu_ok(cpk_tensor_new(&u, CPK_F64, 4, us));
  tu_ok(cpk_tensor_new(&out, CPK_F64, 4, os));
  double *blk = masked_block(v, n * r, out_f, 21);
  memcpy(u->data, blk, (size_t)(v * n * r * out_f) * sizeof *blk);
  cpk_tensor *w;
  tu_ok(cpk_model_param(mdl, 0, NULL, &w));
  double *want = malloc((size_t)(v * n * r * in_f) * sizeof *want);
  double *mag = malloc((size_t)(v * n * r * in_f) * sizeof *mag);
  tu_product(v * n * r, in_f, out_f, blk, out_f, 1, w->data, want, mag);
  for (level = 0; level <= tu_cpu_tile_level(); level++) {
    cpk__tiles_cap_isa(level);
    memset(out->data, 0xff, (size_t)(v * n * r * in_f) * sizeof(double));
    tu_ok(l->kind->jac_t_mat(l, ctx, x, y, u, out));
    tu_assert_close_array(out->data, want, v * n * r * in_f, 1e-13, 1e-15,
                          "linear jac_t_mat on a block with zero columns");
  }
  cpk__tiles_cap_isa(2);
  level = 2;
  free(blk);
  free(want);
  free(mag);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_tensor_free(u);
  cpk_tensor_free(out);
  cpk_context_free(ctx);
  cpk_model_free(mdl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_against_direct_sum),
      cmocka_unit_test(test_declines),
      cmocka_unit_test(test_linear_layer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
