/*
 * test_cuda_layers.c: batchnorm1d/2d, dropout, avgpool1d/2d/3d and
 * adaptive_avgpool2d on the CUDA device against the CPU reference, on a
 * machine with a CUDA device (elsewhere the whole program reports itself
 * skipped, TAP "1..0 # SKIP"):
 *  - every hook of each kind (forward, jac_t_mat, jac_mat, param_jac_t_mat
 *    summed and per sample, param_jac_mat, jac_diag, jac_t_diag) called
 *    directly on device tensors, in evaluation and training mode;
 *  - cpk_compute on the device against the CPU for networks mixing them
 *    with linear, conv, relu and flatten, in evaluation and training mode,
 *    for the loss, output, gradients and the first- and second-order
 *    extensions with a device path, both float types (float64 to 1e-10
 *    relative, float32 to 1e-4); after each pass the models' running
 *    statistics must agree too.
 * Two models built and initialised the same way serve the two devices (a
 * training pass updates the running statistics of its model), and two
 * contexts with the same seed draw the same dropout masks when they run
 * the same passes in the same order.
 *
 * CPK_TEST_DEVICE_AS_CPU=1 runs the same comparisons with a second
 * CPU context in place of the CUDA one (a check of the test itself on a
 * machine without a GPU).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "device_pass.h"
#include "model.h"
#include "devtest.h"

/* Every parameter and buffer gets random values (variances positive), the
 * same for the same seed: weights and running statistics of batch norm
 * then differ from their trivial initial values. */
static void randomize(cpk_model *m, uint64_t seed) {
  for (int i = 0; i < cpk_model_num_params(m); i++) {
    const char *name;
    cpk_tensor *t;
    tu_ok(cpk_model_param(m, i, &name, &t));
    const int var = strstr(name, "running_var") != NULL;
    cpk_tensor *r = tu_random(t->dtype, t->ndim, t->shape, var ? 0.5 : -1,
                              var ? 2 : 1, seed + (uint64_t)i);
    memcpy(t->data, r->data,
           (size_t)cpk_tensor_numel(t) * cpk_dtype_size(t->dtype));
    cpk_tensor_free(r);
  }
}

static cpk_model *build(const char *text, int ndim, const int64_t *shape,
                        cpk_dtype dt) {
  cpk_model *m = dt_build(text, ndim, shape, dt);
  randomize(m, 500);
  return m;
}

/* Every parameter and buffer of the two models agrees. */
static void check_params(const cpk_model *a, const cpk_model *b, double rtol,
                         const char *what) {
  assert_int_equal(cpk_model_num_params(a), cpk_model_num_params(b));
  for (int i = 0; i < cpk_model_num_params(a); i++) {
    const char *name;
    cpk_tensor *ta, *tb;
    char msg[200];
    tu_ok(cpk_model_param(a, i, &name, &ta));
    tu_ok(cpk_model_param(b, i, &name, &tb));
    snprintf(msg, sizeof msg, "%s: parameter %s after the pass", what, name);
    tu_assert_close(tb, ta, rtol, rtol * 1e-3, msg);
  }
}

/* ------------------------------------------------------- hooks directly */

typedef struct {
  const char *text;
  int ndim;
  int64_t shape[4];
} layer_case;

static const layer_case layer_cases[] = {
    {"batchnorm1d 4 momentum=0.3", 1, {4}},
    {"batchnorm1d 3 eps=0.01", 2, {3, 5}},
    {"batchnorm1d 3 affine=false", 2, {3, 4}},
    {"batchnorm2d 2", 3, {2, 3, 4}},
    {"batchnorm2d 3 track_running_stats=false", 3, {3, 2, 3}},
    {"dropout 0.4", 2, {3, 5}},
    {"avgpool1d 3 stride=2 padding=1", 2, {2, 9}},
    {"avgpool1d 3 stride=2 padding=1 ceil_mode=true count_include_pad=false",
     2,
     {2, 8}},
    {"avgpool1d 2 stride=3", 2, {2, 10}},
    {"avgpool2d 3 stride=2 padding=1 ceil_mode=true divisor_override=5", 3,
     {2, 7, 6}},
    {"avgpool2d 2,3 stride=1,2 padding=1,1 count_include_pad=false", 3,
     {1, 5, 7}},
    {"avgpool3d 2 stride=1 padding=1 count_include_pad=false", 4,
     {2, 3, 4, 3}},
    {"avgpool3d 3 stride=2 padding=1 ceil_mode=true divisor_override=4", 4,
     {1, 5, 6, 4}},
    {"adaptive_avgpool2d 3,2", 3, {2, 7, 5}},
    {"adaptive_avgpool2d 4", 3, {1, 6, 6}},
};

/* A random [v, *shape] tensor (v = 0: no leading axis). */
static cpk_tensor *block(cpk_dtype dt, int64_t v, int64_t n, int ndim,
                         const int64_t *shape, uint64_t seed) {
  int64_t s[CPK_MAX_DIMS];
  int k = 0;
  if (v > 0)
    s[k++] = v;
  if (n > 0)
    s[k++] = n;
  memcpy(s + k, shape, (size_t)ndim * sizeof *s);
  return tu_random(dt, k + ndim, s, -1, 1, seed);
}

/* out = hook(in) on both devices; out pre-filled with `init` (for beta). */
typedef int (*hook_fn)(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                       const cpk_tensor *y, const cpk_tensor *in,
                       cpk_tensor *out);

static void compare_map(cpk__layer *lc, cpk__layer *lg, cpk_context *cpu,
                        cpk_context *dev, hook_fn hook, const cpk_tensor *x,
                        const cpk_tensor *y, const cpk_tensor *xd,
                        const cpk_tensor *yd, const cpk_tensor *in,
                        cpk_tensor *out, double rtol, const char *what) {
  cpk_tensor *ind = dt_up(dev, in), *outd = dt_up(dev, out);
  tu_ok(hook(lc, cpu, x, y, in, out));
  tu_ok(hook(lg, dev, xd, yd, ind, outd));
  dt_check_down(dev, outd, out, rtol, rtol * 1e-3, what);
  cpk_tensor_free(ind);
  cpk_tensor_free(outd);
}

static void hooks_case(cpk_context *cpu, cpk_context *dev,
                       const layer_case *c, cpk_dtype dt, int training) {
  const double rtol = dt == CPK_F64 ? 1e-10 : 1e-4;
  const int64_t n = 5, v = 2;
  cpk_model *mc = build(c->text, c->ndim, c->shape, dt);
  cpk_model *mg = build(c->text, c->ndim, c->shape, dt);
  cpk__layer *lc = mc->layers[0], *lg = mg->layers[0];
  const cpk__layer_kind *k = lc->kind;
  char what[200];
  assert_true(k->cuda);
  tu_ok(cpk__model_to_device(dev, mg));
  cpk_tensor *x = block(dt, 0, n, lc->in_ndim, lc->in_shape, 31);
  cpk_tensor *y = block(dt, 0, n, lc->out_ndim, lc->out_shape, 32);
  cpk_tensor *xd = dt_up(dev, x), *yd = dt_up(dev, y);
  snprintf(what, sizeof what, "%s (%s, %s): forward", c->text,
           cpk_dtype_name(dt), training ? "training" : "eval");
  tu_ok(k->forward(lc, cpu, x, y, training));
  tu_ok(k->forward(lg, dev, xd, yd, training));
  dt_check_down(dev, yd, y, rtol, rtol * 1e-3, what);

  cpk_tensor *gin = block(dt, v, n, lc->out_ndim, lc->out_shape, 33);
  cpk_tensor *gout = block(dt, v, n, lc->in_ndim, lc->in_shape, 34);
  cpk_tensor *gind = dt_up(dev, gin);
  snprintf(what, sizeof what, "%s (%s, %s): jac_t_mat", c->text,
           cpk_dtype_name(dt), training ? "training" : "eval");
  compare_map(lc, lg, cpu, dev, k->jac_t_mat, x, y, xd, yd, gin, gout, rtol,
              what);
  cpk_tensor *jin = block(dt, v, n, lc->in_ndim, lc->in_shape, 35);
  cpk_tensor *jout = block(dt, v, n, lc->out_ndim, lc->out_shape, 36);
  snprintf(what, sizeof what, "%s (%s, %s): jac_mat", c->text,
           cpk_dtype_name(dt), training ? "training" : "eval");
  compare_map(lc, lg, cpu, dev, k->jac_mat, x, y, xd, yd, jin, jout, rtol,
              what);
  if (k->jac_diag != NULL) {
    cpk_tensor *o = block(dt, 0, n, lc->in_ndim, lc->in_shape, 37);
    cpk_tensor *od = dt_up(dev, o);
    tu_ok(k->jac_diag(lc, cpu, x, y, o));
    tu_ok(k->jac_diag(lg, dev, xd, yd, od));
    snprintf(what, sizeof what, "%s (%s): jac_diag", c->text,
             cpk_dtype_name(dt));
    dt_check_down(dev, od, o, rtol, rtol * 1e-3, what);
    cpk_tensor_free(o);
    cpk_tensor_free(od);
  }
  if (k->jac_t_diag != NULL) {
    cpk_tensor *d = block(dt, 0, n, lc->out_ndim, lc->out_shape, 38);
    cpk_tensor *o = block(dt, 0, n, lc->in_ndim, lc->in_shape, 39);
    snprintf(what, sizeof what, "%s (%s): jac_t_diag", c->text,
             cpk_dtype_name(dt));
    compare_map(lc, lg, cpu, dev, k->jac_t_diag, x, y, xd, yd, d, o, rtol,
                what);
    cpk_tensor_free(d);
    cpk_tensor_free(o);
  }
  for (int p = 0; p < lc->nparams; p++) {
    if (!lc->params[p].trainable)
      continue;
    const cpk__param *q = &lc->params[p];
    for (int per_sample = 0; per_sample < 2; per_sample++) {
      cpk_tensor *o = block(dt, v, per_sample ? n : 0, q->ndim, q->shape, 40);
      cpk_tensor *od = dt_up(dev, o);
      const double beta = per_sample ? 0.0 : 0.5;
      tu_ok(k->param_jac_t_mat(lc, cpu, p, x, gin, per_sample, beta, o));
      tu_ok(k->param_jac_t_mat(lg, dev, p, xd, gind, per_sample, beta, od));
      snprintf(what, sizeof what, "%s (%s, %s): param_jac_t_mat %s%s",
               c->text, cpk_dtype_name(dt), training ? "training" : "eval",
               q->name, per_sample ? " per sample" : "");
      dt_check_down(dev, od, o, rtol, rtol * 1e-3, what);
      cpk_tensor_free(o);
      cpk_tensor_free(od);
    }
    if (k->param_jac_mat != NULL)
      for (int b = 0; b < 2; b++) {
        cpk_tensor *t = block(dt, v, 0, q->ndim, q->shape, 41);
        cpk_tensor *o = block(dt, v, n, lc->out_ndim, lc->out_shape, 42);
        cpk_tensor *td = dt_up(dev, t), *od = dt_up(dev, o);
        const double beta = b ? 0.5 : 0.0;
        tu_ok(k->param_jac_mat(lc, cpu, p, x, t, beta, o));
        tu_ok(k->param_jac_mat(lg, dev, p, xd, td, beta, od));
        snprintf(what, sizeof what, "%s (%s): param_jac_mat %s beta %g",
                 c->text, cpk_dtype_name(dt), q->name, beta);
        dt_check_down(dev, od, o, rtol, rtol * 1e-3, what);
        cpk_tensor_free(t);
        cpk_tensor_free(o);
        cpk_tensor_free(td);
        cpk_tensor_free(od);
      }
  }
  cpk__model_release_device(mg);
  snprintf(what, sizeof what, "%s (%s, %s)", c->text, cpk_dtype_name(dt),
           training ? "training" : "eval");
  check_params(mc, mg, rtol, what);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_tensor_free(xd);
  cpk_tensor_free(yd);
  cpk_tensor_free(gin);
  cpk_tensor_free(gind);
  cpk_tensor_free(gout);
  cpk_tensor_free(jin);
  cpk_tensor_free(jout);
  cpk_model_free(mc);
  cpk_model_free(mg);
}

static void test_hooks_on_device(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 1);
  for (size_t i = 0; i < sizeof layer_cases / sizeof layer_cases[0]; i++)
    for (int f = 0; f < 2; f++)
      for (int training = 0; training < 2; training++)
        hooks_case(cpu, dev, &layer_cases[i], f ? CPK_F64 : CPK_F32,
                   training);
  cpk_context_free(cpu);
  cpk_context_free(dev);
}

/* ---------------------------------------------------------- cpk_compute */

/* Networks of the ported layers with linear, conv, relu and flatten,
 * [N, *shape] inputs, 3 outputs. */
typedef struct {
  const char *text;
  int ndim;
  int64_t shape[4];
} net;

static const net nets[] = {
    {"linear 5 6\nbatchnorm1d 6\nrelu\ndropout 0.3\nlinear 6 3\n", 1, {5}},
    {"batchnorm1d 3 momentum=0.2\nconv1d 3 4 3\nbatchnorm1d 4 affine=false\n"
     "relu\navgpool1d 3 stride=2 padding=1 ceil_mode=true "
     "count_include_pad=false\nflatten\nlinear 20 3\n",
     2,
     {3, 10}},
    {"conv2d 2 4 3 padding=1\nbatchnorm2d 4\nrelu\navgpool2d 3 stride=2 "
     "padding=1 ceil_mode=true divisor_override=5\ndropout 0.25\nflatten\n"
     "linear 64 3\n",
     3,
     {2, 7, 7}},
    {"avgpool2d 2,3 stride=1,2 padding=1,1\nconv2d 2 3 2\nbatchnorm2d 3 "
     "track_running_stats=false\nrelu\nadaptive_avgpool2d 3,2\nflatten\n"
     "linear 18 3\n",
     3,
     {2, 6, 7}},
    {"avgpool3d 2 stride=1 padding=1 count_include_pad=false\nconv3d 1 2 2\n"
     "relu\navgpool3d 2 ceil_mode=true\nflatten\nlinear 54 3\n",
     4,
     {1, 5, 5, 5}},
    {"conv1d 2 2 2\navgpool1d 4 stride=3 padding=2\nrelu\nflatten\n"
     "linear 8 3\n",
     2,
     {2, 11}},
    {"avgpool2d 2 stride=3\nconv2d 1 2 2 padding=1\nbatchnorm2d 2 eps=0.01\n"
     "relu\nflatten\ndropout 0.5\nlinear 32 3\n",
     3,
     {1, 8, 8}},
};

static const char *extensions =
    "batch_grad,batch_l2_grad,sum_grad_squared,variance,diag_ggn_exact,"
    "diag_ggn_mc,batch_diag_ggn_exact,sqrt_ggn_exact,kfac,kflr";

static void compute_case(cpk_context *cpu, cpk_context *dev, size_t k,
                         cpk_dtype dt, int loss, int training) {
  const double rtol = dt == CPK_F64 ? 1e-10 : 1e-4;
  const int64_t n = 6;
  cpk_model *mc = build(nets[k].text, nets[k].ndim, nets[k].shape, dt);
  cpk_model *mg = build(nets[k].text, nets[k].ndim, nets[k].shape, dt);
  int64_t xs[5] = {n};
  memcpy(xs + 1, nets[k].shape, sizeof nets[k].shape);
  cpk_tensor *x = tu_random(dt, nets[k].ndim + 1, xs, -1, 1, 3);
  cpk_tensor *y = dt_target((cpk_loss_kind)loss, n);
  cpk_pass_spec spec = {(cpk_loss_kind)loss,
                        loss == 1 ? CPK_REDUCTION_SUM : CPK_REDUCTION_MEAN,
                        extensions, training};
  /* Kronecker factors skip the layers without them (batch norm) */
  cpk_pass_options opts = {.skip_unsupported = 1};
  cpk_results *rc, *rg;
  char what[200];
  snprintf(what, sizeof what, "net %zu %s %s %s", k, cpk_dtype_name(dt),
           cpk_loss_name((cpk_loss_kind)loss),
           training ? "training" : "eval");
  tu_ok(cpk_compute_ex(cpu, mc, &spec, &opts, x, y, &rc));
  tu_ok(cpk_compute_ex(dev, mg, &spec, &opts, x, y, &rg));
  assert_int_equal(cpk_results_count(rc), cpk_results_count(rg));
  for (int i = 0; i < cpk_results_count(rc); i++) {
    char msg[260];
    const cpk_tensor *g = cpk_results_find(rg, cpk_results_name(rc, i));
    snprintf(msg, sizeof msg, "%s: %s", what, cpk_results_name(rc, i));
    if (g == NULL)
      fail_msg("%s: missing on the device", msg);
    assert_null(g->device);
    /* float32: an absolute floor for entries that are rounding noise
     * around 0 on both devices (a bias in front of a batch norm in
     * training mode has gradient 0) */
    tu_assert_close(g, cpk_results_tensor(rc, i), rtol,
                    dt == CPK_F64 ? rtol * 1e-3 : 1e-5, msg);
  }
  check_params(mc, mg, rtol, what);
  cpk_results_free(rc);
  cpk_results_free(rg);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(mc);
  cpk_model_free(mg);
}

static void test_compute_on_device(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 3);
  if (dev == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 3);
  for (size_t k = 0; k < sizeof nets / sizeof nets[0]; k++)
    for (int f = 0; f < 2; f++)
      for (int training = 0; training < 2; training++)
        for (int loss = 0; loss < 3; loss += 1 + f) /* f64: two losses */
          compute_case(cpu, dev, k, f ? CPK_F64 : CPK_F32, loss, training);
  cpk_context_free(cpu);
  cpk_context_free(dev);
}

/* Two training passes in a row on the same models: the running statistics
 * the second pass starts from are the first one's update, on both. */
static void test_running_stats_accumulate(void **state) {
  (void)state;
  cpk_context *dev = dt_context(dt_device(), 1);
  if (dev == NULL)
    skip();
  cpk_context *cpu = dt_context(CPK_DEVICE_CPU, 1);
  const net *nt = &nets[2];
  cpk_model *mc = build(nt->text, nt->ndim, nt->shape, CPK_F64);
  cpk_model *mg = build(nt->text, nt->ndim, nt->shape, CPK_F64);
  int64_t xs[5] = {4};
  memcpy(xs + 1, nt->shape, sizeof nt->shape);
  cpk_tensor *y = dt_target(CPK_LOSS_CROSS_ENTROPY, 4);
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 1};
  for (int pass = 0; pass < 3; pass++) {
    cpk_tensor *x = tu_random(CPK_F64, nt->ndim + 1, xs, -2, 2, 50 + pass);
    cpk_results *rc, *rg;
    spec.training = pass < 2; /* then evaluation from the updated buffers */
    tu_ok(cpk_compute(cpu, mc, &spec, x, y, &rc));
    tu_ok(cpk_compute(dev, mg, &spec, x, y, &rg));
    tu_assert_close(cpk_results_find(rg, "output"),
                    cpk_results_find(rc, "output"), 1e-10, 1e-13, "output");
    check_params(mc, mg, 1e-10, "running statistics");
    cpk_results_free(rc);
    cpk_results_free(rg);
    cpk_tensor_free(x);
  }
  cpk_tensor_free(y);
  cpk_model_free(mc);
  cpk_model_free(mg);
  cpk_context_free(cpu);
  cpk_context_free(dev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hooks_on_device),
      cmocka_unit_test(test_compute_on_device),
      cmocka_unit_test(test_running_stats_accumulate),
  };
  if (dt_skip_program())
    return 0;
  return cmocka_run_group_tests(tests, NULL, NULL);
}
