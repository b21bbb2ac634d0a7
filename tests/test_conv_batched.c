/*
 * test_conv_batched.c: the convolution core batched over images
 * (conv_batched.c, the scheme the CUDA device runs) equals the per-image
 * core of the CPU (conv_common.c), for apply, adjoint and every form of the
 * weight products, in one chunk, one image per chunk and uneven chunks.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "layers/conv_common.h"
#include "model.h"
#include "ops.h"
#include "devtest.h"

/* ------------------------------------------------ batched core on the CPU */

typedef struct {
  const char *line;
  int ndim;
  int64_t shape[4];
} conv_case;

static const conv_case conv_cases[] = {
    {"conv1d 2 4 5 stride=2 padding=2", 2, {2, 9}},
    {"conv2d 2 3 3", 3, {2, 5, 5}},
    {"conv2d 4 2 3 groups=2 dilation=2 padding=2", 3, {4, 5, 5}},
    {"conv2d 2 4 4 stride=3 padding=1 groups=2", 3, {2, 7, 5}},
    {"conv2d 3 2 1", 3, {3, 4, 4}},
    {"conv3d 2 2 3 stride=2 padding=1 dilation=1,2,1", 4, {2, 3, 5, 3}},
    {"conv_transpose2d 2 3 3 stride=2 padding=1 output_padding=1", 3,
     {2, 4, 3}},
    {"conv_transpose1d 4 2 2 stride=3 output_padding=1 groups=2 dilation=2",
     2,
     {4, 3}},
};

/* Sizes of one case's core: images of X and Y, and the weight. */
static void core_sizes(const cpk__conv *s, int64_t *xsz, int64_t *ysz,
                       int64_t *wsz) {
  const cpk__conv_dims d = cpk__conv_dims_of(s, CPK_F64);
  *xsz = d.xsz;
  *ysz = d.ysz;
  *wsz = d.wsz;
}

/* apply, adjoint and weight products (per sample, summed with beta, x or y
 * carrying the V axis), batched against per image, for one work budget. */
static void check_batched_case(const conv_case *c, size_t work_bytes) {
  const int64_t n = 5, v = 3;
  cpk_context *ctx;
  tu_ok(cpk_context_new(&ctx, NULL));
  ctx->work_bytes = work_bytes;
  cpk_model *m = dt_build(c->line, c->ndim, c->shape, CPK_F64);
  const cpk__conv *s = cpk__conv_of(m->layers[0]);
  const void *w = m->layers[0]->params[0].value->data;
  const void *b = s->bias ? m->layers[0]->params[1].value->data : NULL;
  int64_t xsz, ysz, wsz;
  core_sizes(s, &xsz, &ysz, &wsz);
  int64_t sx[2] = {v * n, xsz}, sy[2] = {v * n, ysz}, sw[2] = {v * n, wsz};
  cpk_tensor *x = tu_random(CPK_F64, 2, sx, -1, 1, 1);
  cpk_tensor *y = tu_random(CPK_F64, 2, sy, -1, 1, 2);
  cpk_tensor *ya = tu_random(CPK_F64, 2, sy, -1, 1, 3), *yb = NULL;
  cpk_tensor *xa = tu_random(CPK_F64, 2, sx, -1, 1, 4), *xb = NULL;
  char what[200];
  /* apply with beta = 0.5 and a bias */
  tu_ok(cpk_tensor_convert(&yb, ya, CPK_F64));
  tu_ok(cpk__conv_apply(s, ctx, CPK_F64, v * n, x->data, w, b, 0.5, ya->data));
  tu_ok(cpk__conv_apply_batched(s, ctx, CPK_F64, v * n, x->data, w, b, 0.5,
                                yb->data));
  snprintf(what, sizeof what, "%s: apply (budget %zu B)", c->line, work_bytes);
  tu_assert_close(yb, ya, 1e-12, 1e-13, what);
  /* adjoint */
  tu_ok(cpk_tensor_convert(&xb, xa, CPK_F64));
  tu_ok(cpk__conv_adjoint(s, ctx, CPK_F64, v * n, y->data, w, NULL, 0.25,
                          xa->data));
  tu_ok(cpk__conv_adjoint_batched(s, ctx, CPK_F64, v * n, y->data, w, NULL,
                                  0.25, xb->data));
  snprintf(what, sizeof what, "%s: adjoint (budget %zu B)", c->line,
           work_bytes);
  tu_assert_close(xb, xa, 1e-12, 1e-13, what);
  /* weight products: x shared or per column, summed (beta) or per sample */
  for (int x_has_v = 0; x_has_v < 2; x_has_v++)
    for (int per_sample = 0; per_sample < 2; per_sample++) {
      cpk_tensor *wa = tu_random(CPK_F64, 2, sw, -1, 1, 5);
      cpk_tensor *wb;
      tu_ok(cpk_tensor_convert(&wb, wa, CPK_F64));
      tu_ok(cpk__conv_weight_grad(s, ctx, CPK_F64, v, n, x->data, x_has_v,
                                  y->data, !x_has_v, per_sample, 0.5,
                                  wa->data));
      tu_ok(cpk__conv_weight_grad_batched(s, ctx, CPK_F64, v, n, x->data,
                                          x_has_v, y->data, !x_has_v,
                                          per_sample, 0.5, wb->data));
      snprintf(what, sizeof what, "%s: weight x_has_v=%d per_sample=%d "
               "(budget %zu B)", c->line, x_has_v, per_sample, work_bytes);
      tu_assert_close(wb, wa, 1e-12, 1e-13, what);
      cpk_tensor_free(wa);
      cpk_tensor_free(wb);
    }
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_tensor_free(xa);
  cpk_tensor_free(xb);
  cpk_tensor_free(ya);
  cpk_tensor_free(yb);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

static void test_batched_core_matches_per_image(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++) {
    check_batched_case(&conv_cases[i], (size_t)64 << 20); /* one chunk */
    check_batched_case(&conv_cases[i], 1);               /* one image each */
    check_batched_case(&conv_cases[i], 3000);             /* uneven chunks */
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_batched_core_matches_per_image),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
