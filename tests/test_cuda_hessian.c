/*
 * test_cuda_hessian.c: the CUDA path of diag_hessian, batch_diag_hessian and
 * kfra against the CPU reference, on a machine with a CUDA device
 * (elsewhere the program reports itself as skipped, TAP "1..0 # SKIP"):
 *  - the operations of lib/ops_hessian.h against their CPU twins;
 *  - cpk_compute on the device against the CPU for networks mixing linear
 *    layers, every activation with a residual term (sigmoid, tanh, elu,
 *    selu, logsigmoid, exp, log on positive inputs), flatten, conv2d,
 *    maxpool2d and zeropad2d, the three losses and both float types
 *    (float64 to 1e-10 relative, float32 to 1e-4).
 * With CPK_TEST_DEVICE_AS_CPU=1 the "device" is a second CPU context, which
 * checks the test itself on a machine without a GPU (tests/devtest.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "model.h"
#include "ops.h"
#include "ops_hessian.h"
#include "devtest.h"

/* s [N=5, K=4], w [K, D=6], e [N, D] -> blk [K, N, D], sign [K, N]. */
static void op_lazy_rows(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__lazy_rows(c, dt, 4, 5, 6, a[0], a[1], a[2], a[3], a[4]);
}
/* dv [N=5, D=7] -> blk [D, N, D] (over random entries), sign [D, N]. */
static void op_diag_to_factor(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__diag_to_factor(c, dt, 5, 7, a[0], a[1], a[2]);
}
static void op_swap_repeat(const cpk_context *c, cpk_dtype dt, void **a) {
  cpk__swap_outer_axes(c, dt, 3, 4, 5, a[0], a[1]); /* [3,4,5] -> [5,4,3] */
  cpk__repeat_middle(c, dt, 3, 4, 5, a[0], a[2]);   /* [3,5] -> [3,4,5] */
  cpk__fill(c, dt, 33, -2.5, a[3]);
}

static void test_ops_on_device(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  for (int f = 0; f < 2; f++) {
    const cpk_dtype dt = f ? CPK_F64 : CPK_F32;
    /* no reductions: equal up to the last bits */
    const double rtol = f ? 1e-14 : 1e-6;
    dt_run_op(dev, "lazy_rows", dt, 5, (int64_t[]){20, 24, 30, 120, 20}, 2,
              op_lazy_rows, -1, 200, rtol);
    dt_run_op(dev, "diag_to_factor", dt, 3, (int64_t[]){35, 245, 35}, 2,
              op_diag_to_factor, -1, 200, rtol);
    dt_run_op(dev, "swap/repeat/fill", dt, 4, (int64_t[]){60, 60, 60, 40}, 3,
              op_swap_repeat, -1, 200, rtol);
  }
  cpk_context_free(dev);
}

/* Networks [N, *shape] -> 3 outputs (MSE and BCE targets [N, 3];
 * cross-entropy classes < 3). Every diagonal term form is reached: lazy
 * rows through dense linear layers followed by elementwise ones, one-hot
 * expansion before convolutions, diagonals through maxpool, zeropad and
 * flatten, signed factors from negative residuals. */
typedef struct {
  const char *text;
  int ndim;
  int64_t shape[4];
  double lo; /* inputs are drawn from [lo, 1] */
} net;

static const net nets[] = {
    {"linear 5 6\nsigmoid\nlinear 6 5\ntanh\nlinear 5 4\nelu alpha=0.7\n"
     "linear 4 3\n",
     1,
     {5},
     -1},
    {"linear 4 5\nselu\nlinear 5 5 bias=false\nlogsigmoid\nlinear 5 3\n",
     1,
     {4},
     -1},
    /* log sees sigmoid's positive outputs; exp after a linear layer */
    {"linear 4 5\nsigmoid\nlog\nlinear 5 4\nexp\nlinear 4 3\n", 1, {4}, -1},
    /* log straight on the (positive) input, then flatten */
    {"log\nflatten\nlinear 6 4\ntanh\nlinear 4 3\n", 2, {2, 3}, 0.2},
    {"conv2d 2 3 3 padding=1\nsigmoid\nmaxpool2d 2\nzeropad2d 1,0,0,1\n"
     "conv2d 3 2 2\ntanh\nflatten\nlinear 18 3\n",
     3,
     {2, 6, 6},
     -1},
    {"zeropad2d 1\nconv2d 1 2 3 stride=2\nelu\nflatten\nlinear 8 4\n"
     "logsigmoid\nlinear 4 3\n",
     3,
     {1, 4, 4},
     -1},
};

static const char *hessian_extensions = "diag_hessian,batch_diag_hessian,kfra";

static void test_compute_on_device(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 1);
  const int64_t n = 5;
  for (size_t k = 0; k < sizeof nets / sizeof nets[0]; k++)
    for (int f = 0; f < 2; f++)
      for (int loss = 0; loss < 3; loss++) {
        const cpk_dtype dt = f ? CPK_F64 : CPK_F32;
        const double rtol = f ? 1e-10 : 1e-4;
        cpk_model *m = dt_build(nets[k].text, nets[k].ndim, nets[k].shape, dt);
        int64_t xs[5] = {n};
        memcpy(xs + 1, nets[k].shape, sizeof nets[k].shape);
        cpk_tensor *x = tu_random(dt, nets[k].ndim + 1, xs, nets[k].lo, 1, 3);
        cpk_tensor *y = dt_target((cpk_loss_kind)loss, n);
        cpk_pass_spec spec = {(cpk_loss_kind)loss,
                              loss == 1 ? CPK_REDUCTION_SUM
                                        : CPK_REDUCTION_MEAN,
                              hessian_extensions, 0};
        cpk_results *rc, *rg;
        print_message("# net %zu %s %s\n", k, cpk_dtype_name(dt),
                      cpk_loss_name((cpk_loss_kind)loss));
        tu_ok(cpk_compute(cpu, m, &spec, x, y, &rc));
        tu_ok(cpk_compute(dev, m, &spec, x, y, &rg));
        assert_int_equal(cpk_results_count(rc), cpk_results_count(rg));
        int hessians = 0, kfras = 0;
        for (int i = 0; i < cpk_results_count(rc); i++) {
          char what[160];
          const char *name = cpk_results_name(rc, i);
          const cpk_tensor *g = cpk_results_find(rg, name);
          snprintf(what, sizeof what, "net %zu %s %s: %s", k,
                   cpk_dtype_name(dt), cpk_loss_name((cpk_loss_kind)loss),
                   name);
          if (g == NULL)
            fail_msg("%s: missing on the device", what);
          assert_null(g->device);
          hessians += strstr(name, ".diag_h") != NULL;
          kfras += strstr(name, ".kfra.") != NULL;
          tu_assert_close(g, cpk_results_tensor(rc, i), rtol, rtol * 1e-3,
                          what);
        }
        assert_true(hessians > 0);
        assert_true(kfras > 0);
        cpk_results_free(rc);
        cpk_results_free(rg);
        cpk_tensor_free(x);
        cpk_tensor_free(y);
        cpk_model_free(m);
      }
  cpk_context_free(cpu);
  cpk_context_free(dev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ops_on_device),
      cmocka_unit_test(test_compute_on_device),
  };
  if (dt_skip_program())
    return 0;
  return cmocka_run_group_tests(tests, NULL, NULL);
}
