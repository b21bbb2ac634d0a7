/*
 * test_cuda_products.c: curvature-vector products, the spectral tools over
 * them and forward mode on the CUDA device against the CPU, on a machine
 * with a CUDA device (elsewhere the whole program reports itself as
 * skipped, TAP "1..0 # SKIP"):
 *  - Hessian, GGN, Monte Carlo Fisher and empirical Fisher products on
 *    blocks of vectors for networks of linear, activation, flatten, conv,
 *    maxpool, zeropad and batch norm (evaluation mode) layers, the three
 *    losses, float32 and float64 (float64 to 1e-10 relative, float32 to
 *    1e-4); the Hessian by both methods (R-operator, double backward);
 *  - Lanczos top eigenvalues and Hutchinson traces (seeded) in float64 to
 *    1e-8;
 *  - cpk_jacobian (both modes), cpk_jvp and cpk_propagate (Monte Carlo
 *    check included);
 *  - an operator survives a cpk_compute on its model in between; what the
 *    device path does not cover is a clear error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "model.h"
#include "devtest.h"

/* Networks with a CUDA path, [N, *shape] inputs, 3 outputs. */
typedef struct {
  const char *text;
  int ndim;
  int64_t shape[4];
} net;

static const net nets[] = {
    {"flatten\nlinear 12 6\nsigmoid\nlinear 6 5 bias=false\ntanh\n"
     "linear 5 4\nrelu\nlinear 4 3\n",
     2,
     {3, 4}},
    {"linear 4 5\nelu alpha=0.7\nlinear 5 4\nleaky_relu 0.1\nflatten\n"
     "linear 8 3\n",
     2,
     {2, 4}},
    {"conv2d 2 3 3 padding=1\nsigmoid\nmaxpool2d 2\nconv2d 3 4 3 stride=2 "
     "padding=1\ntanh\nflatten\nlinear 16 3\n",
     3,
     {2, 8, 8}},
    {"zeropad2d 1,0,2,1\nconv2d 2 2 3\nrelu\nmaxpool2d 3 stride=2\n"
     "flatten\nlinear 12 3\n",
     3,
     {2, 6, 6}},
    {"conv1d 2 3 3 dilation=2\nlogsigmoid\nconv_transpose1d 3 2 3 stride=2\n"
     "flatten\nlinear 26 3\n",
     2,
     {2, 10}},
    {"conv2d 2 3 3 padding=1\nbatchnorm2d 3\ntanh\nmaxpool2d 2\nflatten\n"
     "linear 12 5\nbatchnorm1d 5\nsigmoid\nlinear 5 3\n",
     3,
     {2, 4, 4}},
};
#define NNETS (sizeof nets / sizeof nets[0])
/* The forward-mode tests take the nets without buffers (batch norm's
 * running statistics take no tangent): all but the last. */
#define NFWD (NNETS - 1)

static cpk_tensor *input_for(const net *nt, int64_t n, cpk_dtype dt,
                             uint64_t seed) {
  int64_t xs[5] = {n};
  memcpy(xs + 1, nt->shape, sizeof nt->shape);
  return tu_random(dt, nt->ndim + 1, xs, -1, 1, seed);
}

/* |a - b| <= rtol * max|b| elementwise (a scale-aware tolerance). */
static void assert_close_scaled(const double *a, const double *b, int64_t n,
                                double rtol, const char *what) {
  double big = 0.0;
  for (int64_t i = 0; i < n; i++)
    big = fabs(b[i]) > big ? fabs(b[i]) : big;
  tu_assert_close_array(a, b, n, rtol, rtol * (big > 0 ? big : 1.0), what);
}

static double *random_vectors(int64_t count, uint64_t seed) {
  int64_t shape[1] = {count};
  cpk_tensor *t = tu_random(CPK_F64, 1, shape, -1, 1, seed);
  double *v = malloc((size_t)count * sizeof *v);
  memcpy(v, t->data, (size_t)count * sizeof *v);
  cpk_tensor_free(t);
  return v;
}

/* ------------------------------------------------------------- products */

static void test_products_on_device(void **state) {
  (void)state;
  cpk_context *cuda = dt_context(dt_device(), 3);
  if (cuda == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 3);
  const int64_t n = 5, k = 3;
  for (size_t q = 0; q < NNETS; q++)
    for (int f = 0; f < 2; f++)
      for (int loss = 0; loss < 3; loss++)
        for (int kind = 0; kind < 4; kind++) {
          const cpk_dtype dt = f ? CPK_F64 : CPK_F32;
          const double rtol = f ? 1e-10 : 1e-4;
          cpk_model *m = dt_build(nets[q].text, nets[q].ndim, nets[q].shape, dt);
          cpk_tensor *x = input_for(&nets[q], n, dt, 3);
          cpk_tensor *y = dt_target((cpk_loss_kind)loss, n);
          cpk_pass_spec spec = {(cpk_loss_kind)loss,
                                loss == 1 ? CPK_REDUCTION_SUM
                                          : CPK_REDUCTION_MEAN,
                                NULL, 0};
          /* one operator at a time on a model: they share the layers'
           * cached forward state */
          cpk_curvature_op *oc, *og;
          tu_ok(cpk_curvature_op_new(&oc, cpu, m, &spec, x, y,
                                     (cpk_curvature)kind));
          const int64_t p = cpk_curvature_op_dim(oc);
          double *v = random_vectors(k * p, 40 + q);
          double *rc = calloc((size_t)(k * p), sizeof *rc);
          double *rg = calloc((size_t)(k * p), sizeof *rg);
          tu_ok(cpk_curvature_op_apply(oc, k, v, rc));
          cpk_curvature_op_free(oc);
          tu_ok(cpk_curvature_op_new(&og, cuda, m, &spec, x, y,
                                     (cpk_curvature)kind));
          assert_int_equal(p, cpk_curvature_op_dim(og));
          tu_ok(cpk_curvature_op_apply(og, k, v, rg));
          char what[160];
          snprintf(what, sizeof what, "net %zu %s %s curvature %d", q,
                   cpk_dtype_name(dt), cpk_loss_name((cpk_loss_kind)loss),
                   kind);
          assert_close_scaled(rg, rc, k * p, rtol, what);
          /* one vector, then again: the operator is reusable */
          memset(rg, 0, (size_t)(k * p) * sizeof *rg);
          tu_ok(cpk_curvature_op_apply(og, 1, v, rg));
          assert_close_scaled(rg, rc, p, rtol, what);
          if (kind == CPK_CURV_HESSIAN) { /* the other method, on the device */
            tu_ok(cpk_curvature_op_set_method(og, CPK_HVP_DOUBLE_BACKWARD));
            memset(rg, 0, (size_t)(k * p) * sizeof *rg);
            tu_ok(cpk_curvature_op_apply(og, k, v, rg));
            snprintf(what, sizeof what, "net %zu %s %s Hessian, double backward",
                     q, cpk_dtype_name(dt), cpk_loss_name((cpk_loss_kind)loss));
            assert_close_scaled(rg, rc, k * p, rtol, what);
          }
          free(v);
          free(rc);
          free(rg);
          cpk_curvature_op_free(og);
          cpk_tensor_free(x);
          cpk_tensor_free(y);
          cpk_model_free(m);
        }
  cpk_context_free(cpu);
  cpk_context_free(cuda);
}

/* A device operator keeps its own parameter copies: a cpk_compute on the
 * device with the same model in between, whose per-pass copies come and
 * go, leaves its products as they were (a model without max pooling,
 * whose argmax the passes share). */
static void test_operator_survives_compute(void **state) {
  (void)state;
  cpk_context *cuda = dt_context(dt_device(), 3);
  if (cuda == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 3);
  const int64_t n = 4;
  cpk_model *m = dt_build(nets[0].text, nets[0].ndim, nets[0].shape, CPK_F64);
  cpk_tensor *x = input_for(&nets[0], n, CPK_F64, 5);
  cpk_tensor *y = dt_target(CPK_LOSS_CROSS_ENTROPY, n);
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 0};
  cpk_curvature_op *og;
  tu_ok(cpk_curvature_op_new(&og, cuda, m, &spec, x, y, CPK_CURV_HESSIAN));
  const int64_t p = cpk_curvature_op_dim(og);
  double *v = random_vectors(2 * p, 77);
  double *r1 = calloc((size_t)(2 * p), sizeof *r1);
  double *r2 = calloc((size_t)(2 * p), sizeof *r2);
  tu_ok(cpk_curvature_op_apply(og, 2, v, r1));
  cpk_pass_spec ext = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN,
                       "diag_ggn_exact", 0};
  cpk_tensor *x2 = input_for(&nets[0], n + 3, CPK_F64, 6);
  cpk_tensor *y2 = dt_target(CPK_LOSS_CROSS_ENTROPY, n + 3);
  cpk_results *res;
  tu_ok(cpk_compute(cuda, m, &ext, x2, y2, &res));
  cpk_results_free(res);
  tu_ok(cpk_curvature_op_apply(og, 2, v, r2));
  tu_assert_close_array(r2, r1, 2 * p, 1e-13, 1e-15, "after cpk_compute");
  /* and a second device operator on the same model next to it */
  cpk_curvature_op *o2;
  tu_ok(cpk_curvature_op_new(&o2, cuda, m, &spec, x, y, CPK_CURV_GGN));
  tu_ok(cpk_curvature_op_apply(o2, 2, v, r2));
  tu_ok(cpk_curvature_op_apply(og, 2, v, r2));
  tu_assert_close_array(r2, r1, 2 * p, 1e-13, 1e-15, "next to another");
  cpk_curvature_op_free(o2);
  free(v);
  free(r1);
  free(r2);
  cpk_curvature_op_free(og);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_tensor_free(x2);
  cpk_tensor_free(y2);
  cpk_model_free(m);
  cpk_context_free(cpu);
  cpk_context_free(cuda);
}

/* ------------------------------------------------------- spectral tools */

static void test_spectral_on_device(void **state) {
  (void)state;
  cpk_context *cuda = dt_context(dt_device(), 3);
  if (cuda == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 3);
  const int64_t n = 6;
  for (size_t q = 0; q < 3; q++)
    for (int kind = 0; kind < 2; kind++) {
      cpk_model *m =
          dt_build(nets[q].text, nets[q].ndim, nets[q].shape, CPK_F64);
      cpk_tensor *x = input_for(&nets[q], n, CPK_F64, 8);
      cpk_tensor *y = dt_target(CPK_LOSS_CROSS_ENTROPY, n);
      cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL,
                            0};
      cpk_curvature_op *oc, *og;
      cpk_operator ac, ag;
      char what[96];
      double ec[3], eg[3], tc, sc, tg, sg;
      cpk_eigen_options eo = {.seed = 3, .tol = 1e-10};
      cpk_trace_options to = {.seed = 5, .block = 8};
      tu_ok(cpk_curvature_op_new(&oc, cpu, m, &spec, x, y,
                                 (cpk_curvature)kind));
      cpk_curvature_op_as_operator(oc, &ac);
      tu_ok(cpk_eigen_lanczos(&ac, 3, &eo, ec, NULL, NULL));
      tu_ok(cpk_trace_hutchinson(&ac, 24, &to, &tc, &sc));
      cpk_curvature_op_free(oc);
      tu_ok(cpk_curvature_op_new(&og, cuda, m, &spec, x, y,
                                 (cpk_curvature)kind));
      cpk_curvature_op_as_operator(og, &ag);
      tu_ok(cpk_eigen_lanczos(&ag, 3, &eo, eg, NULL, NULL));
      tu_ok(cpk_trace_hutchinson(&ag, 24, &to, &tg, &sg));
      cpk_curvature_op_free(og);
      snprintf(what, sizeof what, "net %zu curvature %d: Lanczos", q, kind);
      assert_close_scaled(eg, ec, 3, 1e-8, what);
      snprintf(what, sizeof what, "net %zu curvature %d: Hutchinson", q,
               kind);
      tu_assert_close_array(&tg, &tc, 1, 1e-8, 1e-8 * fabs(sc), what);
      cpk_tensor_free(x);
      cpk_tensor_free(y);
      cpk_model_free(m);
    }
  cpk_context_free(cpu);
  cpk_context_free(cuda);
}

/* ---------------------------------------------------------- forward mode */

static void assert_same(const cpk_tensor *g, const cpk_tensor *c, double rtol,
                        const char *what) {
  assert_null(g->device);
  int64_t nn = cpk_tensor_numel(c);
  double *a = malloc((size_t)nn * sizeof *a), *b = malloc((size_t)nn * sizeof *b);
  assert_int_equal(nn, cpk_tensor_numel(g));
  for (int64_t i = 0; i < nn; i++) {
    a[i] = cpk_tensor_get(g, i);
    b[i] = cpk_tensor_get(c, i);
  }
  assert_close_scaled(a, b, nn, rtol, what);
  free(a);
  free(b);
}

static void test_forward_on_device(void **state) {
  (void)state;
  cpk_context *cuda = dt_context(dt_device(), 3);
  if (cuda == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 3);
  const int64_t n = 4;
  for (size_t q = 0; q < NFWD; q++)
    for (int f = 0; f < 2; f++) {
      const cpk_dtype dt = f ? CPK_F64 : CPK_F32;
      const double rtol = f ? 1e-10 : 1e-4;
      char what[128];
      cpk_model *m = dt_build(nets[q].text, nets[q].ndim, nets[q].shape, dt);
      cpk_tensor *x = input_for(&nets[q], n, dt, 12);
      /* the Jacobian in both modes */
      for (int mode = 1; mode <= 2; mode++) {
        cpk_tensor *jc, *jg;
        tu_ok(cpk_jacobian(cpu, m, x, (cpk_jacobian_mode)mode, &jc));
        tu_ok(cpk_jacobian(cuda, m, x, (cpk_jacobian_mode)mode, &jg));
        snprintf(what, sizeof what, "net %zu %s: jacobian mode %d", q,
                 cpk_dtype_name(dt), mode);
        assert_same(jg, jc, rtol, what);
        cpk_tensor_free(jc);
        cpk_tensor_free(jg);
      }
      /* JVP along an input tangent and every parameter, V = 2 */
      const int64_t v = 2;
      int64_t ts[6] = {v, n};
      memcpy(ts + 2, nets[q].shape, sizeof nets[q].shape);
      cpk_tensor *it = tu_random(CPK_F64, nets[q].ndim + 2, ts, -1, 1, 21);
      cpk_tensor **pt = calloc((size_t)m->nparams, sizeof *pt);
      for (int k = 0; k < m->nparams; k++) {
        const cpk__param *p =
            &m->params[k].layer->params[m->params[k].slot];
        int64_t ps[CPK_MAX_DIMS] = {v};
        memcpy(ps + 1, p->shape, (size_t)p->ndim * sizeof *ps);
        pt[k] = tu_random(dt, p->ndim + 1, ps, -1, 1, 30 + (uint64_t)k);
      }
      cpk_tensor *oc, *og;
      tu_ok(cpk_jvp(cpu, m, x, it, (const cpk_tensor *const *)pt, &oc));
      tu_ok(cpk_jvp(cuda, m, x, it, (const cpk_tensor *const *)pt, &og));
      snprintf(what, sizeof what, "net %zu %s: jvp", q, cpk_dtype_name(dt));
      assert_same(og, oc, rtol, what);
      cpk_tensor_free(oc);
      cpk_tensor_free(og);
      /* parameters only (no input tangent) */
      tu_ok(cpk_jvp(cpu, m, x, NULL, (const cpk_tensor *const *)pt, &oc));
      tu_ok(cpk_jvp(cuda, m, x, NULL, (const cpk_tensor *const *)pt, &og));
      assert_same(og, oc, rtol, what);
      cpk_tensor_free(oc);
      cpk_tensor_free(og);
      for (int k = 0; k < m->nparams; k++)
        cpk_tensor_free(pt[k]);
      free(pt);
      cpk_tensor_free(it);
      /* error propagation with the Monte Carlo check, per-sample sigma */
      int64_t ss[5] = {n};
      memcpy(ss + 1, nets[q].shape, sizeof nets[q].shape);
      cpk_tensor *sigma = tu_random(CPK_F64, nets[q].ndim + 1, ss, 0, 0.1, 4);
      cpk_results *rc, *rg;
      tu_ok(cpk_propagate(cpu, m, x, sigma, 40, &rc));
      tu_ok(cpk_propagate(cuda, m, x, sigma, 40, &rg));
      assert_int_equal(cpk_results_count(rc), cpk_results_count(rg));
      for (int i = 0; i < cpk_results_count(rc); i++) {
        const cpk_tensor *g = cpk_results_find(rg, cpk_results_name(rc, i));
        snprintf(what, sizeof what, "net %zu %s: propagate %s", q,
                 cpk_dtype_name(dt), cpk_results_name(rc, i));
        if (g == NULL)
          fail_msg("%s: missing on the device", what);
        assert_same(g, cpk_results_tensor(rc, i), f ? 1e-9 : 1e-3, what);
      }
      cpk_results_free(rc);
      cpk_results_free(rg);
      cpk_tensor_free(sigma);
      cpk_tensor_free(x);
      cpk_model_free(m);
    }
  cpk_context_free(cpu);
  cpk_context_free(cuda);
}

/* ------------------------------------------------------------------ CLI */

#define CASE "tests/fixtures/flat_selu_logsig_ce_sum_f64"

/* Run `curvpack CMD <the case's files> ARGS --out DIR/DEVICE --device
 * DEVICE` on both devices. */
static void cli_both(const char *dir, const char *cmd, const char *args) {
  static const char *const devices[2] = {"cpu", "cuda"};
  for (int d = 0; d < 2; d++) {
    char line[4096], err[2048];
    const char *run_on = dt_device() == CPK_DEVICE_CPU ? "cpu" : devices[d];
    snprintf(line, sizeof line,
             "'%s/curvpack' %s --model '%s' --params '%s' --input '%s' "
             "--target '%s' --dtype float64 %s --out '%s/%s' --device %s "
             ">/dev/null",
             CPK_TEST_BUILDDIR, cmd, tu_src(CASE "/model.txt"),
             tu_src(CASE "/params"), tu_src(CASE "/input.npy"),
             tu_src(CASE "/target.npy"), args, dir, devices[d], run_on);
    if (tu_run(line, err, sizeof err) != 0)
      fail_msg("curvpack %s --device %s: %s", cmd, devices[d], err);
  }
}

/* DIR/cuda/NAME equals DIR/cpu/NAME. */
static void same_file(const char *dir, const char *name, double rtol) {
  char a[1024], b[1024];
  cpk_tensor *ta, *tb;
  snprintf(a, sizeof a, "%s/cpu/%s", dir, name);
  snprintf(b, sizeof b, "%s/cuda/%s", dir, name);
  tu_ok(cpk_npy_read(a, &ta));
  tu_ok(cpk_npy_read(b, &tb));
  assert_same(tb, ta, rtol, name);
  cpk_tensor_free(ta);
  cpk_tensor_free(tb);
}

static void test_cli_on_device(void **state) {
  (void)state;
  cpk_context *cuda = dt_context(dt_device(), 3);
  if (cuda == NULL)
    skip();
  cpk_context_free(cuda);
  char dir[512];
  snprintf(dir, sizeof dir, "%s", tu_tempdir());
  static const char *const params[] = {"1.weight", "1.bias", "3.weight",
                                       "3.bias",   "6.weight", "6.bias",
                                       "8.weight", "8.bias"};
  char args[1024], name[64];
  snprintf(args, sizeof args, "--vector '%s'", tu_src(CASE "/params"));
  cli_both(dir, "hvp", args);
  for (int i = 0; i < 8; i++) {
    snprintf(name, sizeof name, "%s.hvp.npy", params[i]);
    same_file(dir, name, 1e-10);
  }
  cli_both(dir, "ggnvp", args);
  for (int i = 0; i < 8; i++) {
    snprintf(name, sizeof name, "%s.ggnvp.npy", params[i]);
    same_file(dir, name, 1e-10);
  }
  cli_both(dir, "trace", "--method hutchinson --samples 16 --seed 3");
  same_file(dir, "trace.npy", 1e-8);
  cli_both(dir, "jacobian", "--mode forward");
  same_file(dir, "jacobian.npy", 1e-10);
  tu_rmtree(dir);
}

/* Layer state shared by passes on one model: a clear error, not a read of
 * memory on the wrong device. */
static void test_device_refusals(void **state) {
  (void)state;
  cpk_context *cuda = dt_context(dt_device(), 3);
  if (cuda == NULL)
    skip();
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 0};
  cpk_curvature_op *op = NULL;
  cpk_tensor *x, *y;
  /* a CPU pass on the model of a live device operator replaces max
   * pooling's argmax: the operator's next product is a clear error, not a
   * read of host memory on the device */
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 3);
  cpk_model *m = dt_build(nets[2].text, nets[2].ndim, nets[2].shape, CPK_F64);
  x = input_for(&nets[2], 3, CPK_F64, 2);
  y = dt_target(CPK_LOSS_CROSS_ENTROPY, 3);
  tu_ok(cpk_curvature_op_new(&op, cuda, m, &spec, x, y, CPK_CURV_HESSIAN));
  cpk_results *r;
  tu_ok(cpk_compute(cpu, m, &spec, x, y, &r));
  cpk_results_free(r);
  const int64_t p = cpk_curvature_op_dim(op);
  double *v = random_vectors(p, 1), *hv = calloc((size_t)p, sizeof *hv);
  assert_int_equal(cpk_curvature_op_apply(op, 1, v, hv), CPK_EINVAL);
  assert_non_null(strstr(cpk_last_error(), "another pass"));
  free(v);
  free(hv);
  cpk_curvature_op_free(op);
  cpk_model_free(m);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_context_free(cpu);
  cpk_context_free(cuda);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_products_on_device),
      cmocka_unit_test(test_operator_survives_compute),
      cmocka_unit_test(test_spectral_on_device),
      cmocka_unit_test(test_forward_on_device),
      cmocka_unit_test(test_cli_on_device),
      cmocka_unit_test(test_device_refusals),
  };
  if (dt_skip_program())
    return 0;
  return cmocka_run_group_tests(tests, NULL, NULL);
}
