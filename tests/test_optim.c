/*
 * test_optim.c: the optimizers of `curvpack train` against their formulas
 * written out here (PyTorch's SGD with momentum and Adam, the damped
 * diagonal-GGN step, KFAC against a dense solve of the damped Kronecker
 * product), the curvature refresh schedule and running average, the
 * identity-curvature fallback, state save and load; the pass options
 * (cpk_compute_ex: skipping unsupported extensions, visiting per-sample
 * gradients in chunks or, for Linear weights, as factors); the built-in
 * problems; cpk_evaluate.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "testutil.h"

#define N 6
#define MAXP 64

/* A tiny float64 problem: linear 4 3, tanh, linear 3 3, cross-entropy. */
typedef struct {
  cpk_model *m;
  cpk_context *ctx;
  cpk_tensor *x, *y;
} problem;

static void open_problem(problem *pb, const char *text) {
  const int64_t shape[2] = {N, 4}, in = 4;
  tu_ok(cpk_model_parse(&pb->m, text, "test"));
  tu_ok(cpk_model_build(pb->m, 1, &in, CPK_F64));
  tu_ok(cpk_model_init_params(pb->m, 3));
  tu_ok(cpk_context_new(&pb->ctx, NULL));
  pb->x = tu_random(CPK_F64, 2, shape, -1, 1, 5);
  int64_t n = N;
  tu_ok(cpk_tensor_new(&pb->y, CPK_I64, 1, &n));
  for (int i = 0; i < N; i++)
    cpk_tensor_set(pb->y, i, i % 3);
}

static void close_problem(problem *pb) {
  cpk_tensor_free(pb->x);
  cpk_tensor_free(pb->y);
  cpk_context_free(pb->ctx);
  cpk_model_free(pb->m);
}

static const char *const net = "linear 4 3\ntanh\nlinear 3 3\n";

static cpk_results *pass(problem *pb, const char *ext, int skip) {
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, ext, 1};
  cpk_pass_options o = {.skip_unsupported = skip};
  cpk_results *r;
  tu_ok(cpk_compute_ex(pb->ctx, pb->m, &spec, &o, pb->x, pb->y, &r));
  return r;
}

/* All trainable parameters flattened, and one parameter's result. */
static int64_t params(const cpk_model *m, double *out) {
  int64_t k = 0;
  for (int i = 0; i < cpk_model_num_params(m); i++) {
    cpk_tensor *t;
    cpk_model_param(m, i, NULL, &t);
    if (cpk_model_param_trainable(m, i))
      for (int64_t j = 0; j < cpk_tensor_numel(t); j++)
        out[k++] = cpk_tensor_get(t, j);
  }
  return k;
}

static int64_t results(const cpk_model *m, const cpk_results *r,
                       const char *suffix, double *out) {
  int64_t k = 0;
  for (int i = 0; i < cpk_model_num_params(m); i++) {
    const char *name;
    char key[96];
    cpk_model_param(m, i, &name, NULL);
    if (!cpk_model_param_trainable(m, i))
      continue;
    snprintf(key, sizeof key, "%s.%s", name, suffix);
    const cpk_tensor *t = cpk_results_find(r, key);
    assert_non_null(t);
    for (int64_t j = 0; j < cpk_tensor_numel(t); j++)
      out[k++] = cpk_tensor_get(t, j);
  }
  return k;
}

static void test_sgd_momentum(void **state) {
  (void)state;
  problem pb;
  open_problem(&pb, net);
  cpk_optim_options o;
  cpk_optim_defaults(CPK_OPTIM_SGD, &o);
  o.lr = 0.3;
  o.momentum = 0.8;
  o.weight_decay = 0.05;
  cpk_optim *opt;
  tu_ok(cpk_optim_new(&opt, &o, pb.m));
  double theta[MAXP], g[MAXP], b[MAXP] = {0}, want[MAXP], got[MAXP];
  for (int step = 0; step < 3; step++) {
    assert_string_equal(cpk_optim_extensions(opt), "");
    cpk_results *r = pass(&pb, NULL, 0);
    const int64_t p = params(pb.m, theta);
    results(pb.m, r, "grad", g);
    /* PyTorch: d_p = g + wd theta; buf = momentum buf + d_p (buf = d_p at
     * the first step); theta -= lr buf. */
    for (int64_t k = 0; k < p; k++) {
      double d = g[k] + o.weight_decay * theta[k];
      b[k] = step == 0 ? d : o.momentum * b[k] + d;
      want[k] = theta[k] - o.lr * b[k];
    }
    tu_ok(cpk_optim_prepare(opt, pb.m, r));
    tu_ok(cpk_optim_apply(opt, pb.m));
    params(pb.m, got);
    tu_assert_close_array(got, want, p, 1e-14, 1e-15, "sgd");
    cpk_results_free(r);
  }
  assert_int_equal(cpk_optim_steps(opt), 3);
  cpk_optim_free(opt);
  close_problem(&pb);
}

static void test_adam(void **state) {
  (void)state;
  problem pb;
  open_problem(&pb, net);
  cpk_optim_options o;
  cpk_optim_defaults(CPK_OPTIM_ADAM, &o);
  o.lr = 0.05;
  o.beta1 = 0.8;
  o.beta2 = 0.95;
  o.eps = 1e-3;
  o.weight_decay = 0.1;
  cpk_optim *opt;
  tu_ok(cpk_optim_new(&opt, &o, pb.m));
  double theta[MAXP], g[MAXP], m1[MAXP] = {0}, v[MAXP] = {0}, want[MAXP],
                               got[MAXP];
  for (int t = 1; t <= 4; t++) {
    cpk_results *r = pass(&pb, NULL, 0);
    const int64_t p = params(pb.m, theta);
    results(pb.m, r, "grad", g);
    /* torch.optim.Adam (amsgrad off). */
    for (int64_t k = 0; k < p; k++) {
      double d = g[k] + o.weight_decay * theta[k];
      m1[k] = o.beta1 * m1[k] + (1 - o.beta1) * d;
      v[k] = o.beta2 * v[k] + (1 - o.beta2) * d * d;
      double bc1 = 1 - pow(o.beta1, t), bc2 = 1 - pow(o.beta2, t);
      double denom = sqrt(v[k]) / sqrt(bc2) + o.eps;
      want[k] = theta[k] - (o.lr / bc1) * m1[k] / denom;
    }
    tu_ok(cpk_optim_prepare(opt, pb.m, r));
    tu_ok(cpk_optim_apply(opt, pb.m));
    params(pb.m, got);
    tu_assert_close_array(got, want, p, 1e-13, 1e-15, "adam");
    cpk_results_free(r);
  }
  cpk_optim_free(opt);
  close_problem(&pb);
}

/* The damped diagonal-GGN step, its refresh schedule and running average:
 * with update_every 2 the curvature of steps 0 and 2 is used, with ema
 * D = ema D_old + (1 - ema) D_new at step 2. */
static void test_diag_ggn(void **state) {
  (void)state;
  for (int mc = 0; mc < 2; mc++) {
    problem pb;
    open_problem(&pb, net);
    cpk_optim_options o;
    cpk_optim_defaults(CPK_OPTIM_DIAG_GGN, &o);
    o.lr = 0.5;
    o.momentum = 0.0;
    o.damping = 0.2;
    o.update_every = 2;
    o.ema = 0.25;
    o.ggn_mc = mc;
    const char *ext = mc ? "diag_ggn_mc" : "diag_ggn_exact";
    cpk_optim *opt;
    tu_ok(cpk_optim_new(&opt, &o, pb.m));
    double theta[MAXP], g[MAXP], diag[MAXP], fresh[MAXP], want[MAXP], got[MAXP];
    for (int step = 0; step < 3; step++) {
      const int refresh = step % 2 == 0;
      assert_string_equal(cpk_optim_extensions(opt), refresh ? ext : "");
      cpk_results *r = pass(&pb, cpk_optim_extensions(opt), 0);
      const int64_t p = params(pb.m, theta);
      results(pb.m, r, "grad", g);
      if (refresh) {
        results(pb.m, r, ext, fresh);
        for (int64_t k = 0; k < p; k++)
          diag[k] = step == 0 ? fresh[k] : 0.25 * diag[k] + 0.75 * fresh[k];
      }
      for (int64_t k = 0; k < p; k++)
        want[k] = theta[k] - o.lr * g[k] / (diag[k] + o.damping);
      tu_ok(cpk_optim_prepare(opt, pb.m, r));
      const double *d0 = cpk_optim_update(opt, 0);
      assert_true(fabs(d0[0] - (want[0] - theta[0])) <= 1e-14);
      tu_ok(cpk_optim_apply(opt, pb.m));
      params(pb.m, got);
      tu_assert_close_array(got, want, p, 1e-13, 1e-15, ext);
      cpk_results_free(r);
    }
    cpk_optim_free(opt);
    close_problem(&pb);
  }
}

/* x := M^-1 y for a dense d x d system (Gaussian elimination). */
static void dense_solve(int d, double *m, double *y) {
  for (int c = 0; c < d; c++) {
    int p = c;
    for (int r = c + 1; r < d; r++)
      if (fabs(m[r * d + c]) > fabs(m[p * d + c]))
        p = r;
    for (int k = 0; k < d; k++) {
      double t = m[c * d + k];
      m[c * d + k] = m[p * d + k];
      m[p * d + k] = t;
    }
    double t = y[c];
    y[c] = y[p];
    y[p] = t;
    for (int r = c + 1; r < d; r++) {
      double f = m[r * d + c] / m[c * d + c];
      for (int k = c; k < d; k++)
        m[r * d + k] -= f * m[c * d + k];
      y[r] -= f * y[c];
    }
  }
  for (int c = d - 1; c >= 0; c--) {
    for (int k = c + 1; k < d; k++)
      y[c] -= m[c * d + k] * y[k];
    y[c] /= m[c * d + c];
  }
}

/* (A (x) B + damping I)^-1 g (exact) or ((A + s I) (x) (B + s I))^-1 g with
 * s = sqrt(damping) (factored), built densely; b NULL: (A + damping I). */
static void kron_dense(int exact, int m, const double *a, int n,
                       const double *b, double damping, const double *g,
                       double *out) {
  const int d = b ? m * n : m;
  double *mat = calloc((size_t)d * d, sizeof *mat);
  const double s = exact || !b ? damping : sqrt(damping);
  for (int i = 0; i < d; i++)
    out[i] = g[i];
  if (b == NULL) {
    for (int i = 0; i < m; i++)
      for (int j = 0; j < m; j++)
        mat[i * m + j] = a[i * m + j] + (i == j ? damping : 0);
  } else {
    for (int i = 0; i < m; i++)
      for (int k = 0; k < n; k++)
        for (int j = 0; j < m; j++)
          for (int l = 0; l < n; l++) {
            double aa = a[i * m + j], bb = b[k * n + l];
            double v = exact
                           ? aa * bb + (i == j && k == l ? s : 0)
                           : (aa + (i == j ? s : 0)) * (bb + (k == l ? s : 0));
            mat[(i * n + k) * d + j * n + l] = v;
          }
  }
  dense_solve(d, mat, out);
  free(mat);
}

static void test_kfac(void **state) {
  (void)state;
  for (int exact = 0; exact < 2; exact++) {
    problem pb;
    open_problem(&pb, net);
    cpk_optim_options o;
    cpk_optim_defaults(CPK_OPTIM_KFAC, &o);
    o.lr = 0.7;
    o.momentum = 0.5;
    o.damping = 0.03;
    o.kron_damping = exact ? CPK_KRON_DAMP_EXACT : CPK_KRON_DAMP_FACTORED;
    cpk_optim *opt;
    tu_ok(cpk_optim_new(&opt, &o, pb.m));
    double b[4][16] = {{0}};
    cpk_results *factors = NULL;
    for (int step = 0; step < 2; step++) {
      assert_string_equal(cpk_optim_extensions(opt), step == 0 ? "kfac" : "");
      cpk_results *r = pass(&pb, "kfac", 1);
      double before[MAXP], after[MAXP], want[MAXP];
      const int64_t p = params(pb.m, before);
      if (step == 0)
        factors = r; /* the factors of step 0 serve step 1 as well */
      int64_t at = 0;
      for (int i = 0; i < cpk_model_num_params(pb.m); i++) {
        const char *name;
        cpk_tensor *t;
        char key[64];
        cpk_model_param(pb.m, i, &name, &t);
        const int m = (int)t->shape[0];
        const int n = t->ndim == 2 ? (int)t->shape[1] : 0;
        double a[16], bb[16], g[16], pre[16];
        snprintf(key, sizeof key, "%s.kfac.0", name);
        for (int k = 0; k < m * m; k++)
          a[k] = cpk_tensor_get(cpk_results_find(factors, key), k);
        if (n) {
          snprintf(key, sizeof key, "%s.kfac.1", name);
          for (int k = 0; k < n * n; k++)
            bb[k] = cpk_tensor_get(cpk_results_find(factors, key), k);
        }
        snprintf(key, sizeof key, "%s.grad", name);
        for (int k = 0; k < cpk_tensor_numel(t); k++)
          g[k] = cpk_tensor_get(cpk_results_find(r, key), k);
        kron_dense(exact, m, a, n, n ? bb : NULL, o.damping, g, pre);
        for (int k = 0; k < cpk_tensor_numel(t); k++) {
          b[i][k] = step == 0 ? pre[k] : o.momentum * b[i][k] + pre[k];
          want[at + k] = before[at + k] - o.lr * b[i][k];
        }
        at += cpk_tensor_numel(t);
      }
      tu_ok(cpk_optim_prepare(opt, pb.m, r));
      tu_ok(cpk_optim_apply(opt, pb.m));
      params(pb.m, after);
      tu_assert_close_array(after, want, p, 1e-10, 1e-13, "kfac");
      for (int i = 0; i < cpk_model_num_params(pb.m); i++)
        assert_false(cpk_optim_fallback(opt, i));
      if (step == 1) {
        cpk_results_free(factors);
        cpk_results_free(r);
      }
    }
    cpk_optim_free(opt);
    close_problem(&pb);
  }
}

/* Batch norm has no Kronecker factors: the pass with skip_unsupported
 * leaves it without them (without: the pass fails), and KFAC takes the
 * identity-curvature step -lr * g there, saying so. */
static void test_kfac_fallback(void **state) {
  (void)state;
  problem pb;
  open_problem(&pb, "linear 4 3\nbatchnorm1d 3\ntanh\nlinear 3 3\n");
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, "kfac", 1};
  cpk_results *r = NULL;
  assert_int_equal(cpk_compute(pb.ctx, pb.m, &spec, pb.x, pb.y, &r),
                   CPK_ENOTSUP);
  assert_null(r);
  r = pass(&pb, "kfac", 1);
  assert_non_null(cpk_results_find(r, "0.weight.kfac.1"));
  assert_non_null(cpk_results_find(r, "3.weight.kfac.0"));
  assert_null(cpk_results_find(r, "1.weight.kfac.0"));
  assert_null(cpk_results_find(r, "1.bias.kfac.0"));
  assert_non_null(cpk_results_find(r, "1.weight.grad"));
  cpk_optim_options o;
  cpk_optim_defaults(CPK_OPTIM_KFAC, &o);
  o.momentum = 0;
  cpk_optim *opt;
  tu_ok(cpk_optim_new(&opt, &o, pb.m));
  tu_ok(cpk_optim_prepare(opt, pb.m, r));
  for (int i = 0; i < cpk_model_num_params(pb.m); i++) {
    const char *name;
    cpk_tensor *t;
    cpk_model_param(pb.m, i, &name, &t);
    const int bn = name[0] == '1';
    if (!cpk_model_param_trainable(pb.m, i)) {
      assert_null(cpk_optim_update(opt, i));
      continue;
    }
    assert_int_equal(cpk_optim_fallback(opt, i), bn);
    if (bn) {
      char key[64];
      snprintf(key, sizeof key, "%s.grad", name);
      const cpk_tensor *g = cpk_results_find(r, key);
      for (int64_t k = 0; k < cpk_tensor_numel(g); k++)
        assert_true(fabs(cpk_optim_update(opt, i)[k] +
                         o.lr * cpk_tensor_get(g, k)) <= 1e-15);
    }
  }
  cpk_results_free(r);
  cpk_optim_free(opt);
  close_problem(&pb);
}

/* Two steps, save, load into a fresh optimizer: both continue alike. */
static void test_save_load(void **state) {
  (void)state;
  const cpk_optim_kind kinds[4] = {CPK_OPTIM_SGD, CPK_OPTIM_ADAM,
                                   CPK_OPTIM_DIAG_GGN, CPK_OPTIM_KFAC};
  for (int k = 0; k < 4; k++) {
    problem a, b;
    open_problem(&a, net);
    open_problem(&b, net);
    cpk_optim_options o;
    cpk_optim_defaults(kinds[k], &o);
    o.update_every = 3;
    o.ema = 0.5;
    cpk_optim *oa, *ob;
    tu_ok(cpk_optim_new(&oa, &o, a.m));
    tu_ok(cpk_optim_new(&ob, &o, b.m));
    char dir[512];
    snprintf(dir, sizeof dir, "%s", tu_tempdir());
    for (int step = 0; step < 5; step++) {
      if (step == 2) {
        tu_ok(cpk_optim_save(oa, dir));
        double theta[MAXP];
        params(a.m, theta);
        /* b takes a's parameters and state */
        int64_t at = 0;
        for (int i = 0; i < cpk_model_num_params(b.m); i++) {
          cpk_tensor *t;
          cpk_model_param(b.m, i, NULL, &t);
          for (int64_t j = 0;
               cpk_model_param_trainable(b.m, i) && j < cpk_tensor_numel(t);
               j++)
            cpk_tensor_set(t, j, theta[at++]);
        }
        tu_ok(cpk_optim_load(ob, dir));
        assert_int_equal(cpk_optim_steps(ob), 2);
      }
      char ext[32];
      snprintf(ext, sizeof ext, "%s", cpk_optim_extensions(oa));
      cpk_results *r = pass(&a, ext, 1);
      tu_ok(cpk_optim_prepare(oa, a.m, r));
      tu_ok(cpk_optim_apply(oa, a.m));
      cpk_results_free(r);
      if (step >= 2) {
        assert_string_equal(cpk_optim_extensions(ob), ext);
        r = pass(&b, ext, 1);
        tu_ok(cpk_optim_prepare(ob, b.m, r));
        tu_ok(cpk_optim_apply(ob, b.m));
        cpk_results_free(r);
      }
    }
    double ta[MAXP], tb[MAXP];
    const int64_t p = params(a.m, ta);
    params(b.m, tb);
    tu_assert_close_array(tb, ta, p, 0, 0, cpk_optim_name(kinds[k]));
    /* A state of another kind is refused. */
    cpk_optim_options other;
    cpk_optim_defaults(kinds[(k + 1) % 4], &other);
    cpk_optim *oc;
    tu_ok(cpk_optim_new(&oc, &other, a.m));
    assert_int_equal(cpk_optim_load(oc, dir), CPK_EINVAL);
    cpk_optim_free(oc);
    tu_rmtree(dir);
    cpk_optim_free(oa);
    cpk_optim_free(ob);
    close_problem(&a);
    close_problem(&b);
  }
}

static void test_bad_options(void **state) {
  (void)state;
  cpk_optim_options o;
  cpk_optim_defaults(CPK_OPTIM_SGD, &o);
  o.momentum = 1.0;
  assert_int_equal(cpk_optim_check(&o), CPK_EINVAL);
  assert_non_null(strstr(cpk_last_error(), "momentum"));
  cpk_optim_defaults(CPK_OPTIM_KFAC, &o);
  o.damping = 0;
  assert_int_equal(cpk_optim_check(&o), CPK_EINVAL);
  cpk_optim_defaults(CPK_OPTIM_ADAM, &o);
  o.beta2 = 1.0;
  assert_int_equal(cpk_optim_check(&o), CPK_EINVAL);
  cpk_optim_defaults(CPK_OPTIM_DIAG_GGN, &o);
  o.update_every = 0;
  assert_int_equal(cpk_optim_check(&o), CPK_EINVAL);
  cpk_optim_defaults(CPK_OPTIM_SGD, &o);
  o.lr = -1;
  assert_int_equal(cpk_optim_check(&o), CPK_EINVAL);
  cpk_optim_kind k;
  assert_int_equal(cpk_optim_parse("lbfgs", &k), CPK_EUSAGE);
  tu_ok(cpk_optim_parse("diag_ggn", &k));
  assert_int_equal(k, CPK_OPTIM_DIAG_GGN);
  /* Without the curvature it asked for, prepare names what is missing. */
  problem pb;
  open_problem(&pb, net);
  cpk_optim *opt;
  cpk_optim_defaults(CPK_OPTIM_DIAG_GGN, &o);
  tu_ok(cpk_optim_new(&opt, &o, pb.m));
  cpk_results *r = pass(&pb, NULL, 0);
  assert_int_equal(cpk_optim_prepare(opt, pb.m, r), CPK_EINVAL);
  assert_non_null(strstr(cpk_last_error(), "diag_ggn_mc"));
  assert_int_equal(cpk_optim_apply(opt, pb.m), CPK_EINVAL);
  cpk_results_free(r);
  cpk_optim_free(opt);
  close_problem(&pb);
}

/* The visitor sees every per-sample gradient once, in chunks that
 * concatenate to batch_grad, whatever the work budget. */
typedef struct {
  const cpk_results *want;
  int64_t seen[8];
  char names[8][32]; /* (the name passed lives during the call only) */
  int nnames, chunks;
} visit_state;

static int visit(void *ud, const char *param, int64_t first,
                 const cpk_tensor *chunk) {
  visit_state *v = ud;
  char key[64];
  snprintf(key, sizeof key, "%s.grad_batch", param);
  const cpk_tensor *gb = cpk_results_find(v->want, key);
  assert_non_null(gb);
  const int64_t per = cpk_tensor_numel(gb) / gb->shape[0];
  for (int64_t k = 0; k < cpk_tensor_numel(chunk); k++)
    assert_true(fabs(cpk_tensor_get(chunk, k) -
                     cpk_tensor_get(gb, first * per + k)) <= 1e-15);
  int i = 0;
  while (i < v->nnames && strcmp(v->names[i], param) != 0)
    i++;
  if (i == v->nnames)
    snprintf(v->names[v->nnames++], sizeof v->names[0], "%s", param);
  assert_int_equal(v->seen[i], first); /* in order, no gaps */
  v->seen[i] += chunk->shape[0];
  v->chunks++;
  return CPK_OK;
}

static int stop_visit(void *ud, const char *param, int64_t first,
                      const cpk_tensor *chunk) {
  (void)ud;
  (void)param;
  (void)first;
  (void)chunk;
  return CPK_ERANGE;
}

/* Linear weights in factored form: g[n] x[n]^T is row n of batch_grad. */
static int visit_factors(void *ud, const char *param, const cpk_tensor *g,
                         const cpk_tensor *x) {
  visit_state *v = ud;
  char key[64];
  snprintf(key, sizeof key, "%s.grad_batch", param);
  const cpk_tensor *gb = cpk_results_find(v->want, key);
  assert_non_null(gb);
  assert_int_equal(strstr(param, "weight") != NULL, 1);
  const int64_t n = g->shape[0], out = g->shape[1], in = x->shape[1];
  assert_int_equal(n, N);
  assert_int_equal(cpk_tensor_numel(gb), n * out * in);
  for (int64_t s = 0; s < n; s++)
    for (int64_t i = 0; i < out; i++)
      for (int64_t j = 0; j < in; j++)
        assert_true(fabs(cpk_tensor_get(g, s * out + i) *
                             cpk_tensor_get(x, s * in + j) -
                         cpk_tensor_get(gb, (s * out + i) * in + j)) <= 1e-15);
  v->chunks += 1000; /* counted apart from the chunks */
  return CPK_OK;
}

static void test_visitor(void **state) {
  (void)state;
  problem pb;
  open_problem(&pb, net);
  cpk_results *want = pass(&pb, "batch_grad", 0);
  const size_t budgets[2] = {(size_t)64 << 20, 64};
  for (int b = 0; b < 2; b++) {
    visit_state v = {.want = want};
    pb.ctx->work_bytes = budgets[b];
    cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 1};
    cpk_pass_options o = {.visit_grad_batch = visit, .visit_ud = &v};
    cpk_results *r;
    tu_ok(cpk_compute_ex(pb.ctx, pb.m, &spec, &o, pb.x, pb.y, &r));
    assert_int_equal(v.nnames, 4);
    for (int i = 0; i < 4; i++)
      assert_int_equal(v.seen[i], N);
    if (b == 1)
      assert_true(v.chunks > 4); /* several chunks per parameter */
    cpk_results_free(r);
  }
  /* With the factored visitor, weights go there and biases to chunks. */
  visit_state v = {.want = want};
  cpk_pass_spec fspec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 1};
  cpk_pass_options fo = {.visit_grad_batch = visit,
                         .visit_grad_factors = visit_factors,
                         .visit_ud = &v};
  cpk_results *fr;
  tu_ok(cpk_compute_ex(pb.ctx, pb.m, &fspec, &fo, pb.x, pb.y, &fr));
  assert_int_equal(v.chunks / 1000, 2); /* 0.weight, 2.weight */
  assert_int_equal(v.nnames, 2);        /* 0.bias, 2.bias */
  for (int i = 0; i < 2; i++) {
    assert_non_null(strstr(v.names[i], "bias"));
    assert_int_equal(v.seen[i], N);
  }
  cpk_results_free(fr);
  /* A visitor's failure stops the pass with its status. */
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 1};
  cpk_pass_options o = {.visit_grad_batch = stop_visit};
  cpk_results *r = NULL;
  assert_int_equal(cpk_compute_ex(pb.ctx, pb.m, &spec, &o, pb.x, pb.y, &r),
                   CPK_ERANGE);
  assert_null(r);
  cpk_results_free(want);
  close_problem(&pb);
}

static void test_problems(void **state) {
  (void)state;
  const char *names[3] = {"mnist_logreg", "fmnist_mlp", "fmnist_2c2d"};
  const int64_t counts[3] = {7850, 1336610, 3274634};
  const int64_t shape[3] = {1, 28, 28};
  for (int k = 0; k < 3; k++) {
    const char *text;
    cpk_model *m;
    tu_ok(cpk_problem_model(names[k], &text));
    tu_ok(cpk_model_parse(&m, text, names[k]));
    tu_ok(cpk_model_build(m, 3, shape, CPK_F32));
    assert_int_equal(cpk_model_param_count(m), counts[k]);
    int ndim;
    int64_t out[CPK_MAX_DIMS];
    tu_ok(cpk_model_output_shape(m, &ndim, out));
    assert_int_equal(ndim, 1);
    assert_int_equal(out[0], 10);
    tu_ok(cpk_problem_init_params(m, names[k], 7));
    /* DeepOBS: weights N(0, std) truncated at 2 std; biases constant. */
    const double std = k == 0 ? 0 : (k == 1 ? 0.03 : 0.05);
    const double bias = k == 2 ? 0.05 : 0;
    for (int i = 0; i < cpk_model_num_params(m); i++) {
      const char *name;
      cpk_tensor *t;
      cpk_model_param(m, i, &name, &t);
      const int64_t n = cpk_tensor_numel(t);
      double s = 0, ss = 0, top = 0;
      for (int64_t j = 0; j < n; j++) {
        double v = cpk_tensor_get(t, j);
        s += v;
        ss += v * v;
        top = fmax(top, fabs(v));
      }
      if (strstr(name, "bias")) {
        assert_true(fabs(s / n - bias) < 1e-7 && top <= bias + 1e-7);
      } else if (std == 0) {
        assert_true(top == 0);
      } else {
        /* std of a normal truncated at 2 sigma: 0.8796 sigma */
        assert_true(top <= 2 * std * (1 + 1e-6));
        if (n > 1000)
          assert_true(fabs(sqrt(ss / n) / (0.8796 * std) - 1) < 0.05);
      }
    }
    cpk_model_free(m);
  }
  const char *text;
  assert_int_equal(cpk_problem_model("cifar10_3c3d", &text), CPK_EUSAGE);
}

/* cpk_evaluate against the loss and argmax of full passes. */
static void test_evaluate(void **state) {
  (void)state;
  problem pb;
  open_problem(&pb, net);
  cpk_results *r = pass(&pb, NULL, 0);
  const cpk_tensor *f = cpk_results_find(r, "output");
  double hits = 0;
  for (int n = 0; n < N; n++) {
    int best = 0;
    for (int c = 1; c < 3; c++)
      if (cpk_tensor_get(f, n * 3 + c) > cpk_tensor_get(f, n * 3 + best))
        best = c;
    hits += best == (int)cpk_tensor_get(pb.y, n);
  }
  for (int64_t batch = 1; batch <= N + 1; batch += 3) {
    double loss, acc;
    tu_ok(cpk_evaluate(pb.ctx, pb.m, pb.x, pb.y, batch, &loss, &acc));
    assert_true(fabs(loss - cpk_tensor_get(cpk_results_find(r, "loss"), 0)) <
                1e-14);
    assert_true(fabs(acc - hits / N) < 1e-15);
  }
  /* a label out of range */
  cpk_tensor_set(pb.y, 2, 3);
  double loss, acc;
  assert_int_equal(cpk_evaluate(pb.ctx, pb.m, pb.x, pb.y, 4, &loss, &acc),
                   CPK_ERANGE);
  cpk_results_free(r);
  close_problem(&pb);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sgd_momentum),  cmocka_unit_test(test_adam),
      cmocka_unit_test(test_diag_ggn),      cmocka_unit_test(test_kfac),
      cmocka_unit_test(test_kfac_fallback), cmocka_unit_test(test_save_load),
      cmocka_unit_test(test_bad_options),   cmocka_unit_test(test_visitor),
      cmocka_unit_test(test_problems),      cmocka_unit_test(test_evaluate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
