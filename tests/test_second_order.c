/*
 * test_second_order.c: the GGN extensions against the full generalized
 * Gauss-Newton matrix of tiny networks, G = sum_n J_n^T H_n J_n, built
 * independently: J_n (d output / d parameters) by central differences of
 * the outputs, H_n from the closed forms of the loss Hessians below. Checks
 * diag_ggn_exact, batch_diag_ggn_exact, sqrt_ggn_exact (F F^T = G), KFLR at
 * batch size 1 (exactly the GGN block), and the Monte Carlo versions
 * converging to the exact ones.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "layers/conv_common.h"
#include "model.h"
#include "testutil.h"

#define N 3
#define OUT 3
#define MAXP 80

static const char *const net_text =
    "flatten\nlinear 4 3\ntanh\nlinear 3 4 bias=false\nsigmoid\nlinear 4 3\n";
static const int64_t sample_shape[2] = {2, 2};

typedef struct {
  cpk_model *m;
  cpk_context *ctx;
  cpk_tensor *x, *y;
  cpk_loss_kind loss;
  cpk_reduction red;
  int64_t n;
  int64_t np;              /* total parameters */
  double ggn[MAXP][MAXP];  /* the GGN */
  double ggn_n[N][MAXP];   /* its per-sample diagonals */
} problem;

static cpk_tensor *make_target(cpk_loss_kind loss, int64_t n) {
  int64_t s2[2] = {n, OUT};
  if (loss != CPK_LOSS_CROSS_ENTROPY)
    return tu_random(CPK_F64, 2, s2, 0, 1, 31);
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, CPK_I64, 1, &n));
  for (int64_t i = 0; i < n; i++)
    cpk_tensor_set(t, i, (double)((i + 1) % OUT));
  return t;
}

static const cpk_tensor *result(const cpk_results *r, const char *param,
                                const char *suffix) {
  char key[96];
  snprintf(key, sizeof key, "%s.%s", param, suffix);
  const cpk_tensor *t = cpk_results_find(r, key);
  if (t == NULL) {
    print_error("missing result %s\n", key);
    fail();
  }
  return t;
}

/* Output of the network for the current parameters, [n, OUT]. */
static void outputs(problem *pb, double *out) {
  cpk_pass_spec spec = {pb->loss, pb->red, NULL, 0};
  cpk_results *r;
  tu_ok(cpk_compute(pb->ctx, pb->m, &spec, pb->x, pb->y, &r));
  const cpk_tensor *f = cpk_results_find(r, "output");
  for (int64_t i = 0; i < pb->n * OUT; i++)
    out[i] = cpk_tensor_get(f, i);
  cpk_results_free(r);
}

/* c * Hessian of l_n with respect to f_n (closed forms). */
static void loss_hessian(const problem *pb, const double *f, int64_t n,
                         double h[OUT][OUT]) {
  double c = 1.0;
  if (pb->red == CPK_REDUCTION_MEAN)
    c = pb->loss == CPK_LOSS_CROSS_ENTROPY ? 1.0 / pb->n : 1.0 / (pb->n * OUT);
  memset(h, 0, sizeof(double) * OUT * OUT);
  if (pb->loss == CPK_LOSS_CROSS_ENTROPY) {
    double p[OUT], z = 0;
    for (int k = 0; k < OUT; k++)
      z += p[k] = exp(f[n * OUT + k]);
    for (int a = 0; a < OUT; a++)
      for (int b = 0; b < OUT; b++)
        h[a][b] = c * ((a == b) * p[a] / z - p[a] * p[b] / (z * z));
  } else if (pb->loss == CPK_LOSS_MSE) {
    for (int a = 0; a < OUT; a++)
      h[a][a] = 2 * c;
  } else {
    for (int a = 0; a < OUT; a++) {
      double s = 1 / (1 + exp(-f[n * OUT + a]));
      h[a][a] = c * s * (1 - s);
    }
  }
}

static void build_ggn(problem *pb) {
  static double jac[MAXP][N * OUT];
  double f0[N * OUT], fp[N * OUT], fm[N * OUT];
  outputs(pb, f0);
  int64_t k = 0;
  for (int p = 0; p < cpk_model_num_params(pb->m); p++) {
    cpk_tensor *theta;
    tu_ok(cpk_model_param(pb->m, p, NULL, &theta));
    for (int64_t i = 0; i < cpk_tensor_numel(theta); i++, k++) {
      double *t = theta->data, keep = t[i];
      t[i] = keep + 1e-6;
      outputs(pb, fp);
      t[i] = keep - 1e-6;
      outputs(pb, fm);
      t[i] = keep;
      for (int64_t j = 0; j < pb->n * OUT; j++)
        jac[k][j] = (fp[j] - fm[j]) / 2e-6;
    }
  }
  pb->np = k;
  assert_true(pb->np <= MAXP);
  memset(pb->ggn, 0, sizeof pb->ggn);
  memset(pb->ggn_n, 0, sizeof pb->ggn_n);
  for (int64_t n = 0; n < pb->n; n++) {
    double h[OUT][OUT];
    loss_hessian(pb, f0, n, h);
    for (int64_t a = 0; a < pb->np; a++)
      for (int64_t b = 0; b < pb->np; b++) {
        double acc = 0;
        for (int u = 0; u < OUT; u++)
          for (int v = 0; v < OUT; v++)
            acc += jac[a][n * OUT + u] * h[u][v] * jac[b][n * OUT + v];
        pb->ggn[a][b] += acc;
        if (a == b)
          pb->ggn_n[n][a] = acc;
      }
  }
}

static void setup(problem *pb, cpk_loss_kind loss, cpk_reduction red,
                  int64_t n, const cpk_context_options *o) {
  int64_t xs[3] = {n, 2, 2};
  memset(pb, 0, sizeof *pb);
  pb->loss = loss;
  pb->red = red;
  pb->n = n;
  tu_ok(cpk_context_new(&pb->ctx, o));
  tu_ok(cpk_model_parse(&pb->m, net_text, "net"));
  tu_ok(cpk_model_build(pb->m, 2, sample_shape, CPK_F64));
  tu_ok(cpk_model_init_params(pb->m, 5));
  pb->x = tu_random(CPK_F64, 3, xs, -1.5, 1.5, 7);
  pb->y = make_target(loss, n);
  build_ggn(pb);
}

static void teardown(problem *pb) {
  cpk_tensor_free(pb->x);
  cpk_tensor_free(pb->y);
  cpk_model_free(pb->m);
  cpk_context_free(pb->ctx);
}

static cpk_results *run(problem *pb, const char *ext) {
  cpk_pass_spec spec = {pb->loss, pb->red, ext, 0};
  cpk_results *r;
  tu_ok(cpk_compute(pb->ctx, pb->m, &spec, pb->x, pb->y, &r));
  return r;
}

/* Offsets of each parameter in the flat ordering used by build_ggn. */
static int64_t param_offset(const problem *pb, int p) {
  int64_t off = 0;
  for (int q = 0; q < p; q++) {
    cpk_tensor *t;
    tu_ok(cpk_model_param(pb->m, q, NULL, &t));
    off += cpk_tensor_numel(t);
  }
  return off;
}

static void check_exact(cpk_loss_kind loss, cpk_reduction red) {
  problem pb;
  setup(&pb, loss, red, N, NULL);
  cpk_results *r =
      run(&pb, "diag_ggn_exact,batch_diag_ggn_exact,sqrt_ggn_exact");
  char what[128];
  /* F: rows = parameters, columns = (v, n). */
  static double f[MAXP][64];
  int64_t cols = 0;
  for (int p = 0; p < cpk_model_num_params(pb.m); p++) {
    const char *name;
    cpk_tensor *theta;
    tu_ok(cpk_model_param(pb.m, p, &name, &theta));
    const int64_t k = cpk_tensor_numel(theta), off = param_offset(&pb, p);
    double want[MAXP], want_n[N * MAXP];
    for (int64_t i = 0; i < k; i++) {
      want[i] = pb.ggn[off + i][off + i];
      for (int64_t n = 0; n < N; n++)
        want_n[n * k + i] = pb.ggn_n[n][off + i];
    }
    snprintf(what, sizeof what, "%s %s %s diag_ggn_exact",
             cpk_loss_name(loss), red ? "sum" : "mean", name);
    tu_assert_close_array(result(r, name, "diag_ggn_exact")->data, want, k,
                          1e-7, 1e-11, what);
    snprintf(what, sizeof what, "%s %s %s diag_ggn_exact_batch",
             cpk_loss_name(loss), red ? "sum" : "mean", name);
    tu_assert_close_array(result(r, name, "diag_ggn_exact_batch")->data,
                          want_n, N * k, 1e-7, 1e-11, what);
    const cpk_tensor *sq = result(r, name, "sqrt_ggn_exact");
    assert_int_equal(sq->shape[1], N);
    cols = sq->shape[0] * N;
    assert_true(cols <= 64);
    for (int64_t c = 0; c < cols; c++)
      for (int64_t i = 0; i < k; i++)
        f[off + i][c] = cpk_tensor_get(sq, c * k + i);
  }
  /* F F^T is the whole GGN, off-diagonal blocks included. */
  static double fft[MAXP * MAXP], want[MAXP * MAXP];
  for (int64_t a = 0; a < pb.np; a++)
    for (int64_t b = 0; b < pb.np; b++) {
      double acc = 0;
      for (int64_t c = 0; c < cols; c++)
        acc += f[a][c] * f[b][c];
      fft[a * pb.np + b] = acc;
      want[a * pb.np + b] = pb.ggn[a][b];
    }
  snprintf(what, sizeof what, "%s %s sqrt_ggn_exact F F^T",
           cpk_loss_name(loss), red ? "sum" : "mean");
  tu_assert_close_array(fft, want, pb.np * pb.np, 1e-7, 1e-11, what);
  cpk_results_free(r);
  teardown(&pb);
}

static void test_exact_cross_entropy(void **state) {
  check_exact(CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN);
  check_exact(CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_SUM);
}
static void test_exact_mse(void **state) {
  check_exact(CPK_LOSS_MSE, CPK_REDUCTION_MEAN);
  check_exact(CPK_LOSS_MSE, CPK_REDUCTION_SUM);
}
static void test_exact_bce(void **state) {
  check_exact(CPK_LOSS_BCE_WITH_LOGITS, CPK_REDUCTION_MEAN);
  check_exact(CPK_LOSS_BCE_WITH_LOGITS, CPK_REDUCTION_SUM);
}

/* At batch size 1, KFLR's G (x) A is exactly the GGN block of a linear
 * weight, and G alone the bias block. */
static void test_kflr_batch_one(void **state) {
  for (int loss = 0; loss < 3; loss++) {
    problem pb;
    setup(&pb, (cpk_loss_kind)loss, CPK_REDUCTION_MEAN, 1, NULL);
    cpk_results *r = run(&pb, "kflr");
    for (int p = 0; p < cpk_model_num_params(pb.m); p++) {
      const char *name;
      cpk_tensor *theta;
      tu_ok(cpk_model_param(pb.m, p, &name, &theta));
      const int64_t off = param_offset(&pb, p), k = cpk_tensor_numel(theta);
      const cpk_tensor *g = result(r, name, "kflr.0");
      const cpk_tensor *a =
          theta->ndim == 2 ? result(r, name, "kflr.1") : NULL;
      const int64_t rows = g->shape[0], in = a ? a->shape[0] : 1;
      static double kron[MAXP * MAXP], want[MAXP * MAXP];
      for (int64_t i = 0; i < k; i++)
        for (int64_t j = 0; j < k; j++) {
          /* (G (x) A)[(o,i),(o',i')] = G[o,o'] A[i,i'] */
          int64_t o = i / in, ii = i % in, o2 = j / in, jj = j % in;
          double av = a ? cpk_tensor_get(a, ii * in + jj) : 1.0;
          kron[i * k + j] = cpk_tensor_get(g, o * rows + o2) * av;
          want[i * k + j] = pb.ggn[off + i][off + j];
        }
      char what[96];
      snprintf(what, sizeof what, "%s kflr %s", cpk_loss_name(pb.loss), name);
      tu_assert_close_array(kron, want, k * k, 1e-7, 1e-11, what);
    }
    cpk_results_free(r);
    teardown(&pb);
  }
}

/* KFRA at batch size 1 is exactly the GGN block too. */
static void test_kfra_batch_one(void **state) {
  for (int loss = 0; loss < 3; loss++) {
    problem pb;
    setup(&pb, (cpk_loss_kind)loss, CPK_REDUCTION_SUM, 1, NULL);
    cpk_results *r = run(&pb, "kfra,kflr");
    for (int p = 0; p < cpk_model_num_params(pb.m); p++) {
      const char *name;
      tu_ok(cpk_model_param(pb.m, p, &name, NULL));
      char what[96];
      snprintf(what, sizeof what, "%s kfra.0 %s", cpk_loss_name(pb.loss), name);
      tu_assert_close(result(r, name, "kfra.0"), result(r, name, "kflr.0"),
                      1e-12, 1e-15, what);
    }
    cpk_results_free(r);
    teardown(&pb);
  }
}

/* The gradient of the loss of samples [first, first+count) (all when
 * count = n), scaled as in the full batch, flattened. */
static void gradient_of(problem *pb, int64_t sample, double *out) {
  cpk_pass_spec spec = {pb->loss, CPK_REDUCTION_SUM, NULL, 0};
  cpk_tensor *x = pb->x, *y = pb->y;
  double c = 1.0;
  if (pb->red == CPK_REDUCTION_MEAN)
    c = pb->loss == CPK_LOSS_CROSS_ENTROPY ? 1.0 / pb->n : 1.0 / (pb->n * OUT);
  if (sample >= 0) { /* one sample as a batch of one */
    int64_t xs[3] = {1, 2, 2}, one = 1, ys[2] = {1, OUT};
    tu_ok(cpk_tensor_new(&x, CPK_F64, 3, xs));
    if (pb->loss == CPK_LOSS_CROSS_ENTROPY)
      tu_ok(cpk_tensor_new(&y, CPK_I64, 1, &one));
    else
      tu_ok(cpk_tensor_new(&y, CPK_F64, 2, ys));
    for (int i = 0; i < 4; i++)
      cpk_tensor_set(x, i, cpk_tensor_get(pb->x, sample * 4 + i));
    int64_t per = cpk_tensor_numel(y);
    for (int64_t i = 0; i < per; i++)
      cpk_tensor_set(y, i, cpk_tensor_get(pb->y, sample * per + i));
  }
  cpk_results *r;
  tu_ok(cpk_compute(pb->ctx, pb->m, &spec, x, y, &r));
  int64_t k = 0;
  for (int p = 0; p < cpk_model_num_params(pb->m); p++) {
    const char *name;
    tu_ok(cpk_model_param(pb->m, p, &name, NULL));
    const cpk_tensor *g = result(r, name, "grad");
    for (int64_t i = 0; i < cpk_tensor_numel(g); i++)
      out[k++] = c * cpk_tensor_get(g, i);
  }
  cpk_results_free(r);
  if (sample >= 0) {
    cpk_tensor_free(x);
    cpk_tensor_free(y);
  }
}

/* diag_hessian and batch_diag_hessian against central differences of the
 * gradient (whole batch and sample by sample), with activations whose
 * second derivatives do not vanish. */
static void check_diag_hessian(const char *text, cpk_loss_kind loss,
                               cpk_reduction red) {
  problem pb;
  int64_t xs[3] = {N, 2, 2};
  memset(&pb, 0, sizeof pb);
  pb.loss = loss;
  pb.red = red;
  pb.n = N;
  tu_ok(cpk_context_new(&pb.ctx, NULL));
  tu_ok(cpk_model_parse(&pb.m, text, "net"));
  tu_ok(cpk_model_build(pb.m, 2, sample_shape, CPK_F64));
  tu_ok(cpk_model_init_params(pb.m, 9));
  pb.x = tu_random(CPK_F64, 3, xs, -1.5, 1.5, 4);
  pb.y = make_target(loss, N);
  cpk_results *r = run(&pb, "diag_hessian,batch_diag_hessian");
  static double want[MAXP], want_n[N][MAXP], gp[MAXP], gm[MAXP];
  int64_t k = 0;
  for (int p = 0; p < cpk_model_num_params(pb.m); p++) {
    cpk_tensor *theta;
    tu_ok(cpk_model_param(pb.m, p, NULL, &theta));
    for (int64_t i = 0; i < cpk_tensor_numel(theta); i++, k++) {
      double *t = theta->data, keep = t[i];
      for (int64_t smp = -1; smp < N; smp++) {
        t[i] = keep + 1e-5;
        gradient_of(&pb, smp, gp);
        t[i] = keep - 1e-5;
        gradient_of(&pb, smp, gm);
        t[i] = keep;
        double h = (gp[k] - gm[k]) / 2e-5;
        if (smp < 0)
          want[k] = h;
        else
          want_n[smp][k] = h;
      }
    }
  }
  assert_true(k <= MAXP);
  int64_t off = 0;
  for (int p = 0; p < cpk_model_num_params(pb.m); p++) {
    const char *name;
    cpk_tensor *theta;
    tu_ok(cpk_model_param(pb.m, p, &name, &theta));
    const int64_t np = cpk_tensor_numel(theta);
    char what[160];
    snprintf(what, sizeof what, "%s %s %s diag_h", cpk_loss_name(loss),
             red ? "sum" : "mean", name);
    tu_assert_close_array(result(r, name, "diag_h")->data, want + off, np,
                          1e-6, 1e-9, what);
    const cpk_tensor *b = result(r, name, "diag_h_batch");
    for (int64_t n = 0; n < N; n++) {
      snprintf(what, sizeof what, "%s %s %s diag_h_batch[%lld]",
               cpk_loss_name(loss), red ? "sum" : "mean", name, (long long)n);
      tu_assert_close_array((double *)b->data + n * np, want_n[n] + off, np,
                            1e-6, 1e-9, what);
    }
    off += np;
  }
  cpk_results_free(r);
  teardown(&pb);
}

static void test_diag_hessian(void **state) {
  /* residuals at every depth: lazy rows, expansion through a linear layer */
  const char *deep = "flatten\nlinear 4 3\nsigmoid\nlinear 3 4\ntanh\n"
                     "linear 4 3 bias=false\nelu\nlinear 3 3\n";
  /* a residual right under the loss, and exp/log/logsigmoid/selu */
  const char *mixed = "flatten\nlinear 4 3\nselu\nlinear 3 3\nexp\nlog\n"
                      "linear 3 3\nlogsigmoid\n";
  /* linear layers on [N, 2, 2]: the generic (non-closed-form) paths */
  const char *rows = "linear 2 3\nsigmoid\nlinear 3 2\ntanh\nflatten\n"
                     "linear 4 3\n";
  for (int loss = 0; loss < 3; loss++)
    for (int red = 0; red < 2; red++) {
      check_diag_hessian(deep, (cpk_loss_kind)loss, (cpk_reduction)red);
      check_diag_hessian(mixed, (cpk_loss_kind)loss, (cpk_reduction)red);
      check_diag_hessian(rows, (cpk_loss_kind)loss, (cpk_reduction)red);
    }
}

/* Without curved activations the Hessian diagonal is the GGN diagonal:
 * checks the generic (chunked, non-closed-form) GGN path on linear layers
 * over [N, 2, 2] inputs, whose Hessian diagonal is checked against finite
 * differences. */
static void test_generic_ggn_path(void **state) {
  const char *text = "linear 2 3\nrelu\nlinear 3 2\nflatten\nlinear 4 3\n";
  for (int loss = 0; loss < 3; loss++) {
    check_diag_hessian(text, (cpk_loss_kind)loss, CPK_REDUCTION_MEAN);
    problem pb;
    int64_t xs[3] = {N, 2, 2};
    memset(&pb, 0, sizeof pb);
    pb.loss = (cpk_loss_kind)loss;
    pb.n = N;
    tu_ok(cpk_context_new(&pb.ctx, NULL));
    pb.ctx->work_bytes = 64; /* several chunks */
    tu_ok(cpk_model_parse(&pb.m, text, "net"));
    tu_ok(cpk_model_build(pb.m, 2, sample_shape, CPK_F64));
    tu_ok(cpk_model_init_params(pb.m, 9));
    pb.x = tu_random(CPK_F64, 3, xs, -1.5, 1.5, 4);
    pb.y = make_target(pb.loss, N);
    cpk_results *r = run(&pb, "diag_ggn_exact,batch_diag_ggn_exact,"
                              "diag_hessian,batch_diag_hessian");
    for (int p = 0; p < cpk_model_num_params(pb.m); p++) {
      const char *name;
      tu_ok(cpk_model_param(pb.m, p, &name, NULL));
      tu_assert_close(result(r, name, "diag_ggn_exact"),
                      result(r, name, "diag_h"), 1e-12, 1e-15, name);
      tu_assert_close(result(r, name, "diag_ggn_exact_batch"),
                      result(r, name, "diag_h_batch"), 1e-12, 1e-15, name);
    }
    cpk_results_free(r);
    teardown(&pb);
  }
}

/* Kronecker factors of convolutions, grouped and not, f64 and f32:
 * - the bias's G equals the exact GGN block of the bias, F F^T over the
 *   rows of sqrt_ggn_exact (the contract's root, another path);
 * - the weight's G is the bias's G, in diagonal blocks per group;
 * - the weight's A is (1/N) sum_{n,l} u u^T over the unfolded patches of
 *   each group, summed here entry by entry;
 * and KFAC's A is KFLR's. */
static void check_conv_kron(cpk_dtype dt, int64_t groups0) {
  char text[160];
  snprintf(text, sizeof text,
           "conv2d 2 4 3 padding=1 groups=%lld\ntanh\nconv2d 4 3 2\n"
           "flatten\nlinear 48 3\n",
           (long long)groups0);
  const int64_t shape[3] = {2, 5, 5}, xs[4] = {N, 2, 5, 5};
  const double tol = dt == CPK_F64 ? 1e-10 : 2e-4;
  cpk_context *ctx;
  cpk_model *m;
  cpk_results *r;
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_model_parse(&m, text, "net"));
  tu_ok(cpk_model_build(m, 3, shape, dt));
  tu_ok(cpk_model_init_params(m, 2));
  cpk_tensor *x = tu_random(dt, 4, xs, -1, 1, 3);
  cpk_tensor *y = make_target(CPK_LOSS_CROSS_ENTROPY, N);
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN,
                        "kflr,kfac,sqrt_ggn_exact", 0};
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &r));
  for (int layer = 0; layer <= 2; layer += 2) {
    char w[32], b[32];
    snprintf(w, sizeof w, "%d.weight", layer);
    snprintf(b, sizeof b, "%d.bias", layer);
    const cpk_tensor *gb = result(r, b, "kflr.0"), *gw = result(r, w, "kflr.0");
    const cpk_tensor *fb = result(r, b, "sqrt_ggn_exact");
    const int64_t c = gb->shape[0], cols = fb->shape[0] * fb->shape[1];
    const int64_t groups = layer == 0 ? groups0 : 1, cg = c / groups;
    for (int64_t i = 0; i < c; i++)
      for (int64_t j = 0; j < c; j++) {
        double want = 0, got = cpk_tensor_get(gb, i * c + j);
        for (int64_t k = 0; k < cols; k++)
          want += cpk_tensor_get(fb, k * c + i) * cpk_tensor_get(fb, k * c + j);
        tu_assert_close_array(&got, &want, 1, tol, tol * 1e-3, b);
        if (i / cg != j / cg)
          continue;
        double wg = cpk_tensor_get(
            gw, ((i / cg) * cg + i % cg) * cg + j % cg);
        tu_assert_close_array(&wg, &got, 1, tol, tol * 1e-3, w);
      }
    if (layer == 2)
      continue; /* A: layer 0's, whose input is x */
    cpk_tensor *u; /* the unfolded input, [N, G, R, L] */
    tu_ok(cpk__conv_unfold_input(m->layers[0], NULL, x, &u));
    const int64_t rr = u->shape[2], l = u->shape[3];
    const cpk_tensor *a = result(r, w, "kflr.1"), *ak = result(r, w, "kfac.1");
    assert_int_equal(a->ndim, groups > 1 ? 3 : 2);
    assert_int_equal(cpk_tensor_numel(a), groups * rr * rr);
    for (int64_t g = 0; g < groups; g++)
      for (int64_t i = 0; i < rr; i++)
        for (int64_t j = 0; j < rr; j++) {
          double want = 0;
          for (int64_t n = 0; n < N; n++)
            for (int64_t q = 0; q < l; q++)
              want += cpk_tensor_get(u, ((n * groups + g) * rr + i) * l + q) *
                      cpk_tensor_get(u, ((n * groups + g) * rr + j) * l + q);
          want /= N;
          const int64_t at = (g * rr + i) * rr + j;
          double got = cpk_tensor_get(a, at), gotk = cpk_tensor_get(ak, at);
          tu_assert_close_array(&got, &want, 1, tol, tol * 1e-3, "A");
          tu_assert_close_array(&gotk, &want, 1, tol, tol * 1e-3, "kfac A");
        }
    cpk_tensor_free(u);
  }
  cpk_results_free(r);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

static void test_conv_kron_factors(void **state) {
  check_conv_kron(CPK_F64, 2);
  check_conv_kron(CPK_F64, 1);
  check_conv_kron(CPK_F32, 2);
}

/* Cross-entropy over one class: the loss is 0 whatever the output, so
 * every curvature quantity is 0 (the compact root would have no column;
 * the pass keeps the contract's root of zeros), in float64 and float32. */
static void test_one_class(void **state) {
  static const char *const ext =
      "diag_ggn_exact,batch_diag_ggn_exact,diag_ggn_mc,kflr,kfac,kfra,"
      "diag_hessian,batch_diag_hessian,sqrt_ggn_mc";
  const int64_t shape[1] = {3}, xs[2] = {N, 3};
  (void)state;
  for (int f32 = 0; f32 < 2; f32++) {
    const cpk_dtype dt = f32 ? CPK_F32 : CPK_F64;
    cpk_context *ctx;
    cpk_model *m;
    cpk_results *r;
    tu_ok(cpk_context_new(&ctx, NULL));
    tu_ok(cpk_model_parse(&m, "linear 3 2\nsigmoid\nlinear 2 1\n", "net"));
    tu_ok(cpk_model_build(m, 1, shape, dt));
    tu_ok(cpk_model_init_params(m, 4));
    cpk_tensor *x = tu_random(dt, 2, xs, -1, 1, 6), *y;
    int64_t n = N;
    tu_ok(cpk_tensor_new(&y, CPK_I64, 1, &n));
    cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, ext, 0};
    tu_ok(cpk_compute(ctx, m, &spec, x, y, &r));
    int checked = 0;
    for (int i = 0; i < cpk_results_count(r); i++) {
      const char *name = cpk_results_name(r, i);
      const cpk_tensor *t = cpk_results_tensor(r, i);
      if (strstr(name, ".kflr.1") || strstr(name, ".kfac.1") ||
          strstr(name, ".kfra.1") || !strchr(name, '.') ||
          strstr(name, "output"))
        continue; /* input factors and the output are not curvature */
      for (int64_t k = 0; k < cpk_tensor_numel(t); k++)
        if (cpk_tensor_get(t, k) != 0.0) {
          print_error("%s[%lld] = %g, expected 0\n", name, (long long)k,
                      cpk_tensor_get(t, k));
          fail();
        }
      checked++;
    }
    assert_true(checked > 20);
    cpk_results_free(r);
    cpk_tensor_free(x);
    cpk_tensor_free(y);
    cpk_model_free(m);
    cpk_context_free(ctx);
  }
}

/* Monte Carlo diagonals and factors converge to the exact ones. */
static void test_mc_converges(void **state) {
  cpk_context_options o = {.seed = 3, .mc_samples = 40000};
  problem pb;
  setup(&pb, CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, N, &o);
  cpk_results *r = run(&pb, "diag_ggn_mc,diag_ggn_exact,batch_diag_ggn_mc,"
                            "batch_diag_ggn_exact,kfac,kflr,sqrt_ggn_mc");
  for (int p = 0; p < cpk_model_num_params(pb.m); p++) {
    const char *name;
    tu_ok(cpk_model_param(pb.m, p, &name, NULL));
    const struct {
      const char *mc, *exact;
    } pairs[] = {{"diag_ggn_mc", "diag_ggn_exact"},
                 {"diag_ggn_mc_batch", "diag_ggn_exact_batch"},
                 {"kfac.0", "kflr.0"}};
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
      char what[96];
      snprintf(what, sizeof what, "%s %s vs %s", name, pairs[i].mc,
               pairs[i].exact);
      /* 40000 samples: relative error about 1/sqrt(40000) = 0.5% */
      tu_assert_close(result(r, name, pairs[i].mc),
                      result(r, name, pairs[i].exact), 0.03, 1e-9, what);
    }
    const cpk_tensor *sq = result(r, name, "sqrt_ggn_mc");
    assert_int_equal(sq->shape[0], 40000);
    assert_int_equal(sq->shape[1], N);
  }
  cpk_results_free(r);
  teardown(&pb);
}

/* The same seed gives the same draws, another seed others. */
static void test_mc_seeded(void **state) {
  problem a, b;
  cpk_context_options o1 = {.seed = 1, .mc_samples = 2};
  cpk_context_options o2 = {.seed = 2, .mc_samples = 2};
  setup(&a, CPK_LOSS_MSE, CPK_REDUCTION_SUM, N, &o1);
  setup(&b, CPK_LOSS_MSE, CPK_REDUCTION_SUM, N, &o2);
  cpk_results *r1 = run(&a, "diag_ggn_mc"), *r2 = run(&a, "diag_ggn_mc");
  cpk_results *r3 = run(&b, "diag_ggn_mc");
  const cpk_tensor *t1 = result(r1, "1.weight", "diag_ggn_mc");
  tu_assert_close(t1, result(r2, "1.weight", "diag_ggn_mc"), 0, 0, "same seed");
  const cpk_tensor *t3 = result(r3, "1.weight", "diag_ggn_mc");
  int differs = 0;
  for (int64_t i = 0; i < cpk_tensor_numel(t1); i++)
    differs |= cpk_tensor_get(t1, i) != cpk_tensor_get(t3, i);
  assert_true(differs);
  cpk_results_free(r1);
  cpk_results_free(r2);
  cpk_results_free(r3);
  teardown(&a);
  teardown(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_exact_cross_entropy),
      cmocka_unit_test(test_exact_mse),
      cmocka_unit_test(test_exact_bce),
      cmocka_unit_test(test_kflr_batch_one),
      cmocka_unit_test(test_kfra_batch_one),
      cmocka_unit_test(test_diag_hessian),
      cmocka_unit_test(test_generic_ggn_path),
      cmocka_unit_test(test_conv_kron_factors),
      cmocka_unit_test(test_one_class),
      cmocka_unit_test(test_mc_converges),
      cmocka_unit_test(test_mc_seeded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
