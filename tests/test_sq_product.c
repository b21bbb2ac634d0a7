/*
 * test_sq_product.c: the squares of a product added up without storing it,
 * against direct sums written here:
 *  - cpk__sq_product_add (ops_tiles.c), out[r, c] += w (at[:, r] bt[:, c])^2,
 *    for shapes around the edges of its tiles (rows in chunks of at most
 *    12 or 6, columns around two vectors, an inner dimension of 1 to 784),
 *    row strides wider than the rows (NaN in the operands' padding, which
 *    must not be read; the output's must not be written), a negative
 *    weight, out holding values before; float64 and float32;
 *    under each instruction set the CPU has, and capped to none, where it
 *    must decline and write nothing;
 *  - cpk__transpose_tiles, which turns its right operand, at the edges of
 *    its register blocks and tiles;
 *  - the convolutions' param_sq_sum (conv_common.c, cpk__conv_weight_sq_sum)
 *    against the squares of their per-sample products (param_jac_t_mat
 *    with per_sample), weighted per column and sample: conv2d with groups
 *    and padding, conv1d with stride and dilation, conv_transpose2d (whose
 *    unfolded operand is the block); where the layer declines because the
 *    tiles do not pay (cpk__conv_sq_sum_pays), the core is checked
 *    directly; the bias declines.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers/conv_common.h"
#include "model.h"
#include "ops.h"
#include "testutil.h"


static void *to_dtype(cpk_dtype dt, const double *x, int64_t n) {
  void *out = malloc((size_t)n * cpk_dtype_size(dt));
  for (int64_t i = 0; i < n; i++) {
    if (dt == CPK_F32)
      ((float *)out)[i] = (float)x[i];
    else
      ((double *)out)[i] = x[i];
  }
  return out;
}

static double at(cpk_dtype dt, const void *p, int64_t i) {
  return dt == CPK_F32 ? ((const float *)p)[i] : ((const double *)p)[i];
}

static void check(cpk_dtype dt, int lvl, int64_t rows, int64_t inner,
                  int64_t cols, uint64_t seed) {
  int64_t as[2] = {rows, inner}, bs[2] = {inner, cols}, os[2] = {rows, cols};
  cpk_tensor *ta = tu_random(CPK_F64, 2, as, -1, 1, seed);
  cpk_tensor *tb = tu_random(CPK_F64, 2, bs, -1, 1, seed + 1);
  cpk_tensor *to = tu_random(CPK_F64, 2, os, -1, 1, seed + 2);
  const double weight = -0.75, *a = ta->data, *b = tb->data, *o0 = to->data;
  double *prod = malloc((size_t)(rows * cols) * sizeof *prod);
  double *mag = malloc((size_t)(rows * cols) * sizeof *mag);
  tu_product(rows, cols, inner, a, inner, 1, b, prod, mag);
  /* at [inner, rows] with a row stride of rows + 3, bt [inner, cols] with
   * cols + 1, out with cols + 2 (the paddings never read or written) */
  const int64_t lda = rows + 3, ldb = cols + 1, ldo = cols + 2;
  double *pa = malloc((size_t)(inner * lda) * sizeof *pa);
  double *pb = malloc((size_t)(inner * ldb) * sizeof *pb);
  double *po = malloc((size_t)(rows * ldo) * sizeof *po);
  for (int64_t i = 0; i < inner * lda; i++)
    pa[i] = NAN;
  for (int64_t i = 0; i < inner * ldb; i++)
    pb[i] = NAN;
  for (int64_t i = 0; i < rows * ldo; i++)
    po[i] = 7.0;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t i = 0; i < inner; i++)
      pa[i * lda + r] = a[r * inner + i];
  for (int64_t i = 0; i < inner; i++)
    for (int64_t c = 0; c < cols; c++)
      pb[i * ldb + c] = b[i * cols + c];
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++)
      po[r * ldo + c] = o0[r * cols + c];
  void *da = to_dtype(dt, pa, inner * lda), *db = to_dtype(dt, pb, inner * ldb);
  void *out = to_dtype(dt, po, rows * ldo);
  void *scratch = malloc(cpk__sq_product_scratch(inner) + 1);
  cpk__tiles_cap_isa(lvl);
  const int done = cpk__sq_product_add(NULL, dt, rows, inner, cols, da, lda,
                                       db, ldb, weight, out, ldo, scratch);
  cpk__tiles_cap_isa(2);
  const int usable = (tu_cpu_tile_level() < lvl ? tu_cpu_tile_level() : lvl) > 0;
  assert_int_equal(done, usable);
  const double rtol = dt == CPK_F32 ? 1e-5 : 1e-13;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = cols; c < ldo; c++) /* the padding is not written */
      assert_true(at(dt, out, r * ldo + c) == 7.0);
  for (int64_t i = 0; i < rows * cols; i++) {
    const double want = usable ? o0[i] + weight * prod[i] * prod[i] : o0[i];
    /* the square's rounding scales with the magnitude of its terms */
    const double tol = rtol * (fabs(o0[i]) + 2 * fabs(weight) * mag[i] *
                                                 (fabs(prod[i]) + mag[i]));
    const double got = at(dt, out, (i / cols) * ldo + i % cols);
    if (!(fabs(got - want) <= tol + 1e-300)) {
      fprintf(stderr,
              "%s level %d [%lld x %lld x %lld]: out[%lld] = %.17g, want "
              "%.17g\n",
              dt == CPK_F32 ? "f32" : "f64", lvl, (long long)rows,
              (long long)inner, (long long)cols, (long long)i, got, want);
      fail();
    }
  }
  free(prod);
  free(mag);
  free(pa);
  free(pb);
  free(po);
  free(da);
  free(db);
  free(out);
  free(scratch);
  cpk_tensor_free(ta);
  cpk_tensor_free(tb);
  cpk_tensor_free(to);
}

static void test_against_direct_sum(void **state) {
  const int64_t shapes[][3] = {{1, 1, 1},    {5, 3, 17},   {12, 36, 864},
                               {13, 36, 100}, {25, 7, 33}, {64, 784, 75},
                               {7, 200, 31}, {6, 5, 64},   {24, 2, 65}};
  for (int lvl = 0; lvl <= 2; lvl++)
    for (int d = 0; d < 2; d++)
      for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        check(d ? CPK_F32 : CPK_F64, lvl, shapes[s][0], shapes[s][1],
              shapes[s][2], 90 + 3 * s);
}

/* cpk__transpose_tiles against the definition, across its 8 x 8 (4 x 4)
 * blocks, 64 x 64 tiles and scalar edges. */
static void test_transpose(void **state) {
  const int64_t shapes[][2] = {{1, 1},   {8, 8},   {4, 4},  {13, 70},
                               {64, 65}, {130, 7}, {9, 200}};
  for (int d = 0; d < 2; d++)
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
      const cpk_dtype dt = d ? CPK_F32 : CPK_F64;
      const int64_t r = shapes[k][0], c = shapes[k][1];
      const size_t es = cpk_dtype_size(dt);
      double *src = malloc((size_t)(r * c) * sizeof *src);
      for (int64_t i = 0; i < r * c; i++)
        src[i] = (double)i;
      void *s = to_dtype(dt, src, r * c), *t = malloc((size_t)(r * c) * es);
      if (!cpk__transpose_tiles(dt, r, c, s, t)) {
        assert_int_equal(tu_cpu_tile_level(), 0);
      } else {
        for (int64_t i = 0; i < r; i++)
          for (int64_t j = 0; j < c; j++)
            assert_true(at(dt, t, j * r + i) == src[i * c + j]);
      }
      free(src);
      free(s);
      free(t);
    }
}

/* The layer's param_sq_sum against the squares of its per-sample products:
 * want[k] = o0[k] + sum_{v,n} w[v, n] P[v, n, k]^2, P = param_jac_t_mat
 * per sample of a block [V, N, *out]. */
static void check_layer(const char *spec, int transposed, int takes, int ndim,
                        const int64_t *sample, int64_t n, int64_t v,
                        uint64_t seed) {
  cpk_model *mdl;
  cpk_context *ctx;
  tu_ok(cpk_model_parse(&mdl, spec, "net"));
  tu_ok(cpk_model_build(mdl, ndim, sample, CPK_F64));
  tu_ok(cpk_model_init_params(mdl, (int)seed));
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk__layer *l = mdl->layers[0];
  assert_int_equal(cpk__conv_sq_sum_pays(l->priv, transposed ? 1 : v), takes);
  int64_t xs[CPK_MAX_DIMS + 1] = {n}, bs[CPK_MAX_DIMS + 2] = {v, n};
  memcpy(xs + 1, sample, (size_t)ndim * sizeof *xs);
  memcpy(bs + 2, l->out_shape, (size_t)l->out_ndim * sizeof *bs);
  cpk_tensor *x = tu_random(CPK_F64, ndim + 1, xs, -1, 1, seed + 1);
  cpk_tensor *blk = tu_random(CPK_F64, l->out_ndim + 2, bs, -1, 1, seed + 2);
  int64_t ws[2] = {v, n};
  cpk_tensor *w = tu_random(CPK_F64, 2, ws, -1, 1, seed + 3);
  for (int p = 0; p < l->nparams; p++) {
    const cpk__param *par = &l->params[p];
    const int64_t k = cpk_tensor_numel(par->value);
    int64_t ps[CPK_MAX_DIMS + 2] = {v, n};
    memcpy(ps + 2, par->shape, (size_t)par->ndim * sizeof *ps);
    cpk_tensor *per, *out = tu_random(CPK_F64, par->ndim, par->shape, -1, 1,
                                      seed + 4);
    tu_ok(cpk_tensor_new(&per, CPK_F64, par->ndim + 2, ps));
    tu_ok(l->kind->param_jac_t_mat(l, ctx, p, x, blk, 1, 0.0, per));
    double *want = malloc((size_t)k * sizeof *want);
    for (int64_t e = 0; e < k; e++) {
      want[e] = ((double *)out->data)[e];
      for (int64_t q = 0; q < v * n; q++) {
        const double g = ((double *)per->data)[q * k + e];
        want[e] += ((double *)w->data)[q] * g * g;
      }
    }
    const int rc = l->kind->param_sq_sum(l, ctx, p, x, blk, w->data, n, out);
    if (p == 1) { /* the bias has no such path, and nothing is written */
      assert_int_equal(rc, CPK__LAYER_DECLINED);
    } else if (takes) {
      tu_ok(rc);
      tu_assert_close_array(out->data, want, k, 1e-12, 1e-13, spec);
    } else { /* declined where it does not pay: the core itself, then */
      assert_int_equal(rc, CPK__LAYER_DECLINED);
      tu_ok(transposed ? cpk__conv_weight_sq_sum(l->priv, ctx, CPK_F64, v, n,
                                                 blk->data, 1, x->data, 0,
                                                 w->data, n, out->data)
                       : cpk__conv_weight_sq_sum(l->priv, ctx, CPK_F64, v, n,
                                                 x->data, 0, blk->data, 1,
                                                 w->data, n, out->data));
      tu_assert_close_array(out->data, want, k, 1e-12, 1e-13, spec);
    }
    free(want);
    cpk_tensor_free(per);
    cpk_tensor_free(out);
  }
  cpk_tensor_free(x);
  cpk_tensor_free(blk);
  cpk_tensor_free(w);
  cpk_context_free(ctx);
  cpk_model_free(mdl);
}

static void test_convolutions(void **state) {
  if (tu_cpu_tile_level() == 0)
    skip(); /* the layers decline; diag_common squares per-sample products */
  const int64_t s2[3] = {4, 7, 6}, s1[2] = {3, 11}, st[3] = {4, 5, 4};
  const int64_t s8[3] = {8, 6, 6};
  /* taken by the layer: a short output grid against long patches */
  check_layer("conv2d 8 16 3 groups=2\n", 0, 1, 3, s8, 4, 3, 10);
  check_layer("conv1d 3 5 3 stride=2 dilation=2\n", 0, 1, 2, s1, 4, 1, 12);
  /* declined by the layer (it does not pay), checked through the core */
  check_layer("conv2d 8 16 3 groups=2\n", 0, 0, 3, s8, 4, 1, 14);
  check_layer("conv2d 4 6 3 padding=1 groups=2\n", 0, 0, 3, s2, 5, 3, 11);
  check_layer("conv_transpose2d 4 6 3 stride=2 groups=2\n", 1, 0, 3, st, 3,
              2, 13);
}

/* With no vector instruction set the convolution declines, where it would
 * otherwise take the tiles, and writes nothing. */
static void test_conv_declines(void **state) {
  const int64_t s1[2] = {3, 11};
  cpk_model *mdl;
  cpk_context *ctx;
  tu_ok(cpk_model_parse(&mdl, "conv1d 3 5 3 stride=2 dilation=2\n", "net"));
  tu_ok(cpk_model_build(mdl, 2, s1, CPK_F64));
  tu_ok(cpk_model_init_params(mdl, 3));
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk__layer *l = mdl->layers[0];
  assert_true(cpk__conv_sq_sum_pays(l->priv, 1));
  int64_t xs[3] = {2, 3, 11}, bs[4] = {1, 2, 5, 4};
  cpk_tensor *x = tu_random(CPK_F64, 3, xs, -1, 1, 5);
  cpk_tensor *blk = tu_random(CPK_F64, 4, bs, -1, 1, 6), *out;
  tu_ok(cpk_tensor_new(&out, CPK_F64, l->params[0].ndim, l->params[0].shape));
  cpk__tiles_cap_isa(0);
  assert_int_equal(l->kind->param_sq_sum(l, ctx, 0, x, blk, NULL, 2, out),
                   CPK__LAYER_DECLINED);
  cpk__tiles_cap_isa(2);
  for (int64_t e = 0; e < cpk_tensor_numel(out); e++)
    assert_true(((double *)out->data)[e] == 0.0);
  if (tu_cpu_tile_level() > 0) /* uncapped, it takes them */
    tu_ok(l->kind->param_sq_sum(l, ctx, 0, x, blk, NULL, 2, out));
  cpk_tensor_free(x);
  cpk_tensor_free(blk);
  cpk_tensor_free(out);
  cpk_context_free(ctx);
  cpk_model_free(mdl);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_against_direct_sum),
      cmocka_unit_test(test_transpose),
      cmocka_unit_test(test_convolutions),
      cmocka_unit_test(test_conv_declines),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
