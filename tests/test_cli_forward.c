/*
 * test_cli_forward.c: `curvpack jacobian` and `curvpack propagate` end to
 * end (contract.md): the files and their shapes and dtypes, forward and
 * reverse mode giving the same numbers as the library, sigma.npy equal to
 * sqrt(sum_i (J_oi sigma_i)^2) from jacobian.npy, seeded Monte Carlo
 * outputs, --help, exit codes (2 usage, 1 other), one-line errors naming
 * the file or array, and that a failed run writes nothing.
 *
 * The program is CPK_TEST_BUILDDIR/curvpack; each test works in a fresh
 * temporary directory holding a small model, its parameters, an input and
 * sigma arrays, removed afterwards.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

#define BIN CPK_TEST_BUILDDIR "/curvpack"
#define NS 5 /* samples in the input */

static char tmp[256];     /* this test's directory */
static char errbuf[8192]; /* stderr of the last run */

/* The model: 3 inputs, 2 outputs (reverse mode is the default). */
static const char *const model_text = "# a small network\n"
                                      "linear 3 4\n"
                                      "tanh\n"
                                      "linear 4 2\n";
/* and one with more outputs than inputs (forward mode by default) */
static const char *const wide_text = "linear 2 3\nsigmoid\nlinear 3 6\n";

/* TMP/rel in one of 8 rotating buffers: keep a copy of a path that must
 * outlive 8 more calls. */
static const char *at(const char *rel) {
  static char bufs[8][512];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s/%s", tmp, rel);
  return b;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void write_npy(const char *path, cpk_tensor *t) {
  tu_ok(cpk_npy_write(path, t));
  cpk_tensor_free(t);
}

static cpk_tensor *read_npy(const char *path) {
  cpk_tensor *t = NULL;
  if (cpk_npy_read(path, &t) != CPK_OK) {
    print_error("%s: %s\n", path, cpk_last_error());
    fail();
  }
  return t;
}

/* model.txt + params/ for `text` with sample shape (din,), seeded. */
static void write_model(const char *name, const char *params, const char *text,
                        int64_t din, uint64_t seed) {
  cpk_model *m;
  write_text(at(name), text);
  tu_ok(cpk_model_parse(&m, text, name));
  tu_ok(cpk_model_build(m, 1, &din, CPK_F64));
  tu_ok(cpk_model_init_params(m, seed));
  mkdir(at(params), 0777);
  tu_ok(cpk_model_save_params(m, at(params)));
  cpk_model_free(m);
}

static int setup_tmp(void **state) {
  (void)state;
  snprintf(tmp, sizeof tmp, "%s", tu_tempdir());
  write_model("model.txt", "params", model_text, 3, 1);
  write_model("wide.txt", "wparams", wide_text, 2, 2);
  int64_t xs[2] = {NS, 3}, ws[2] = {NS, 2}, s3 = 3;
  write_npy(at("input.npy"), tu_random(CPK_F64, 2, xs, -1, 1, 3));
  write_npy(at("winput.npy"), tu_random(CPK_F64, 2, ws, -1, 1, 4));
  write_npy(at("sigma.npy"), tu_random(CPK_F64, 1, &s3, 0.05, 0.2, 5));
  write_npy(at("sigma_n.npy"), tu_random(CPK_F32, 2, xs, 0.05, 0.2, 6));
  return 0;
}

static int teardown_tmp(void **state) {
  (void)state;
  tu_rmtree(tmp);
  return 0;
}

/* Run `curvpack ARGS` (printf-style); stdout discarded unless redirected. */
static int cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli(const char *fmt, ...) {
  char args[4096], cmd[5000];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  assert_true(n > 0 && n < (int)sizeof args);
  if (strchr(args, '>') != NULL)
    snprintf(cmd, sizeof cmd, "'%s' %s", BIN, args);
  else
    snprintf(cmd, sizeof cmd, "'%s' %s >/dev/null", BIN, args);
  int rc = tu_run(cmd, errbuf, sizeof errbuf);
  if (getenv("CPK_TEST_VERBOSE") != NULL)
    print_message("exit %d: %s", rc, errbuf[0] ? errbuf : "(no stderr)\n");
  return rc;
}

static void assert_contains(const char *haystack, const char *needle) {
  if (strstr(haystack, needle) == NULL) {
    print_error("expected \"%s\" in:\n%s\n", needle, haystack);
    fail();
  }
}

/* stderr is one line "curvpack: error: ..." containing every needle. */
static void assert_error_line(const char *needle, ...) {
  const char *prefix = "curvpack: error: ";
  const char *nl = strchr(errbuf, '\n');
  if (strncmp(errbuf, prefix, strlen(prefix)) != 0 || nl == NULL ||
      nl[1] != '\0') {
    print_error("expected one line \"%s...\" on stderr, got:\n%s\n", prefix,
                errbuf);
    fail();
  }
  va_list ap;
  va_start(ap, needle);
  for (const char *s = needle; s != NULL; s = va_arg(ap, const char *))
    assert_contains(errbuf, s);
  va_end(ap);
}

static void assert_nothing_written(const char *out) {
  int n = tu_count_entries(out);
  if (n > 0) {
    print_error("a failed run wrote %d entries in %s\n", n, out);
    fail();
  }
}

/* The common part of a jacobian command line for the small model. */
#define JAC_ARGS "jacobian --model '%s' --params '%s' --input '%s'"
#define PROP_ARGS "propagate --model '%s' --params '%s' --input '%s'"
#define MODEL at("model.txt"), at("params"), at("input.npy")
#define WIDE at("wide.txt"), at("wparams"), at("winput.npy")

/* The library's Jacobian of model `name` on `input`, float64. */
static cpk_tensor *library_jacobian(const char *name, const char *params,
                                    const char *input) {
  cpk_model *m;
  cpk_context *ctx;
  cpk_tensor *x = read_npy(input), *jac;
  tu_ok(cpk_model_load(&m, name));
  tu_ok(cpk_model_build(m, x->ndim - 1, x->shape + 1, CPK_F64));
  tu_ok(cpk_model_load_params(m, params));
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_jacobian(ctx, m, x, CPK_JACOBIAN_AUTO, &jac));
  cpk_context_free(ctx);
  cpk_model_free(m);
  cpk_tensor_free(x);
  return jac;
}

/* ------------------------------------------------------------------ jacobian
 */

static void test_jacobian_modes(void **state) {
  (void)state;
  cpk_tensor *want = library_jacobian(MODEL);
  const char *modes[3] = {"", "--mode forward", "--mode reverse"};
  const char *outs[3] = {"j_auto", "j_fwd", "j_rev"};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(cli(JAC_ARGS " --out '%s' --dtype float64 %s", MODEL,
                         at(outs[i]), modes[i]),
                     0);
    assert_int_equal(tu_count_entries(at(outs[i])), 1);
    char path[600];
    snprintf(path, sizeof path, "%s/jacobian.npy", at(outs[i]));
    cpk_tensor *j = read_npy(path);
    assert_int_equal(j->dtype, CPK_F64);
    assert_int_equal(j->ndim, 3);
    assert_int_equal(j->shape[0], NS);
    assert_int_equal(j->shape[1], 2);
    assert_int_equal(j->shape[2], 3);
    tu_assert_close(j, want, 1e-12, 0.0, modes[i]);
    cpk_tensor_free(j);
  }
  /* float32 by default, close to float64 */
  assert_int_equal(cli(JAC_ARGS " --out '%s'", MODEL, at("j32")), 0);
  cpk_tensor *j = read_npy(at("j32/jacobian.npy"));
  assert_int_equal(j->dtype, CPK_F32);
  tu_assert_close(j, want, 1e-5, 0.0, "float32");
  cpk_tensor_free(j);
  cpk_tensor_free(want);
  /* more outputs than inputs: forward by default, same as reverse */
  want = library_jacobian(WIDE);
  assert_int_equal(cli(JAC_ARGS " --out '%s' --dtype float64 --threads 1", WIDE,
                       at("w_auto")),
                   0);
  assert_int_equal(cli(JAC_ARGS " --out '%s' --dtype float64 --mode reverse",
                       WIDE, at("w_rev")),
                   0);
  cpk_tensor *a = read_npy(at("w_auto/jacobian.npy"));
  cpk_tensor *r = read_npy(at("w_rev/jacobian.npy"));
  assert_int_equal(a->shape[1], 6);
  assert_int_equal(a->shape[2], 2);
  tu_assert_close(a, want, 1e-12, 0.0, "wide, auto");
  tu_assert_close(r, want, 1e-12, 0.0, "wide, reverse");
  cpk_tensor_free(a);
  cpk_tensor_free(r);
  cpk_tensor_free(want);
}

/* The contract's common options that mean nothing here are accepted and
 * ignored, even when they name no file. */
static void test_jacobian_ignored_options(void **state) {
  (void)state;
  assert_int_equal(cli(JAC_ARGS " --out '%s' --target '%s' --loss mse "
                                "--reduction sum --mc-samples 3 --seed 4",
                       MODEL, at("ign"), at("no-such-target.npy")),
                   0);
  assert_int_equal(tu_count_entries(at("ign")), 1);
  assert_int_equal(cli("jacobian --help >'%s'", at("help.txt")), 0);
  FILE *f = fopen(at("help.txt"), "r");
  char text[8192];
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  assert_contains(text, "usage: curvpack jacobian");
  assert_contains(text, "--mode");
  assert_contains(text, "accepted and ignored");
  assert_int_equal(cli("propagate --help >'%s'", at("help.txt")), 0);
  f = fopen(at("help.txt"), "r");
  n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  assert_contains(text, "--sigma FILE");
  assert_contains(text, "--samples S");
  /* both are listed as commands */
  assert_int_equal(cli("--help >'%s'", at("help.txt")), 0);
  f = fopen(at("help.txt"), "r");
  n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  assert_contains(text, "jacobian");
  assert_contains(text, "propagate");
}

static void test_jacobian_errors(void **state) {
  (void)state;
  char out[512];
  snprintf(out, sizeof out, "%s", at("jerr"));
  /* usage errors: exit 2 */
  assert_int_equal(cli(JAC_ARGS " --out '%s' --mode sideways", MODEL, out), 2);
  assert_error_line("--mode", "sideways", NULL);
  assert_int_equal(cli("jacobian --params '%s' --input '%s' --out '%s'",
                       at("params"), at("input.npy"), out),
                   2);
  assert_error_line("missing --model", NULL);
  assert_int_equal(cli(JAC_ARGS " --out '%s' --sigma x", MODEL, out), 2);
  assert_error_line("unknown option '--sigma'", NULL);
  assert_int_equal(cli(JAC_ARGS " --out '%s' --dtype float16", MODEL, out), 2);
  assert_error_line("--dtype", NULL);
  assert_nothing_written(out);
  /* other failures: exit 1, naming the file */
  assert_int_equal(cli("jacobian --model '%s' --params '%s' --input '%s' "
                       "--out '%s'",
                       at("model.txt"), at("params"), at("missing.npy"), out),
                   1);
  assert_error_line("missing.npy", NULL);
  assert_int_equal(cli("jacobian --model '%s' --params '%s' --input '%s' "
                       "--out '%s'",
                       at("model.txt"), at("params"), at("winput.npy"), out),
                   1);
  assert_error_line("model.txt:2", "3 features", "(2,)", NULL);
  assert_int_equal(cli("jacobian --model '%s' --params '%s' --input '%s' "
                       "--out '%s'",
                       at("model.txt"), at("wparams"), at("input.npy"), out),
                   1);
  assert_error_line("0.weight", NULL);
  /* non-finite input */
  cpk_tensor *x = read_npy(at("input.npy"));
  cpk_tensor_set(x, 2, NAN);
  write_npy(at("nan.npy"), x);
  assert_int_equal(cli("jacobian --model '%s' --params '%s' --input '%s' "
                       "--out '%s'",
                       at("model.txt"), at("params"), at("nan.npy"), out),
                   1);
  assert_error_line("input", NULL);
  /* batch norm on batch statistics has no per-sample Jacobian */
  write_text(at("bn.txt"),
             "batchnorm1d 3 affine=false track_running_stats=false\n");
  mkdir(at("noparams"), 0777);
  assert_int_equal(cli("jacobian --model '%s' --params '%s' --input '%s' "
                       "--out '%s'",
                       at("bn.txt"), at("noparams"), at("input.npy"), out),
                   1);
  assert_error_line("bn.txt:1", "track_running_stats=false", NULL);
  assert_nothing_written(out);
}

/* ----------------------------------------------------------------- propagate
 */

static void check_sigma_formula(const char *dir, const char *sigma_file,
                                int per_sample) {
  char path[600];
  snprintf(path, sizeof path, "%s/jacobian.npy", at("pj"));
  cpk_tensor *jac = read_npy(path);
  cpk_tensor *s = read_npy(at(sigma_file));
  snprintf(path, sizeof path, "%s/sigma.npy", at(dir));
  cpk_tensor *sd = read_npy(path);
  snprintf(path, sizeof path, "%s/covariance.npy", at(dir));
  cpk_tensor *cov = read_npy(path);
  assert_int_equal(sd->ndim, 2);
  assert_int_equal(sd->shape[0], NS);
  assert_int_equal(sd->shape[1], 2);
  assert_int_equal(cov->ndim, 3);
  assert_int_equal(cov->shape[1], 2);
  assert_int_equal(cov->shape[2], 2);
  double want_sd[NS * 2], want_cov[NS * 4];
  for (int n = 0; n < NS; n++)
    for (int o = 0; o < 2; o++) {
      for (int p = 0; p < 2; p++) {
        double c = 0.0;
        for (int i = 0; i < 3; i++) {
          double si = cpk_tensor_get(s, (per_sample ? n * 3 : 0) + i);
          c += cpk_tensor_get(jac, (n * 2 + o) * 3 + i) *
               cpk_tensor_get(jac, (n * 2 + p) * 3 + i) * si * si;
        }
        want_cov[(n * 2 + o) * 2 + p] = c;
      }
      want_sd[n * 2 + o] = sqrt(want_cov[(n * 2 + o) * 2 + o]);
    }
  double got[NS * 4];
  for (int i = 0; i < NS * 2; i++)
    got[i] = cpk_tensor_get(sd, i);
  tu_assert_close_array(got, want_sd, NS * 2, 1e-12, 0.0,
                        "sigma = sqrt(sum_i (J_oi sigma_i)^2)");
  for (int i = 0; i < NS * 4; i++)
    got[i] = cpk_tensor_get(cov, i);
  tu_assert_close_array(got, want_cov, NS * 4, 1e-12, 0.0,
                        "covariance = J diag(sigma^2) J^T");
  cpk_tensor_free(jac);
  cpk_tensor_free(s);
  cpk_tensor_free(sd);
  cpk_tensor_free(cov);
}

static void test_propagate(void **state) {
  (void)state;
  assert_int_equal(cli(JAC_ARGS " --out '%s' --dtype float64", MODEL, at("pj")),
                   0);
  /* shared sigma: three files, no Monte Carlo */
  assert_int_equal(cli(PROP_ARGS " --sigma '%s' --out '%s' --dtype float64",
                       MODEL, at("sigma.npy"), at("p1")),
                   0);
  assert_int_equal(tu_count_entries(at("p1")), 3);
  check_sigma_formula("p1", "sigma.npy", 0);
  cpk_tensor *y = read_npy(at("p1/output.npy"));
  assert_int_equal(y->dtype, CPK_F64);
  assert_int_equal(y->shape[0], NS);
  assert_int_equal(y->shape[1], 2);
  cpk_tensor_free(y);
  /* per-sample sigma (float32 file), into a nested new directory */
  assert_int_equal(cli(PROP_ARGS " --sigma '%s' --out '%s' --dtype float64",
                       MODEL, at("sigma_n.npy"), at("p2/deeper")),
                   0);
  check_sigma_formula("p2/deeper", "sigma_n.npy", 1);
  /* Monte Carlo: five files, reproducible by seed, close to first order */
  assert_int_equal(cli(PROP_ARGS " --sigma '%s' --out '%s' --samples 20000 "
                                 "--dtype float64 --seed 7",
                       MODEL, at("sigma.npy"), at("p3")),
                   0);
  assert_int_equal(tu_count_entries(at("p3")), 5);
  assert_int_equal(cli(PROP_ARGS " --sigma '%s' --out '%s' --samples=20000 "
                                 "--dtype float64 --seed 7",
                       MODEL, at("sigma.npy"), at("p4")),
                   0);
  assert_int_equal(cli(PROP_ARGS " --sigma '%s' --out '%s' --samples 20000 "
                                 "--dtype float64 --seed 8",
                       MODEL, at("sigma.npy"), at("p5")),
                   0);
  cpk_tensor *ms3 = read_npy(at("p3/mc_sigma.npy"));
  cpk_tensor *ms4 = read_npy(at("p4/mc_sigma.npy"));
  cpk_tensor *ms5 = read_npy(at("p5/mc_sigma.npy"));
  cpk_tensor *mm3 = read_npy(at("p3/mc_mean.npy"));
  cpk_tensor *sd = read_npy(at("p3/sigma.npy"));
  cpk_tensor *out = read_npy(at("p3/output.npy"));
  tu_assert_close(ms4, ms3, 0.0, 0.0, "same seed");
  assert_true(cpk_tensor_get(ms5, 0) != cpk_tensor_get(ms3, 0));
  /* the sigmas are small against tanh's curvature: first order holds to a
   * few percent, the mean to a fraction of sigma */
  tu_assert_close(ms3, sd, 0.05, 0.0, "mc_sigma vs sigma");
  tu_assert_close(mm3, out, 0.0, 0.3 * cpk_tensor_get(sd, 0) + 0.05,
                  "mc_mean vs output");
  cpk_tensor_free(ms3);
  cpk_tensor_free(ms4);
  cpk_tensor_free(ms5);
  cpk_tensor_free(mm3);
  cpk_tensor_free(sd);
  cpk_tensor_free(out);
  /* ignored options, float32 outputs */
  assert_int_equal(cli(PROP_ARGS " --sigma '%s' --out '%s' --target nowhere "
                                 "--loss bce_with_logits --mc-samples 2",
                       MODEL, at("sigma.npy"), at("p6")),
                   0);
  cpk_tensor *c32 = read_npy(at("p6/covariance.npy"));
  assert_int_equal(c32->dtype, CPK_F32);
  cpk_tensor_free(c32);
}

static void test_propagate_errors(void **state) {
  (void)state;
  char out[512];
  snprintf(out, sizeof out, "%s", at("perr"));
  /* usage: exit 2 */
  assert_int_equal(cli(PROP_ARGS " --out '%s'", MODEL, out), 2);
  assert_error_line("missing --sigma", NULL);
  assert_int_equal(cli(PROP_ARGS " --out '%s' --sigma '%s' --samples 1", MODEL,
                       out, at("sigma.npy")),
                   2);
  assert_error_line("--samples", "at least 2", NULL);
  assert_int_equal(cli(PROP_ARGS " --out '%s' --sigma '%s' --samples many",
                       MODEL, out, at("sigma.npy")),
                   2);
  assert_error_line("--samples", "many", NULL);
  assert_int_equal(cli(PROP_ARGS " --out '%s' --sigma '%s' --samples -4", MODEL,
                       out, at("sigma.npy")),
                   2);
  assert_int_equal(cli(PROP_ARGS " --out '%s' --sigma '%s' --mode forward",
                       MODEL, out, at("sigma.npy")),
                   2);
  assert_error_line("unknown option '--mode'", NULL);
  assert_int_equal(cli(PROP_ARGS " --out '%s' --sigma", MODEL, out), 2);
  assert_error_line("--sigma", "needs a value", NULL);
  assert_nothing_written(out);
  /* sigma: exit 1, naming the file and the array */
  int64_t s2 = 2, s3 = 3;
  write_npy(at("short.npy"), tu_random(CPK_F64, 1, &s2, 0.1, 0.2, 1));
  assert_int_equal(
      cli(PROP_ARGS " --out '%s' --sigma '%s'", MODEL, out, at("short.npy")),
      1);
  assert_error_line("short.npy", "sigma", "(3,)", "(5, 3)", "got (2,)", NULL);
  cpk_tensor *neg = tu_random(CPK_F64, 1, &s3, 0.1, 0.2, 1);
  cpk_tensor_set(neg, 2, -1.0);
  write_npy(at("neg.npy"), neg);
  assert_int_equal(cli(PROP_ARGS " --out '%s' --sigma '%s' --samples 10", MODEL,
                       out, at("neg.npy")),
                   1);
  assert_error_line("neg.npy", "sigma", "negative", NULL);
  cpk_tensor *inf = tu_random(CPK_F32, 1, &s3, 0.1, 0.2, 1);
  cpk_tensor_set(inf, 0, INFINITY);
  write_npy(at("inf.npy"), inf);
  assert_int_equal(
      cli(PROP_ARGS " --out '%s' --sigma '%s'", MODEL, out, at("inf.npy")), 1);
  assert_error_line("inf.npy", "sigma", NULL);
  assert_int_equal(
      cli(PROP_ARGS " --out '%s' --sigma '%s'", MODEL, out, at("absent.npy")),
      1);
  assert_error_line("absent.npy", NULL);
  write_text(at("garbage.npy"), "not an npy file");
  assert_int_equal(
      cli(PROP_ARGS " --out '%s' --sigma '%s'", MODEL, out, at("garbage.npy")),
      1);
  assert_error_line("garbage.npy", NULL);
  assert_nothing_written(out);
  /* an output directory that cannot be made */
  write_text(at("afile"), "x");
  assert_int_equal(cli(PROP_ARGS " --out '%s/sub' --sigma '%s'", MODEL,
                       at("afile"), at("sigma.npy")),
                   1);
  assert_error_line("afile", NULL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_jacobian_modes, setup_tmp,
                                      teardown_tmp),
      cmocka_unit_test_setup_teardown(test_jacobian_ignored_options, setup_tmp,
                                      teardown_tmp),
      cmocka_unit_test_setup_teardown(test_jacobian_errors, setup_tmp,
                                      teardown_tmp),
      cmocka_unit_test_setup_teardown(test_propagate, setup_tmp, teardown_tmp),
      cmocka_unit_test_setup_teardown(test_propagate_errors, setup_tmp,
                                      teardown_tmp),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
