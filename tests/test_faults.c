/*
 * test_faults.c: limits and faults around `curvpack compute` and the
 * library's memory account: the --max-memory budget (and
 * cpk_memory_set_limit), requests larger than the machine, sizes that
 * overflow, values beyond float32's range, an output folder that cannot be
 * written (read only, full, a file size limit), standard output on
 * /dev/full; KFRA's dense Jacobian products beyond a quarter of the
 * machine's memory. Every failure must be one
 * line "curvpack: error: ..." naming what was wrong, exit 1 (2 for usage),
 * and leave the output folder as it was.
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
#include <unistd.h>

#include "curvpack.h"
#include "testutil.h"

#define BIN CPK_TEST_BUILDDIR "/curvpack"
#define CASE CPK_TEST_SRCDIR "/tests/fixtures/backpack/conv2d_ce_mean"

static char tmp[256];
static char errbuf[8192];

static int setup_tmp(void **state) {
  (void)state;
  snprintf(tmp, sizeof tmp, "%s", tu_tempdir());
  /* others may need to enter it (the read-only test drops to nobody) */
  chmod(tmp, 0755);
  return 0;
}

static int teardown_tmp(void **state) {
  (void)state;
  tu_rmtree(tmp);
  return 0;
}

/* Run a shell command line `prefix curvpack compute <case> --out OUT
 * extra`; returns the exit status, stderr in errbuf. */
static int compute_with(const char *prefix, const char *out,
                        const char *extra) {
  char cmd[8192];
  snprintf(cmd, sizeof cmd,
           "%s '%s' compute --model '%s/model.txt' --params '%s/params' "
           "--input '%s/input.npy' --target '%s/target.npy' --out '%s' "
           "--dtype float64 %s >/dev/null",
           prefix, BIN, CASE, CASE, CASE, CASE, out, extra);
  int rc = tu_run(cmd, errbuf, sizeof errbuf);
  if (getenv("CPK_TEST_VERBOSE") != NULL)
    print_message("exit %d: %s\n%s", rc, cmd, errbuf);
  return rc;
}

static void assert_contains(const char *hay, const char *needle) {
  if (strstr(hay, needle) == NULL) {
    print_error("expected \"%s\" in:\n%s\n", needle, hay);
    fail();
  }
}

/* stderr is exactly one line "curvpack: error: ..." holding the needles. */
static void assert_error_line(const char *needle, ...) {
  const char *nl = strchr(errbuf, '\n');
  if (strncmp(errbuf, "curvpack: error: ", 17) != 0 || nl == NULL ||
      nl[1] != '\0') {
    print_error("expected one line \"curvpack: error: ...\", got:\n%s\n",
                errbuf);
    fail();
  }
  va_list ap;
  va_start(ap, needle);
  for (const char *s = needle; s != NULL; s = va_arg(ap, const char *))
    assert_contains(errbuf, s);
  va_end(ap);
}

/* The names in `dir`, hidden ones included, sorted, joined by spaces. */
static const char *listing(const char *dir) {
  static char buf[8192];
  char names[256][128];
  int n = 0;
  DIR *d = opendir(dir);
  buf[0] = '\0';
  if (d == NULL)
    return "(absent)";
  for (struct dirent *e; (e = readdir(d)) != NULL && n < 256;)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
      snprintf(names[n++], sizeof names[0], "%s", e->d_name);
  closedir(d);
  qsort(names, (size_t)n, sizeof names[0],
        (int (*)(const void *, const void *))strcmp);
  for (int i = 0; i < n; i++) {
    strncat(buf, names[i], sizeof buf - strlen(buf) - 2);
    strncat(buf, " ", sizeof buf - strlen(buf) - 1);
  }
  return buf;
}

static const char *in_tmp(const char *rel) {
  static char bufs[4][512];
  static int next;
  char *b = bufs[next++ % 4];
  snprintf(b, sizeof bufs[0], "%s/%s", tmp, rel);
  return b;
}

/* A successful run into `out`, to have earlier outputs to keep. */
static void good_run(const char *out) {
  assert_int_equal(compute_with("", out, "--ext batch_grad"), 0);
  assert_int_equal(tu_count_entries(out), 14);
}

/* ------------------------------------------------------------- memory */

static void test_memory_budget_api(void **state) {
  (void)state;
  cpk_tensor *t = NULL;
  const int64_t shape[2] = {1024, 1024}; /* 8 MiB of float64 */
  const size_t before = cpk_memory_in_use();
  cpk_memory_set_limit((size_t)4 << 20);
  assert_int_equal(cpk_memory_limit(), (size_t)4 << 20);
  assert_int_equal(cpk_tensor_new(&t, CPK_F64, 2, shape), CPK_ENOMEM);
  assert_null(t);
  const char *msg = cpk_last_error();
  assert_contains(msg, "8388608 bytes (8.0 MiB) asked for");
  assert_contains(msg, "in use");
  assert_contains(msg, "memory budget of 4194304 bytes (4.0 MiB)");
  assert_int_equal(cpk_memory_in_use(), before);
  /* under the budget it works, and the bytes in use count */
  const int64_t small[1] = {1000};
  tu_ok(cpk_tensor_new(&t, CPK_F64, 1, small));
  assert_true(cpk_memory_in_use() >= before + 8000);
  cpk_tensor_free(t);
  assert_int_equal(cpk_memory_in_use(), before);
  /* no budget: the same 8 MiB is fine */
  cpk_memory_set_limit(0);
  tu_ok(cpk_tensor_new(&t, CPK_F64, 2, shape));
  cpk_tensor_free(t);
}

/* More than any machine has (16 TiB): the system refuses, the message says
 * how much was asked for. */
static void test_more_than_the_machine(void **state) {
  (void)state;
  cpk_tensor *t = NULL;
  const int64_t shape[2] = {(int64_t)1 << 21, (int64_t)1 << 20};
  cpk_memory_set_limit(0);
  assert_int_equal(cpk_tensor_new(&t, CPK_F64, 2, shape), CPK_ENOMEM);
  assert_null(t);
  assert_contains(cpk_last_error(), "17592186044416 bytes (16.0 TiB) asked");
  /* and sizes that overflow are an error before any allocation */
  const int64_t huge[3] = {(int64_t)1 << 40, (int64_t)1 << 40, 2};
  assert_int_equal(cpk_tensor_new(&t, CPK_F32, 3, huge), CPK_EOVERFLOW);
  assert_contains(cpk_last_error(), "overflows");
}

static void test_max_memory_option(void **state) {
  (void)state;
  const char *out = in_tmp("out");
  /* a budget too small for the pass: exit 1, one line with the amounts */
  assert_int_equal(compute_with("", out, "--ext batch_grad --max-memory 4K"),
                   1);
  assert_error_line("out of memory", "asked for", "in use",
                    "memory budget of 4096 bytes (4.0 KiB)", NULL);
  assert_int_equal(tu_count_entries(out) > 0 ? 1 : 0, 0);
  /* every command that computes takes it */
  static const char *const cmds[] = {"hvp --vector /nonexistent", "eigen",
                                     "trace", "jacobian", NULL};
  for (int i = 0; cmds[i] != NULL; i++) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "'%s' %s --model '%s/model.txt' --params '%s/params' --input "
             "'%s/input.npy' --target '%s/target.npy' --out '%s' "
             "--max-memory 4K >/dev/null",
             BIN, cmds[i], CASE, CASE, CASE, CASE, out);
    assert_int_equal(tu_run(cmd, errbuf, sizeof errbuf), 1);
    assert_error_line("memory budget of 4096 bytes", NULL);
  }
  /* bad sizes are usage errors */
  static const char *const bad[] = {"0", "-5M", "12X", "M", "1e40", "", NULL};
  for (int i = 0; bad[i] != NULL; i++) {
    char extra[64];
    snprintf(extra, sizeof extra, "--max-memory '%s'", bad[i]);
    assert_int_equal(compute_with("", out, extra), 2);
    assert_error_line("--max-memory", NULL);
  }
  /* a generous budget changes nothing; chunks shrink under a small one */
  assert_int_equal(compute_with("", out, "--ext batch_grad --max-memory 2G"),
                   0);
  assert_int_equal(compute_with("", in_tmp("chunked"),
                                "--ext variance,batch_l2_grad,"
                                "sum_grad_squared --max-memory 1M"),
                   0);
  cpk_tensor *a, *b;
  char pa[600], pb[600];
  snprintf(pa, sizeof pa, "%s/0.weight.variance.npy", out);
  snprintf(pb, sizeof pb, "%s/0.weight.variance.npy", in_tmp("chunked"));
  assert_int_equal(compute_with("", out, "--ext variance"), 0);
  tu_ok(cpk_npy_read(pa, &a));
  tu_ok(cpk_npy_read(pb, &b));
  tu_assert_close(b, a, 1e-12, 0.0, "variance in 1 MiB chunks");
  cpk_tensor_free(a);
  cpk_tensor_free(b);
}

/* A pass over its memory budget runs again on halves of the batch: the
 * results equal those of one pass. diag_hessian through a convolution
 * expands the Hessian's diagonal terms into one-hot blocks [D, N, D], so
 * its memory grows with N and half the batch needs much less. */
static void test_budget_splits_the_batch(void **state) {
  (void)state;
  enum { N = 16 };
  const char *ext = "diag_hessian,diag_ggn_exact,diag_ggn_mc,batch_l2_grad";
  const int64_t sample[3] = {2, 8, 8}, xs[4] = {N, 2, 8, 8};
  cpk_model *m;
  cpk_context *ctx;
  cpk_results *whole, *half, *split;
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_model_parse(&m,
                        "conv2d 2 3 3 padding=1\nsigmoid\n"
                        "conv2d 3 3 3 padding=1\ntanh\nflatten\n"
                        "linear 192 4\n",
                        "net"));
  tu_ok(cpk_model_build(m, 3, sample, CPK_F64));
  tu_ok(cpk_model_init_params(m, 5));
  cpk_tensor *x = tu_random(CPK_F64, 4, xs, -1.0, 1.0, 8), *y, *xh, *yh;
  const int64_t ys[1] = {N};
  tu_ok(cpk_tensor_new(&y, CPK_I64, 1, ys));
  for (int64_t i = 0; i < N; i++)
    ((int64_t *)y->data)[i] = i % 4;
  const cpk_pass_spec spec = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN, ext,
                              0};
  cpk_memory_set_limit(0);
  cpk_memory_trim();
  size_t base = cpk_memory_in_use();
  cpk_memory_reset_peak();
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &whole));
  const size_t peak_whole = cpk_memory_peak() - base;
  /* the first half alone, for its peak */
  const int64_t xhs[4] = {N / 2, 2, 8, 8}, yhs[1] = {N / 2};
  tu_ok(cpk_tensor_new(&xh, CPK_F64, 4, xhs));
  tu_ok(cpk_tensor_new(&yh, CPK_I64, 1, yhs));
  memcpy(xh->data, x->data, (size_t)cpk_tensor_numel(xh) * sizeof(double));
  memcpy(yh->data, y->data, (size_t)(N / 2) * sizeof(int64_t));
  base = cpk_memory_in_use();
  cpk_memory_reset_peak();
  tu_ok(cpk_compute(ctx, m, &spec, xh, yh, &half));
  cpk_tensor_free(xh);
  cpk_tensor_free(yh);
  const size_t peak_half = cpk_memory_peak() - base;
  cpk_results_free(half);
  assert_true(peak_half < peak_whole * 3 / 4);
  /* a budget between the two: one pass fails, two halves fit */
  cpk_memory_trim();
  base = cpk_memory_in_use();
  cpk_memory_set_limit(base + (peak_half + peak_whole) / 2);
  tu_ok(cpk_compute(ctx, m, &spec, x, y, &split));
  cpk_memory_set_limit(0);
  assert_int_equal(cpk_results_count(split), cpk_results_count(whole));
  for (int i = 0; i < cpk_results_count(whole); i++) {
    const char *name = cpk_results_name(whole, i);
    const cpk_tensor *a = cpk_results_find(split, name);
    assert_non_null(a);
    tu_assert_close(a, cpk_results_tensor(whole, i), 1e-12, 1e-300, name);
  }
  cpk_results_free(split);
  /* kfra cannot be combined over halves: the budget's error stands */
  const cpk_pass_spec kfra = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN,
                              "kfra", 0};
  cpk_memory_set_limit(base + 1024);
  assert_int_equal(cpk_compute(ctx, m, &kfra, x, y, &split), CPK_ENOMEM);
  assert_contains(cpk_last_error(), "memory budget");
  cpk_memory_set_limit(0);
  cpk_results_free(whole);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

/* KFRA through a layer without a closed form needs dense blocks of
 * N x D_out x D_in: without a memory budget, more than a quarter of the
 * machine's memory is refused before anything is allocated, naming the
 * layer; a budget lets the allocations go against it instead (here: one
 * too small for them, CPK_ENOMEM, the layer named). N is sized from this
 * machine's memory so that the need is twice the quarter. */
static void test_kfra_dense_products_limit(void **state) {
  (void)state;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  assert_true(pages > 0 && page > 0);
  const double quarter = (double)pages / 4 * (double)page;
  /* conv2d 1 -> 1 on 64 x 64: D = 4096, peak N * 4096 * 12288 doubles */
  const double per_sample = 4096.0 * 12288.0 * 8.0;
  const int64_t n = (int64_t)(2 * quarter / per_sample) + 1;
  const int64_t sample[3] = {1, 64, 64}, xs[4] = {n, 1, 64, 64}, ys[1] = {n};
  cpk_model *m;
  cpk_context *ctx;
  cpk_results *r = NULL;
  tu_ok(cpk_context_new(&ctx, NULL));
  tu_ok(cpk_model_parse(&m,
                        "conv2d 1 1 3 padding=1\nrelu\n"
                        "conv2d 1 1 3 padding=1\nflatten\nlinear 4096 2\n",
                        "net"));
  tu_ok(cpk_model_build(m, 3, sample, CPK_F64));
  tu_ok(cpk_model_init_params(m, 5));
  cpk_tensor *x = tu_random(CPK_F64, 4, xs, -1.0, 1.0, 8), *y;
  tu_ok(cpk_tensor_new(&y, CPK_I64, 1, ys));
  for (int64_t i = 0; i < n; i++)
    ((int64_t *)y->data)[i] = i % 2;
  const cpk_pass_spec kfra = {CPK_LOSS_CROSS_ENTROPY, CPK_REDUCTION_MEAN,
                              "kfra", 0};
  cpk_memory_set_limit(0);
  assert_int_equal(cpk_compute(ctx, m, &kfra, x, y, &r), CPK_ENOTSUP);
  assert_contains(cpk_last_error(), "net:3: conv2d: kfra needs");
  assert_contains(cpk_last_error(), "quarter of this machine's memory");
  cpk_memory_trim();
  /* room for the factors and averaged matrices of 4096 (128 MiB each),
   * not for the dense products (N * 384 MiB, N >= 3) */
  cpk_memory_set_limit(cpk_memory_in_use() + ((size_t)1 << 30));
  assert_int_equal(cpk_compute(ctx, m, &kfra, x, y, &r), CPK_ENOMEM);
  assert_contains(cpk_last_error(), "net:3: conv2d: kfra's dense Jacobian");
  assert_contains(cpk_last_error(), "memory budget");
  cpk_memory_set_limit(0);
  cpk_tensor_free(x);
  cpk_tensor_free(y);
  cpk_model_free(m);
  cpk_context_free(ctx);
}

/* A float64 input, target or parameter beyond float32's range becomes inf
 * in a float32 run: an error naming the array. */
static void test_beyond_float32(void **state) {
  (void)state;
  char cmd[4096], dir[512];
  snprintf(dir, sizeof dir, "%s/case", tmp);
  snprintf(cmd, sizeof cmd, "cp -r '%s' '%s' && chmod -R u+w '%s'", CASE, dir,
           dir);
  assert_int_equal(tu_run(cmd, errbuf, sizeof errbuf), 0);
  const char *names[2] = {"input.npy", "params/0.weight.npy"};
  for (int k = 0; k < 2; k++) {
    char path[600], extra[1200];
    cpk_tensor *t, *orig;
    snprintf(path, sizeof path, "%s/%s", dir, names[k]);
    tu_ok(cpk_npy_read(path, &orig));
    tu_ok(cpk_tensor_convert(&t, orig, CPK_F64));
    cpk_tensor_set(t, 1, 1e300);
    tu_ok(cpk_npy_write(path, t));
    snprintf(extra, sizeof extra,
             "--input '%s/input.npy' --params '%s/params' --dtype float32", dir,
             dir);
    assert_int_equal(compute_with("", in_tmp("f32"), extra), 1);
    assert_error_line(k == 0 ? "input:" : names[k], "float32", NULL);
    assert_int_equal(tu_count_entries(in_tmp("f32")) > 0 ? 1 : 0, 0);
    /* in float64 the same value is fine */
    snprintf(extra, sizeof extra, "--input '%s/input.npy' --params '%s/params'",
             dir, dir);
    assert_int_equal(compute_with("", in_tmp("f64"), extra), 0);
    tu_ok(cpk_npy_write(path, orig));
    cpk_tensor_free(t);
    cpk_tensor_free(orig);
  }
}

/* -------------------------------------------------------------- files */

/* A read-only output folder: the run fails naming it and writes nothing.
 * Root ignores permissions, so as root the run drops to nobody. */
static void test_read_only_output(void **state) {
  (void)state;
  const char *out = in_tmp("ro");
  good_run(out);
  char before[8192];
  snprintf(before, sizeof before, "%s", listing(out));
  assert_int_equal(chmod(out, 0555), 0);
  const char *prefix = "";
  if (geteuid() == 0) {
    if (tu_run("setpriv --reuid=65534 --regid=65534 --clear-groups true",
               errbuf, sizeof errbuf) != 0)
      skip(); /* no way to drop root here */
    prefix = "setpriv --reuid=65534 --regid=65534 --clear-groups";
  }
  assert_int_equal(compute_with(prefix, out, "--ext batch_grad"), 1);
  assert_error_line(out, "not writable", NULL);
  assert_string_equal(listing(out), before);
  chmod(out, 0755);
}

/* A file size limit (ulimit -f) cuts the outputs short, as a full disk
 * does: exit 1 naming the output file (not its temporary), the earlier
 * outputs in the folder untouched, no temporary left. */
static void test_file_size_limit(void **state) {
  (void)state;
  const char *out = in_tmp("limited");
  good_run(out);
  char before[8192], prefix[128];
  snprintf(before, sizeof before, "%s", listing(out));
  cpk_tensor *loss0;
  char loss_path[600];
  snprintf(loss_path, sizeof loss_path, "%s/loss.npy", out);
  tu_ok(cpk_npy_read(loss_path, &loss0));
  /* 512 bytes: the small outputs fit, the per-sample ones do not */
  snprintf(prefix, sizeof prefix, "trap '' XFSZ; ulimit -f 1;");
  assert_int_equal(
      compute_with(prefix, out, "--ext batch_grad,diag_ggn_exact --seed 3"), 1);
  assert_error_line(out, "File too large", ".npy'", NULL);
  if (strstr(errbuf, ".partial") != NULL || strstr(errbuf, ".tmp.") != NULL)
    fail_msg("the message names a temporary file: %s", errbuf);
  assert_string_equal(listing(out), before);
  cpk_tensor *loss1;
  tu_ok(cpk_npy_read(loss_path, &loss1));
  tu_assert_close(loss1, loss0, 0.0, 0.0, "loss.npy after the failed run");
  cpk_tensor_free(loss0);
  cpk_tensor_free(loss1);
}

/* A really full disk: a 64 KiB tmpfs in a private mount namespace (root
 * only; skipped elsewhere). */
static void test_full_disk(void **state) {
  (void)state;
  if (geteuid() != 0 ||
      tu_run("unshare -m sh -c 'mount -t tmpfs -o size=64k tmpfs /mnt'", errbuf,
             sizeof errbuf) != 0)
    skip();
  const char *mnt = in_tmp("full");
  mkdir(mnt, 0755);
  /* inside the namespace: mount, put an earlier output there, run, then
   * record what is left */
  char cmd[8192];
  snprintf(cmd, sizeof cmd,
           "unshare -m sh -c '"
           "mount -t tmpfs -o size=64k tmpfs \"%s\" || exit 99; "
           "echo keep > \"%s/earlier.txt\"; "
           "\"%s\" compute --model \"%s/model.txt\" --params \"%s/params\" "
           "--input \"%s/input.npy\" --target \"%s/target.npy\" "
           "--out \"%s\" --dtype float64 --ext batch_grad,batch_diag_hessian "
           ">/dev/null; rc=$?; "
           "ls -A \"%s\" >\"%s/left.txt\"; cat \"%s/earlier.txt\" "
           ">>\"%s/left.txt\"; exit $rc'",
           mnt, mnt, BIN, CASE, CASE, CASE, CASE, mnt, mnt, tmp, mnt, tmp);
  assert_int_equal(tu_run(cmd, errbuf, sizeof errbuf), 1);
  assert_error_line(mnt, "No space left on device", NULL);
  char left[600];
  snprintf(left, sizeof left, "%s/left.txt", tmp);
  FILE *f = fopen(left, "r");
  assert_non_null(f);
  char text[512] = "";
  size_t n = fread(text, 1, sizeof text - 1, f);
  text[n] = '\0';
  fclose(f);
  assert_string_equal(text, "earlier.txt\nkeep\n");
}

/* Standard output on a full device (/dev/full): what the program prints
 * does not arrive, and it says so instead of exiting 0. */
static void test_stdout_full(void **state) {
  (void)state;
  static const char *const args[] = {"--version", "--help", "compute --help",
                                     "train --help", NULL};
  for (int i = 0; args[i] != NULL; i++) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' %s >/dev/full", BIN, args[i]);
    assert_int_equal(tu_run(cmd, errbuf, sizeof errbuf), 1);
    assert_error_line("standard output", "No space left on device", NULL);
  }
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup_tmp, teardown_tmp)

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_memory_budget_api),
      cmocka_unit_test(test_more_than_the_machine),
      cmocka_unit_test(test_budget_splits_the_batch),
      cmocka_unit_test(test_kfra_dense_products_limit),
      T(test_max_memory_option),
      T(test_beyond_float32),
      T(test_read_only_output),
      T(test_file_size_limit),
      T(test_full_disk),
      cmocka_unit_test(test_stdout_full),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
