/*
 * test_cuda.c: the CUDA path against the CPU reference, on a machine with
 * a CUDA device (elsewhere the whole program reports itself as skipped,
 * TAP "1..0 # SKIP"):
 *  - every device operation against its CPU twin on random inputs;
 *  - cpk_compute on the device against the CPU for networks of every layer
 *    with a CUDA path, every extension with one, the three losses and both
 *    float types (float64 to 1e-10 relative, float32 to 1e-4);
 *  - what the device path does not cover is a clear error.
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


/* The operations with fixed small shapes (a: inputs, then outputs). */
static void op_gemm_nn(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__gemm(c, dt, 0, 0, 7, 5, 9, 1.5, a[0], 9, a[1], 5, 0.5, a[2], 5);
}
static void op_gemm_tn(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__gemm(c, dt, 1, 0, 7, 5, 9, 1.0, a[0], 7, a[1], 5, 0.0, a[2], 5);
}
static void op_gemm_nt(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__gemm(c, dt, 0, 1, 7, 5, 9, -1.0, a[0], 9, a[1], 9, 1.0, a[2], 5);
}
static void op_gemm_tt(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__gemm(c, dt, 1, 1, 7, 5, 9, 2.0, a[0], 7, a[1], 9, 0.0, a[2], 5);
}
static void op_gemm_strided(const cpk_context *c, cpk_dtype dt, void **a) {
  /* A shared (stride 0), B and C per item, 4 items */
  cpk__gemm_strided(c, dt, 0, 0, 6, 5, 3, 1.0, a[0], 3, 0, a[1], 5, 15, 0.5,
                    a[2], 5, 30, 4);
}
static void op_copy_axpy_scale(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__copy(c, dt, 100, a[0], a[1]);
  cpk__axpy(c, dt, 100, -0.75, a[0], a[2]);
  cpk__scale(c, dt, 100, 3.0, a[2]);
}
static void op_sum_rows(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__sum_rows(c, dt, 3, 40, 7, a[0], 0.0, a[1]);
  cpk__sum_rows(c, dt, 3, 40, 7, a[0], 0.5, a[2]);
}
static void op_mul_broadcast(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__mul_broadcast(c, dt, 4, 30, a[0], a[1], a[2]);
}
static void op_outer_batch(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__outer_batch(c, dt, 2, 5, 4, 6, a[0], a[1], a[2]);
}
static void op_sq_accumulate(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__sq_accumulate(c, dt, 3, 5, 8, a[0], a[1], 5, 0, a[2]);
  cpk__sq_accumulate(c, dt, 3, 5, 8, a[0], NULL, 0, 1, a[3]);
}
static void op_row_sq_norms(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__row_sq_norms(c, dt, 9, 33, a[0], 0.0, a[1]);
  cpk__row_sq_norms(c, dt, 9, 33, a[0], 2.0, a[2]);
}
static void op_channel(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__channel_bias(c, dt, 3, 4, 10, a[0], 0.5, a[2]);
  cpk__channel_sum(c, dt, 3, 4, 10, a[1], 0.25, a[3]);
}

/* A 2-d geometry with every feature: stride, padding, dilation. */
static cpk__im2col_geom geom2d(void) {
  cpk__im2col_geom g = {.channels = 3,
                        .in = {1, 7, 6},
                        .k = {1, 3, 2},
                        .stride = {1, 2, 1},
                        .pad = {0, 1, 1},
                        .dil = {1, 1, 2}};
  for (int i = 0; i < 3; i++)
    g.out[i] = (g.in[i] + 2 * g.pad[i] - g.dil[i] * (g.k[i] - 1) - 1) /
                   g.stride[i] + 1;
  return g;
}
/* x [2, 3, 7, 6] (252), cols [2, 3*6, 4*6] (864), y on the output grid
 * [2, 3, 4, 6] (144), its transposed unfolding [2, 3*6, 7*6] (1512). */
static void op_im2col(const cpk_context *c, cpk_dtype dt, void **a) {
  const cpk__im2col_geom g = geom2d();
  cpk__im2col(c, dt, &g, 2, a[0], a[3]);
  cpk__col2im(c, dt, &g, 2, a[1], 0.5, a[4]);
  cpk__im2col_transposed(c, dt, &g, 2, a[2], a[5]);
}

static void act_all(const cpk_context *c, cpk_dtype dt, void **a) {
  /* 10 activations x 3 orders into consecutive slices of a[2] */
  const size_t es = cpk_dtype_size(dt);
  for (int act = CPK__ACT_IDENTITY; act <= CPK__ACT_LOG; act++) {
    /* y = f(x) first, then f' and f'' given x and y */
    char *out = (char *)a[2] + (size_t)(act * 3 * 50) * es;
    cpk__act_eval(c, dt, (cpk__act)act, act == CPK__ACT_ELU ? 0.7 : 0.05,
                  CPK__ACT_F, 50, a[0], NULL, out);
    for (int o = 1; o < 3; o++)
      cpk__act_eval(c, dt, (cpk__act)act, act == CPK__ACT_ELU ? 0.7 : 0.05,
                    (cpk__act_order)o, 50, a[0], out,
                    out + (size_t)(o * 50) * es);
  }
}

static void test_ops_on_device(void **state) {
  (void)state;
  cpk_context *cuda = dt_context(dt_device(), 1);
  if (cuda == NULL)
    skip();
  for (int f = 0; f < 2; f++) {
    const cpk_dtype dt = f ? CPK_F64 : CPK_F32;
    const double rtol = f ? 1e-12 : 1e-5;
    dt_run_op(cuda, "gemm nn", dt, 3, (int64_t[]){63, 45, 35}, 1, op_gemm_nn, -1, 100, rtol);
    dt_run_op(cuda, "gemm tn", dt, 3, (int64_t[]){63, 45, 35}, 1, op_gemm_tn, -1, 100, rtol);
    dt_run_op(cuda, "gemm nt", dt, 3, (int64_t[]){63, 45, 35}, 1, op_gemm_nt, -1, 100, rtol);
    dt_run_op(cuda, "gemm tt", dt, 3, (int64_t[]){63, 45, 35}, 1, op_gemm_tt, -1, 100, rtol);
    dt_run_op(cuda, "gemm strided", dt, 3, (int64_t[]){18, 60, 120}, 1,
           op_gemm_strided, -1, 100, rtol);
    dt_run_op(cuda, "copy/axpy/scale", dt, 3, (int64_t[]){100, 100, 100}, 2,
           op_copy_axpy_scale, -1, 100, rtol);
    dt_run_op(cuda, "sum_rows", dt, 3, (int64_t[]){840, 21, 21}, 2, op_sum_rows,
              -1, 100, rtol);
    dt_run_op(cuda, "mul_broadcast", dt, 3, (int64_t[]){30, 120, 120}, 1,
           op_mul_broadcast, -1, 100, rtol);
    dt_run_op(cuda, "outer_batch", dt, 3, (int64_t[]){40, 30, 240}, 1,
           op_outer_batch, -1, 100, rtol);
    dt_run_op(cuda, "sq_accumulate", dt, 4, (int64_t[]){120, 15, 40, 8}, 2,
           op_sq_accumulate, -1, 100, rtol);
    dt_run_op(cuda, "row_sq_norms", dt, 3, (int64_t[]){297, 9, 9}, 2,
           op_row_sq_norms, -1, 100, rtol);
    dt_run_op(cuda, "channel_bias/sum", dt, 4, (int64_t[]){4, 120, 120, 4}, 2,
           op_channel, -1, 100, rtol);
    dt_run_op(cuda, "im2col/col2im", dt, 6,
           (int64_t[]){252, 864, 144, 864, 252, 1512}, 3, op_im2col, -1, 100, rtol);
    dt_run_op(cuda, "activations", dt, 3, (int64_t[]){50, 1, 1500}, 1, act_all,
              0.05, 100, rtol); /* log needs x > 0 */
  }
  cpk_context_free(cuda);
}

/* Networks of every layer with a CUDA path, [N, *shape] inputs, 3 outputs
 * (MSE and BCE targets [N, 3]; cross-entropy classes < 3). */
typedef struct {
  const char *text;
  int ndim;
  int64_t shape[4];
} net;

static const net nets[] = {
    {"flatten\nlinear 12 6\nsigmoid\nlinear 6 5 bias=false\ntanh\n"
     "linear 5 4\nelu alpha=0.7\nlinear 4 3\n",
     2,
     {3, 4}},
    {"linear 4 5\nselu\nlinear 5 4\nleaky_relu 0.1\nflatten\nlinear 8 3\n",
     2,
     {2, 4}},
    {"conv2d 2 4 3 padding=1\nrelu\nmaxpool2d 2\nconv2d 4 4 3 stride=2 "
     "padding=1 groups=2\nrelu\nflatten\nlinear 16 3\n",
     3,
     {2, 8, 8}},
    {"conv1d 2 3 3 dilation=2\nlogsigmoid\nmaxpool1d 3 stride=2 padding=1 "
     "ceil_mode=true\nconv_transpose1d 3 2 3 stride=2 output_padding=1\n"
     "flatten\nlinear 20 3\n",
     2,
     {2, 10}},
    {"conv3d 1 2 2\nrelu\nmaxpool3d 2 stride=1\nflatten\nlinear 16 3\n",
     4,
     {1, 4, 4, 4}},
    {"zeropad2d 1,0,2,1\nconv2d 2 2 3\nrelu\nmaxpool2d 3 stride=2\n"
     "flatten\nlinear 12 3\n",
     3,
     {2, 6, 6}},
};

static const char *device_extensions =
    "batch_grad,batch_l2_grad,sum_grad_squared,variance,batch_dot_grad,"
    "diag_ggn_exact,diag_ggn_mc,batch_diag_ggn_exact,batch_diag_ggn_mc,"
    "sqrt_ggn_exact,sqrt_ggn_mc,kfac,kflr";

static void test_compute_on_device(void **state) {
  (void)state;
  cpk_context *cuda = dt_context(dt_device(), 3);
  if (cuda == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 3);
  const int64_t n = 6;
  for (size_t k = 0; k < sizeof nets / sizeof nets[0]; k++)
    for (int f = 0; f < 2; f++)
      for (int loss = 0; loss < 3; loss++) {
        const cpk_dtype dt = f ? CPK_F64 : CPK_F32;
        const double rtol = f ? 1e-10 : 1e-4;
        cpk_model *m = dt_build(nets[k].text, nets[k].ndim, nets[k].shape, dt);
        int64_t xs[5] = {n};
        memcpy(xs + 1, nets[k].shape, sizeof nets[k].shape);
        cpk_tensor *x = tu_random(dt, nets[k].ndim + 1, xs, -1, 1, 3);
        cpk_tensor *y = dt_target((cpk_loss_kind)loss, n);
        cpk_pass_spec spec = {(cpk_loss_kind)loss,
                              loss == 1 ? CPK_REDUCTION_SUM
                                        : CPK_REDUCTION_MEAN,
                              device_extensions, 0};
        /* Kronecker factors skip linear layers on [N, R, IN] */
        cpk_pass_options opts = {.skip_unsupported = 1};
        cpk_results *rc, *rg;
        tu_ok(cpk_compute_ex(cpu, m, &spec, &opts, x, y, &rc));
        tu_ok(cpk_compute_ex(cuda, m, &spec, &opts, x, y, &rg));
        assert_int_equal(cpk_results_count(rc), cpk_results_count(rg));
        for (int i = 0; i < cpk_results_count(rc); i++) {
          char what[160];
          const cpk_tensor *g =
              cpk_results_find(rg, cpk_results_name(rc, i));
          snprintf(what, sizeof what, "net %zu %s %s: %s", k,
                   cpk_dtype_name(dt), cpk_loss_name((cpk_loss_kind)loss),
                   cpk_results_name(rc, i));
          if (g == NULL)
            fail_msg("%s: missing on the device", what);
          assert_null(g->device);
          tu_assert_close(g, cpk_results_tensor(rc, i), rtol, rtol * 1e-3,
                          what);
        }
        cpk_results_free(rc);
        cpk_results_free(rg);
        cpk_tensor_free(x);
        cpk_tensor_free(y);
        cpk_model_free(m);
      }
  cpk_context_free(cpu);
  cpk_context_free(cuda);
}

static int visit_nothing(void *ud, const char *name, int64_t first,
                         const cpk_tensor *chunk) {
  (void)ud, (void)name, (void)first, (void)chunk;
  return CPK_OK;
}

/* What the device path does not cover yet is a clear error, not a crash. */
static void test_device_refusals(void **state) {
  (void)state;
  cpk_context *cuda = dt_context(dt_device(), 1);
  if (cuda == NULL)
    skip();
  const int64_t shape[1] = {4};
  cpk_model *m = dt_build("linear 4 3\nsigmoid\nlinear 3 3\n", 1, shape, CPK_F64);
  int64_t xs[2] = {5, 4};
  cpk_tensor *x = tu_random(CPK_F64, 2, xs, -1, 1, 1);
  cpk_tensor *y = dt_target(CPK_LOSS_CROSS_ENTROPY, 5);
  /* (every layer and extension runs on the device: tests/test_cuda_layers,
   * tests/test_cuda_hessian; visitors of per-sample gradients do not) */
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 0};
  cpk_results *r = NULL;
  cpk_pass_options opts = {.visit_grad_batch = visit_nothing};
  assert_int_equal(cpk_compute_ex(cuda, m, &spec, &opts, x, y, &r),
                   CPK_ENOTSUP);
  assert_non_null(strstr(cpk_last_error(), "per-sample gradients"));
  assert_null(r);
  cpk_model_free(m);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_context_free(cuda);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ops_on_device),
      cmocka_unit_test(test_compute_on_device),
      cmocka_unit_test(test_device_refusals),
  };
  if (dt_skip_program())
    return 0;
  return cmocka_run_group_tests(tests, NULL, NULL);
}
