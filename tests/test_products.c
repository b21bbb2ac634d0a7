/*
 * test_products.c: curvature-vector products (cpk_curvature_op) against
 * matrices built independently, float64, 1e-9 relative: the Hessian from
 * 4-point central differences of the gradient (both methods, the
 * R-operator and double backward, which also agree with each other to
 * 1e-12), the GGN from 4-point finite-difference Jacobians of the outputs
 * and the closed-form loss Hessians, the empirical Fisher from
 * single-sample gradients; on tiny networks with every layer kind that
 * products support (batch norm in evaluation mode, with perturbed running
 * statistics); symmetry u^T C v = v^T C u; a block equals one vector at a
 * time; passes over the batch equal one pass; the Monte Carlo Fisher
 * converges to the GGN; batch statistics refuse the Hessian.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define N 3
#define OUT 3
#define MAXP 64

/* A tiny network: its model text and one sample's shape (3 outputs). */
typedef struct {
  const char *text;
  int ndim;
  int64_t shape[3];
} net;

typedef struct {
  cpk_model *m;
  cpk_context *ctx;
  cpk_tensor *x, *y;
  cpk_pass_spec spec;
  int64_t p; /* parameters */
} problem;

/* Batch norm's parameters and running statistics away from their
 * defaults (weight 1, bias 0, mean 0, variance 1), so that every term of
 * its derivatives shows. */
static void perturb_batchnorm(cpk_model *m) {
  for (int p = 0; p < cpk_model_num_params(m); p++) {
    const char *name;
    cpk_tensor *t;
    tu_ok(cpk_model_param(m, p, &name, &t));
    const int layer = atoi(name);
    if (strncmp(cpk_model_layer_name(m, layer), "batchnorm", 9) != 0)
      continue;
    const int var = strstr(name, "running_var") != NULL;
    const int weight = strstr(name, "weight") != NULL;
    for (int64_t i = 0; i < cpk_tensor_numel(t); i++) {
      const double wave = 0.3 * sin(1.7 * (double)(p * 7 + i));
      cpk_tensor_set(t, i,
                     var ? 0.5 + 0.37 * (double)((p + i) % 4)
                         : (weight ? 1.0 : 0.0) + wave);
    }
  }
}

static void setup(problem *pb, const net *nt, cpk_loss_kind loss,
                  cpk_reduction red, const cpk_context_options *o) {
  int64_t xs[4] = {N}, s2[2] = {N, OUT}, n = N;
  memcpy(xs + 1, nt->shape, (size_t)nt->ndim * sizeof *xs);
  memset(pb, 0, sizeof *pb);
  pb->spec = (cpk_pass_spec){loss, red, NULL, 0};
  tu_ok(cpk_context_new(&pb->ctx, o));
  tu_ok(cpk_model_parse(&pb->m, nt->text, "net"));
  tu_ok(cpk_model_build(pb->m, nt->ndim, nt->shape, CPK_F64));
  tu_ok(cpk_model_init_params(pb->m, 3));
  perturb_batchnorm(pb->m);
  pb->x = tu_random(CPK_F64, nt->ndim + 1, xs, -1.5, 1.5, 6);
  if (loss == CPK_LOSS_CROSS_ENTROPY) {
    tu_ok(cpk_tensor_new(&pb->y, CPK_I64, 1, &n));
    for (int i = 0; i < N; i++)
      cpk_tensor_set(pb->y, i, (i + 2) % OUT);
  } else {
    pb->y = tu_random(CPK_F64, 2, s2, 0, 1, 8);
  }
  pb->p = cpk_model_param_count(pb->m);
  assert_true(pb->p <= MAXP);
}

static void teardown(problem *pb) {
  cpk_tensor_free(pb->x);
  cpk_tensor_free(pb->y);
  cpk_model_free(pb->m);
  cpk_context_free(pb->ctx);
}

/* The flat gradient, or the outputs when `outputs` is set. */
static void evaluate(problem *pb, double *out, int outputs) {
  cpk_results *r;
  tu_ok(cpk_compute(pb->ctx, pb->m, &pb->spec, pb->x, pb->y, &r));
  if (outputs) {
    const cpk_tensor *f = cpk_results_find(r, "output");
    for (int64_t i = 0; i < cpk_tensor_numel(f); i++)
      out[i] = cpk_tensor_get(f, i);
  } else {
    int64_t k = 0;
    for (int p = 0; p < cpk_model_num_params(pb->m); p++) {
      const char *name;
      char key[64];
      if (!cpk_model_param_trainable(pb->m, p))
        continue;
      tu_ok(cpk_model_param(pb->m, p, &name, NULL));
      snprintf(key, sizeof key, "%s.grad", name);
      const cpk_tensor *g = cpk_results_find(r, key);
      for (int64_t i = 0; i < cpk_tensor_numel(g); i++)
        out[k++] = cpk_tensor_get(g, i);
    }
  }
  cpk_results_free(r);
}

/* The scalar parameter at flat index j. */
static double *param_at(problem *pb, int64_t j) {
  for (int p = 0; p < cpk_model_num_params(pb->m); p++) {
    cpk_tensor *t;
    if (!cpk_model_param_trainable(pb->m, p))
      continue;
    tu_ok(cpk_model_param(pb->m, p, NULL, &t));
    if (j < cpk_tensor_numel(t))
      return (double *)t->data + j;
    j -= cpk_tensor_numel(t);
  }
  fail();
  return NULL;
}

/* d/dtheta_j of the gradient (outputs = 0) or of the outputs (1), len
 * values, by the 4-point central stencil
 *   (-f(t+2h) + 8 f(t+h) - 8 f(t-h) + f(t-2h)) / 12h
 * (error O(h^4)); theta_j is restored exactly. */
static void fd4(problem *pb, int64_t j, int outputs, int64_t len, double h,
                double *d) {
  static const double steps[4] = {2, 1, -1, -2}, weights[4] = {-1, 8, -8, 1};
  double *t = param_at(pb, j), keep = *t, f[MAXP > N * OUT ? MAXP : N * OUT];
  for (int64_t i = 0; i < len; i++)
    d[i] = 0;
  for (int s = 0; s < 4; s++) {
    *t = keep + steps[s] * h;
    evaluate(pb, f, outputs);
    for (int64_t i = 0; i < len; i++)
      d[i] += weights[s] * f[i] / (12 * h);
  }
  *t = keep;
}

/* Column j of the Hessian: d grad / d theta_j. */
static void hessian_fd(problem *pb, double h[MAXP][MAXP]) {
  double col[MAXP];
  for (int64_t j = 0; j < pb->p; j++) {
    fd4(pb, j, 0, pb->p, 1e-3, col);
    for (int64_t i = 0; i < pb->p; i++)
      h[i][j] = col[i];
  }
}

/* GGN = sum_n J_n^T H_n J_n with J = d outputs / d theta by fd4. */
static void ggn_fd(problem *pb, double g[MAXP][MAXP]) {
  static double jac[MAXP][N * OUT];
  double f[N * OUT];
  evaluate(pb, f, 1);
  for (int64_t j = 0; j < pb->p; j++)
    fd4(pb, j, 1, N * OUT, 1e-3, jac[j]);
  const int ce = pb->spec.loss == CPK_LOSS_CROSS_ENTROPY;
  double c = 1.0;
  if (pb->spec.reduction == CPK_REDUCTION_MEAN)
    c = ce ? 1.0 / N : 1.0 / (N * OUT);
  memset(g, 0, sizeof(double) * MAXP * MAXP);
  for (int n = 0; n < N; n++) {
    double h[OUT][OUT] = {{0}}, p[OUT], z = 0;
    for (int a = 0; a < OUT; a++)
      z += p[a] = exp(f[n * OUT + a]);
    for (int a = 0; a < OUT; a++)
      for (int b = 0; b < OUT; b++) {
        double s = 1 / (1 + exp(-f[n * OUT + a]));
        if (ce)
          h[a][b] = c * ((a == b) * p[a] / z - p[a] * p[b] / (z * z));
        else if (pb->spec.loss == CPK_LOSS_MSE)
          h[a][b] = 2 * c * (a == b);
        else
          h[a][b] = c * s * (1 - s) * (a == b);
      }
    for (int64_t i = 0; i < pb->p; i++)
      for (int64_t j = 0; j < pb->p; j++)
        for (int a = 0; a < OUT; a++)
          for (int b = 0; b < OUT; b++)
            g[i][j] += jac[i][n * OUT + a] * h[a][b] * jac[j][n * OUT + b];
  }
}

/* The operator's matrix, column by column, and as one block; `method` for
 * the Hessian. */
static void op_matrix_by(problem *pb, cpk_curvature kind, cpk_hvp_method method,
                         double a[MAXP][MAXP]) {
  cpk_curvature_op *op;
  tu_ok(cpk_curvature_op_new(&op, pb->ctx, pb->m, &pb->spec, pb->x, pb->y,
                             kind));
  tu_ok(cpk_curvature_op_set_method(op, method));
  assert_int_equal(cpk_curvature_op_method(op), method);
  assert_int_equal(cpk_curvature_op_dim(op), pb->p);
  const int64_t p = pb->p;
  double *eye = calloc((size_t)(p * p), sizeof *eye);
  double *block = calloc((size_t)(p * p), sizeof *block);
  for (int64_t j = 0; j < p; j++)
    eye[j * p + j] = 1;
  tu_ok(cpk_curvature_op_apply(op, p, eye, block));
  for (int64_t j = 0; j < p; j++) {
    double col[MAXP];
    tu_ok(cpk_curvature_op_apply(op, 1, eye + j * p, col));
    /* one vector at a time gives the block's columns */
    tu_assert_close_array(col, block + j * p, p, 1e-13, 1e-15, "block column");
    for (int64_t i = 0; i < p; i++)
      a[i][j] = col[i];
  }
  free(eye);
  free(block);
  cpk_curvature_op_free(op);
}

static void op_matrix(problem *pb, cpk_curvature kind, double a[MAXP][MAXP]) {
  op_matrix_by(pb, kind, CPK_HVP_ROP, a);
}

/* |got - want| <= rtol max|want| + atol elementwise, atol = 1e-10 (or
 * rtol / 1000 when smaller). */
static void assert_matrix(double got[MAXP][MAXP], double want[MAXP][MAXP],
                          int64_t p, double rtol, const char *what) {
  static double a[MAXP * MAXP], b[MAXP * MAXP];
  for (int64_t i = 0; i < p; i++)
    for (int64_t j = 0; j < p; j++) {
      a[i * p + j] = got[i][j];
      b[i * p + j] = want[i][j];
    }
  tu_assert_close_array(a, b, p * p, rtol, fmin(1e-10, rtol / 1000), what);
}

/* Every layer kind that products support, 3 outputs, at most MAXP
 * parameters; smooth activations only where finite differences of the
 * gradient must hold to 1e-9 (relu, leaky_relu and elu before a
 * convolution put kinks of f' or f'' within the stencil of some
 * parameters: the kinked nets below go without finite differences). */
static const net nets[] = {
    {"flatten\nlinear 4 3\nsigmoid\nlinear 3 4 bias=false\ntanh\nlinear 4 3\n",
     2,
     {2, 2}},
    {"flatten\nlinear 4 3\nelu\nlinear 3 3\nexp\nlog\nlinear 3 3\nlogsigmoid\n",
     2,
     {2, 2}},
    {"linear 2 3\nselu\nidentity\nlinear 3 2\nflatten\ndropout\nlinear 4 3\n",
     2,
     {2, 2}},
    /* grouped convolution, max pooling, transposed convolution */
    {"conv1d 2 2 3 padding=1 groups=2\nsigmoid\nmaxpool1d 2\n"
     "conv_transpose1d 2 2 2 stride=2\nflatten\nlinear 8 3\n",
     2,
     {2, 5}},
    /* zero padding, 2-d convolution, batch norm (evaluation mode, running
     * statistics), average pooling */
    {"zeropad2d 1\nconv2d 1 2 3\nbatchnorm2d 2\ntanh\navgpool2d 2\nflatten\n"
     "linear 8 3\n",
     3,
     {1, 4, 4}},
    /* batch norm over [F, L] between linear layers */
    {"linear 2 3\nbatchnorm1d 2\ntanh\nflatten\nlinear 6 3\n", 2, {2, 2}},
    /* 2-d transposed convolution, adaptive average pooling */
    {"conv_transpose2d 1 2 2\nsigmoid\nadaptive_avgpool2d 2\nflatten\n"
     "linear 8 3\n",
     3,
     {1, 3, 3}},
};
#define NNETS (sizeof nets / sizeof nets[0])

/* Piecewise-linear activations, checked where no finite differences are
 * needed (test_hessian_blocks: the methods against each other, symmetry,
 * blocks). */
static const net kinked[] = {
    {"flatten\nlinear 4 3\nrelu\nlinear 3 3\nleaky_relu 0.1\nlinear 3 3\n",
     2,
     {2, 2}},
    {"conv2d 1 2 2 padding=1\nrelu\nmaxpool2d 2\nflatten\nlinear 8 3\n",
     3,
     {1, 3, 3}},
};
#define NKINKED (sizeof kinked / sizeof kinked[0])

static void assert_symmetric(double a[MAXP][MAXP], int64_t p,
                             const char *what) {
  for (int64_t i = 0; i < p; i++)
    for (int64_t j = 0; j < i; j++)
      if (!(fabs(a[i][j] - a[j][i]) <= 1e-12 * (1 + fabs(a[i][j])))) {
        print_error("%s: [%lld][%lld] = %.17g, [%lld][%lld] = %.17g\n", what,
                    (long long)i, (long long)j, a[i][j], (long long)j,
                    (long long)i, a[j][i]);
        fail();
      }
}

/* Both Hessian methods (the R-operator, double backward) against the
 * finite-difference Hessian, symmetric, and equal to each other to
 * rounding; the GGN against its finite-difference form. */
static void test_hessian_and_ggn(void **state) {
  static double got[MAXP][MAXP], dbl[MAXP][MAXP], want[MAXP][MAXP];
  for (size_t net = 0; net < NNETS; net++)
    for (int loss = 0; loss < 3; loss++)
      for (int red = 0; red < 2; red++) {
        problem pb;
        char what[96];
        setup(&pb, &nets[net], (cpk_loss_kind)loss, (cpk_reduction)red, NULL);
        op_matrix_by(&pb, CPK_CURV_HESSIAN, CPK_HVP_ROP, got);
        op_matrix_by(&pb, CPK_CURV_HESSIAN, CPK_HVP_DOUBLE_BACKWARD, dbl);
        hessian_fd(&pb, want);
        snprintf(what, sizeof what, "net %zu %s %s: Hessian (R-op)", net,
                 cpk_loss_name(pb.spec.loss), red ? "sum" : "mean");
        assert_matrix(got, want, pb.p, 1e-9, what);
        assert_symmetric(got, pb.p, what);
        snprintf(what, sizeof what, "net %zu %s %s: Hessian (double backward)",
                 net, cpk_loss_name(pb.spec.loss), red ? "sum" : "mean");
        assert_matrix(dbl, want, pb.p, 1e-9, what);
        assert_symmetric(dbl, pb.p, what);
        snprintf(what, sizeof what, "net %zu %s %s: double backward vs R-op",
                 net, cpk_loss_name(pb.spec.loss), red ? "sum" : "mean");
        assert_matrix(dbl, got, pb.p, 1e-12, what);
        op_matrix(&pb, CPK_CURV_GGN, got);
        ggn_fd(&pb, want);
        snprintf(what, sizeof what, "net %zu %s %s: GGN", net,
                 cpk_loss_name(pb.spec.loss), red ? "sum" : "mean");
        assert_matrix(got, want, pb.p, 1e-9, what);
        teardown(&pb);
      }
}

static double dot(const double *a, const double *b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; i++)
    s += a[i] * b[i];
  return s;
}

/* Hessian products of random blocks, every net and the kinked ones: with
 * either method a block of K vectors equals K single products; the
 * methods agree; u^T H v = v^T H u; the double-backward product over
 * passes of at most 2 samples (cpk_curvature_op_new_ex) equals the
 * one-pass product. */
static void test_hessian_blocks(void **state) {
  enum { K = 4 };
  for (size_t net = 0; net < NNETS + NKINKED; net++) {
    problem pb;
    char what[96];
    setup(&pb, net < NNETS ? &nets[net] : &kinked[net - NNETS],
          (cpk_loss_kind)(net % 3), (cpk_reduction)(net % 2), NULL);
    const int64_t p = pb.p;
    double *v = malloc((size_t)(K * p) * sizeof *v);
    double *hv[2], *one = malloc((size_t)p * sizeof *one);
    for (int64_t i = 0; i < K * p; i++)
      v[i] = sin(0.37 * (double)i + (double)net) + 0.1;
    cpk_curvature_op *op;
    tu_ok(cpk_curvature_op_new(&op, pb.ctx, pb.m, &pb.spec, pb.x, pb.y,
                               CPK_CURV_HESSIAN));
    for (int method = 0; method < 2; method++) {
      hv[method] = malloc((size_t)(K * p) * sizeof *hv[method]);
      tu_ok(cpk_curvature_op_set_method(op, (cpk_hvp_method)method));
      tu_ok(cpk_curvature_op_apply(op, K, v, hv[method]));
      snprintf(what, sizeof what, "net %zu method %d: block column", net,
               method);
      for (int j = 0; j < K; j++) {
        tu_ok(cpk_curvature_op_apply(op, 1, v + j * p, one));
        tu_assert_close_array(one, hv[method] + j * p, p, 1e-13, 1e-15, what);
      }
      for (int a = 0; a < K; a++)
        for (int b = 0; b < a; b++) {
          const double uhv = dot(v + a * p, hv[method] + b * p, p);
          const double vhu = dot(v + b * p, hv[method] + a * p, p);
          if (!(fabs(uhv - vhu) <= 1e-12 * (1 + fabs(uhv))))
            fail_msg("net %zu method %d: u^T H v = %.17g, v^T H u = %.17g",
                     net, method, uhv, vhu);
        }
    }
    snprintf(what, sizeof what, "net %zu: double backward vs R-op, block",
             net);
    tu_assert_close_array(hv[1], hv[0], K * p, 1e-12, 1e-15, what);
    cpk_curvature_op_free(op);
    /* passes over the batch (one operator on a model at a time: they share
     * the layers' cached forward state) */
    double *passes = malloc((size_t)(K * p) * sizeof *passes);
    tu_ok(cpk_curvature_op_new_ex(&op, pb.ctx, pb.m, &pb.spec, pb.x, pb.y,
                                  CPK_CURV_HESSIAN, 2));
    tu_ok(cpk_curvature_op_set_method(op, CPK_HVP_DOUBLE_BACKWARD));
    tu_ok(cpk_curvature_op_apply(op, K, v, passes));
    snprintf(what, sizeof what, "net %zu: double backward in passes", net);
    tu_assert_close_array(passes, hv[1], K * p, 1e-12, 1e-15, what);
    cpk_curvature_op_free(op);
    free(passes);
    free(v);
    free(one);
    free(hv[0]);
    free(hv[1]);
    teardown(&pb);
  }
}

/* Empirical Fisher = sum_n g_n g_n^T with g_n from batch_grad. */
static void test_empirical_fisher(void **state) {
  static double got[MAXP][MAXP], want[MAXP][MAXP];
  for (int loss = 0; loss < 3; loss++) {
    problem pb;
    setup(&pb, &nets[0], (cpk_loss_kind)loss, CPK_REDUCTION_MEAN, NULL);
    op_matrix(&pb, CPK_CURV_EMPIRICAL_FISHER, got);
    cpk_pass_spec spec = pb.spec;
    spec.extensions = "batch_grad";
    cpk_results *r;
    tu_ok(cpk_compute(pb.ctx, pb.m, &spec, pb.x, pb.y, &r));
    static double gn[N][MAXP];
    int64_t k = 0;
    for (int p = 0; p < cpk_model_num_params(pb.m); p++) {
      const char *name;
      char key[64];
      tu_ok(cpk_model_param(pb.m, p, &name, NULL));
      snprintf(key, sizeof key, "%s.grad_batch", name);
      const cpk_tensor *gb = cpk_results_find(r, key);
      int64_t per = cpk_tensor_numel(gb) / N;
      for (int n = 0; n < N; n++)
        for (int64_t i = 0; i < per; i++)
          gn[n][k + i] = cpk_tensor_get(gb, n * per + i);
      k += per;
    }
    for (int64_t i = 0; i < pb.p; i++)
      for (int64_t j = 0; j < pb.p; j++) {
        want[i][j] = 0;
        for (int n = 0; n < N; n++)
          want[i][j] += gn[n][i] * gn[n][j];
      }
    assert_matrix(got, want, pb.p, 1e-12, "empirical Fisher");
    cpk_results_free(r);
    teardown(&pb);
  }
}

/* The Monte Carlo Fisher approaches the GGN as samples grow. */
static void test_fisher_mc(void **state) {
  static double got[MAXP][MAXP], want[MAXP][MAXP];
  cpk_context_options o = {.seed = 4, .mc_samples = 50000};
  problem pb;
  setup(&pb, &nets[0], CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_SUM, &o);
  op_matrix(&pb, CPK_CURV_FISHER_MC, got);
  op_matrix(&pb, CPK_CURV_GGN, want);
  assert_matrix(got, want, pb.p, 0.03, "Monte Carlo Fisher vs GGN");
  teardown(&pb);
}

static void test_errors(void **state) {
  problem pb;
  cpk_curvature_op *op;
  cpk_curvature k;
  setup(&pb, &nets[0], CPK_LOSS_MSE, CPK_REDUCTION_SUM, NULL);
  tu_ok(cpk_curvature_op_new(&op, pb.ctx, pb.m, &pb.spec, pb.x, pb.y,
                             CPK_CURV_GGN));
  double v[MAXP] = {0}, out[MAXP];
  v[3] = NAN;
  assert_int_equal(cpk_curvature_op_apply(op, 1, v, out), CPK_ENONFINITE);
  assert_int_equal(cpk_curvature_op_apply(op, 0, v, out), CPK_EINVAL);
  assert_int_equal(cpk_curvature_op_set_method(op, (cpk_hvp_method)2),
                   CPK_EINVAL);
  /* the default */
  assert_int_equal(cpk_curvature_op_method(op), CPK_HVP_DOUBLE_BACKWARD);
  cpk_curvature_op_free(op);
  tu_ok(cpk_curvature_parse("empirical_fisher", &k));
  assert_int_equal(k, CPK_CURV_EMPIRICAL_FISHER);
  assert_int_equal(cpk_curvature_parse("fisher", &k), CPK_EUSAGE);
  teardown(&pb);
}

/* Batch norm on batch statistics couples the samples nonlinearly; the
 * Hessian's second-order terms through it are not implemented, and either
 * method says so instead of leaving them out. */
static void test_batch_statistics(void **state) {
  static const net bn = {"linear 2 3\nbatchnorm1d 2 track_running_stats=false\n"
                         "tanh\nflatten\nlinear 6 3\n",
                         2,
                         {2, 2}};
  problem pb;
  setup(&pb, &bn, CPK_LOSS_MSE, CPK_REDUCTION_SUM, NULL);
  double v[MAXP], out[MAXP];
  for (int64_t i = 0; i < pb.p; i++)
    v[i] = 1;
  for (int method = 0; method < 2; method++) {
    cpk_curvature_op *op;
    tu_ok(cpk_curvature_op_new(&op, pb.ctx, pb.m, &pb.spec, pb.x, pb.y,
                               CPK_CURV_HESSIAN));
    tu_ok(cpk_curvature_op_set_method(op, (cpk_hvp_method)method));
    assert_int_equal(cpk_curvature_op_apply(op, 1, v, out), CPK_ENOTSUP);
    assert_non_null(strstr(cpk_last_error(), "batch statistics"));
    cpk_curvature_op_free(op);
  }
  teardown(&pb);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hessian_and_ggn),
      cmocka_unit_test(test_hessian_blocks),
      cmocka_unit_test(test_batch_statistics),
      cmocka_unit_test(test_empirical_fisher),
      cmocka_unit_test(test_fisher_mc),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
