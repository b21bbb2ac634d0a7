/*
 * test_uninit.c: the layer kinds that say fills_output (lib/layer.h) get
 * their forward outputs and backward blocks without the zero fill. Each
 * must then write every element of those outputs without reading them.
 * With cpk__alloc_poison(1) the unfilled memory holds NaN bytes, so a
 * kind that skips an element, or reads one before writing it, turns
 * results into NaN. The same holds for param_jac_t_mat with beta = 0 (the
 * gradients). Every kind of the contract runs here, in 1d, 2d and
 * 3d, in float64 and float32, with the plain gradient, every extension
 * (blocks of V > 1 columns through jac_t_mat), training mode (batch
 * statistics, dropout masks), per-sample quantities whole and in chunks of
 * samples, and the curvature products: the results with
 * poisoned memory must equal those with zeroed memory bit for bit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "curvpack.h"
#include "internal.h"
#include "testutil.h"

static const char *const all_ext =
    "batch_grad,batch_l2_grad,sum_grad_squared,variance,batch_dot_grad,"
    "diag_ggn_exact,diag_ggn_mc,batch_diag_ggn_exact,batch_diag_ggn_mc,"
    "diag_hessian,batch_diag_hessian,kfac,kflr,kfra,sqrt_ggn_exact,"
    "sqrt_ggn_mc";
/* Batch norm has no Kronecker factors (nor has BackPACK). */
static const char *const ext_no_kron =
    "batch_grad,batch_l2_grad,sum_grad_squared,variance,batch_dot_grad,"
    "diag_ggn_exact,diag_ggn_mc,batch_diag_ggn_exact,batch_diag_ggn_mc,"
    "diag_hessian,batch_diag_hessian,sqrt_ggn_exact,sqrt_ggn_mc";

typedef struct net {
  const char *name, *text;
  int ndim;
  int64_t sample[4];
  int64_t n, classes;
  int batchnorm;
} net;

static const net nets[] = {
    {"conv2d", "conv2d 2 4 3 padding=1\nrelu\nmaxpool2d 2\n"
               "conv2d 4 3 2 stride=1\nsigmoid\nflatten\nlinear 12 4\n",
     3, {2, 6, 6}, 6, 4},
    {"conv2d strided, grouped, padded pools",
     "zeropad2d 1\nconv2d 2 4 3 stride=2 groups=2\ntanh\n"
     "avgpool2d 2 stride=1 padding=1 count_include_pad=false\n"
     "maxpool2d 3 stride=2 padding=1 ceil_mode=true\n"
     "adaptive_avgpool2d 2\nflatten\nlinear 16 3\n",
     3, {2, 7, 7}, 5, 3},
    {"conv_transpose2d, batchnorm2d",
     "conv_transpose2d 2 3 3 stride=2 padding=1 output_padding=1\n"
     "batchnorm2d 3\nelu\nconv2d 3 2 3 dilation=2\nflatten\nlinear 32 3\n",
     3, {2, 4, 4}, 4, 3, 1},
    {"1d", "conv1d 2 3 3 padding=same\nidentity\nmaxpool1d 2\navgpool1d 2\n"
           "conv_transpose1d 3 2 2 stride=2\nflatten\nbatchnorm1d 8\n"
           "selu\nlinear 8 3\n",
     2, {2, 9}, 5, 3, 1},
    {"3d", "conv3d 1 2 2\nleaky_relu\nmaxpool3d 2 ceil_mode=true\n"
           "avgpool3d 1\nconv_transpose3d 2 1 2\nflatten\nlinear 27 3\n",
     4, {1, 4, 4, 4}, 4, 3},
    {"mlp with dropout", "flatten\nlinear 12 10\ndropout 0.25\nlogsigmoid\n"
                         "linear 10 6\nsigmoid\nlinear 6 4\n",
     3, {3, 2, 2}, 7, 4},
};

/* work_bytes: the budget of one chunked intermediate (0: the default);
 * a small one sends per-sample quantities through chunks of samples. */
static cpk_context *context(size_t work_bytes) {
  cpk_context *ctx;
  cpk_context_options o = {0};
  o.threads = 2;
  o.seed = 17;
  o.mc_samples = 2;
  tu_ok(cpk_context_new(&ctx, &o));
  if (work_bytes != 0)
    ctx->work_bytes = work_bytes;
  return ctx;
}

static void build(const net *nt, cpk_dtype dt, cpk_model **m, cpk_tensor **x,
                  cpk_tensor **y) {
  int64_t shape[5] = {nt->n};
  memcpy(shape + 1, nt->sample, (size_t)nt->ndim * sizeof *shape);
  tu_ok(cpk_model_parse(m, nt->text, nt->name));
  tu_ok(cpk_model_build(*m, nt->ndim, nt->sample, dt));
  tu_ok(cpk_model_init_params(*m, 5));
  *x = tu_random(dt, nt->ndim + 1, shape, -1, 1, 3);
  tu_ok(cpk_tensor_new(y, CPK_I64, 1, shape));
  for (int64_t i = 0; i < nt->n; i++)
    cpk_tensor_set(*y, i, (double)((i * 5 + 1) % nt->classes));
}

/* Two results lists hold the same names and the same bits. */
static void assert_same_bits(const cpk_results *a, const cpk_results *b,
                             const char *what) {
  assert_int_equal(cpk_results_count(a), cpk_results_count(b));
  for (int i = 0; i < cpk_results_count(a); i++) {
    const char *name = cpk_results_name(a, i);
    const cpk_tensor *ta = cpk_results_tensor(a, i);
    const cpk_tensor *tb = cpk_results_find(b, name);
    assert_non_null(tb);
    const size_t bytes =
        (size_t)cpk_tensor_numel(ta) * cpk_dtype_size(ta->dtype);
    assert_int_equal(cpk_tensor_numel(ta), cpk_tensor_numel(tb));
    if (memcmp(ta->data, tb->data, bytes) != 0)
      fail_msg("%s: %s differs with poisoned memory", what, name);
  }
}

/* One pass with zeroed and one with poisoned memory (a fresh model each
 * time: training mode moves the running statistics). */
static void same_pass(const net *nt, cpk_dtype dt, const char *ext,
                      int training, size_t work_bytes) {
  cpk_results *r[2];
  for (int poison = 0; poison < 2; poison++) {
    cpk_model *m;
    cpk_tensor *x, *y;
    build(nt, dt, &m, &x, &y);
    cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, ext,
                          training};
    cpk_context *ctx = context(work_bytes);
    cpk__alloc_poison(poison);
    tu_ok(cpk_compute(ctx, m, &spec, x, y, &r[poison]));
    cpk__alloc_poison(0);
    cpk_context_free(ctx);
    cpk_tensor_free(x);
    cpk_tensor_free(y);
    cpk_model_free(m);
  }
  assert_same_bits(r[0], r[1], nt->name);
  cpk_results_free(r[0]);
  cpk_results_free(r[1]);
}

/* The four curvature products on a block of 2 vectors. */
static void same_products(const net *nt) {
  static const cpk_curvature kinds[4] = {CPK_CURV_HESSIAN, CPK_CURV_GGN,
                                         CPK_CURV_FISHER_MC,
                                         CPK_CURV_EMPIRICAL_FISHER};
  for (int c = 0; c < 4; c++) {
    double *out[2] = {NULL, NULL};
    int64_t dim = 0;
    for (int poison = 0; poison < 2; poison++) {
      cpk_model *m;
      cpk_tensor *x, *y;
      build(nt, CPK_F64, &m, &x, &y);
      cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_SUM, NULL,
                            0};
      cpk_context *ctx = context(0);
      cpk_curvature_op *op;
      cpk__alloc_poison(poison);
      tu_ok(cpk_curvature_op_new(&op, ctx, m, &spec, x, y, kinds[c]));
      dim = cpk_curvature_op_dim(op);
      const int64_t shape[2] = {2, dim};
      cpk_tensor *v = tu_random(CPK_F64, 2, shape, -1, 1, 9);
      out[poison] = calloc((size_t)(2 * dim), sizeof(double));
      tu_ok(cpk_curvature_op_apply(op, 2, v->data, out[poison]));
      cpk__alloc_poison(0);
      cpk_curvature_op_free(op);
      cpk_context_free(ctx);
      cpk_tensor_free(v);
      cpk_tensor_free(x);
      cpk_tensor_free(y);
      cpk_model_free(m);
    }
    if (memcmp(out[0], out[1], (size_t)(2 * dim) * sizeof(double)) != 0)
      fail_msg("%s: curvature product %d differs with poisoned memory",
               nt->name, c);
    free(out[0]);
    free(out[1]);
  }
}

/* The poison is real: an unfilled tensor reads as NaN while it is on. */
static void test_poison_is_nan(void **state) {
  (void)state;
  const int64_t shape[1] = {3};
  cpk_tensor *t;
  cpk__alloc_poison(1);
  tu_ok(cpk__tensor_new_uninit(&t, CPK_F64, 1, shape));
  cpk__alloc_poison(0);
  for (int64_t i = 0; i < 3; i++) {
    const double v = cpk_tensor_get(t, i);
    assert_true(v != v);
  }
  cpk_tensor_free(t);
}

static void test_extensions(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++) {
    const char *ext = nets[i].batchnorm ? ext_no_kron : all_ext;
    same_pass(&nets[i], CPK_F64, ext, 0, 0);
    same_pass(&nets[i], CPK_F32, ext, 0, 0);
    same_pass(&nets[i], CPK_F64, ext, 0, 256); /* in chunks of samples */
  }
}

static void test_gradient_training(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++) {
    same_pass(&nets[i], CPK_F64, NULL, 1, 0);
    same_pass(&nets[i], CPK_F32, "batch_grad,variance", 1, 0);
  }
}

static void test_products(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof nets / sizeof nets[0]; i++)
    same_products(&nets[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_poison_is_nan),
      cmocka_unit_test(test_extensions),
      cmocka_unit_test(test_gradient_training),
      cmocka_unit_test(test_products),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
