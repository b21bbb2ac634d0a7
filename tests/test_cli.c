/*
 * test_cli.c: the curvpack program end to end (contract.md): `compute` on
 * every PyTorch fixture case, --repeat and timing.json, `init`, --help and
 * --version, exit codes, the one-line error messages, and that a failed run
 * writes nothing.
 *
 * The program is CPK_TEST_BUILDDIR/curvpack; fixtures are read from
 * CPK_TEST_SRCDIR/tests/fixtures; everything written goes to a fresh
 * temporary directory per test, removed afterwards.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "curvpack.h"
#include "testutil.h"

#define BIN CPK_TEST_BUILDDIR "/curvpack"
#define FIXTURES CPK_TEST_SRCDIR "/tests/fixtures"

/* The case most error tests start from: cross_entropy, float64, input
 * (4, 4), 3 classes, parameters 0, 2, 5 (no bias), 8 and 11. */
#define BASE_CASE "deep_exp_log_ce_mean_f64"

static char tmp[256]; /* this test's temporary directory */

static int setup_tmp(void **state) {
  (void)state;
  snprintf(tmp, sizeof tmp, "%s", tu_tempdir());
  return 0;
}

static int teardown_tmp(void **state) {
  (void)state;
  tu_rmtree(tmp);
  return 0;
}

/* ------------------------------------------------------------------ helpers */

static char errbuf[8192]; /* stderr of the last run */

/* Run `curvpack ARGS` (printf-style); stdout is discarded unless the args
 * redirect it. Returns the exit status; stderr is in errbuf. */
static int cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli(const char *fmt, ...) {
  char args[8192], cmd[9000];
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
  if (getenv("CPK_TEST_VERBOSE") != NULL) /* show every run's stderr */
    print_message("exit %d: %s", rc, errbuf[0] ? errbuf : "(no stderr)\n");
  return rc;
}

/* Run a shell command that must succeed (cp, ...). */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...) {
  char cmd[4096], err[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(cmd, sizeof cmd, fmt, ap);
  va_end(ap);
  if (tu_run(cmd, err, sizeof err) != 0) {
    print_error("command failed: %s\n%s\n", cmd, err);
    fail();
  }
}

static void assert_contains(const char *haystack, const char *needle) {
  if (strstr(haystack, needle) == NULL) {
    print_error("expected \"%s\" in:\n%s\n", needle, haystack);
    fail();
  }
}

/* stderr (errbuf) is exactly one line "curvpack: error: ..." containing
 * each of the NULL-terminated needles. */
static void assert_error_line(const char *needle, ...) {
  const char *prefix = "curvpack: error: ";
  size_t len = strlen(errbuf);
  const char *nl = strchr(errbuf, '\n');
  if (strncmp(errbuf, prefix, strlen(prefix)) != 0 || nl == NULL ||
      nl != errbuf + len - 1) {
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

/* A failed run left `out` absent or empty. */
static void assert_nothing_written(const char *out) {
  int n = tu_count_entries(out);
  if (n > 0) {
    print_error("a failed run wrote %d entries in %s\n", n, out);
    sh("ls -la '%s' >&2", out);
    fail();
  }
}

static const char *fixture(const char *name) {
  static char bufs[4][1024];
  static int next;
  char *b = bufs[next++ % 4];
  snprintf(b, sizeof bufs[0], "%s/%s", FIXTURES, name);
  return b;
}

/* Contents of a small text file (static buffer), "" if absent. */
static const char *slurp(const char *path) {
  static char buf[8192];
  FILE *f = fopen(path, "rb");
  size_t n = 0;
  if (f != NULL) {
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
  }
  buf[n] = '\0';
  return buf;
}

/* The extra arguments of a case (args.txt, one line). */
static void case_args(const char *dir, char *args, size_t len) {
  char path[1024];
  snprintf(path, sizeof path, "%s/args.txt", dir);
  const char *text = slurp(path);
  size_t n = strcspn(text, "\r\n");
  assert_true(n < len);
  memcpy(args, text, n);
  args[n] = '\0';
  assert_true(args[0] == '-');
}

/* Run `compute` on the case in `dir` (a fixture folder or a copy) writing to
 * `out`, with `extra` appended to the case's own arguments. */
static int compute(const char *dir, const char *out, const char *extra) {
  char args[512];
  case_args(dir, args, sizeof args);
  return cli("compute --model '%s/model.txt' --params '%s/params' "
             "--input '%s/input.npy' --target '%s/target.npy' --out '%s' "
             "%s %s",
             dir, dir, dir, dir, out, args, extra);
}

/* Copy fixture case `name` to tmp/NAME; returns the copy's path. */
static const char *copy_case(const char *name) {
  static char bufs[2][512];
  static int next;
  char *b = bufs[next++ % 2];
  snprintf(b, sizeof bufs[0], "%s/%s", tmp, name);
  /* (the source tree may be read-only, as in make distcheck) */
  sh("rm -rf '%s' && cp -r '%s' '%s' && chmod -R u+w '%s'", b, fixture(name),
     b, b);
  return b;
}

static const char *path_in(const char *dir, const char *rel) {
  static char bufs[4][1024];
  static int next;
  char *b = bufs[next++ % 4];
  assert_true(strlen(dir) + strlen(rel) + 2 <= sizeof bufs[0]);
  strcpy(b, dir);
  strcat(b, "/");
  strcat(b, rel);
  return b;
}

static void write_npy(const char *path, cpk_tensor *t) {
  tu_ok(cpk_npy_write(path, t));
  cpk_tensor_free(t);
}

static cpk_tensor *read_npy(const char *path) {
  cpk_tensor *t = NULL;
  int rc = cpk_npy_read(path, &t);
  if (rc != CPK_OK) {
    print_error("%s: %s\n", path, cpk_last_error());
    fail();
  }
  return t;
}

/* Sorted names in a directory; returns how many (at most max). */
static int list_dir(const char *dir, char names[][128], int max) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    assert_true(n < max);
    snprintf(names[n++], 128, "%.127s", e->d_name);
  }
  closedir(d);
  qsort(names, (size_t)n, 128, (int (*)(const void *, const void *))strcmp);
  return n;
}

/* Every file of `expected` is in `out` with its shape, dtype and values
 * (relative to the largest magnitude of the expected array). Returns how
 * many files were compared. */
static int compare_outputs(const char *expected_dir, const char *out_dir,
                           const char *label) {
  char names[64][128], expected[1024], out[1024];
  snprintf(expected, sizeof expected, "%s", expected_dir);
  snprintf(out, sizeof out, "%s", out_dir);
  int n = list_dir(expected, names, 64);
  assert_true(n >= 3);
  for (int i = 0; i < n; i++) {
    char what[512];
    snprintf(what, sizeof what, "%.200s: %.127s", label, names[i]);
    cpk_tensor *want = read_npy(path_in(expected, names[i]));
    struct stat st;
    if (stat(path_in(out, names[i]), &st) != 0) {
      print_error("%s is missing\n", what);
      fail();
    }
    cpk_tensor *got = read_npy(path_in(out, names[i]));
    if (got->dtype != want->dtype) {
      print_error("%s: dtype %s, expected %s\n", what,
                  cpk_dtype_name(got->dtype), cpk_dtype_name(want->dtype));
      fail();
    }
    assert_int_equal(got->ndim, want->ndim);
    double rtol = want->dtype == CPK_F64 ? 1e-10 : 1e-5;
    tu_assert_close(got, want, rtol, 0.0, what);
    cpk_tensor_free(got);
    cpk_tensor_free(want);
  }
  return n;
}

/* `out` holds exactly the files of `expected` plus the `extra` names
 * (NULL-terminated): nothing else, no temporary left. */
static void assert_only(const char *out, const char *expected, ...) {
  char got[64][128], want[64][128];
  int ng = list_dir(out, got, 64), nw = list_dir(expected, want, 64);
  va_list ap;
  va_start(ap, expected);
  for (const char *s = va_arg(ap, const char *); s != NULL;
       s = va_arg(ap, const char *))
    snprintf(want[nw++], 128, "%s", s);
  va_end(ap);
  for (int i = 0; i < ng; i++) {
    int found = 0;
    for (int j = 0; j < nw && !found; j++)
      found = strcmp(got[i], want[j]) == 0;
    if (!found) {
      print_error("%s: unexpected file '%s'\n", out, got[i]);
      fail();
    }
  }
  assert_int_equal(ng, nw);
}

/* ------------------------------------------------------ compute vs PyTorch */

static void test_fixture_cases(void **state) {
  (void)state;
  FILE *f = fopen(fixture("cases.txt"), "r");
  assert_non_null(f);
  char line[256];
  int cases = 0, files = 0;
  while (fgets(line, sizeof line, f) != NULL) {
    line[strcspn(line, "\r\n")] = '\0';
    if (line[0] == '\0' || line[0] == '#')
      continue;
    char dir[1024], out[512], expected[1200];
    assert_true(strlen(line) < 200);
    snprintf(dir, sizeof dir, "%s", fixture(line));
    snprintf(out, sizeof out, "%s/out-%.200s", tmp, line);
    snprintf(expected, sizeof expected, "%s/expected", dir);
    int rc = compute(dir, out, "");
    if (rc != 0) {
      print_error("case %s: exit %d\n%s", line, rc, errbuf);
      fail();
    }
    assert_string_equal(errbuf, "");
    files += compare_outputs(expected, out, line);
    assert_only(out, expected, NULL);
    /* loss, output and one grad per parameter: the expected files are
     * exactly those */
    char names[64][128];
    int n = list_dir(expected, names, 64);
    for (int i = 0; i < n; i++)
      assert_true(strcmp(names[i], "loss.npy") == 0 ||
                  strcmp(names[i], "output.npy") == 0 ||
                  strstr(names[i], ".grad.npy") != NULL);
    cases++;
  }
  fclose(f);
  assert_int_equal(cases, 12);
  assert_true(files > 12 * 3);
}

/* The loss is 0-d and the output (N, C), as PyTorch writes them. */
static void test_output_shapes(void **state) {
  (void)state;
  char out[512];
  snprintf(out, sizeof out, "%s/out", tmp);
  assert_int_equal(compute(fixture(BASE_CASE), out, ""), 0);
  cpk_tensor *loss = read_npy(path_in(out, "loss.npy"));
  assert_int_equal(loss->ndim, 0);
  assert_int_equal(loss->dtype, CPK_F64);
  cpk_tensor_free(loss);
  cpk_tensor *o = read_npy(path_in(out, "output.npy"));
  assert_int_equal(o->ndim, 2);
  assert_int_equal(o->shape[0], 4);
  assert_int_equal(o->shape[1], 3);
  cpk_tensor_free(o);
  cpk_tensor *g = read_npy(path_in(out, "0.weight.grad.npy"));
  assert_int_equal(g->ndim, 2);
  assert_int_equal(g->shape[0], 6);
  assert_int_equal(g->shape[1], 4);
  cpk_tensor_free(g);

  /* --dtype float32 on float64 files: outputs in float32, same values */
  char out32[512];
  snprintf(out32, sizeof out32, "%s/out32", tmp);
  assert_int_equal(compute(fixture(BASE_CASE), out32, "--dtype float32"), 0);
  cpk_tensor *a = read_npy(path_in(out32, "loss.npy"));
  cpk_tensor *b = read_npy(path_in(out, "loss.npy"));
  assert_int_equal(a->dtype, CPK_F32);
  tu_assert_close(a, b, 1e-5, 0.0, "float32 loss");
  cpk_tensor_free(a);
  cpk_tensor_free(b);
  a = read_npy(path_in(out32, "2.weight.grad.npy"));
  b = read_npy(path_in(out, "2.weight.grad.npy"));
  assert_int_equal(a->dtype, CPK_F32);
  tu_assert_close(a, b, 1e-4, 0.0, "float32 gradient");
  cpk_tensor_free(a);
  cpk_tensor_free(b);

  /* options written as --name=value, and a nested --out created */
  char nested[512];
  snprintf(nested, sizeof nested, "%s/a/b/c", tmp);
  const char *d = fixture(BASE_CASE);
  assert_int_equal(cli("compute --model='%s/model.txt' --params='%s/params' "
                       "--input='%s/input.npy' --target='%s/target.npy' "
                       "--out='%s' --dtype=float64 --threads=1 --seed=5",
                       d, d, d, d, nested),
                   0);
  compare_outputs(path_in(d, "expected"), nested, "--name=value");
}

/* --------------------------------------------------------------- timing */

static double json_number(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(json, pat);
  if (p == NULL) {
    print_error("timing.json has no key %s:\n%s\n", key, json);
    fail();
  }
  double v = NAN;
  assert_int_equal(sscanf(p + strlen(pat), " %lf", &v), 1);
  return v;
}

static void test_repeat_timing(void **state) {
  (void)state;
  char out[512];
  const char *c = "flat_selu_logsig_ce_sum_f64";
  snprintf(out, sizeof out, "%s/out", tmp);
  assert_int_equal(compute(fixture(c), out, "--repeat 3"), 0);
  const char *json = slurp(path_in(out, "timing.json"));
  const char *open = strchr(json, '{'), *close = strrchr(json, '}');
  assert_non_null(open);
  assert_non_null(close);
  assert_true(open < close);
  assert_true(json_number(json, "runs") == 3.0);
  double med = json_number(json, "median_s"), lo = json_number(json, "min_s"),
         hi = json_number(json, "max_s"),
         peak = json_number(json, "peak_bytes");
  assert_true(lo > 0.0);
  assert_true(lo <= med);
  assert_true(med <= hi);
  assert_true(hi < 10.0);
  assert_true(peak > 0.0);
  assert_true(peak == floor(peak));
  /* the results of the repeated passes are still PyTorch's */
  compare_outputs(path_in(fixture(c), "expected"), out, "--repeat 3");
  assert_only(out, path_in(fixture(c), "expected"), "timing.json", NULL);

  /* without --repeat, no timing.json */
  char out2[512];
  snprintf(out2, sizeof out2, "%s/out2", tmp);
  assert_int_equal(compute(fixture(c), out2, ""), 0);
  assert_int_equal(tu_count_entries(out2),
                   tu_count_entries(path_in(fixture(c), "expected")));

  /* --repeat must be a non-negative integer */
  char out3[512];
  snprintf(out3, sizeof out3, "%s/out3", tmp);
  assert_int_equal(compute(fixture(c), out3, "--repeat x"), 2);
  assert_error_line("--repeat", NULL);
  assert_int_equal(compute(fixture(c), out3, "--repeat -1"), 2);
  assert_error_line("--repeat", NULL);
  assert_nothing_written(out3);
}

/* ------------------------------------------------------- help and version */

static void test_version_and_help(void **state) {
  (void)state;
  char out[512];
  snprintf(out, sizeof out, "%s/stdout.txt", tmp);

  assert_int_equal(cli("--version > '%s'", out), 0);
  assert_string_equal(slurp(out), "curvpack 0.1.0\n");
  assert_string_equal(errbuf, "");

  assert_int_equal(cli("--help > '%s'", out), 0);
  assert_contains(slurp(out), "usage: curvpack");
  assert_contains(slurp(out), "compute");
  assert_contains(slurp(out), "init");

  assert_int_equal(cli("compute --help > '%s'", out), 0);
  assert_contains(slurp(out), "usage: curvpack compute");
  static const char *const compute_opts[] = {
      "--model", "--params", "--input",  "--target", "--out",
      "--loss",  "--reduction", "--dtype", "--threads", "--device",
      "--seed",  "--mc-samples", "--ext", "--repeat", "--help"};
  for (size_t i = 0; i < sizeof compute_opts / sizeof compute_opts[0]; i++)
    assert_contains(slurp(out), compute_opts[i]);

  /* --help wins over missing options */
  assert_int_equal(cli("init --help > '%s'", out), 0);
  assert_contains(slurp(out), "usage: curvpack init");
  assert_contains(slurp(out), "--input-shape");
  assert_contains(slurp(out), "--seed");
  assert_string_equal(errbuf, "");

  /* no arguments: usage on stderr, exit 2 */
  assert_int_equal(cli("> '%s'", out), 2);
  assert_contains(errbuf, "usage: curvpack");
  assert_string_equal(slurp(out), "");
}

/* ----------------------------------------------------------- usage errors */

static void test_usage_errors(void **state) {
  (void)state;
  const char *d = fixture(BASE_CASE);
  char out[512], common[4096];
  snprintf(out, sizeof out, "%s/out", tmp);
  snprintf(common, sizeof common,
           "--model '%s/model.txt' --params '%s/params' --input "
           "'%s/input.npy' --target '%s/target.npy' --out '%s'",
           d, d, d, d, out);

  assert_int_equal(cli("frobnicate %s", common), 2);
  assert_error_line("unknown command", "frobnicate", NULL);

  assert_int_equal(cli("compute %s --bogus 1", common), 2);
  assert_error_line("unknown option", "--bogus", NULL);

  assert_int_equal(cli("compute %s --flag", common), 2);
  assert_error_line("--flag", NULL);

  assert_int_equal(cli("compute %s stray", common), 2);
  assert_error_line("stray", NULL);

  assert_int_equal(cli("compute %s --loss", common), 2);
  assert_error_line("--loss", "needs a value", NULL);

  /* a value that is the next option is missing, not a value */
  assert_int_equal(cli("compute --model --params '%s/params' --input "
                       "'%s/input.npy' --target '%s/target.npy' --out '%s'",
                       d, d, d, out),
                   2);
  assert_error_line("--model", NULL);

  assert_int_equal(cli("compute --params '%s/params' --input '%s/input.npy' "
                       "--target '%s/target.npy' --out '%s'",
                       d, d, d, out),
                   2);
  assert_error_line("missing --model", NULL);

  assert_int_equal(cli("compute --model '%s/model.txt' --params '%s/params' "
                       "--input '%s/input.npy' --target '%s/target.npy'",
                       d, d, d, d),
                   2);
  assert_error_line("missing --out", NULL);

  assert_int_equal(cli("compute %s --model ''", common), 2);
  assert_error_line("--model", NULL);

  assert_int_equal(cli("compute %s --loss hinge", common), 2);
  assert_error_line("unknown loss", "hinge", NULL);

  assert_int_equal(cli("compute %s --reduction avg", common), 2);
  assert_error_line("reduction", "avg", NULL);

  assert_int_equal(cli("compute %s --dtype float16", common), 2);
  assert_error_line("--dtype", "float16", NULL);

  assert_int_equal(cli("compute %s --device tpu", common), 2);
  assert_error_line("--device", "tpu", NULL);

  assert_int_equal(cli("compute %s --threads 0", common), 2);
  assert_error_line("--threads", NULL);

  assert_int_equal(cli("compute %s --seed abc", common), 2);
  assert_error_line("--seed", NULL);

  assert_int_equal(cli("compute %s --mc-samples 0", common), 2);
  assert_error_line("--mc-samples", NULL);

  assert_int_equal(cli("compute %s --ext batch_grad_typo", common), 2);
  assert_error_line("unknown extension", "batch_grad_typo", NULL);

  assert_int_equal(cli("compute %s --ext ,,hessian_diag", common), 2);
  assert_error_line("unknown extension", "hessian_diag", NULL);

  /* an unknown layer in the model file is a usage error naming file:line */
  char model[512], where[600];
  snprintf(model, sizeof model, "%s/bad-model.txt", tmp);
  FILE *f = fopen(model, "w");
  assert_non_null(f);
  fputs("# bad\nlinear 4 6\nsoftmax\n", f);
  fclose(f);
  assert_int_equal(cli("compute %s --model '%s'", common, model), 2);
  snprintf(where, sizeof where, "%s:3", model);
  assert_error_line(where, "unknown layer", "softmax", NULL);

  /* init's usage errors */
  assert_int_equal(cli("init --model '%s/model.txt' --out '%s'", d, out), 2);
  assert_error_line("missing --input-shape", NULL);
  assert_int_equal(
      cli("init --model '%s/model.txt' --input-shape 4,x --out '%s'", d, out),
      2);
  assert_error_line("--input-shape", "4,x", NULL);
  assert_int_equal(
      cli("init --model '%s/model.txt' --input-shape 4, --out '%s'", d, out),
      2);
  assert_error_line("--input-shape", NULL);
  assert_int_equal(
      cli("init --model '%s/model.txt' --input-shape 0 --out '%s'", d, out), 2);
  assert_error_line("--input-shape", NULL);
  assert_int_equal(cli("init --model '%s/model.txt' --input-shape 4 --out "
                       "'%s' --dtype half",
                       d, out),
                   2);
  assert_error_line("--dtype", "half", NULL);
  assert_int_equal(cli("init --model '%s/model.txt' --input-shape 4 --out "
                       "'%s' --loss mse",
                       d, out),
                   2);
  assert_error_line("--loss", NULL);

  assert_nothing_written(out);
}

/* ------------------------------------------------------- other failures */

/* Run compute on the case in `dir` (with `extra`); it must fail with exit
 * `status`, one error line holding the needles, and write nothing. */
static void fails(const char *dir, const char *extra, int status,
                  const char *needle, ...) {
  char out[512];
  snprintf(out, sizeof out, "%s/out-failed", tmp);
  int rc = compute(dir, out, extra);
  if (rc != status) {
    print_error("exit %d, expected %d; stderr:\n%s\n", rc, status, errbuf);
    fail();
  }
  const char *prefix = "curvpack: error: ";
  size_t len = strlen(errbuf);
  if (strncmp(errbuf, prefix, strlen(prefix)) != 0 ||
      strchr(errbuf, '\n') != errbuf + len - 1) {
    print_error("expected one line \"%s...\" on stderr, got:\n%s\n", prefix,
                errbuf);
    fail();
  }
  va_list ap;
  va_start(ap, needle);
  for (const char *s = needle; s != NULL; s = va_arg(ap, const char *))
    assert_contains(errbuf, s);
  va_end(ap);
  assert_nothing_written(out);
  tu_rmtree(out);
}

static void test_not_implemented(void **state) {
  (void)state;
  const char *d = fixture(BASE_CASE);
  /* The contract's extensions, in the order later releases bring them:
   * test with the last that this build does not implement yet. */
  static const char *const contract_ext[] = {
      "batch_grad",     "batch_l2_grad",        "sum_grad_squared",
      "variance",       "batch_dot_grad",       "diag_ggn_exact",
      "diag_ggn_mc",    "batch_diag_ggn_exact", "batch_diag_ggn_mc",
      "diag_hessian",   "batch_diag_hessian",   "sqrt_ggn_exact",
      "sqrt_ggn_mc",    "kflr",                 "kfra",
      "kfac"};
  const char *missing = NULL;
  for (size_t i = 0; i < sizeof contract_ext / sizeof contract_ext[0]; i++) {
    assert_true(cpk_extension_known(contract_ext[i]));
    if (!cpk_extension_available(contract_ext[i]))
      missing = contract_ext[i];
  }
  if (missing != NULL) {
    char extra[128], quoted[128];
    snprintf(extra, sizeof extra, "--ext %s", missing);
    snprintf(quoted, sizeof quoted, "'%s'", missing);
    fails(d, extra, 1, quoted, "not implemented yet", NULL);
    /* an unknown name in the same list is the usage error */
    snprintf(extra, sizeof extra, "--ext %s,batch_grad_typo", missing);
    fails(d, extra, 2, "batch_grad_typo", NULL);
  } else {
    print_message("# every extension is implemented; nothing to refuse\n");
  }
  assert_false(cpk_extension_known("batch_grad_typo"));
  /* every command of the contract answers --help, or, when a later release
   * brings it, says so (exit 1, one error line naming it) */
  static const char *const commands[] = {
      "compute", "init", "hvp", "ggnvp", "eigen", "trace",
      "density", "jacobian", "propagate", "train"};
  for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
    char line[64];
    snprintf(line, sizeof line, "%s --help", commands[i]);
    int rc = cli(line);
    if (rc != 0) {
      assert_int_equal(rc, 1);
      assert_error_line(commands[i], "not implemented yet", NULL);
    }
  }
}

static void test_cuda_device(void **state) {
  (void)state;
  cpk_context *ctx = NULL;
  cpk_context_options o = {0};
  o.device = CPK_DEVICE_CUDA;
  int rc = cpk_context_new(&ctx, &o);
  cpk_context_free(ctx);
  if (rc == CPK_OK) {
    print_message("# a CUDA device is usable here; not testing its absence\n");
    return;
  }
  assert_int_equal(rc, CPK_ENODEV);
  fails(fixture(BASE_CASE), "--device cuda", 1, "CUDA", NULL);
}

static void test_bad_params(void **state) {
  (void)state;
  const char *d = copy_case(BASE_CASE);
  char p[1024];

  /* a missing parameter file names it */
  snprintf(p, sizeof p, "%s/params/0.weight.npy", d);
  assert_int_equal(remove(p), 0);
  fails(d, "", 1, "0.weight.npy", NULL);

  /* a parameter of the wrong shape names expected and found */
  int64_t bad_shape[2] = {3, 4};
  write_npy(p, tu_random(CPK_F64, 2, bad_shape, -1, 1, 1));
  fails(d, "", 1, "0.weight", "(6, 4)", "(3, 4)", NULL);

  /* the transposed layout is also wrong (PyTorch's is (OUT, IN)) */
  int64_t transposed[2] = {4, 6};
  write_npy(p, tu_random(CPK_F64, 2, transposed, -1, 1, 1));
  fails(d, "", 1, "0.weight", "(6, 4)", "(4, 6)", NULL);

  /* back to a good one: the run works again */
  int64_t good[2] = {6, 4};
  write_npy(p, tu_random(CPK_F64, 2, good, -1, 1, 1));
  char out[512];
  snprintf(out, sizeof out, "%s/ok", tmp);
  assert_int_equal(compute(d, out, ""), 0);

  /* a non-finite parameter names the array */
  snprintf(p, sizeof p, "%s/params/8.bias.npy", d);
  cpk_tensor *b = read_npy(p);
  cpk_tensor_set(b, 2, NAN);
  write_npy(p, b);
  fails(d, "", 1, "8.bias", NULL);
  b = read_npy(path_in(fixture(BASE_CASE), "params/8.bias.npy"));
  cpk_tensor_set(b, 0, -INFINITY);
  write_npy(p, b);
  fails(d, "--dtype float32", 1, "8.bias", NULL);

  /* a missing parameters directory */
  fails(d, "--params /nonexistent-cpk-dir", 1, "0.weight.npy", NULL);
}

static void test_bad_data(void **state) {
  (void)state;
  const char *d = copy_case(BASE_CASE);
  char input[1024], target[1024];
  snprintf(input, sizeof input, "%s/input.npy", d);
  snprintf(target, sizeof target, "%s/target.npy", d);
  cpk_tensor *good_in = read_npy(path_in(fixture(BASE_CASE), "input.npy"));
  cpk_tensor *good_t = read_npy(path_in(fixture(BASE_CASE), "target.npy"));
  cpk_tensor *t;

  /* non-finite input */
  tu_ok(cpk_tensor_convert(&t, good_in, CPK_F64));
  cpk_tensor_set(t, 5, NAN);
  write_npy(input, t);
  fails(d, "", 1, "input", "non-finite", NULL);
  tu_ok(cpk_tensor_convert(&t, good_in, CPK_F64));
  cpk_tensor_set(t, 0, INFINITY);
  write_npy(input, t);
  fails(d, "", 1, "input", NULL);
  tu_ok(cpk_npy_write(input, good_in));

  /* input shape not matching the model: 5 features for linear 4 6 */
  int64_t wide[2] = {4, 5};
  write_npy(input, tu_random(CPK_F64, 2, wide, -1, 1, 2));
  fails(d, "", 1, "model.txt:2", "(5,)", NULL);
  /* a single sample without its batch axis */
  int64_t flat[1] = {4};
  write_npy(input, tu_random(CPK_F64, 1, flat, -1, 1, 2));
  fails(d, "", 1, "input", "(4,)", NULL);
  /* integer inputs */
  int64_t ishape[2] = {4, 4};
  cpk_tensor *ints = NULL;
  tu_ok(cpk_tensor_new(&ints, CPK_I64, 2, ishape));
  write_npy(input, ints);
  fails(d, "", 1, "input", "int64", NULL);

  /* a truncated input file names it */
  FILE *f = fopen(path_in(fixture(BASE_CASE), "input.npy"), "rb");
  assert_non_null(f);
  char bytes[4096];
  size_t n = fread(bytes, 1, sizeof bytes, f);
  fclose(f);
  assert_true(n > 128 + 16);
  f = fopen(input, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(bytes, 1, n - 9, f), n - 9);
  fclose(f);
  fails(d, "", 1, "input.npy", NULL);
  /* only the header's first bytes */
  f = fopen(input, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(bytes, 1, 20, f), 20);
  fclose(f);
  fails(d, "", 1, "input.npy", NULL);
  /* missing */
  assert_int_equal(remove(input), 0);
  fails(d, "", 1, "input.npy", NULL);
  tu_ok(cpk_npy_write(input, good_in));

  /* class index out of range, either side */
  int64_t tshape[1] = {4};
  cpk_tensor *cls = NULL;
  tu_ok(cpk_tensor_new(&cls, CPK_I64, 1, tshape));
  cpk_tensor_set(cls, 1, 3); /* 3 classes: 0, 1, 2 */
  write_npy(target, cls);
  fails(d, "", 1, "target", "class index 3", "[0, 3)", NULL);
  tu_ok(cpk_tensor_new(&cls, CPK_I32, 1, tshape));
  cpk_tensor_set(cls, 2, -1);
  write_npy(target, cls);
  fails(d, "", 1, "target", "class index -1", NULL);

  /* target of the wrong shape */
  int64_t long_shape[1] = {5};
  tu_ok(cpk_tensor_new(&cls, CPK_I64, 1, long_shape));
  write_npy(target, cls);
  fails(d, "", 1, "target", "(4,)", "(5,)", NULL);
  /* float targets for cross_entropy */
  write_npy(target, tu_random(CPK_F64, 1, tshape, 0, 1, 3));
  fails(d, "", 1, "target", NULL);
  /* float targets of the wrong shape for mse */
  int64_t mse_bad[2] = {4, 2};
  write_npy(target, tu_random(CPK_F64, 2, mse_bad, 0, 1, 3));
  fails(d, "--loss mse", 1, "target", "(4, 3)", "(4, 2)", NULL);
  /* a missing target file */
  assert_int_equal(remove(target), 0);
  fails(d, "", 1, "target.npy", NULL);
  tu_ok(cpk_npy_write(target, good_t));
  char out[512];
  snprintf(out, sizeof out, "%s/ok", tmp);
  assert_int_equal(compute(d, out, ""), 0);

  /* non-finite float target (mse) */
  const char *m = copy_case("flat_leaky_sig_log_mse_mean_f64");
  snprintf(target, sizeof target, "%s/target.npy", m);
  t = read_npy(target);
  cpk_tensor_set(t, 1, NAN);
  write_npy(target, t);
  fails(m, "", 1, "target", NULL);
  /* and for bce_with_logits */
  const char *bc = copy_case("deep_exp_log_bce_sum_f64");
  snprintf(target, sizeof target, "%s/target.npy", bc);
  t = read_npy(target);
  cpk_tensor_set(t, 3, INFINITY);
  write_npy(target, t);
  fails(bc, "", 1, "target", NULL);

  cpk_tensor_free(good_in);
  cpk_tensor_free(good_t);
}

static void test_bad_model_file(void **state) {
  (void)state;
  const char *d = copy_case(BASE_CASE);
  char model[1024], where[1100];
  snprintf(model, sizeof model, "%s/model.txt", d);

  /* a line error: exit 1, file:line, the problem */
  FILE *f = fopen(model, "w");
  assert_non_null(f);
  fputs("# comment\nlinear 4 6\nrelu\nlinear 6 6 bias=maybe\n", f);
  fclose(f);
  snprintf(where, sizeof where, "%s:4", model);
  fails(d, "", 1, where, "bias='maybe'", NULL);

  /* a layer of a later release (the first of the contract's table that
   * this build refuses) */
  static const char *const later[] = {
      "conv2d 1 2 3",   "conv1d 1 2 3", "maxpool2d 2", "avgpool2d 2",
      "batchnorm1d 4",  "zeropad2d 1",  "adaptive_avgpool2d 2"};
  for (size_t i = 0; i < sizeof later / sizeof later[0]; i++) {
    cpk_model *m = NULL;
    int rc = cpk_model_parse(&m, later[i], "probe");
    cpk_model_free(m);
    if (rc == CPK_OK)
      continue;
    assert_int_equal(rc, CPK_ENOTSUP);
    f = fopen(model, "w");
    assert_non_null(f);
    fprintf(f, "linear 4 6\n%s\n", later[i]);
    fclose(f);
    snprintf(where, sizeof where, "%s:2", model);
    fails(d, "", 1, where, "not supported yet", NULL);
    break;
  }

  /* a model that does not fit the parameters (line 3 is 6 -> 5 here) */
  f = fopen(model, "w");
  assert_non_null(f);
  fputs("linear 4 6\nrelu\nlinear 6 5\n", f);
  fclose(f);
  fails(d, "", 1, "2.weight", NULL);

  /* a missing model file */
  fails(d, "--model /nonexistent-cpk/model.txt", 1,
        "/nonexistent-cpk/model.txt", NULL);
}

/* ----------------------------------------------------------------- init */

static void assert_init_params(const char *dir, cpk_dtype dt) {
  static const struct {
    const char *file;
    int ndim;
    int64_t shape[2];
    double fan_in;
  } want[] = {
      {"1.weight.npy", 2, {5, 8}, 8},
      {"1.bias.npy", 1, {5, 0}, 8},
      {"3.weight.npy", 2, {3, 5}, 5},
  };
  assert_int_equal(tu_count_entries(dir), 3);
  for (size_t i = 0; i < 3; i++) {
    cpk_tensor *t = read_npy(path_in(dir, want[i].file));
    assert_int_equal(t->dtype, dt);
    assert_int_equal(t->ndim, want[i].ndim);
    for (int k = 0; k < want[i].ndim; k++)
      assert_int_equal(t->shape[k], want[i].shape[k]);
    double bound = 1.0 / sqrt(want[i].fan_in), big = 0.0;
    int64_t n = cpk_tensor_numel(t), neg = 0;
    for (int64_t k = 0; k < n; k++) {
      double v = cpk_tensor_get(t, k);
      if (!(fabs(v) <= bound * (1 + 1e-6))) {
        print_error("%s[%lld] = %g is outside +-%g\n", want[i].file,
                    (long long)k, v, bound);
        fail();
      }
      big = fmax(big, fabs(v));
      neg += v < 0;
    }
    /* uniform on (-bound, bound): not all small (all n below c * bound has
     * probability c^n = 1e-6), and for larger tensors not all of one sign
     * (2^(1-n)) */
    if (!(big > pow(1e-6, 1.0 / (double)n) * bound)) {
      print_error("%s: largest magnitude %g of %lld values, bound %g\n",
                  want[i].file, big, (long long)n, bound);
      fail();
    }
    if (n >= 20)
      assert_true(neg > 0 && neg < n);
    cpk_tensor_free(t);
  }
}

static int same_bytes(const char *a, const char *b) {
  char cmd[2200], err[256];
  snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
  return tu_run(cmd, err, sizeof err) == 0;
}

static void test_init(void **state) {
  (void)state;
  char model[512], p3[512], p3b[512], p4[512], p64[512], out[512];
  snprintf(model, sizeof model, "%s/model.txt", tmp);
  FILE *f = fopen(model, "w");
  assert_non_null(f);
  fputs("# init test\nflatten\nlinear 8 5\nrelu\nlinear 5 3 bias=false\n", f);
  fclose(f);
  snprintf(p3, sizeof p3, "%s/p3", tmp);
  snprintf(p3b, sizeof p3b, "%s/p3b", tmp);
  snprintf(p4, sizeof p4, "%s/p4", tmp);
  snprintf(p64, sizeof p64, "%s/p64", tmp);

  assert_int_equal(cli("init --model '%s' --input-shape 2,4 --out '%s' "
                       "--seed 3",
                       model, p3),
                   0);
  assert_string_equal(errbuf, "");
  assert_init_params(p3, CPK_F32);
  assert_int_equal(cli("init --model '%s' --input-shape=2,4 --out '%s' "
                       "--seed=3",
                       model, p3b),
                   0);
  assert_int_equal(cli("init --model '%s' --input-shape 2,4 --out '%s' "
                       "--seed 4",
                       model, p4),
                   0);
  assert_init_params(p4, CPK_F32);
  static const char *const files[] = {"1.weight.npy", "1.bias.npy",
                                      "3.weight.npy"};
  for (int i = 0; i < 3; i++) {
    assert_true(same_bytes(path_in(p3, files[i]), path_in(p3b, files[i])));
    assert_false(same_bytes(path_in(p3, files[i]), path_in(p4, files[i])));
  }
  assert_int_equal(cli("init --model '%s' --input-shape 2,4 --out '%s' "
                       "--seed 3 --dtype float64",
                       model, p64),
                   0);
  assert_init_params(p64, CPK_F64);

  /* compute runs on those parameters */
  char input[512], target[512];
  snprintf(input, sizeof input, "%s/input.npy", tmp);
  snprintf(target, sizeof target, "%s/target.npy", tmp);
  int64_t ishape[3] = {3, 2, 4}, tshape[1] = {3};
  write_npy(input, tu_random(CPK_F32, 3, ishape, -1, 1, 7));
  cpk_tensor *cls = NULL;
  tu_ok(cpk_tensor_new(&cls, CPK_I64, 1, tshape));
  cpk_tensor_set(cls, 0, 2);
  cpk_tensor_set(cls, 2, 1);
  write_npy(target, cls);
  snprintf(out, sizeof out, "%s/out", tmp);
  assert_int_equal(cli("compute --model '%s' --params '%s' --input '%s' "
                       "--target '%s' --out '%s'",
                       model, p3, input, target, out),
                   0);
  assert_int_equal(tu_count_entries(out), 5);
  cpk_tensor *g = read_npy(path_in(out, "1.weight.grad.npy"));
  assert_int_equal(g->dtype, CPK_F32);
  assert_int_equal(g->shape[0], 5);
  assert_int_equal(g->shape[1], 8);
  cpk_tensor_free(g);
  g = read_npy(path_in(out, "3.weight.grad.npy"));
  assert_int_equal(g->shape[0], 3);
  assert_int_equal(g->shape[1], 5);
  cpk_tensor_free(g);
  cpk_tensor *loss = read_npy(path_in(out, "loss.npy"));
  assert_int_equal(loss->ndim, 0);
  double l = cpk_tensor_get(loss, 0);
  /* three classes, small weights: the loss is near log(3) */
  assert_true(isfinite(l) && l > 0.3 && l < 3.0);
  cpk_tensor_free(loss);

  /* the same model for another input shape fails at line 3 */
  char wrong[512], where[600];
  snprintf(wrong, sizeof wrong, "%s/wrong", tmp);
  assert_int_equal(
      cli("init --model '%s' --input-shape 3,4 --out '%s'", model, wrong), 1);
  snprintf(where, sizeof where, "%s:3", model);
  assert_error_line(where, NULL);
  assert_nothing_written(wrong);
  /* a model file error */
  assert_int_equal(cli("init --model '%s/none.txt' --input-shape 3,4 --out "
                       "'%s'",
                       tmp, wrong),
                   1);
  assert_error_line("none.txt", NULL);
  assert_nothing_written(wrong);
}

/* ------------------------------------------------ existing output folder */

static void test_existing_output_directory(void **state) {
  (void)state;
  const char *c = "elu_tanh_exp_ce_sum_f32";
  const char *d = fixture(c);
  char out[512], notes[600];
  snprintf(out, sizeof out, "%s/out", tmp);
  assert_int_equal(mkdir(out, 0777), 0);
  /* an unrelated file, and stale outputs of other values and dtype */
  snprintf(notes, sizeof notes, "%s/notes.txt", out);
  FILE *f = fopen(notes, "w");
  assert_non_null(f);
  fputs("keep me\n", f);
  fclose(f);
  write_npy(path_in(out, "loss.npy"), tu_random(CPK_F64, 0, NULL, 5, 6, 1));
  int64_t s[2] = {2, 2};
  write_npy(path_in(out, "0.weight.grad.npy"),
            tu_random(CPK_F64, 2, s, 5, 6, 1));
  write_npy(path_in(out, "0.weight.batch_l2.npy"),
            tu_random(CPK_F64, 2, s, 5, 6, 1));

  assert_int_equal(compute(d, out, ""), 0);
  compare_outputs(path_in(d, "expected"), out, "over old outputs");
  assert_string_equal(slurp(notes), "keep me\n");
  assert_only(out, path_in(d, "expected"), "notes.txt",
              "0.weight.batch_l2.npy", NULL);

  /* a failed run in that folder leaves every file as it was */
  cpk_tensor *before = read_npy(path_in(out, "loss.npy"));
  char args[512];
  case_args(d, args, sizeof args);
  assert_int_equal(cli("compute --model '%s/model.txt' --params '%s/params' "
                       "--input '%s/model.txt' --target '%s/target.npy' "
                       "--out '%s' %s",
                       d, d, d, d, out, args),
                   1);
  assert_error_line("model.txt", NULL);
  assert_only(out, path_in(d, "expected"), "notes.txt",
              "0.weight.batch_l2.npy", NULL);
  cpk_tensor *after = read_npy(path_in(out, "loss.npy"));
  tu_assert_close(after, before, 0.0, 0.0, "loss after a failed run");
  cpk_tensor_free(before);
  cpk_tensor_free(after);

  /* --out names a file, not a folder */
  assert_int_equal(cli("compute --model '%s/model.txt' --params '%s/params' "
                       "--input '%s/input.npy' --target '%s/target.npy' "
                       "--out '%s' %s",
                       d, d, d, d, notes, args),
                   1);
  assert_error_line("notes.txt", NULL);
  assert_string_equal(slurp(notes), "keep me\n");
}

/* ------------------------------------------------------------------ main */

#define T(f) cmocka_unit_test_setup_teardown(f, setup_tmp, teardown_tmp)

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_fixture_cases),
      T(test_output_shapes),
      T(test_repeat_timing),
      T(test_version_and_help),
      T(test_usage_errors),
      T(test_not_implemented),
      T(test_cuda_device),
      T(test_bad_params),
      T(test_bad_data),
      T(test_bad_model_file),
      T(test_init),
      T(test_existing_output_directory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
