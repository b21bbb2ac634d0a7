/*
 * test_conv_dnnl.c: float32 convolutions through oneDNN (conv_dnnl.c, in
 * builds with it) equal the unfolding core (im2col + GEMM, conv_common.c,
 * itself checked against finite differences and PyTorch), for the forward
 * map with and without bias, its adjoint and the summed weight gradient,
 * over 1d/2d/3d, strides, symmetric, 'same' (uneven) and 'valid' padding,
 * inputs that the last window does not reach, dilation, groups and the
 * transposed convolutions' core, on a batch and on blocks of V images.
 * Each case must really run in oneDNN (not decline to the fallback), and
 * CPK_DNNL=0 / cpk__dnnl_enable(0) must turn it off. Also oneDNN's sgemm,
 * which cpk__gemm uses in float32, against a triple loop.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "context.h"
#include "devtest.h"
#include "internal.h"
#include "layers/conv_common.h"
#include "model.h"

#ifdef CPK_HAVE_DNNL

typedef struct {
  const char *line;
  int ndim;
  int64_t shape[4];
} conv_case;

static const conv_case cases[] = {
    {"conv2d 1 32 5 padding=2", 3, {1, 28, 28}},
    {"conv2d 32 64 5 padding=2", 3, {32, 14, 14}},
    {"conv2d 3 8 5", 3, {3, 12, 12}},
    {"conv2d 4 6 3 padding=same", 3, {4, 7, 6}},
    {"conv2d 4 6 4 padding=same bias=false", 3, {4, 7, 6}},
    {"conv2d 3 5 3 stride=2", 3, {3, 8, 9}}, /* last column not reached */
    {"conv2d 4 6 3 groups=2 dilation=2 padding=2", 3, {4, 9, 8}},
    {"conv2d 6 6 3 groups=6 padding=1", 3, {6, 6, 6}},
    {"conv2d 2 4 4 stride=3 padding=1 groups=2", 3, {2, 10, 7}},
    {"conv1d 2 4 5 stride=2 padding=2", 2, {2, 11}},
    {"conv1d 3 3 3 padding=valid dilation=3", 2, {3, 13}},
    {"conv3d 2 3 3 stride=2 padding=1 dilation=1,2,1", 4, {2, 5, 7, 5}},
    {"conv_transpose2d 3 4 3 stride=2 padding=1 output_padding=1", 3,
     {3, 5, 4}},
    {"conv_transpose1d 4 2 2 stride=3 output_padding=1 groups=2 dilation=2",
     2, {4, 5}},
    {"conv_transpose3d 2 2 2 stride=2", 4, {2, 3, 2, 3}},
};

/* The largest |a - b| over the largest |b|, both float32 arrays. */
static double rel_err(const float *a, const float *b, int64_t n) {
  double err = 0, ref = 0;
  for (int64_t i = 0; i < n; i++) {
    err = fmax(err, fabs((double)a[i] - (double)b[i]));
    ref = fmax(ref, fabs((double)b[i]));
  }
  return err / (ref > 0 ? ref : 1);
}

static void expect_close(const float *a, const float *b, int64_t n,
                         const char *line, int64_t count, const char *what) {
  const double e = rel_err(a, b, n);
  if (!(e <= 2e-6))
    fail_msg("%s, %lld images: %s: oneDNN and the unfolding core differ by "
             "%.3g (relative to the largest value)", line, (long long)count,
             what, e);
}

static float *randoms(int64_t n, unsigned seed) {
  float *p = malloc((size_t)n * sizeof *p);
  assert_non_null(p);
  srand(seed);
  for (int64_t i = 0; i < n; i++)
    p[i] = (float)rand() / (float)RAND_MAX * 2.0f - 1.0f;
  return p;
}

/* One case on `count` images: oneDNN (called directly: it must not
 * decline) against the unfolding core (oneDNN turned off). */
static void check_case(const conv_case *c, int64_t count) {
  cpk_context *ctx;
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk_model *m = dt_build(c->line, c->ndim, c->shape, CPK_F32);
  const cpk__conv *s = cpk__conv_of(m->layers[0]);
  const float *w = m->layers[0]->params[0].value->data;
  const float *b = s->bias ? m->layers[0]->params[1].value->data : NULL;
  const cpk__conv_dims d = cpk__conv_dims_of(s, CPK_F32);
  const int64_t nx = count * d.xsz, ny = count * d.ysz;
  float *x = randoms(nx, 1), *y = randoms(ny, 2);
  float *got = malloc((size_t)(nx > ny ? nx : ny) * sizeof *got);
  float *want = malloc((size_t)(nx > ny ? nx : ny) * sizeof *want);
  float *gw = malloc((size_t)d.wsz * sizeof *gw);
  float *ww = malloc((size_t)d.wsz * sizeof *ww);

  /* forward map, with the bias when the layer has one, then without */
  for (int with_bias = 0; with_bias < 2; with_bias++) {
    const float *bb = with_bias ? b : NULL;
    if (with_bias && b == NULL)
      continue;
    cpk__dnnl_enable(1);
    tu_ok(cpk__dnnl_conv_apply(s, count, x, w, bb, 0.0f, got));
    cpk__dnnl_enable(0);
    tu_ok(cpk__conv_apply(s, ctx, CPK_F32, count, x, w, bb, 0.0, want));
    expect_close(got, want, ny, c->line, count,
                 with_bias ? "apply + bias" : "apply");
  }
  /* adjoint */
  cpk__dnnl_enable(1);
  tu_ok(cpk__dnnl_conv_adjoint(s, count, y, w, 0.0f, got));
  cpk__dnnl_enable(0);
  tu_ok(cpk__conv_adjoint(s, ctx, CPK_F32, count, y, w, NULL, 0.0, want));
  expect_close(got, want, nx, c->line, count, "adjoint");
  /* weight gradient summed over the images */
  cpk__dnnl_enable(1);
  tu_ok(cpk__dnnl_conv_weight_grad(s, count, x, y, 0.0f, gw));
  cpk__dnnl_enable(0);
  tu_ok(cpk__conv_weight_grad(s, ctx, CPK_F32, 1, count, x, 0, y, 0, 0, 0.0,
                              ww));
  expect_close(gw, ww, d.wsz, c->line, count, "weight gradient");
  /* accumulating: out := 0.5 out + the result, from the same start */
  const int64_t most = nx > ny ? (nx > d.wsz ? nx : d.wsz)
                               : (ny > d.wsz ? ny : d.wsz);
  float *start = randoms(most, 3);
  memcpy(got, start, (size_t)ny * sizeof *got);
  memcpy(want, start, (size_t)ny * sizeof *want);
  cpk__dnnl_enable(1);
  tu_ok(cpk__dnnl_conv_apply(s, count, x, w, b, 0.5f, got));
  cpk__dnnl_enable(0);
  tu_ok(cpk__conv_apply(s, ctx, CPK_F32, count, x, w, b, 0.5, want));
  expect_close(got, want, ny, c->line, count, "apply, beta = 0.5");
  memcpy(got, start, (size_t)nx * sizeof *got);
  memcpy(want, start, (size_t)nx * sizeof *want);
  cpk__dnnl_enable(1);
  tu_ok(cpk__dnnl_conv_adjoint(s, count, y, w, 0.5f, got));
  cpk__dnnl_enable(0);
  tu_ok(cpk__conv_adjoint(s, ctx, CPK_F32, count, y, w, NULL, 0.5, want));
  expect_close(got, want, nx, c->line, count, "adjoint, beta = 0.5");
  memcpy(gw, start, (size_t)d.wsz * sizeof *gw);
  memcpy(ww, start, (size_t)d.wsz * sizeof *ww);
  cpk__dnnl_enable(1);
  tu_ok(cpk__dnnl_conv_weight_grad(s, count, x, y, 0.5f, gw));
  cpk__dnnl_enable(0);
  tu_ok(cpk__conv_weight_grad(s, ctx, CPK_F32, 1, count, x, 0, y, 0, 0, 0.5,
                              ww));
  expect_close(gw, ww, d.wsz, c->line, count, "weight gradient, beta = 0.5");
  /* through the core, oneDNN on, with a work budget of one image per call:
   * the chunks together equal the unfolding core (the weight gradient
   * accumulates over them after the first's beta) */
  ctx->work_bytes = 1;
  for (int op = 0; op < 3; op++) {
    const int64_t k = op == 0 ? ny : op == 1 ? nx : d.wsz;
    float *g = op == 2 ? gw : got, *r = op == 2 ? ww : want;
    memcpy(g, start, (size_t)k * sizeof *g);
    memcpy(r, start, (size_t)k * sizeof *r);
    for (int on = 1; on >= 0; on--) {
      float *o = on ? g : r;
      cpk__dnnl_enable(on);
      if (op == 0)
        tu_ok(cpk__conv_apply(s, ctx, CPK_F32, count, x, w, b, 0.5, o));
      else if (op == 1)
        tu_ok(cpk__conv_adjoint(s, ctx, CPK_F32, count, y, w, NULL, 0.5, o));
      else
        tu_ok(cpk__conv_weight_grad(s, ctx, CPK_F32, 1, count, x, 0, y, 0, 0,
                                    0.5, o));
    }
    expect_close(g, r, k, c->line, count,
                 op == 0   ? "apply, one image per oneDNN call"
                 : op == 1 ? "adjoint, one image per oneDNN call"
                           : "weight gradient, one image per oneDNN call");
  }
  free(start);
  /* turned off, oneDNN declines */
  assert_int_equal(cpk__dnnl_conv_apply(s, count, x, w, b, 0.0f, got),
                   CPK__CONV_DECLINED);
  cpk__dnnl_enable(1);
  free(x);
  free(y);
  free(got);
  free(want);
  free(gw);
  free(ww);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

static void test_dnnl_matches_unfolding(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    check_case(&cases[i], 1);
    check_case(&cases[i], 7);
  }
}

/* cpk__gemm in float32 (oneDNN's sgemm) equals a plain triple loop in
 * double, for every transpose pair, leading dimensions wider than the
 * rows, beta 0 (over NaN: never read) and 0.5, inside a parallel region
 * too; switched off it declines. */
static void test_dnnl_sgemm(void **state) {
  static const int64_t sizes[][3] = {{1, 1, 1}, {7, 5, 3}, {33, 17, 65},
                                     {128, 100, 64}};
  (void)state;
  for (size_t z = 0; z < sizeof sizes / sizeof sizes[0]; z++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++)
        for (int bi = 0; bi < 2; bi++) {
          const int64_t m = sizes[z][0], n = sizes[z][1], k = sizes[z][2];
          const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 2,
                        ldc = n + 1;
          const double beta = bi ? 0.5 : 0.0;
          float *a = malloc(sizeof(float) * (size_t)((ta ? k : m) * lda));
          float *b = malloc(sizeof(float) * (size_t)((tb ? n : k) * ldb));
          float *c = malloc(sizeof(float) * (size_t)(m * ldc));
          double *want = malloc(sizeof(double) * (size_t)(m * n));
          for (int64_t i = 0; i < (ta ? k : m) * lda; i++)
            a[i] = (float)((i * 37 % 101) - 50) / 50.0f;
          for (int64_t i = 0; i < (tb ? n : k) * ldb; i++)
            b[i] = (float)((i * 53 % 97) - 48) / 48.0f;
          for (int64_t i = 0; i < m * ldc; i++)
            c[i] = bi ? (float)(i % 7) : NAN;
          for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
              double acc = 0;
              for (int64_t q = 0; q < k; q++)
                acc += (double)(ta ? a[q * lda + i] : a[i * lda + q]) *
                       (double)(tb ? b[j * ldb + q] : b[q * ldb + j]);
              want[i * n + j] = 0.75 * acc + (bi ? beta * c[i * ldc + j] : 0);
            }
#pragma omp parallel num_threads(2) if (z == 2)
          {
#pragma omp single
            assert_int_equal(cpk__dnnl_sgemm(ta, tb, m, n, k, 0.75f, a, lda, b,
                                             ldb, (float)beta, c, ldc),
                             CPK_OK);
          }
          for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++)
              assert_true(fabs(c[i * ldc + j] - want[i * n + j]) <=
                          1e-5 * (1 + fabs(want[i * n + j])));
          cpk__dnnl_enable(0);
          assert_int_not_equal(cpk__dnnl_sgemm(ta, tb, m, n, k, 1.0f, a, lda,
                                               b, ldb, 0.0f, c, ldc),
                               CPK_OK);
          cpk__dnnl_enable(1);
          free(a);
          free(b);
          free(c);
          free(want);
        }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_dnnl_matches_unfolding),
      cmocka_unit_test(test_dnnl_sgemm),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

#else

int main(void) {
  printf("1..0 # SKIP built without oneDNN (--with-dnnl)\n");
  return 0;
}

#endif
