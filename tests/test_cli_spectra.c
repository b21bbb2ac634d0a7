/*
 * test_cli_spectra.c: `curvpack hvp`, `ggnvp`, `eigen`, `trace` and
 * `density` end to end on a PyTorch fixture network, against the dense
 * curvature matrix (assembled from cpk_curvature_op, itself checked against
 * finite differences in test_products) and LAPACKE's eigendecomposition.
 */
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define BIN CPK_TEST_BUILDDIR "/curvpack"
#define CASE "tests/fixtures/deep_exp_log_ce_mean_f64"

static char errbuf[4096];

/* Run curvpack with the fixture's files and extra arguments. */
static int run(const char *out, const char *args) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "'%s' %s --model %s/model.txt --params %s/params --input "
           "%s/input.npy --target %s/target.npy --dtype float64 --out '%s' "
           ">/dev/null",
           BIN, args, tu_src(CASE), tu_src(CASE), tu_src(CASE), tu_src(CASE),
           out);
  return tu_run(cmd, errbuf, sizeof errbuf);
}

static cpk_tensor *load(const char *dir, const char *name) {
  char path[1024];
  cpk_tensor *t;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  tu_ok(cpk_npy_read(path, &t));
  return t;
}

typedef struct {
  cpk_model *m;
  int64_t p;
  double *mat; /* [P, P] */
  double *eig; /* ascending */
} dense;

/* The fixture's curvature as a dense matrix, and its eigenvalues. */
static void dense_curvature(dense *d, cpk_curvature kind) {
  cpk_tensor *x, *y;
  cpk_context *ctx;
  cpk_curvature_op *op;
  tu_ok(cpk_model_load(&d->m, tu_src(CASE "/model.txt")));
  tu_ok(cpk_npy_read(tu_src(CASE "/input.npy"), &x));
  tu_ok(cpk_npy_read(tu_src(CASE "/target.npy"), &y));
  tu_ok(cpk_model_build(d->m, x->ndim - 1, x->shape + 1, CPK_F64));
  tu_ok(cpk_model_load_params(d->m, tu_src(CASE "/params")));
  tu_ok(cpk_context_new(&ctx, NULL));
  cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, NULL, 0};
  tu_ok(cpk_curvature_op_new(&op, ctx, d->m, &spec, x, y, kind));
  d->p = cpk_curvature_op_dim(op);
  double *eye = calloc((size_t)(d->p * d->p), sizeof *eye);
  d->mat = calloc((size_t)(d->p * d->p), sizeof *d->mat);
  d->eig = calloc((size_t)d->p, sizeof *d->eig);
  for (int64_t i = 0; i < d->p; i++)
    eye[i * d->p + i] = 1;
  tu_ok(cpk_curvature_op_apply(op, d->p, eye, d->mat));
  memcpy(eye, d->mat, (size_t)(d->p * d->p) * sizeof *eye);
  assert_int_equal(LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'N', 'U', (lapack_int)d->p,
                                 eye, (lapack_int)d->p, d->eig),
                   0);
  free(eye);
  cpk_curvature_op_free(op);
  cpk_context_free(ctx);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
}

static void dense_free(dense *d) {
  free(d->mat);
  free(d->eig);
  cpk_model_free(d->m);
}

static void check_eigen(const char *curvature, cpk_curvature kind) {
  dense d;
  dense_curvature(&d, kind);
  const char *out = tu_tempdir();
  char args[128];
  snprintf(args, sizeof args, "eigen --top 3 --curvature %s", curvature);
  assert_int_equal(run(out, args), 0);
  cpk_tensor *vals = load(out, "eigenvalues.npy");
  assert_int_equal(vals->ndim, 1);
  assert_int_equal(vals->shape[0], 3);
  double want[3] = {d.eig[d.p - 1], d.eig[d.p - 2], d.eig[d.p - 3]};
  tu_assert_close_array(vals->data, want, 3, 1e-8, 1e-12, "eigenvalues");
  /* eigenvectors: unit norm over all parameters, C v = lambda v */
  double *v = calloc((size_t)(3 * d.p), sizeof *v);
  int64_t off = 0;
  for (int i = 0; i < cpk_model_num_params(d.m); i++) {
    const char *name;
    char file[96];
    cpk_model_param(d.m, i, &name, NULL);
    snprintf(file, sizeof file, "%s.eigenvectors.npy", name);
    cpk_tensor *t = load(out, file);
    assert_int_equal(t->shape[0], 3);
    const int64_t n = cpk_tensor_numel(t) / 3;
    for (int k = 0; k < 3; k++)
      for (int64_t j = 0; j < n; j++)
        v[k * d.p + off + j] = cpk_tensor_get(t, k * n + j);
    off += n;
    cpk_tensor_free(t);
  }
  assert_int_equal(off, d.p);
  for (int k = 0; k < 3; k++) {
    double norm = 0, res = 0;
    for (int64_t i = 0; i < d.p; i++) {
      double cv = 0;
      for (int64_t j = 0; j < d.p; j++)
        cv += d.mat[i * d.p + j] * v[k * d.p + j];
      norm += v[k * d.p + i] * v[k * d.p + i];
      res += pow(cv - want[k] * v[k * d.p + i], 2);
    }
    assert_true(fabs(norm - 1) < 1e-10);
    assert_true(sqrt(res) < 1e-6 * fabs(want[0]));
  }
  free(v);
  cpk_tensor_free(vals);
  tu_rmtree(out);
  dense_free(&d);
}

static void test_eigen(void **state) {
  check_eigen("hessian", CPK_CURV_HESSIAN);
  check_eigen("ggn", CPK_CURV_GGN);
}

static void test_trace(void **state) {
  dense d;
  dense_curvature(&d, CPK_CURV_HESSIAN);
  double exact = 0;
  for (int64_t i = 0; i < d.p; i++)
    exact += d.mat[i * d.p + i];
  const char *out = tu_tempdir();
  assert_int_equal(run(out, "trace"), 0);
  cpk_tensor *t = load(out, "trace.npy");
  assert_int_equal(t->ndim, 0);
  tu_assert_close_array(t->data, &exact, 1, 1e-10, 1e-14, "exact trace");
  cpk_tensor_free(t);
  assert_int_equal(tu_count_entries(out), 1);
  const char *methods[2] = {"hutchinson", "hutchpp"};
  for (int m = 0; m < 2; m++) {
    char args[96];
    snprintf(args, sizeof args, "trace --method %s --samples 300 --seed %d",
             methods[m], m + 1);
    assert_int_equal(run(out, args), 0);
    t = load(out, "trace.npy");
    cpk_tensor *e = load(out, "trace_stderr.npy");
    double est = cpk_tensor_get(t, 0), se = cpk_tensor_get(e, 0);
    assert_true(se > 0);
    if (!(fabs(est - exact) <= 5 * se)) {
      print_error("%s: %g vs exact %g (stderr %g)\n", methods[m], est, exact,
                  se);
      fail();
    }
    cpk_tensor_free(t);
    cpk_tensor_free(e);
  }
  tu_rmtree(out);
  dense_free(&d);
}

static void test_density(void **state) {
  const char *out = tu_tempdir();
  assert_int_equal(run(out, "density --runs 2 --steps 40 --grid 2000"), 0);
  cpk_tensor *t = load(out, "density.npy");
  assert_int_equal(t->ndim, 2);
  assert_int_equal(t->shape[0], 2);
  assert_int_equal(t->shape[1], 2000);
  double sum = 0, step = cpk_tensor_get(t, 1) - cpk_tensor_get(t, 0);
  for (int64_t i = 0; i < 2000; i++)
    sum += cpk_tensor_get(t, 2000 + i);
  assert_true(fabs(sum * step - 1) < 1e-9);
  cpk_tensor_free(t);
  tu_rmtree(out);
}

/* timing.json's text ("" when absent). */
static const char *slurp_timing(const char *dir) {
  static char buf[512];
  char path[1024];
  snprintf(path, sizeof path, "%s/timing.json", dir);
  FILE *f = fopen(path, "r");
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  buf[n] = '\0';
  if (f)
    fclose(f);
  return buf;
}

/* hvp and ggnvp of a basis vector are columns of the dense matrices. */
static void test_products_cli(void **state) {
  for (int kind = 0; kind < 2; kind++) {
    dense d;
    dense_curvature(&d, kind == 0 ? CPK_CURV_HESSIAN : CPK_CURV_GGN);
    char vec[64], path[1024], args[1200];
    snprintf(vec, sizeof vec, "%s", tu_tempdir()); /* tu_tempdir's buffer is reused */
    /* e_j for j = the first entry of parameter 2 (the others missing) */
    const char *name;
    cpk_tensor *theta, *e;
    cpk_model_param(d.m, 2, &name, &theta);
    tu_ok(cpk_tensor_new(&e, CPK_F64, theta->ndim, theta->shape));
    cpk_tensor_set(e, 0, 1.0);
    snprintf(path, sizeof path, "%s/%s.npy", vec, name);
    tu_ok(cpk_npy_write(path, e));
    cpk_tensor_free(e);
    int64_t j = 0;
    for (int i = 0; i < 2; i++) {
      cpk_tensor *t;
      cpk_model_param(d.m, i, NULL, &t);
      j += cpk_tensor_numel(t);
    }
    const char *out = tu_tempdir();
    const char *cmd = kind == 0 ? "hvp" : "ggnvp";
    snprintf(args, sizeof args, "%s --vector '%s' --repeat 2", cmd, vec);
    assert_int_equal(run(out, args), 0);
    int64_t off = 0;
    for (int i = 0; i < cpk_model_num_params(d.m); i++) {
      char file[96];
      cpk_model_param(d.m, i, &name, &theta);
      snprintf(file, sizeof file, "%s.%s.npy", name, cmd);
      cpk_tensor *t = load(out, file);
      for (int64_t k = 0; k < cpk_tensor_numel(t); k++) {
        double want = d.mat[(off + k) * d.p + j];
        if (!(fabs(cpk_tensor_get(t, k) - want) <= 1e-12 + 1e-10 * fabs(want))) {
          print_error("%s %s[%lld] = %.17g, dense %.17g\n", cmd, name,
                      (long long)k, cpk_tensor_get(t, k), want);
          fail();
        }
      }
      off += cpk_tensor_numel(t);
      cpk_tensor_free(t);
    }
    assert_true(strlen(slurp_timing(out)) > 0);
    tu_rmtree(out);
    tu_rmtree(vec);
    dense_free(&d);
  }
}

static void test_usage_errors(void **state) {
  const char *out = tu_tempdir();
  assert_int_equal(run(out, "eigen --top 0"), 2);
  assert_int_equal(run(out, "eigen --curvature fisher"), 2);
  assert_int_equal(run(out, "trace --method exactly"), 2);
  assert_int_equal(run(out, "trace --samples 10"), 2);
  assert_int_equal(run(out, "eigen --top 100000"), 1);
  assert_non_null(strstr(errbuf, "parameters"));
  assert_int_equal(run(out, "hvp"), 2); /* missing --vector */
  assert_int_equal(tu_count_entries(out), 0);
  tu_rmtree(out);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_eigen),
      cmocka_unit_test(test_trace),
      cmocka_unit_test(test_density),
      cmocka_unit_test(test_products_cli),
      cmocka_unit_test(test_usage_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
