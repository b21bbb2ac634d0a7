/*
 * test_train.c: `curvpack train` and `curvpack plot` end to end, on a small
 * synthetic data set in IDX files this test writes itself (and on
 * Fashion-MNIST when the Debian package is installed): the JSON-lines and
 * CSV schema, the logarithmic schedule, tracked values against the dumped
 * tensors of the same step, resume after a checkpoint (with log lines
 * written after it) and after a kill, the KFAC fallback note, the
 * dashboard PNG, the errors; and that each optimizer lowers the test loss
 * on a 1,000-sample subset of Fashion-MNIST.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "curvpack.h"
#include "jsonmini.h"
#include "testutil.h"

#define BIN CPK_TEST_BUILDDIR "/curvpack"
#define FMNIST "/usr/share/datasets/fashion-mnist"
#define NTRAIN 192
#define NTEST 64

static char tmp[256];  /* the group's temporary directory */
static char data[512]; /* the synthetic data set */
static char model[512], bn_model[512];

/* ------------------------------------------------------------ helpers */

static char errbuf[8192];

/* Run `curvpack ARGS`; stdout goes to TMP/stdout.txt. */
static int cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int cli(const char *fmt, ...) {
  char args[4096], cmd[5000];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof cmd, "'%s' %s >'%s/stdout.txt'", BIN, args, tmp);
  int rc = tu_run(cmd, errbuf, sizeof errbuf);
  if (getenv("CPK_TEST_VERBOSE") != NULL)
    print_message("exit %d: %s\n%s", rc, args, errbuf);
  return rc;
}

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

/* A whole text file (malloc'ed; NULL when absent). */
static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  char *s = malloc((size_t)n + 1);
  size_t got = fread(s, 1, (size_t)n, f);
  fclose(f);
  s[got] = '\0';
  return s;
}

static const char *in_dir(const char *dir, const char *rel) {
  static char bufs[8][1024];
  static int next;
  char *b = bufs[next++ % 8];
  if (snprintf(b, sizeof bufs[0], "%s/%s", dir, rel) >= (int)sizeof bufs[0])
    fail_msg("path too long: %s/%s", dir, rel);
  return b;
}

static int exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

static void assert_contains(const char *hay, const char *needle) {
  if (hay == NULL || strstr(hay, needle) == NULL) {
    print_error("expected \"%s\" in:\n%s\n", needle, hay ? hay : "(null)");
    fail();
  }
}

/* stderr is one line "curvpack: error: ..." with each needle. */
static void assert_error_line(const char *needle, ...) {
  const char *nl = strchr(errbuf, '\n');
  if (strncmp(errbuf, "curvpack: error: ", 17) != 0 || nl == NULL ||
      nl[1] != '\0') {
    print_error("expected one error line, got:\n%s\n", errbuf);
    fail();
  }
  va_list ap;
  va_start(ap, needle);
  for (const char *s = needle; s; s = va_arg(ap, const char *))
    assert_contains(errbuf, s);
  va_end(ap);
}

/* The JSON values of every line of a JSON-lines file; returns the count. */
static int read_jsonl(const char *path, jm_value *lines, int max) {
  char *text = slurp(path);
  assert_non_null(text);
  int n = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    long where;
    assert_true(n < max);
    if (jm_parse(line, &lines[n], &where) != 0) {
      print_error("%s: line %d is not JSON (at %ld): %s\n", path, n + 1, where,
                  line);
      fail();
    }
    assert_int_equal(lines[n].type, JM_OBJECT);
    n++;
  }
  free(text);
  return n;
}

static void free_lines(jm_value *lines, int n) {
  for (int i = 0; i < n; i++)
    jm_free(&lines[i]);
}

static double num(const jm_value *obj, const char *key) {
  const jm_value *v = jm_get(obj, key);
  if (v == NULL || (v->type != JM_NUMBER && v->type != JM_NULL)) {
    print_error("missing number '%s'\n", key);
    fail();
  }
  return v->type == JM_NUMBER ? v->number : NAN;
}

static cpk_tensor *npy(const char *path) {
  cpk_tensor *t = NULL;
  if (cpk_npy_read(path, &t) != CPK_OK) {
    print_error("%s: %s\n", path, cpk_last_error());
    fail();
  }
  return t;
}

static void close_to(const char *what, double got, double want, double rtol) {
  if (!(fabs(got - want) <= rtol * fabs(want) + 1e-300)) {
    print_error("%s: %.17g, expected %.17g\n", what, got, want);
    fail();
  }
}

/* ------------------------------------------------------- the data set */

/* An IDX file of unsigned bytes, gzip-compressed. */
static void write_idx(const char *path, int ndim, const uint32_t *dims,
                      const unsigned char *bytes, size_t n) {
  gzFile f = gzopen(path, "wb");
  assert_non_null(f);
  unsigned char head[4 + 4 * 3] = {0, 0, 0x08, (unsigned char)ndim};
  for (int d = 0; d < ndim; d++)
    for (int k = 0; k < 4; k++)
      head[4 + 4 * d + k] = (unsigned char)(dims[d] >> (24 - 8 * k));
  assert_int_equal(gzwrite(f, head, 4 + 4 * (unsigned)ndim), 4 + 4 * ndim);
  assert_int_equal(gzwrite(f, bytes, (unsigned)n), (int)n);
  assert_int_equal(gzclose(f), Z_OK);
}

/* Class c lights rows 2c .. 2c+5 (plus noise): learnable in a few steps. */
static void write_split(const char *prefix, int n, uint64_t seed) {
  unsigned char *img = malloc((size_t)n * 784), *lab = malloc((size_t)n);
  uint64_t s = seed;
  for (int i = 0; i < n; i++) {
    lab[i] = (unsigned char)((i * 7 + (int)seed) % 10);
    for (int p = 0; p < 784; p++) {
      s = s * 6364136223846793005ULL + 1442695040888963407ULL;
      int row = p / 28, noise = (int)(s >> 58);
      int on = row >= 2 * lab[i] && row < 2 * lab[i] + 6;
      img[i * 784 + p] = (unsigned char)(on ? 180 + noise : noise);
    }
  }
  char path[1024];
  const uint32_t idims[3] = {(uint32_t)n, 28, 28}, ldims[1] = {(uint32_t)n};
  snprintf(path, sizeof path, "%s/%s-images-idx3-ubyte.gz", data, prefix);
  write_idx(path, 3, idims, img, (size_t)n * 784);
  snprintf(path, sizeof path, "%s/%s-labels-idx1-ubyte.gz", data, prefix);
  write_idx(path, 1, ldims, lab, (size_t)n);
  free(img);
  free(lab);
}

static int group_setup(void **state) {
  (void)state;
  snprintf(tmp, sizeof tmp, "%s", tu_tempdir());
  snprintf(data, sizeof data, "%s/data", tmp);
  mkdir(data, 0777);
  write_split("train", NTRAIN, 1);
  write_split("t10k", NTEST, 2);
  snprintf(model, sizeof model, "%s/mlp.txt", tmp);
  FILE *f = fopen(model, "w");
  fputs("flatten\nlinear 784 12\nrelu\nlinear 12 10\n", f);
  fclose(f);
  snprintf(bn_model, sizeof bn_model, "%s/bn.txt", tmp);
  f = fopen(bn_model, "w");
  fputs("flatten\nlinear 784 12\nbatchnorm1d 12\nrelu\nlinear 12 10\n", f);
  fclose(f);
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  tu_rmtree(tmp);
  return 0;
}

/* A fresh run directory name under tmp. */
static const char *run_dir(const char *name) {
  static char bufs[4][512];
  static int next;
  char *b = bufs[next++ % 4];
  snprintf(b, sizeof bufs[0], "%s/%s", tmp, name);
  tu_rmtree(b);
  return b;
}

/* ---------------------------------------------------------------- tests */

static void test_help(void **state) {
  (void)state;
  assert_int_equal(cli("train --help"), 0);
  char *out = slurp(in_dir(tmp, "stdout.txt"));
  assert_contains(out, "plain gradient steps");
  assert_contains(out, "--preset");
  assert_contains(out, "dataset-fashion-mnist");
  free(out);
  assert_int_equal(cli("plot --help"), 0);
  out = slurp(in_dir(tmp, "stdout.txt"));
  assert_contains(out, "gnuplot-nox");
  free(out);
}

/* Keys every record of a preset has. */
static const char *const economy_keys[] = {"step",
                                           "epoch",
                                           "time",
                                           "loss",
                                           "accuracy",
                                           "grad_norm",
                                           "sample_grad_norm_mean",
                                           "sample_grad_norm_min",
                                           "sample_grad_norm_max",
                                           "sample_grad_norm_hist",
                                           "norm_test",
                                           "inner_test",
                                           "ortho_test",
                                           "gsnr_mean",
                                           "variance",
                                           "distance",
                                           "update_size",
                                           "alpha",
                                           "grad_hist_1d",
                                           "per_param",
                                           NULL};
static const char *const full_keys[] = {"hess_trace", "tic", "hess_max_ev",
                                        "grad_hist_2d", NULL};

static void check_schema(const char *run, int full, int steps, int every) {
  jm_value lines[64];
  const int n = read_jsonl(in_dir(run, "metrics.jsonl"), lines, 64);
  assert_int_equal(n, (steps + every - 1) / every);
  double last_time = -1;
  for (int i = 0; i < n; i++) {
    const jm_value *l = &lines[i];
    for (int k = 0; economy_keys[k]; k++)
      if (jm_get(l, economy_keys[k]) == NULL) {
        print_error("line %d lacks '%s'\n", i + 1, economy_keys[k]);
        fail();
      }
    for (int k = 0; full_keys[k]; k++)
      assert_true((jm_get(l, full_keys[k]) != NULL) == full);
    assert_int_equal((int)num(l, "step"), i * every);
    assert_int_equal((int)num(l, "epoch"), i * every / (NTRAIN / 32));
    assert_true(num(l, "time") >= last_time);
    last_time = num(l, "time");
    /* every member is a number, null, an array of numbers or per_param */
    for (int k = 0; k < l->count; k++) {
      const jm_value *v = &l->items[k];
      if (strcmp(l->keys[k], "per_param") == 0) {
        assert_int_equal(v->type, JM_OBJECT);
        assert_int_equal(v->count, 4); /* 1.weight 1.bias 3.weight 3.bias */
        assert_string_equal(v->keys[0], "1.weight");
        for (int p = 0; p < v->count; p++) {
          assert_non_null(jm_get(&v->items[p], "grad_norm"));
          assert_non_null(jm_get(&v->items[p], "distance"));
          assert_non_null(jm_get(&v->items[p], "update_size"));
          assert_non_null(jm_get(&v->items[p], "gsnr"));
          assert_true((jm_get(&v->items[p], "hess_trace") != NULL) == full);
        }
      } else if (v->type == JM_ARRAY) {
        const int len = strcmp(l->keys[k], "grad_hist_1d") == 0   ? 100
                        : strcmp(l->keys[k], "grad_hist_2d") == 0 ? 40
                                                                  : 16;
        assert_int_equal(v->count, len);
        double total = 0;
        for (int j = 0; j < v->count; j++) {
          const jm_value *e = &v->items[j];
          if (e->type == JM_ARRAY) {
            assert_int_equal(e->count, 50);
            for (int m = 0; m < e->count; m++)
              total += e->items[m].number;
          } else {
            assert_int_equal(e->type, JM_NUMBER);
            total += e->number;
          }
        }
        /* counts: every sample (norms) or sample x parameter (histograms) */
        const double want = len == 16 ? 32 : 32.0 * (784 * 12 + 12 + 130);
        close_to(l->keys[k], total, want, 0);
      } else {
        assert_true(v->type == JM_NUMBER ||
                    (v->type == JM_NULL && strcmp(l->keys[k], "alpha") == 0));
      }
    }
  }
  free_lines(lines, n);
  /* metrics.csv: one header, one row per line, the same number of fields */
  char *csv = slurp(in_dir(run, "metrics.csv"));
  assert_int_equal(strncmp(csv, "step,epoch,time,loss,", 21), 0);
  int rows = 0, fields = -1;
  for (char *line = strtok(csv, "\n"); line; line = strtok(NULL, "\n")) {
    int f = 1;
    for (char *c = line; *c; c++)
      f += *c == ',';
    assert_true(fields < 0 || f == fields);
    fields = f;
    rows++;
  }
  assert_int_equal(rows, n + 1);
  free(csv);
  /* the evaluations: before training and after each epoch */
  const int epochs = steps / (NTRAIN / 32);
  const int ne = read_jsonl(in_dir(run, "eval.jsonl"), lines, 64);
  assert_int_equal(ne, epochs + 1);
  for (int e = 0; e < ne; e++) {
    assert_int_equal((int)num(&lines[e], "epoch"), e);
    assert_int_equal((int)num(&lines[e], "step"), e * (NTRAIN / 32));
    assert_true(num(&lines[e], "test_accuracy") >= 0 &&
                num(&lines[e], "test_accuracy") <= 1);
    assert_true(isnan(num(&lines[e], "train_loss")) == (e == 0));
  }
  free_lines(lines, ne);
  /* the checkpoint, in the contract's layout, and nothing left over */
  const char *const files[] = {
      "checkpoint/1.weight.npy",      "checkpoint/3.bias.npy",
      "checkpoint/init/1.weight.npy", "checkpoint/optimizer/optim.npy",
      "checkpoint/run.txt",           NULL};
  for (int k = 0; files[k]; k++)
    assert_true(exists(in_dir(run, files[k])));
  assert_false(exists(in_dir(run, ".checkpoint.tmp")));
  assert_false(exists(in_dir(run, "checkpoint.old")));
}

static void test_schema(void **state) {
  (void)state;
  const char *run = run_dir("schema_full");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' --epochs 2 "
                       "--batch-size 32 --track-every 2 --preset full "
                       "--seed 3",
                       model, data, run),
                   0);
  check_schema(run, 1, 12, 2);
  /* plain log lines (stdout is not a terminal) */
  char *out = slurp(in_dir(tmp, "stdout.txt"));
  assert_contains(out, "epoch 2/2  step 6/6");
  assert_contains(out, "samples/s");
  assert_contains(out, "test accuracy");
  free(out);
  run = run_dir("schema_economy");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' --epochs 1 "
                       "--batch-size 32 --track-every 1 --optimizer kfac",
                       model, data, run),
                   0);
  check_schema(run, 0, 6, 1);
}

static void test_log_schedule(void **state) {
  (void)state;
  const char *run = run_dir("log");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' --epochs 2 "
                       "--batch-size 16 --track log --quantities "
                       "loss,grad_norm",
                       model, data, run),
                   0);
  jm_value lines[32];
  const int want[] = {0, 1, 2, 3, 5, 6, 7, 10, 12, 15, 19};
  const int n = read_jsonl(in_dir(run, "metrics.jsonl"), lines, 32);
  assert_int_equal(n, 11); /* 24 steps */
  for (int i = 0; i < n; i++) {
    assert_int_equal((int)num(&lines[i], "step"), want[i]);
    assert_null(jm_get(&lines[i], "norm_test"));
  }
  free_lines(lines, n);
}

/* Tracked values against the tensors dumped at the same step. */
static void test_values_vs_dumps(void **state) {
  (void)state;
  const char *run = run_dir("dumps");
  assert_int_equal(
      cli("train --model '%s' --data '%s' --run '%s' --batch-size 24 "
          "--max-steps 3 --dtype float64 --optimizer adam --track-every 1 "
          "--quantities loss,grad_norm,sample_grad_norms,variance,distance,"
          "update_size --dump-ext grad,batch_l2_grad,variance,param,batch",
          model, data, run),
      0);
  jm_value lines[8];
  const int n = read_jsonl(in_dir(run, "metrics.jsonl"), lines, 8);
  assert_int_equal(n, 3);
  const char *params[4] = {"1.weight", "1.bias", "3.weight", "3.bias"};
  for (int s = 0; s < 2; s++) {
    char dir[1024], next[1024], file[1200];
    snprintf(dir, sizeof dir, "%s/dumps/%d", run, s);
    snprintf(next, sizeof next, "%s/dumps/%d", run, s + 1);
    double g2 = 0, var = 0, dist = 0, upd = 0, l2[24] = {0};
    for (int p = 0; p < 4; p++) {
      snprintf(file, sizeof file, "%s/%s.grad.npy", dir, params[p]);
      cpk_tensor *g = npy(file);
      snprintf(file, sizeof file, "%s/%s.variance.npy", dir, params[p]);
      cpk_tensor *v = npy(file);
      snprintf(file, sizeof file, "%s/%s.batch_l2.npy", dir, params[p]);
      cpk_tensor *b = npy(file);
      snprintf(file, sizeof file, "%s/%s.npy", dir, params[p]);
      cpk_tensor *t = npy(file);
      snprintf(file, sizeof file, "%s/%s.npy", next, params[p]);
      cpk_tensor *t1 = npy(file);
      snprintf(file, sizeof file, "%s/checkpoint/init/%s.npy", run, params[p]);
      cpk_tensor *t0 = npy(file);
      assert_int_equal(t->dtype, CPK_F64);
      for (int64_t k = 0; k < cpk_tensor_numel(g); k++) {
        double gk = cpk_tensor_get(g, k), tk = cpk_tensor_get(t, k);
        g2 += gk * gk;
        var += cpk_tensor_get(v, k);
        dist += pow(tk - cpk_tensor_get(t0, k), 2);
        upd += pow(cpk_tensor_get(t1, k) - tk, 2);
      }
      for (int k = 0; k < 24; k++)
        l2[k] += cpk_tensor_get(b, k);
      cpk_tensor_free(g);
      cpk_tensor_free(v);
      cpk_tensor_free(b);
      cpk_tensor_free(t);
      cpk_tensor_free(t1);
      cpk_tensor_free(t0);
    }
    double mean = 0, lo = INFINITY, hi = 0;
    for (int k = 0; k < 24; k++) {
      double v = 24 * sqrt(l2[k]);
      mean += v / 24;
      lo = fmin(lo, v);
      hi = fmax(hi, v);
    }
    close_to("grad_norm", num(&lines[s], "grad_norm"), sqrt(g2), 1e-12);
    close_to("variance", num(&lines[s], "variance"), var, 1e-12);
    close_to("distance", num(&lines[s], "distance"), sqrt(dist), 1e-10);
    close_to("update_size", num(&lines[s], "update_size"), sqrt(upd), 1e-10);
    close_to("sample_grad_norm_mean", num(&lines[s], "sample_grad_norm_mean"),
             mean, 1e-12);
    close_to("sample_grad_norm_min", num(&lines[s], "sample_grad_norm_min"), lo,
             1e-12);
    close_to("sample_grad_norm_max", num(&lines[s], "sample_grad_norm_max"), hi,
             1e-12);
    /* the loss of the dumped batch at the dumped parameters */
    char out[1024];
    snprintf(out, sizeof out, "%s/recompute%d", tmp, s);
    assert_int_equal(cli("compute --model '%s' --params '%s' --input "
                         "'%s/input.npy' --target '%s/target.npy' --dtype "
                         "float64 --out '%s'",
                         model, dir, dir, dir, out),
                     0);
    cpk_tensor *loss = npy(in_dir(out, "loss.npy"));
    close_to("loss", num(&lines[s], "loss"), cpk_tensor_get(loss, 0), 1e-14);
    cpk_tensor_free(loss);
  }
  free_lines(lines, n);
  /* --dump picks parameters */
  run = run_dir("dump_some");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' "
                       "--max-steps 1 --track-every 1 --quantities loss "
                       "--dump 3.bias --dump-ext grad,variance",
                       model, data, run),
                   0);
  assert_int_equal(tu_count_entries(in_dir(run, "dumps/0")), 2);
  assert_true(exists(in_dir(run, "dumps/0/3.bias.variance.npy")));
}

/* Parameters of two checkpoints are the same bytes. */
static void same_params(const char *a, const char *b) {
  const char *const names[4] = {"1.weight.npy", "1.bias.npy", "3.weight.npy",
                                "3.bias.npy"};
  for (int k = 0; k < 4; k++) {
    char pa[1024], pb[1024];
    snprintf(pa, sizeof pa, "%s/checkpoint/%s", a, names[k]);
    snprintf(pb, sizeof pb, "%s/checkpoint/%s", b, names[k]);
    cpk_tensor *x = npy(pa), *y = npy(pb);
    tu_assert_close(y, x, 0, 0, names[k]);
    cpk_tensor_free(x);
    cpk_tensor_free(y);
  }
}

/* The lines of two JSON-lines files agree in everything but the time. */
static void same_lines(const char *a, const char *b) {
  jm_value la[64], lb[64];
  const int na = read_jsonl(a, la, 64), nb = read_jsonl(b, lb, 64);
  assert_int_equal(na, nb);
  for (int i = 0; i < na; i++) {
    assert_int_equal(la[i].count, lb[i].count);
    for (int k = 0; k < la[i].count; k++) {
      const jm_value *x = &la[i].items[k], *y = &lb[i].items[k];
      assert_string_equal(la[i].keys[k], lb[i].keys[k]);
      if (strcmp(la[i].keys[k], "time") == 0 || x->type != JM_NUMBER)
        continue;
      if (x->number != y->number) {
        print_error("%s line %d: %s is %.17g, resumed %.17g\n", a, i + 1,
                    la[i].keys[k], x->number, y->number);
        fail();
      }
    }
  }
  free_lines(la, na);
  free_lines(lb, nb);
}

static const char *const resume_args =
    "--epochs 2 --batch-size 32 --optimizer adam --track-every 3 "
    "--checkpoint-every 4 --seed 9";

/* Stop at step 5, continue to 9, then fall back to the step-5 checkpoint
 * (as if killed after it, with log lines of steps 6-8 written) and finish:
 * the same parameters and lines as a run that never stopped. */
static void test_resume(void **state) {
  (void)state;
  const char *whole = run_dir("whole"), *cut = run_dir("cut");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s", model,
                       data, whole, resume_args),
                   0);
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s "
                       "--max-steps 5",
                       model, data, cut, resume_args),
                   0);
  sh("cp -r '%s/checkpoint' '%s/saved5'", cut, tmp);
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s "
                       "--max-steps 9 --resume",
                       model, data, cut, resume_args),
                   0);
  char *out = slurp(in_dir(tmp, "stdout.txt"));
  assert_contains(out, "resuming");
  assert_contains(out, "at step 5");
  free(out);
  sh("rm -rf '%s/checkpoint' && mv '%s/saved5' '%s/checkpoint'", cut, tmp, cut);
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s "
                       "--resume",
                       model, data, cut, resume_args),
                   0);
  same_params(whole, cut);
  same_lines(in_dir(whole, "metrics.jsonl"), in_dir(cut, "metrics.jsonl"));
  same_lines(in_dir(whole, "eval.jsonl"), in_dir(cut, "eval.jsonl"));
  /* the CSV holds the same rows (one header) */
  char *a = slurp(in_dir(whole, "metrics.csv")),
       *b = slurp(in_dir(cut, "metrics.csv"));
  int ra = 0, rb = 0;
  for (char *c = a; *c; c++)
    ra += *c == '\n';
  for (char *c = b; *c; c++)
    rb += *c == '\n';
  assert_int_equal(ra, rb);
  free(a);
  free(b);
  /* resuming a finished run does nothing more */
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s "
                       "--resume",
                       model, data, cut, resume_args),
                   0);
  same_params(whole, cut);
}

/* Killed at a random point after its first checkpoint, then resumed: the
 * same end as an uninterrupted run. */
static void test_resume_after_kill(void **state) {
  (void)state;
  const char *whole = run_dir("kill_whole"), *killed = run_dir("killed");
  const char *args = "--epochs 3 --batch-size 4 --checkpoint-every 2 "
                     "--optimizer kfac --track-every 5 --seed 4";
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s", model,
                       data, whole, args),
                   0);
  sh("('%s' train --model '%s' --data '%s' --run '%s' %s >/dev/null & "
     "pid=$!; while [ ! -d '%s/checkpoint' ] && kill -0 $pid 2>/dev/null; "
     "do sleep 0.01; done; kill -9 $pid 2>/dev/null; wait $pid; true)",
     BIN, model, data, killed, args, killed);
  char *evals = slurp(in_dir(killed, "eval.jsonl"));
  const int finished = evals != NULL && strstr(evals, "\"epoch\": 3");
  free(evals);
  if (finished)
    print_message("# the run ended before it could be killed\n");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s "
                       "--resume",
                       model, data, killed, args),
                   0);
  same_params(whole, killed);
  same_lines(in_dir(whole, "eval.jsonl"), in_dir(killed, "eval.jsonl"));
  jm_value la[64], lb[64];
  const int na = read_jsonl(in_dir(whole, "metrics.jsonl"), la, 64);
  const int nb = read_jsonl(in_dir(killed, "metrics.jsonl"), lb, 64);
  assert_int_equal(na, nb);
  for (int i = 0; i < na; i++)
    assert_true(num(&la[i], "step") == num(&lb[i], "step"));
  free_lines(la, na);
  free_lines(lb, nb);
}

/* Killed (SIGKILL) again and again at random moments, each time resumed
 * (or, when no checkpoint was written yet, started again): every kill
 * leaves a checkpoint that loads, and the end is the uninterrupted run's.
 * The moments are drawn between 2% and 25% of the uninterrupted run's
 * time, so that they fall anywhere in a step, a log line or a checkpoint,
 * on a fast machine or a busy one. */
static void test_kill_anywhere(void **state) {
  (void)state;
  const char *whole = run_dir("any_whole"), *run = run_dir("any_killed");
  const char *args = "--epochs 6 --batch-size 8 --checkpoint-every 3 "
                     "--track-every 4 --seed 6";
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s", model,
                       data, whole, args),
                   0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  const double whole_ms = 1e3 * (double)(t1.tv_sec - t0.tv_sec) +
                          1e-6 * (double)(t1.tv_nsec - t0.tv_nsec);
  uint64_t s = 12345;
  int kills = 0, finished = 0;
  for (int round = 0; round < 40 && !finished; round++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    const double u = (double)(s >> 11) * 0x1.0p-53;
    const int ms = 1 + (int)(whole_ms * (0.02 + 0.23 * u));
    const int have = exists(in_dir(run, "checkpoint")) ||
                     exists(in_dir(run, "checkpoint.old"));
    if (!have)
      tu_rmtree(run); /* nothing to resume: start again */
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "'%s' train --model '%s' --data '%s' --run '%s' %s %s "
             ">/dev/null 2>&1 & pid=$!; sleep %d.%03d; "
             "kill -9 $pid 2>/dev/null && echo killed; wait $pid 2>/dev/null; "
             "exit 0",
             BIN, model, data, run, args, have ? "--resume" : "", ms / 1000,
             ms % 1000);
    char out[64] = "";
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    if (fgets(out, sizeof out, p) == NULL)
      out[0] = '\0';
    pclose(p);
    if (strncmp(out, "killed", 6) == 0)
      kills++;
    else
      finished = 1;
  }
  print_message("# %d kills (uninterrupted run %.0f ms)\n", kills, whole_ms);
  assert_true(kills >= 3);
  /* whatever was left: resume it (or start again) to the end */
  if (exists(in_dir(run, "checkpoint")) ||
      exists(in_dir(run, "checkpoint.old")))
    assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s "
                         "--resume",
                         model, data, run, args),
                     0);
  else
    assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s", model,
                         data, run, args),
                     0);
  same_params(whole, run);
  same_lines(in_dir(whole, "eval.jsonl"), in_dir(run, "eval.jsonl"));
  same_lines(in_dir(whole, "metrics.jsonl"), in_dir(run, "metrics.jsonl"));
}

/* A learning rate that makes the loss non-finite: the run stops with one
 * error line naming the step and the last good checkpoint, which holds
 * finite parameters. */
static void test_diverged(void **state) {
  (void)state;
  const char *run = run_dir("diverged");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' "
                       "--batch-size 16 --lr 1e12 --momentum 0 "
                       "--checkpoint-every 1",
                       model, data, run),
                   1);
  assert_error_line("step ", "diverged", "last good checkpoint", run,
                    "--resume", NULL);
  const char *const names[4] = {"1.weight.npy", "1.bias.npy", "3.weight.npy",
                                "3.bias.npy"};
  for (int k = 0; k < 4; k++) {
    cpk_tensor *t = npy(in_dir(in_dir(run, "checkpoint"), names[k]));
    for (int64_t i = 0; i < cpk_tensor_numel(t); i++)
      assert_true(isfinite(cpk_tensor_get(t, i)));
    cpk_tensor_free(t);
  }
  /* diverging before any checkpoint says so */
  run = run_dir("diverged0");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' "
                       "--batch-size 16 --lr 1e30 --momentum 0",
                       model, data, run),
                   1);
  assert_error_line("diverged", NULL);
}

/* The run folder on a full disk (a 512 KiB tmpfs: room for one
 * checkpoint of the test's network, not two, in a private mount
 * namespace; root only): the run stops with an error naming the file in
 * the run, and what it wrote before (checkpoint, logs) still resumes to
 * the uninterrupted run's end on a disk with room. */
static void test_full_disk(void **state) {
  (void)state;
  char err[256];
  if (geteuid() != 0 ||
      tu_run("unshare -m sh -c 'mount -t tmpfs -o size=64k tmpfs /mnt'", err,
             sizeof err) != 0)
    skip();
  const char *whole = run_dir("full_whole"), *mnt = run_dir("full_mnt"),
             *saved = run_dir("full_saved");
  const char *args = "--epochs 2 --batch-size 8 --checkpoint-every 2 "
                     "--track-every 3 --seed 2";
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s", model,
                       data, whole, args),
                   0);
  mkdir(mnt, 0755);
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "unshare -m sh -c 'mount -t tmpfs -o size=512k tmpfs \"%s\" || "
           "exit 99; \"%s\" train --model \"%s\" --data \"%s\" --run "
           "\"%s/run\" %s >/dev/null; rc=$?; cp -a \"%s/run\" \"%s\"; "
           "exit $rc'",
           mnt, BIN, model, data, mnt, args, mnt, saved);
  assert_int_equal(tu_run(cmd, errbuf, sizeof errbuf), 1);
  assert_error_line(mnt, "No space left on device", NULL);
  if (!exists(in_dir(saved, "checkpoint")))
    print_message("# %s", errbuf);
  assert_true(exists(in_dir(saved, "checkpoint")) ||
              exists(in_dir(saved, "checkpoint.old")));
  assert_false(exists(in_dir(saved, ".checkpoint.tmp")));
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' %s "
                       "--resume",
                       model, data, saved, args),
                   0);
  same_params(whole, saved);
  same_lines(in_dir(whole, "eval.jsonl"), in_dir(saved, "eval.jsonl"));
}

static void test_kfac_fallback_note(void **state) {
  (void)state;
  const char *run = run_dir("bn");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' "
                       "--batch-size 32 --optimizer kfac --epochs 2",
                       bn_model, data, run),
                   0);
  char *out = slurp(in_dir(tmp, "stdout.txt"));
  assert_contains(out, "note: kfac: no Kronecker factors for 2.weight "
                       "(batchnorm1d)");
  assert_contains(out, "plain gradient steps");
  free(out);
  jm_value lines[4];
  const int n = read_jsonl(in_dir(run, "eval.jsonl"), lines, 4);
  assert_true(num(&lines[2], "test_loss") < num(&lines[0], "test_loss"));
  free_lines(lines, n);
}

static int have_gnuplot(void) {
  char err[256];
  return tu_run("gnuplot --version >/dev/null 2>&1", err, sizeof err) == 0;
}

static void test_plot(void **state) {
  (void)state;
  if (!have_gnuplot())
    skip();
  const char *run = run_dir("plot");
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' --epochs 2 "
                       "--batch-size 32 --track-every 1 --preset business",
                       model, data, run),
                   0);
  assert_int_equal(cli("plot '%s'", run), 0);
  const char *png = in_dir(run, "dashboard.png");
  static const unsigned char sig[8] = {0x89, 'P',  'N',  'G',
                                       '\r', '\n', 0x1a, '\n'};
  unsigned char head[8] = {0};
  FILE *f = fopen(png, "rb");
  assert_non_null(f);
  assert_int_equal(fread(head, 1, 8, f), 8);
  fseek(f, 0, SEEK_END);
  assert_true(ftell(f) > 10000);
  fclose(f);
  assert_memory_equal(head, sig, 8);
  assert_int_equal(tu_count_entries(run), 7); /* nothing left behind */
  /* --run and --out */
  char other[1024];
  snprintf(other, sizeof other, "%s/other.png", tmp);
  assert_int_equal(cli("plot --run '%s' --out '%s'", run, other), 0);
  assert_true(exists(other));
  /* not a run */
  assert_int_equal(cli("plot '%s'", data), 1);
  assert_error_line(data, "metrics.csv", NULL);
}

static void test_errors(void **state) {
  (void)state;
  const char *run = run_dir("errors");
  /* usage errors: exit 2, one line, nothing written */
  assert_int_equal(cli("train --data '%s'", data), 2);
  assert_error_line("--run", NULL);
  assert_int_equal(
      cli("train --problem fmnist_mlp --model '%s' --run '%s'", model, run), 2);
  assert_error_line("--problem", "--model", NULL);
  assert_int_equal(cli("train --problem cifar10 --run '%s'", run), 2);
  assert_error_line("cifar10", NULL);
  assert_int_equal(cli("train --model '%s' --run '%s' --optimizer sgd "
                       "--betas 0.9,0.99",
                       model, run),
                   2);
  assert_error_line("--betas", "adam", NULL);
  assert_int_equal(
      cli("train --model '%s' --run '%s' --preset gold", model, run), 2);
  assert_error_line("gold", NULL);
  assert_int_equal(
      cli("train --model '%s' --run '%s' --track weekly", model, run), 2);
  assert_int_equal(
      cli("train --model '%s' --run '%s' --momentum 1", model, run), 2);
  assert_error_line("momentum", NULL);
  assert_int_equal(
      cli("train --model '%s' --run '%s' --dump-ext grad", model, run), 2);
  assert_error_line("--track-every", NULL);
  assert_false(exists(run));
  /* data that is not there */
  assert_int_equal(
      cli("train --model '%s' --run '%s' --data '%s/none'", model, run, tmp),
      1);
  assert_error_line("train-images-idx3-ubyte", NULL);
  /* no checkpoint to resume */
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' --resume",
                       model, data, run),
                   1);
  assert_error_line("nothing to resume", NULL);
  /* a run is not overwritten; a resume must keep the trajectory */
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' "
                       "--max-steps 2",
                       model, data, run),
                   0);
  assert_int_equal(
      cli("train --model '%s' --data '%s' --run '%s'", model, data, run), 2);
  assert_error_line("--resume", NULL);
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' --resume "
                       "--batch-size 64",
                       model, data, run),
                   2);
  assert_error_line("batch_size", "128", "64", NULL);
  /* other tracked quantities than the run's */
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' --resume "
                       "--epochs 2 --track-every 1",
                       model, data, run),
                   0);
  assert_int_equal(cli("train --model '%s' --data '%s' --run '%s' --resume "
                       "--epochs 3 --track-every 1 --quantities loss",
                       model, data, run),
                   1);
  assert_error_line("metrics.csv", NULL);
}

/* Each optimizer lowers the test loss on a 1,000-sample subset of
 * Fashion-MNIST (two epochs of logistic regression). */
static void test_fashion_mnist(void **state) {
  (void)state;
  if (!exists(FMNIST "/train-images-idx3-ubyte.gz"))
    skip();
  const char *opts[4] = {"sgd", "adam", "diag_ggn", "kfac"};
  for (int k = 0; k < 4; k++) {
    char name[64];
    snprintf(name, sizeof name, "fmnist_%s", opts[k]);
    const char *run = run_dir(name);
    assert_int_equal(cli("train --problem mnist_logreg --subset 1000 "
                         "--test-subset 1000 --epochs 2 --batch-size 100 "
                         "--optimizer %s --run '%s'",
                         opts[k], run),
                     0);
    jm_value lines[4];
    const int n = read_jsonl(in_dir(run, "eval.jsonl"), lines, 4);
    assert_int_equal(n, 3);
    const double before = num(&lines[0], "test_loss");
    const double after = num(&lines[2], "test_loss");
    close_to("initial loss (zero weights: log 10)", before, log(10.0), 1e-6);
    if (!(after < 0.8 * before)) {
      print_error("%s: test loss %g after 2 epochs, %g before\n", opts[k],
                  after, before);
      fail();
    }
    assert_true(num(&lines[2], "test_accuracy") > 0.5);
    free_lines(lines, n);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_help),
      cmocka_unit_test(test_schema),
      cmocka_unit_test(test_log_schedule),
      cmocka_unit_test(test_values_vs_dumps),
      cmocka_unit_test(test_resume),
      cmocka_unit_test(test_resume_after_kill),
      cmocka_unit_test(test_kill_anywhere),
      cmocka_unit_test(test_diverged),
      cmocka_unit_test(test_full_disk),
      cmocka_unit_test(test_kfac_fallback_note),
      cmocka_unit_test(test_plot),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_fashion_mnist),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
