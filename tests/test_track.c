/*
 * test_track.c: every quantity the trainer tracks against the value the
 * corresponding extension gives on the same step. The trainer hands back
 * the results of each step's pass (batch_grad, batch_l2, batch_dot,
 * sum_grad_squared, variance, diag_h, the batch and the parameters); this
 * test recomputes Cockpit's formulas from them (and the top eigenvalue from
 * the dense Hessian, alpha from the next step's dump) and compares. Also:
 * Cockpit's preset lists, the quantity names, alpha's quadratic fit.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "train/train.h"

#define NS 40 /* training samples */
#define B 8   /* batch size */
#define IN 6
#define C 3
#define STEPS 4
#define MAXP 64

static const char *const net = "linear 6 5\ntanh\nlinear 5 3\n";
static const char *const dump_ext =
    "batch_grad,batch_l2_grad,batch_dot_grad,sum_grad_squared,variance,"
    "diag_hessian";

typedef struct {
  cpk_model *m;
  cpk_context *ctx;
  cpk_optim *opt;
  cpk_trainer *tr;
  cpk_tensor *x, *y;
  double theta0[MAXP];
  int64_t np;
  cpk_results *rec[STEPS + 1], *dump[STEPS + 1];
} fixture;

/* The trainable parameters flattened (in model order). */
static int64_t flat_params(const cpk_model *m, double *out) {
  int64_t k = 0;
  for (int i = 0; i < cpk_model_num_params(m); i++) {
    cpk_tensor *t;
    cpk_model_param(m, i, NULL, &t);
    for (int64_t j = 0;
         cpk_model_param_trainable(m, i) && j < cpk_tensor_numel(t); j++)
      out[k++] = cpk_tensor_get(t, j);
  }
  return k;
}

static void open_fixture(fixture *f, cpk_optim_kind kind) {
  const int64_t in = IN, shape[2] = {NS, IN}, n = NS;
  memset(f, 0, sizeof *f);
  tu_ok(cpk_model_parse(&f->m, net, "track"));
  tu_ok(cpk_model_build(f->m, 1, &in, CPK_F64));
  tu_ok(cpk_model_init_params(f->m, 11));
  tu_ok(cpk_context_new(&f->ctx, NULL));
  cpk_optim_options o;
  cpk_optim_defaults(kind, &o);
  o.lr = kind == CPK_OPTIM_ADAM ? 0.05 : 0.3;
  tu_ok(cpk_optim_new(&f->opt, &o, f->m));
  f->x = tu_random(CPK_F64, 2, shape, -2, 2, 21);
  tu_ok(cpk_tensor_new(&f->y, CPK_I64, 1, &n));
  for (int i = 0; i < NS; i++)
    cpk_tensor_set(f->y, i, (i * 7) % C);
  f->np = flat_params(f->m, f->theta0);
  tu_ok(cpk_trainer_new(&f->tr, f->ctx, f->m, f->opt, f->x, f->y, B, 5));
}

static void close_fixture(fixture *f) {
  for (int s = 0; s <= STEPS; s++) {
    cpk_results_free(f->rec[s]);
    cpk_results_free(f->dump[s]);
  }
  cpk_trainer_free(f->tr);
  cpk_optim_free(f->opt);
  cpk_context_free(f->ctx);
  cpk_tensor_free(f->x);
  cpk_tensor_free(f->y);
  cpk_model_free(f->m);
}

/* Run STEPS tracked steps with dumps; file each record under its step. */
static void run(fixture *f, unsigned q) {
  const cpk_step_request req = {q, dump_ext};
  for (int s = 0; s < STEPS; s++) {
    cpk_step_report rep;
    tu_ok(cpk_trainer_run_step(f->tr, &req, &rep));
    for (int k = 0; k < 2; k++)
      if (rep.records[k] != NULL) {
        const int at =
            (int)cpk_tensor_get(cpk_results_find(rep.records[k], "step"), 0);
        assert_true(at >= 0 && at < STEPS && f->rec[at] == NULL);
        f->rec[at] = rep.records[k];
        rep.records[k] = NULL;
      }
    f->dump[s] = rep.dump;
    rep.dump = NULL;
    cpk_step_report_clear(&rep);
  }
  cpk_results *last;
  tu_ok(cpk_trainer_flush(f->tr, &last));
  if (last != NULL)
    f->rec[STEPS - 1] = last;
  for (int s = 0; s < STEPS; s++)
    assert_non_null(f->rec[s]);
}

static double value(const cpk_results *r, const char *name) {
  const cpk_tensor *t = cpk_results_find(r, name);
  if (t == NULL) {
    print_error("missing '%s'\n", name);
    fail();
  }
  return cpk_tensor_get(t, 0);
}

/* Sum over the trainable parameters of a result "P.suffix" [elements]. */
static int64_t gather(const fixture *f, const cpk_results *d,
                      const char *suffix, double *out, int64_t per) {
  int64_t k = 0;
  for (int i = 0; i < cpk_model_num_params(f->m); i++) {
    const char *name;
    char key[64];
    cpk_model_param(f->m, i, &name, NULL);
    if (!cpk_model_param_trainable(f->m, i))
      continue;
    snprintf(key, sizeof key, "%s%s%s", name, suffix[0] ? "." : "", suffix);
    const cpk_tensor *t = cpk_results_find(d, key);
    assert_non_null(t);
    if (per > 0) { /* accumulate elementwise (batch_l2, batch_dot) */
      for (int64_t j = 0; j < per; j++)
        out[j] += cpk_tensor_get(t, j);
      k = per;
    } else {
      for (int64_t j = 0; j < cpk_tensor_numel(t); j++)
        out[k++] = cpk_tensor_get(t, j);
    }
  }
  return k;
}

/* Per-sample gradients [B, P] (columns in model parameter order). */
static void grad_batch(const fixture *f, const cpk_results *d, int64_t b,
                       double *gb) {
  int64_t col = 0;
  for (int i = 0; i < cpk_model_num_params(f->m); i++) {
    const char *name;
    char key[64];
    cpk_model_param(f->m, i, &name, NULL);
    if (!cpk_model_param_trainable(f->m, i))
      continue;
    snprintf(key, sizeof key, "%s.grad_batch", name);
    const cpk_tensor *t = cpk_results_find(d, key);
    const int64_t per = cpk_tensor_numel(t) / b;
    for (int64_t n = 0; n < b; n++)
      for (int64_t j = 0; j < per; j++)
        gb[n * f->np + col + j] = cpk_tensor_get(t, n * per + j);
    col += per;
  }
}

/* Per-sample cross-entropy of the dumped batch. */
static void sample_losses(const cpk_results *d, int64_t b, double *l,
                          int64_t *hits) {
  const cpk_tensor *out = cpk_results_find(d, "output");
  const cpk_tensor *y = cpk_results_find(d, "target");
  *hits = 0;
  for (int64_t n = 0; n < b; n++) {
    double mx = -INFINITY, s = 0;
    int best = 0;
    for (int c = 0; c < C; c++) {
      double v = cpk_tensor_get(out, n * C + c);
      if (v > mx)
        mx = v, best = c;
    }
    for (int c = 0; c < C; c++)
      s += exp(cpk_tensor_get(out, n * C + c) - mx);
    const int yn = (int)cpk_tensor_get(y, n);
    l[n] = mx + log(s) - cpk_tensor_get(out, n * C + yn);
    *hits += best == yn;
  }
}

static void mean_var(const double *x, int64_t n, double *m, double *v) {
  double s = 0, ss = 0;
  for (int64_t i = 0; i < n; i++)
    s += x[i];
  *m = s / n;
  for (int64_t i = 0; i < n; i++)
    ss += (x[i] - *m) * (x[i] - *m);
  *v = ss / (n - 1);
}

/* Cockpit's alpha, written from its _fit_quadratic and _get_alpha: the
 * weighted least-squares fit by the normal equations, solved by Cramer's
 * rule here. */
static double alpha_ref(double t, const double f[2], const double df[2],
                        const double vf[2], const double vdf[2]) {
  double phi[4][3] = {{1, 0, 0}, {1, t, t * t}, {0, 1, 0}, {0, 1, 2 * t}};
  double y[4] = {f[0], f[1], df[0], df[1]};
  double w[4] = {1 / vf[0], 1 / vf[1], 1 / vdf[0], 1 / vdf[1]};
  double a[3][3] = {{0}}, r[3] = {0};
  for (int j = 0; j < 4; j++)
    for (int p = 0; p < 3; p++) {
      r[p] += phi[j][p] * w[j] * y[j];
      for (int q = 0; q < 3; q++)
        a[p][q] += phi[j][p] * w[j] * phi[j][q];
    }
#define DET(m)                                                                 \
  ((m)[0][0] * ((m)[1][1] * (m)[2][2] - (m)[1][2] * (m)[2][1]) -               \
   (m)[0][1] * ((m)[1][0] * (m)[2][2] - (m)[1][2] * (m)[2][0]) +               \
   (m)[0][2] * ((m)[1][0] * (m)[2][1] - (m)[1][1] * (m)[2][0]))
  double det = DET(a), mu[3];
  for (int k = 0; k < 3; k++) {
    double m[3][3];
    memcpy(m, a, sizeof m);
    for (int p = 0; p < 3; p++)
      m[p][k] = r[p];
    mu[k] = DET(m) / det;
  }
#undef DET
  if (mu[2] < 0)
    return -1;
  return 2 * t / (-mu[1] / mu[2]) - 1;
}

/* The largest eigenvalue of a symmetric matrix (cyclic Jacobi). */
static double max_eigenvalue(int d, double *a) {
  for (int sweep = 0; sweep < 100; sweep++) {
    double off = 0;
    for (int p = 0; p < d; p++)
      for (int q = p + 1; q < d; q++)
        off += a[p * d + q] * a[p * d + q];
    if (off < 1e-26)
      break;
    for (int p = 0; p < d; p++)
      for (int q = p + 1; q < d; q++) {
        if (fabs(a[p * d + q]) < 1e-300)
          continue;
        double th = (a[q * d + q] - a[p * d + p]) / (2 * a[p * d + q]);
        double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
        double c = 1 / sqrt(t * t + 1), s = t * c;
        for (int k = 0; k < d; k++) { /* columns p, q */
          double akp = a[k * d + p], akq = a[k * d + q];
          a[k * d + p] = c * akp - s * akq;
          a[k * d + q] = s * akp + c * akq;
        }
        for (int k = 0; k < d; k++) { /* rows p, q */
          double apk = a[p * d + k], aqk = a[q * d + k];
          a[p * d + k] = c * apk - s * aqk;
          a[q * d + k] = s * apk + c * aqk;
        }
      }
  }
  double top = -INFINITY;
  for (int i = 0; i < d; i++)
    top = fmax(top, a[i * d + i]);
  return top;
}

/* The dense Hessian of the dumped batch at the dumped parameters. */
static double top_hessian_eigenvalue(fixture *f, const cpk_results *d) {
  double theta[MAXP];
  gather(f, d, "", theta, 0);
  int64_t k = 0;
  for (int i = 0; i < cpk_model_num_params(f->m); i++) {
    cpk_tensor *t;
    cpk_model_param(f->m, i, NULL, &t);
    for (int64_t j = 0;
         cpk_model_param_trainable(f->m, i) && j < cpk_tensor_numel(t); j++)
      cpk_tensor_set(t, j, theta[k++]);
  }
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 1};
  cpk_curvature_op *op;
  tu_ok(cpk_curvature_op_new(&op, f->ctx, f->m, &spec,
                             cpk_results_find(d, "input"),
                             cpk_results_find(d, "target"), CPK_CURV_HESSIAN));
  const int64_t p = f->np;
  double *eye = calloc((size_t)(p * p), sizeof *eye);
  double *h = calloc((size_t)(p * p), sizeof *h);
  for (int64_t i = 0; i < p; i++)
    eye[i * p + i] = 1;
  tu_ok(cpk_curvature_op_apply(op, p, eye, h));
  cpk_curvature_op_free(op);
  double top = max_eigenvalue((int)p, h);
  free(eye);
  free(h);
  return top;
}

static void check(const char *what, int step, double got, double want,
                  double rtol) {
  if (!(fabs(got - want) <= rtol * fabs(want) + 1e-300)) {
    print_error("step %d: %s is %.17g, expected %.17g\n", step, what, got,
                want);
    fail();
  }
}

static void check_step(fixture *f, int s) {
  const cpk_results *rec = f->rec[s], *d = f->dump[s], *next = f->dump[s + 1];
  const int64_t p = f->np;
  double g[MAXP] = {0}, sgs[MAXP], var[MAXP], dh[MAXP], theta[MAXP],
         theta1[MAXP], l2[B] = {0}, dot[B * B] = {0}, losses[B];
  double *gb = calloc((size_t)(B * p), sizeof *gb);
  int64_t hits;
  gather(f, d, "grad", g, 0);
  gather(f, d, "sum_grad_squared", sgs, 0);
  gather(f, d, "variance", var, 0);
  gather(f, d, "diag_h", dh, 0);
  gather(f, d, "", theta, 0);
  gather(f, next, "", theta1, 0);
  gather(f, d, "batch_l2", l2, B);
  gather(f, d, "batch_dot", dot, B * B);
  grad_batch(f, d, B, gb);
  sample_losses(d, B, losses, &hits);
  const double bb = B;

  check("loss", s, value(rec, "loss"),
        cpk_tensor_get(cpk_results_find(d, "loss"), 0), 1e-15);
  check("accuracy", s, value(rec, "accuracy"), (double)hits / B, 0);
  double g2 = 0, gsnr = 0, vsum = 0, tr = 0, tic = 0, dist = 0, upd = 0;
  for (int64_t k = 0; k < p; k++) {
    g2 += g[k] * g[k];
    gsnr += g[k] * g[k] / (bb * sgs[k] - g[k] * g[k] + 1e-5);
    vsum += var[k];
    tr += dh[k];
    tic += bb * sgs[k] / (dh[k] + 1e-7);
    dist += (theta[k] - f->theta0[k]) * (theta[k] - f->theta0[k]);
    upd += (theta1[k] - theta[k]) * (theta1[k] - theta[k]);
  }
  check("grad_norm", s, value(rec, "grad_norm"), sqrt(g2), 1e-13);
  check("gsnr_mean", s, value(rec, "gsnr_mean"), gsnr / p, 1e-12);
  check("variance", s, value(rec, "variance"), vsum, 1e-13);
  check("hess_trace", s, value(rec, "hess_trace"), tr, 1e-13);
  check("tic", s, value(rec, "tic"), tic, 1e-12);
  check("distance", s, value(rec, "distance"), sqrt(dist), 1e-12);
  check("update_size", s, value(rec, "update_size"), sqrt(upd), 1e-10);
  /* per-sample norms ||grad l_n|| = B ||g_n|| and their log histogram */
  double mean = 0, lo = INFINITY, hi = 0, hist[CPK_TRACK_NORM_BINS] = {0};
  for (int n = 0; n < B; n++) {
    double v = bb * sqrt(l2[n]);
    mean += v / B;
    lo = fmin(lo, v);
    hi = fmax(hi, v);
    int bin = (int)floor(2 * (log10(v) + 4));
    hist[bin < 0 ? 0 : (bin > 15 ? 15 : bin)] += 1;
  }
  check("sample_grad_norm_mean", s, value(rec, "sample_grad_norm_mean"), mean,
        1e-13);
  check("sample_grad_norm_min", s, value(rec, "sample_grad_norm_min"), lo,
        1e-13);
  check("sample_grad_norm_max", s, value(rec, "sample_grad_norm_max"), hi,
        1e-13);
  const cpk_tensor *nh = cpk_results_find(rec, "sample_grad_norm_hist");
  for (int k = 0; k < CPK_TRACK_NORM_BINS; k++)
    check("sample_grad_norm_hist", s, cpk_tensor_get(nh, k), hist[k], 0);
  /* Cockpit's tests from batch_l2 and batch_dot */
  double l2sum = 0, p2 = 0;
  for (int n = 0; n < B; n++) {
    double row = 0;
    l2sum += l2[n];
    for (int m = 0; m < B; m++)
      row += dot[n * B + m];
    p2 += (bb * row) * (bb * row);
  }
  check("norm_test", s, value(rec, "norm_test"),
        sqrt((bb * bb * l2sum - bb * g2) / (bb - 1) / bb / g2), 1e-10);
  check("inner_test", s, value(rec, "inner_test"),
        sqrt((p2 - bb * g2 * g2) / (bb - 1) / bb / (g2 * g2)), 1e-10);
  check("ortho_test", s, value(rec, "ortho_test"),
        sqrt((bb * bb * l2sum - p2 / g2) / (bb - 1) / bb / g2), 1e-10);
  /* histograms of B g_n (and of the parameter values) */
  double h1[100] = {0}, h2[40 * 50] = {0};
  for (int n = 0; n < B; n++)
    for (int64_t k = 0; k < p; k++) {
      double x = bb * gb[n * p + k];
      double c1 = fmin(fmax(x, -2), 2);
      int b1 = (int)((c1 + 2) / 4 * 100);
      h1[b1 > 99 ? 99 : b1] += 1;
      double cx = fmin(fmax(x, -1 + 0.025), 1 - 0.025);
      double cy = fmin(fmax(theta[k], -2 + 0.04), 2 - 0.04);
      h2[50 * (int)((cx + 1) / 0.05) + (int)((cy + 2) / 0.08)] += 1;
    }
  const cpk_tensor *r1 = cpk_results_find(rec, "grad_hist_1d");
  const cpk_tensor *r2 = cpk_results_find(rec, "grad_hist_2d");
  assert_int_equal(r2->ndim, 2);
  for (int k = 0; k < 100; k++)
    check("grad_hist_1d", s, cpk_tensor_get(r1, k), h1[k], 0);
  for (int k = 0; k < 2000; k++)
    check("grad_hist_2d", s, cpk_tensor_get(r2, k), h2[k], 0);
  /* alpha: this batch before the update, the next one after it */
  double dvec[MAXP], t = sqrt(upd), f2[2], vf[2], df[2], vdf[2], proj[B],
                     losses1[B], *gb1 = calloc((size_t)(B * p), sizeof *gb1);
  for (int64_t k = 0; k < p; k++)
    dvec[k] = theta1[k] - theta[k];
  grad_batch(f, next, B, gb1);
  sample_losses(next, B, losses1, &hits);
  for (int pt = 0; pt < 2; pt++) {
    const double *G = pt ? gb1 : gb;
    for (int n = 0; n < B; n++) {
      double s2 = 0;
      for (int64_t k = 0; k < p; k++)
        s2 += G[n * p + k] * dvec[k];
      proj[n] = bb * s2 / t;
    }
    mean_var(proj, B, &df[pt], &vdf[pt]);
    double mf;
    mean_var(pt ? losses1 : losses, B, &mf, &vf[pt]);
    f2[pt] = cpk_tensor_get(cpk_results_find(pt ? next : d, "loss"), 0);
  }
  check("alpha", s, value(rec, "alpha"), alpha_ref(t, f2, df, vf, vdf), 1e-8);
  /* the top eigenvalue of the dense Hessian */
  check("hess_max_ev", s, value(rec, "hess_max_ev"),
        top_hessian_eigenvalue(f, d), 1e-4); /* Lanczos to rtol 1e-3 */
  free(gb);
  free(gb1);
}

static void test_full_preset_against_extensions(void **state) {
  (void)state;
  const cpk_optim_kind kinds[2] = {CPK_OPTIM_SGD, CPK_OPTIM_ADAM};
  for (int k = 0; k < 2; k++) {
    fixture f;
    unsigned q;
    open_fixture(&f, kinds[k]);
    tu_ok(cpk_track_preset("full", &q));
    run(&f, q);
    for (int s = 0; s + 1 < STEPS; s++)
      check_step(&f, s);
    /* the last step's alpha waited for a batch that never came */
    assert_true(isnan(value(f.rec[STEPS - 1], "alpha")));
    close_fixture(&f);
  }
}

/* Steps 0..3 of a run restored from a checkpoint after step 2 give the
 * same parameters and records (but alpha of step 1, flushed before the
 * checkpoint) as the run that went on. */
static void test_trainer_checkpoint(void **state) {
  (void)state;
  fixture a, b;
  unsigned q;
  tu_ok(cpk_track_preset("economy", &q));
  open_fixture(&a, CPK_OPTIM_ADAM);
  open_fixture(&b, CPK_OPTIM_ADAM);
  char dir[512];
  snprintf(dir, sizeof dir, "%s", tu_tempdir());
  const cpk_step_request req = {q, NULL};
  cpk_step_report rep;
  for (int s = 0; s < 2; s++) {
    tu_ok(cpk_trainer_run_step(a.tr, &req, &rep));
    cpk_step_report_clear(&rep);
  }
  assert_int_equal(cpk_trainer_save(a.tr, dir), CPK_EINVAL); /* alpha waits */
  cpk_results *flushed;
  tu_ok(cpk_trainer_flush(a.tr, &flushed));
  assert_non_null(flushed);
  cpk_results_free(flushed);
  tu_ok(cpk_trainer_save(a.tr, dir));
  tu_ok(cpk_trainer_load(b.tr, dir));
  assert_int_equal(cpk_trainer_step(b.tr), 2);
  for (int s = 2; s < 7; s++) { /* past the epoch's end (5 batches) */
    cpk_step_report ra, rb;
    tu_ok(cpk_trainer_run_step(a.tr, &req, &ra));
    tu_ok(cpk_trainer_run_step(b.tr, &req, &rb));
    assert_true(ra.loss == rb.loss);
    for (int k = 0; k < 2; k++) {
      assert_true((ra.records[k] == NULL) == (rb.records[k] == NULL));
      for (int i = 0; ra.records[k] && i < cpk_results_count(ra.records[k]);
           i++) {
        const cpk_tensor *x = cpk_results_tensor(ra.records[k], i);
        const cpk_tensor *y = cpk_results_tensor(rb.records[k], i);
        for (int64_t j = 0; j < cpk_tensor_numel(x); j++)
          assert_true(
              cpk_tensor_get(x, j) == cpk_tensor_get(y, j) ||
              (isnan(cpk_tensor_get(x, j)) && isnan(cpk_tensor_get(y, j))));
      }
    }
    cpk_step_report_clear(&ra);
    cpk_step_report_clear(&rb);
  }
  assert_int_equal(cpk_trainer_epoch(b.tr), 1);
  assert_int_equal(cpk_trainer_batch(b.tr), 2);
  double ta[MAXP], tb[MAXP];
  flat_params(a.m, ta);
  flat_params(b.m, tb);
  tu_assert_close_array(tb, ta, a.np, 0, 0, "parameters after the restore");
  /* another seed's trainer refuses the checkpoint */
  cpk_trainer *other;
  tu_ok(cpk_trainer_new(&other, b.ctx, b.m, b.opt, b.x, b.y, B, 6));
  assert_int_equal(cpk_trainer_load(other, dir), CPK_EINVAL);
  assert_non_null(strstr(cpk_last_error(), "seed"));
  cpk_trainer_free(other);
  tu_rmtree(dir);
  close_fixture(&a);
  close_fixture(&b);
}

/* A batch of one has no sample variance: the tests are NaN, not garbage. */
static void test_batch_of_one(void **state) {
  (void)state;
  fixture f;
  open_fixture(&f, CPK_OPTIM_SGD);
  cpk_trainer_free(f.tr);
  tu_ok(cpk_trainer_new(&f.tr, f.ctx, f.m, f.opt, f.x, f.y, 1, 5));
  unsigned q;
  tu_ok(cpk_track_parse("norm_test,inner_test,ortho_test,loss", &q));
  const cpk_step_request req = {q, NULL};
  cpk_step_report rep;
  tu_ok(cpk_trainer_run_step(f.tr, &req, &rep));
  assert_true(isnan(value(rep.records[0], "norm_test")));
  assert_true(isnan(value(rep.records[0], "inner_test")));
  assert_true(isfinite(value(rep.records[0], "loss")));
  cpk_step_report_clear(&rep);
  close_fixture(&f);
}

static void test_presets(void **state) {
  (void)state;
  unsigned e, b, full, q;
  tu_ok(cpk_track_preset("economy", &e));
  tu_ok(cpk_track_preset("business", &b));
  tu_ok(cpk_track_preset("full", &full));
  assert_int_equal(cpk_track_preset("first_class", &q), CPK_EUSAGE);
  /* Cockpit's economy: Alpha, Distance, GradHist1d, GradNorm, InnerTest,
   * Loss, NormTest, OrthoTest, UpdateSize (plus what comes free). */
  tu_ok(cpk_track_parse("alpha,distance,grad_hist_1d,grad_norm,inner_test,"
                        "loss,norm_test,ortho_test,update_size",
                        &q));
  assert_int_equal(e & q, q);
  assert_int_equal(e & (CPK_Q_TIC | CPK_Q_HESS_TRACE | CPK_Q_HESS_MAX_EV |
                        CPK_Q_GRAD_HIST_2D),
                   0);
  assert_int_equal(b, e | CPK_Q_TIC | CPK_Q_HESS_TRACE);
  assert_int_equal(full, b | CPK_Q_HESS_MAX_EV | CPK_Q_GRAD_HIST_2D);
  /* names round trip; unknown ones are usage errors */
  for (unsigned bit = 1; bit <= CPK_Q_GRAD_HIST_2D; bit <<= 1) {
    const char *name = cpk_track_name(bit);
    assert_non_null(name);
    tu_ok(cpk_track_parse(name, &q));
    assert_int_equal(q, bit);
  }
  assert_int_equal(cpk_track_parse("loss,hessian", &q), CPK_EUSAGE);
  char ext[128];
  tu_ok(cpk_track_extensions(e, ext, sizeof ext));
  assert_string_equal(ext, "sum_grad_squared,variance,batch_dot_grad");
  tu_ok(cpk_track_extensions(full, ext, sizeof ext));
  assert_string_equal(ext,
                      "sum_grad_squared,variance,batch_dot_grad,diag_hessian");
  tu_ok(cpk_track_extensions(CPK_Q_NORM_TEST, ext, sizeof ext));
  assert_string_equal(ext, "batch_l2_grad");
  tu_ok(cpk_track_extensions(CPK_Q_LOSS | CPK_Q_ALPHA, ext, sizeof ext));
  assert_string_equal(ext, "");
  assert_int_equal(cpk_track_extensions(full, ext, 8), CPK_EINVAL);
}

/* The histograms from Linear weights' factors (with the shortcut for rows
 * near zero) equal those from materialised chunks, bin for bin: inputs of
 * scale 1e-3 (most rows take the shortcut), 1 (none does), with zeros and
 * negatives. */
static void test_histogram_paths(void **state) {
  (void)state;
  const double scales[3] = {1e-3, 1e-1, 1.0};
  for (int k = 0; k < 3; k++)
    for (int two = 0; two < 2; two++) {
      fixture f;
      open_fixture(&f, CPK_OPTIM_SGD);
      for (int64_t i = 0; i < cpk_tensor_numel(f.x); i++)
        cpk_tensor_set(f.x, i,
                       i % 5 == 0 ? 0.0 : scales[k] * cpk_tensor_get(f.x, i));
      cpk__sample_grads sg[2];
      for (int path = 0; path < 2; path++) {
        memset(&sg[path], 0, sizeof sg[path]);
        sg[path].model = f.m;
        sg[path].ctx = f.ctx;
        sg[path].batch = NS;
        sg[path].hist1d = 1;
        sg[path].hist2d = two;
        cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL,
                              1};
        cpk_pass_options o = {.visit_grad_batch = cpk__sample_grads_visit,
                              .visit_grad_factors =
                                  path ? cpk__sample_grads_visit_factors : NULL,
                              .visit_ud = &sg[path]};
        cpk_results *r;
        tu_ok(cpk_compute_ex(f.ctx, f.m, &spec, &o, f.x, f.y, &r));
        cpk_results_free(r);
      }
      double total = 0;
      for (int b = 0; b < 100; b++) {
        total += sg[0].h1[b];
        if (sg[0].h1[b] != sg[1].h1[b]) {
          print_error("scale %g: bin %d: %g from chunks, %g from factors\n",
                      scales[k], b, sg[0].h1[b], sg[1].h1[b]);
          fail();
        }
      }
      assert_true(total == (double)NS * f.np);
      for (int b = 0; b < 2000; b++)
        assert_true(sg[0].h2[b] == sg[1].h2[b]);
      close_fixture(&f);
    }
}

/* Alpha's fit on noise-free observations of a quadratic: exact. */
static void test_alpha_fit(void **state) {
  (void)state;
  /* f(s) = 2 (s - 0.3)^2: minimum at 0.3, so stepping t = 1 lands at
   * 2 t / (2 * 0.3) - 1 = 2.333... on Cockpit's scale. */
  const double f[2] = {0.18, 0.98}, df[2] = {-1.2, 2.8}, v[2] = {1, 1};
  assert_true(fabs(cpk__alpha(1.0, f, df, v, v) - (2.0 / 0.6 - 1)) < 1e-12);
  /* stepping exactly to the minimum is 0, to its mirror image 1 */
  const double f0[2] = {0.18, 0}, d0[2] = {-1.2, 0};
  assert_true(fabs(cpk__alpha(0.3, f0, d0, v, v)) < 1e-12);
  const double f1[2] = {0.18, 0.18}, d1[2] = {-1.2, 1.2};
  assert_true(fabs(cpk__alpha(0.6, f1, d1, v, v) - 1) < 1e-12);
  /* concave: -1; no step: -1 */
  const double fc[2] = {0, -2}, dc[2] = {-1, -3}; /* f = -s^2 - s */
  assert_true(cpk__alpha(1.0, fc, dc, v, v) == -1);
  assert_true(cpk__alpha(0.0, f, df, v, v) == -1);
  /* zero variances are replaced by 1e-10, as Cockpit does */
  const double z[2] = {0, 0};
  assert_true(fabs(cpk__alpha(1.0, f, df, z, z) - (2.0 / 0.6 - 1)) < 1e-6);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_full_preset_against_extensions),
      cmocka_unit_test(test_trainer_checkpoint),
      cmocka_unit_test(test_batch_of_one),
      cmocka_unit_test(test_presets),
      cmocka_unit_test(test_histogram_paths),
      cmocka_unit_test(test_alpha_fit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
