/*
 * test_mpi.c: `mpirun -np K curvpack ...` against one process on the whole
 * batch, float64, 1e-12 relative to each array's largest entry: every
 * extension (Monte Carlo ones included: a sample's draws do not depend on
 * the shard layout), the products, the spectral commands, passes over a
 * data set (--data-pass), on four networks (MLP with ReLU/tanh, a
 * convolutional one with sigmoid and max pooling, MSE and BCE heads) and
 * uneven shards (7 samples on 2 and 3 ranks); and failures: a rank that
 * runs out of memory mid-run ends every rank with one error line, within a
 * time limit (no hang). Skipped when the build has no MPI.
 */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

#ifndef CPK_MPIRUN
#define CPK_MPIRUN ""
#endif

#define BIN CPK_TEST_BUILDDIR "/curvpack"
/* Every rank gets one core's worth of threads; a run that hangs fails. */
#define MPIRUN "timeout 120 " CPK_MPIRUN " --oversubscribe --mca btl self,vader"

static char errbuf[8192];
static char root[64]; /* the problems, written once */

static const char *const all_ext =
    "batch_grad,batch_l2_grad,sum_grad_squared,variance,batch_dot_grad,"
    "diag_ggn_exact,diag_ggn_mc,batch_diag_ggn_exact,batch_diag_ggn_mc,"
    "diag_hessian,batch_diag_hessian,kfac,kflr,kfra,sqrt_ggn_exact,"
    "sqrt_ggn_mc";

typedef struct {
  const char *name, *model, *loss;
  int ndim;
  int64_t in_shape[4];
  int64_t out;     /* outputs per sample (float targets) */
  int classes;     /* cross-entropy: class count */
} problem;

static const problem problems[] = {
    {"mlp", "flatten\nlinear 12 6\nrelu\nlinear 6 5\ntanh\nlinear 5 4\n",
     "cross_entropy", 4, {7, 1, 3, 4}, 0, 4},
    {"conv",
     "conv2d 1 3 3 padding=1\nsigmoid\nmaxpool2d 2\nflatten\nlinear 12 4\n",
     "cross_entropy", 4, {7, 1, 4, 4}, 0, 4},
    {"mse", "linear 5 6\ntanh\nlinear 6 3\n", "mse", 2, {7, 5}, 3, 0},
    {"bce", "linear 4 6\nsigmoid\nlinear 6 2\n", "bce_with_logits", 2, {7, 4},
     2, 0},
};

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void save(cpk_tensor *t, const char *dir, const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  tu_ok(cpk_npy_write(path, t));
  cpk_tensor_free(t);
}

/* ROOT/NAME/{model.txt, params/, input.npy, target.npy, vector/}. */
static void write_problem(const problem *p, uint64_t seed) {
  char dir[256], path[512];
  /* root is short: these fit */
  cpk_model *m;
  snprintf(dir, sizeof dir, "%s/%s", root, p->name);
  mkdir(dir, 0777);
  snprintf(path, sizeof path, "%s/model.txt", dir);
  write_text(path, p->model);
  tu_ok(cpk_model_load(&m, path));
  tu_ok(cpk_model_build(m, p->ndim - 1, p->in_shape + 1, CPK_F64));
  tu_ok(cpk_model_init_params(m, seed));
  snprintf(path, sizeof path, "%s/params", dir);
  mkdir(path, 0777);
  tu_ok(cpk_model_save_params(m, path));
  /* A vector for the products: random, one file per parameter. */
  snprintf(path, sizeof path, "%s/vector", dir);
  mkdir(path, 0777);
  for (int i = 0; i < cpk_model_num_params(m); i++) {
    const char *name;
    cpk_tensor *theta;
    char file[128];
    cpk_model_param(m, i, &name, &theta);
    snprintf(file, sizeof file, "%s.npy", name);
    save(tu_random(CPK_F64, theta->ndim, theta->shape, -1, 1, seed + 10 + i),
         path, file);
  }
  cpk_model_free(m);
  save(tu_random(CPK_F64, p->ndim, p->in_shape, -2, 2, seed + 1), dir,
       "input.npy");
  const int64_t n = p->in_shape[0];
  cpk_tensor *y;
  if (p->classes > 0) {
    tu_ok(cpk_tensor_new(&y, CPK_I64, 1, &n));
    for (int64_t i = 0; i < n; i++)
      cpk_tensor_set(y, i, (double)((i * 3 + 1) % p->classes));
  } else {
    int64_t shape[2] = {n, p->out};
    y = tu_random(CPK_F64, 2, shape, 0, 1, seed + 2);
    if (strcmp(p->loss, "bce_with_logits") == 0)
      for (int64_t i = 0; i < n * p->out; i++)
        cpk_tensor_set(y, i, cpk_tensor_get(y, i) < 0.5 ? 0.0 : 1.0);
  }
  save(y, dir, "target.npy");
}

static int setup(void **state) {
  if (!cpk_have_mpi() || CPK_MPIRUN[0] == '\0')
    return 0;
  snprintf(root, sizeof root, "%s", tu_tempdir());
  for (size_t i = 0; i < sizeof problems / sizeof problems[0]; i++)
    write_problem(&problems[i], 100 + 7 * i);
  return 0;
}

static int teardown(void **state) {
  if (root[0])
    tu_rmtree(root);
  return 0;
}

static void need_mpi(void) {
  if (!cpk_have_mpi() || CPK_MPIRUN[0] == '\0') {
    print_message("built without MPI: skipped\n");
    skip();
  }
}

static const problem *find(const char *name) {
  for (size_t i = 0; i < sizeof problems / sizeof problems[0]; i++)
    if (strcmp(problems[i].name, name) == 0)
      return &problems[i];
  fail_msg("no problem %s", name);
  return NULL;
}

/* curvpack COMMAND on problem p with `ranks` processes (0: no mpirun) into
 * out; returns the exit status, stderr in errbuf. */
static int run(const problem *p, int ranks, const char *args,
               const char *out) {
  char cmd[4096], prefix[256] = "";
  const char *d = root, *n = p->name;
  if (ranks > 0)
    snprintf(prefix, sizeof prefix, "%s -np %d ", MPIRUN, ranks);
  snprintf(cmd, sizeof cmd,
           "%s'%s' %s --model %s/%s/model.txt --params %s/%s/params "
           "--input %s/%s/input.npy --target %s/%s/target.npy --loss %s "
           "--dtype float64 --threads 1 --seed 5 --mc-samples 3 --out '%s' "
           ">/dev/null",
           prefix, BIN, args, d, n, d, n, d, n, d, n, p->loss, out);
  return tu_run(cmd, errbuf, sizeof errbuf);
}

/* Every file of `want` exists in `got` with the same shape and values
 * within 1e-12 of the array's largest magnitude; no extra files. */
static void compare_dirs(const char *want, const char *got, const char *what) {
  DIR *dir = opendir(want);
  struct dirent *e;
  int files = 0;
  assert_non_null(dir);
  while ((e = readdir(dir)) != NULL) {
    char a[1024], b[1024], label[1024];
    cpk_tensor *x, *y;
    if (strstr(e->d_name, ".npy") == NULL)
      continue;
    snprintf(a, sizeof a, "%s/%s", want, e->d_name);
    snprintf(b, sizeof b, "%s/%s", got, e->d_name);
    snprintf(label, sizeof label, "%s: %s", what, e->d_name);
    tu_ok(cpk_npy_read(a, &x));
    if (cpk_npy_read(b, &y) != CPK_OK)
      fail_msg("%s: missing under mpirun (%s)", label, cpk_last_error());
    assert_int_equal(x->ndim, y->ndim);
    for (int k = 0; k < x->ndim; k++)
      assert_int_equal(x->shape[k], y->shape[k]);
    tu_assert_close(y, x, 1e-12, 0.0, label);
    cpk_tensor_free(x);
    cpk_tensor_free(y);
    files++;
  }
  closedir(dir);
  assert_true(files > 0);
  assert_int_equal(tu_count_entries(got), tu_count_entries(want));
}

/* One command with 1 process and with each rank count, compared. */
static void same_as_one(const char *name, const char *args, const int *ranks,
                        int nranks) {
  const problem *p = find(name);
  char one[512], many[512], what[512];
  snprintf(one, sizeof one, "%s/out-%s-1", root, name);
  tu_rmtree(one);
  if (run(p, 0, args, one) != 0)
    fail_msg("%s %s (1 process): %s", name, args, errbuf);
  for (int i = 0; i < nranks; i++) {
    snprintf(many, sizeof many, "%s/out-%s-%d", root, name, ranks[i]);
    tu_rmtree(many);
    if (run(p, ranks[i], args, many) != 0)
      fail_msg("%s %s (%d ranks): %s", name, args, ranks[i], errbuf);
    snprintf(what, sizeof what, "%s %s, %d ranks", name, args, ranks[i]);
    compare_dirs(one, many, what);
    tu_rmtree(many);
  }
  tu_rmtree(one);
}

static const int two_three[] = {2, 3};

static void compute_all(const char *name) {
  char args[1024];
  snprintf(args, sizeof args, "compute --ext %s", all_ext);
  same_as_one(name, args, two_three, 2);
  same_as_one(name, "compute --reduction sum --ext kfac,variance,batch_dot_grad",
              two_three, 2);
}

static void test_compute_mlp(void **state) { need_mpi(), compute_all("mlp"); }
static void test_compute_conv(void **state) { need_mpi(), compute_all("conv"); }
static void test_compute_mse(void **state) { need_mpi(), compute_all("mse"); }
static void test_compute_bce(void **state) { need_mpi(), compute_all("bce"); }

static void test_products(void **state) {
  char args[1024];
  need_mpi();
  for (int i = 0; i < 2; i++) {
    const char *name = i ? "conv" : "mlp";
    snprintf(args, sizeof args, "hvp --vector %s/%s/vector", root, name);
    same_as_one(name, args, two_three, 2);
    snprintf(args, sizeof args, "ggnvp --vector %s/%s/vector", root, name);
    same_as_one(name, args, two_three, 2);
  }
}

static void test_spectra(void **state) {
  static const char *const cmds[] = {
      "eigen --top 2",
      "eigen --top 2 --curvature ggn",
      "trace",
      "trace --curvature ggn",
      "trace --method hutchinson --samples 12",
      "trace --method hutchpp --samples 12",
      "density --runs 2 --steps 8 --grid 64",
  };
  const int three[] = {3};
  need_mpi();
  for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
    same_as_one("mlp", cmds[i], three, 1);
    same_as_one("conv", cmds[i], two_three + (i % 2), 1);
  }
}

/* --data-pass B equals one pass, with one process and with ranks. */
static void test_data_pass(void **state) {
  char args[1024], one[512], many[512];
  const int one_rank[] = {1}, three[] = {3};
  need_mpi();
  const problem *p = find("conv");
  snprintf(one, sizeof one, "%s/dp-plain", root);
  snprintf(args, sizeof args, "compute --ext %s", all_ext);
  /* without kfra (it cannot be combined over passes) */
  char *kfra = strstr(args, ",kfra");
  memmove(kfra, kfra + 5, strlen(kfra + 5) + 1);
  assert_int_equal(run(p, 0, args, one), 0);
  for (int i = 0; i < 3; i++) {
    char dp[1100], what[1400];
    snprintf(dp, sizeof dp, "%s --data-pass %d", args, i == 0 ? 2 : 1);
    snprintf(many, sizeof many, "%s/dp-%d", root, i);
    const int k = i == 0 ? 0 : (i == 1 ? one_rank[0] : three[0]);
    if (run(p, k, dp, many) != 0)
      fail_msg("%s: %s", dp, errbuf);
    snprintf(what, sizeof what, "%s, %d ranks", dp, k);
    compare_dirs(one, many, what);
  }
  /* products and spectra over passes (each product runs them again) */
  static const char *const cmds[] = {
      "hvp --vector %s/conv/vector", "ggnvp --vector %s/conv/vector",
      "eigen --top 2 --curvature ggn", "trace",
      "trace --method hutchinson --samples 8",
      "density --runs 1 --steps 6 --grid 32"};
  for (size_t c = 0; c < sizeof cmds / sizeof cmds[0]; c++) {
    char base[512], what[1400];
    snprintf(base, sizeof base, cmds[c], root);
    snprintf(one, sizeof one, "%s/dp-plain-%zu", root, c);
    assert_int_equal(run(p, 0, base, one), 0);
    for (int i = 0; i < 2; i++) {
      snprintf(args, sizeof args, "%s --data-pass %d", base, i ? 1 : 3);
      snprintf(many, sizeof many, "%s/dp-%zu-%d", root, c, i);
      if (run(p, i ? 3 : 0, args, many) != 0)
        fail_msg("%s: %s", args, errbuf);
      snprintf(what, sizeof what, "%s, %d ranks", args, i ? 3 : 1);
      compare_dirs(one, many, what);
    }
  }
  /* kfra over more than one pass: a clear error, no output */
  snprintf(many, sizeof many, "%s/dp-kfra", root);
  assert_int_equal(run(p, 3, "compute --ext kfra --data-pass 1", many), 1);
  assert_non_null(strstr(errbuf, "curvpack: error: kfra cannot be combined"));
  assert_int_equal(tu_count_entries(many), -1);
}

/* Read a whole text file (static buffer). */
static const char *slurp(const char *path) {
  static char buf[1 << 20];
  FILE *f = fopen(path, "r");
  size_t got = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  buf[got] = '\0';
  if (f)
    fclose(f);
  return buf;
}

/* The numbers of a metrics file in order, each with the last JSON key
 * before it (null as NaN); at most cap. */
static int numbers(const char *s, double *out, char (*keys)[32], int cap) {
  int n = 0;
  char key[32] = "";
  while (*s && n < cap) {
    if (*s == '"') { /* a key (or string): remember it */
      const char *end = strchr(s + 1, '"');
      if (end == NULL)
        break;
      snprintf(key, sizeof key, "%.*s", (int)(end - s - 1), s + 1);
      s = end + 1;
    } else if ((*s >= '0' && *s <= '9') || *s == '-') {
      char *end;
      out[n] = strtod(s, &end);
      memcpy(keys[n++], key, sizeof key);
      s = end;
    } else if (strncmp(s, "null", 4) == 0) {
      out[n] = 0.0 / 0.0;
      memcpy(keys[n++], key, sizeof key);
      s += 4;
    } else {
      s++;
    }
  }
  return n;
}

/* train with dropout, the full preset and kfac on 2 (stopped after 3 steps
 * and resumed) and 3 ranks against one process: every tracked number
 * (times excepted) and the parameters of the final checkpoint. */
/* An IDX file of unsigned bytes (plain; the reader takes plain or gzip)
 * with extents dims[0..ndim), filled by a fixed formula. */
static void write_idx(const char *path, int ndim, const uint32_t *dims,
                      unsigned mod, unsigned salt) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  unsigned char head[4] = {0, 0, 8, (unsigned char)ndim};
  fwrite(head, 1, 4, f);
  size_t count = 1;
  for (int i = 0; i < ndim; i++) {
    unsigned char be[4] = {(unsigned char)(dims[i] >> 24),
                           (unsigned char)(dims[i] >> 16),
                           (unsigned char)(dims[i] >> 8),
                           (unsigned char)dims[i]};
    fwrite(be, 1, 4, f);
    count *= dims[i];
  }
  for (size_t i = 0; i < count; i++)
    fputc((int)((i * 2654435761u + salt) % 1000003u % mod), f);
  fclose(f);
}

static void test_train(void **state) {
  char data[512], model[512], cmd[4096], run1[512], runk[512], path[1024];
  static double a[8192], b[8192];
  static char ka[8192][32], kb[8192][32];
  need_mpi();
  /* A small synthetic data set in the MNIST layout. */
  snprintf(data, sizeof data, "%s/idx", root);
  mkdir(data, 0777);
  const char *const names[4] = {"train-images-idx3-ubyte",
                                "train-labels-idx1-ubyte",
                                "t10k-images-idx3-ubyte",
                                "t10k-labels-idx1-ubyte"};
  for (int i = 0; i < 4; i++) {
    const uint32_t dims[3] = {i < 2 ? 70 : 20, 28, 28};
    snprintf(path, sizeof path, "%s/%s", data, names[i]);
    write_idx(path, i % 2 ? 1 : 3, dims, i % 2 ? 10 : 256, (unsigned)i);
  }
  snprintf(model, sizeof model, "%s/train-model.txt", root);
  write_text(model, "flatten\nlinear 784 12\ntanh\ndropout p=0.3\n"
                    "linear 12 10\n");
  const char *args = "train --subset 70 --test-subset 20 --batch-size 16 "
                     "--epochs 1 --dtype float64 --threads 1 --seed 3 "
                     "--preset full --track-every 2 --optimizer kfac "
                     "--update-every 2 --checkpoint-every 3";
  snprintf(run1, sizeof run1, "%s/train-1", root);
  snprintf(cmd, sizeof cmd, "'%s' %s --model %s --data %s --run %s >/dev/null",
           BIN, args, model, data, run1);
  if (tu_run(cmd, errbuf, sizeof errbuf) != 0)
    fail_msg("train, one process: %s", errbuf);
  snprintf(path, sizeof path, "%s/metrics.jsonl", run1);
  const int na = numbers(slurp(path), a, ka, 8192);
  assert_true(na > 100 && na < 8192);
  for (int k = 2; k <= 3; k++) {
    char want[1024], got[1024], what[256];
    snprintf(runk, sizeof runk, "%s/train-%d", root, k);
    /* 2 ranks: stop after 3 steps, then --resume (every rank reads the
     * checkpoint rank 0 wrote) */
    for (int part = k == 2 ? 0 : 1; part < 2; part++) {
      snprintf(cmd, sizeof cmd,
               "%s -np %d '%s' %s --model %s --data %s --run %s %s >/dev/null",
               MPIRUN, k, BIN, args, model, data, runk,
               k == 2 ? (part == 0 ? "--max-steps 3" : "--resume") : "");
      if (tu_run(cmd, errbuf, sizeof errbuf) != 0)
        fail_msg("train, %d ranks: %s", k, errbuf);
    }
    snprintf(path, sizeof path, "%s/metrics.jsonl", runk);
    assert_int_equal(numbers(slurp(path), b, kb, 8192), na);
    int compared = 0;
    for (int i = 0; i < na; i++) {
      assert_string_equal(ka[i], kb[i]);
      if (strcmp(ka[i], "time") == 0 || (a[i] != a[i] && b[i] != b[i]))
        continue;
      /* Rounding only (the MPI sums add in another order), amplified in
       * tic, which divides by diag_hessian + 1e-7 (entries near -1e-7
       * occur), and in hess_max_ev (Lanczos stopped at relative 1e-3). */
      const double rel = strcmp(ka[i], "tic") == 0           ? 1e-6
                         : strcmp(ka[i], "hess_max_ev") == 0 ? 1e-9
                                                             : 1e-10;
      if (!(fabs(a[i] - b[i]) <= rel * (fabs(a[i]) > 1e-3 ? fabs(a[i]) : 1e-3)))
        fail_msg("train, %d ranks: %s is %.17g, one process %.17g", k, ka[i],
                 b[i], a[i]);
      compared++;
    }
    assert_true(compared > 100);
    snprintf(want, sizeof want, "%s/checkpoint", run1);
    snprintf(got, sizeof got, "%s/checkpoint", runk);
    snprintf(what, sizeof what, "train checkpoint, %d ranks", k);
    compare_dirs(want, got, what);
  }
}

/* Count the lines of errbuf that start with "curvpack: error:". */
static int error_lines(void) {
  int count = 0;
  for (const char *s = errbuf; s != NULL && *s; s = strchr(s, '\n')) {
    if (*s == '\n')
      s++;
    if (strncmp(s, "curvpack: error: ", 17) == 0)
      count++;
  }
  return count;
}

/* Rank 1 runs out of memory in the middle of a pass over a data set
 * (ulimit on its address space); rank 0 has done its passes and waits to
 * combine. Both end, the job fails, rank 0 prints rank 1's error once. */
static void test_rank_fails_mid_run(void **state) {
  char dir[512], cmd[8192], args[2048];
  need_mpi();
  snprintf(dir, sizeof dir, "%s/big", root);
  mkdir(dir, 0777);
  int64_t shape[4] = {2000, 1, 28, 28}, n = 2000;
  save(tu_random(CPK_F64, 4, shape, 0, 1, 3), dir, "input.npy");
  cpk_tensor *y;
  tu_ok(cpk_tensor_new(&y, CPK_I64, 1, &n));
  save(y, dir, "target.npy");
  snprintf(args, sizeof args,
           "'%s' compute --model %s --params %s --input %s/input.npy "
           "--target %s/target.npy --dtype float64 --threads 1 "
           "--ext batch_grad --data-pass 100 --out %s/out",
           BIN, tu_src("examples/mlp/model.txt"),
           tu_src("examples/mlp/params"), dir, dir, dir);
  /* 1000 x 50176 per-sample gradients of the first layer: 400 MB */
  /* rank 1 under a memory budget (not ulimit -v: a CUDA build maps
   * cuBLAS's libraries, hundreds of MB of address space, at start) */
  snprintf(cmd, sizeof cmd, "%s -np 1 %s : -np 1 %s --max-memory 300M >/dev/null",
           MPIRUN, args, args);
  int st = tu_run(cmd, errbuf, sizeof errbuf);
  if (st == 124)
    fail_msg("the job hung (killed after 120 s): %s", errbuf);
  assert_int_not_equal(st, 0);
  if (strstr(errbuf, "curvpack: error: rank 1: ") == NULL ||
      strstr(errbuf, "out of memory") == NULL)
    fail_msg("expected rank 1's out-of-memory error, got: %s", errbuf);
  assert_int_equal(error_lines(), 1);
  assert_int_equal(tu_count_entries(dir), 2); /* no output directory */
}

/* Errors every rank sees the same: printed once, by rank 0. */
static void test_usage_errors(void **state) {
  char out[512];
  need_mpi();
  const problem *p = find("mlp");
  snprintf(out, sizeof out, "%s/err", root);
  /* 7 samples on 8 ranks */
  assert_int_equal(run(p, 8, "compute", out), 1);
  assert_non_null(strstr(errbuf, "curvpack: error: a batch of 7 samples "
                                 "cannot be split over 8 MPI ranks"));
  assert_int_equal(error_lines(), 1);
  /* a command without a data-parallel mode */
  assert_int_equal(run(p, 2, "jacobian", out), 2);
  assert_non_null(strstr(errbuf, "jacobian has no MPI data-parallel mode"));
  assert_int_equal(error_lines(), 1);
  /* an unknown extension: exit 2 on every rank, one line */
  assert_int_equal(run(p, 3, "compute --ext nope", out), 2);
  assert_int_equal(error_lines(), 1);
  assert_int_equal(tu_count_entries(out), -1);
}

int main(void) {
  /* cmocka 1.1's TAP output marks a skipped test "not ok", which automake
   * counts as a failure; a TAP plan of no tests reports the program as
   * skipped instead. */
  if (!cpk_have_mpi() || CPK_MPIRUN[0] == '\0') {
    printf("1..0 # SKIP curvpack was built without MPI (--with-mpi)\n");
    return 0;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_compute_mlp),
      cmocka_unit_test(test_compute_conv),
      cmocka_unit_test(test_compute_mse),
      cmocka_unit_test(test_compute_bce),
      cmocka_unit_test(test_products),
      cmocka_unit_test(test_spectra),
      cmocka_unit_test(test_data_pass),
      cmocka_unit_test(test_train),
      cmocka_unit_test(test_rank_fails_mid_run),
      cmocka_unit_test(test_usage_errors),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
