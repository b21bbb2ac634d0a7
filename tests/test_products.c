/*
 * test_products.c: curvature-vector products (cpk_curvature_op) against
 * matrices built independently, float64, 1e-9 relative: the Hessian from
 * 4-point central differences of the gradient, the GGN from 4-point
 * finite-difference Jacobians of the outputs and
 * the closed-form loss Hessians, the empirical Fisher from single-sample
 * gradients; symmetry u^T C v = v^T C u; a block equals one vector at a
 * time; the Monte Carlo Fisher converges to the GGN.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define N 3
#define OUT 3
#define MAXP 64

static const int64_t sample_shape[2] = {2, 2};

typedef struct {
  cpk_model *m;
  cpk_context *ctx;
  cpk_tensor *x, *y;
  cpk_pass_spec spec;
  int64_t p; /* parameters */
} problem;

static void setup(problem *pb, const char *text, cpk_loss_kind loss,
                  cpk_reduction red, const cpk_context_options *o) {
  int64_t xs[3] = {N, 2, 2}, s2[2] = {N, OUT}, n = N;
  memset(pb, 0, sizeof *pb);
  pb->spec = (cpk_pass_spec){loss, red, NULL, 0};
  tu_ok(cpk_context_new(&pb->ctx, o));
  tu_ok(cpk_model_parse(&pb->m, text, "net"));
  tu_ok(cpk_model_build(pb->m, 2, sample_shape, CPK_F64));
  tu_ok(cpk_model_init_params(pb->m, 3));
  pb->x = tu_random(CPK_F64, 3, xs, -1.5, 1.5, 6);
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

/* The operator's matrix, column by column, and as one block. */
static void op_matrix(problem *pb, cpk_curvature kind, double a[MAXP][MAXP]) {
  cpk_curvature_op *op;
  tu_ok(cpk_curvature_op_new(&op, pb->ctx, pb->m, &pb->spec, pb->x, pb->y,
                             kind));
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

static void assert_matrix(double got[MAXP][MAXP], double want[MAXP][MAXP],
                          int64_t p, double rtol, const char *what) {
  static double a[MAXP * MAXP], b[MAXP * MAXP];
  for (int64_t i = 0; i < p; i++)
    for (int64_t j = 0; j < p; j++) {
      a[i * p + j] = got[i][j];
      b[i * p + j] = want[i][j];
    }
  tu_assert_close_array(a, b, p * p, rtol, 1e-10, what);
}

static const char *const nets[] = {
    "flatten\nlinear 4 3\nsigmoid\nlinear 3 4 bias=false\ntanh\nlinear 4 3\n",
    "flatten\nlinear 4 3\nelu\nlinear 3 3\nexp\nlog\nlinear 3 3\nlogsigmoid\n",
    "linear 2 3\nselu\nlinear 3 2\nflatten\ndropout\nlinear 4 3\n",
};

static void test_hessian_and_ggn(void **state) {
  static double got[MAXP][MAXP], want[MAXP][MAXP];
  for (size_t net = 0; net < sizeof nets / sizeof nets[0]; net++)
    for (int loss = 0; loss < 3; loss++)
      for (int red = 0; red < 2; red++) {
        problem pb;
        char what[96];
        setup(&pb, nets[net], (cpk_loss_kind)loss, (cpk_reduction)red, NULL);
        op_matrix(&pb, CPK_CURV_HESSIAN, got);
        hessian_fd(&pb, want);
        snprintf(what, sizeof what, "net %zu %s %s: Hessian", net,
                 cpk_loss_name(pb.spec.loss), red ? "sum" : "mean");
        assert_matrix(got, want, pb.p, 1e-9, what);
        /* symmetry */
        for (int64_t i = 0; i < pb.p; i++)
          for (int64_t j = 0; j < i; j++)
            assert_true(fabs(got[i][j] - got[j][i]) <=
                        1e-12 * (1 + fabs(got[i][j])));
        op_matrix(&pb, CPK_CURV_GGN, got);
        ggn_fd(&pb, want);
        snprintf(what, sizeof what, "net %zu %s %s: GGN", net,
                 cpk_loss_name(pb.spec.loss), red ? "sum" : "mean");
        assert_matrix(got, want, pb.p, 1e-9, what);
        teardown(&pb);
      }
}

/* Empirical Fisher = sum_n g_n g_n^T with g_n from batch_grad. */
static void test_empirical_fisher(void **state) {
  static double got[MAXP][MAXP], want[MAXP][MAXP];
  for (int loss = 0; loss < 3; loss++) {
    problem pb;
    setup(&pb, nets[0], (cpk_loss_kind)loss, CPK_REDUCTION_MEAN, NULL);
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
  setup(&pb, nets[0], CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_SUM, &o);
  op_matrix(&pb, CPK_CURV_FISHER_MC, got);
  op_matrix(&pb, CPK_CURV_GGN, want);
  assert_matrix(got, want, pb.p, 0.03, "Monte Carlo Fisher vs GGN");
  teardown(&pb);
}

static void test_errors(void **state) {
  problem pb;
  cpk_curvature_op *op;
  cpk_curvature k;
  setup(&pb, nets[0], CPK_LOSS_MSE, CPK_REDUCTION_SUM, NULL);
  tu_ok(cpk_curvature_op_new(&op, pb.ctx, pb.m, &pb.spec, pb.x, pb.y,
                             CPK_CURV_GGN));
  double v[MAXP] = {0}, out[MAXP];
  v[3] = NAN;
  assert_int_equal(cpk_curvature_op_apply(op, 1, v, out), CPK_ENONFINITE);
  assert_int_equal(cpk_curvature_op_apply(op, 0, v, out), CPK_EINVAL);
  cpk_curvature_op_free(op);
  tu_ok(cpk_curvature_parse("empirical_fisher", &k));
  assert_int_equal(k, CPK_CURV_EMPIRICAL_FISHER);
  assert_int_equal(cpk_curvature_parse("fisher", &k), CPK_EUSAGE);
  teardown(&pb);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_hessian_and_ggn),
      cmocka_unit_test(test_empirical_fisher),
      cmocka_unit_test(test_fisher_mc),
      cmocka_unit_test(test_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
