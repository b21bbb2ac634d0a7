/* testutil.c: helpers shared by the cmocka test programs. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

const char *tu_src(const char *rel) {
  static char bufs[8][1024];
  static int next;
  char *b = bufs[next++ % 8];
  snprintf(b, sizeof bufs[0], "%s/%s", CPK_TEST_SRCDIR, rel);
  return b;
}

void tu_ok_at(int rc, const char *expr, const char *file, int line) {
  if (rc != CPK_OK) {
    print_error("%s:%d: %s returned %s: %s\n", file, line, expr,
                cpk_err_name(rc), cpk_last_error());
    fail();
  }
}

cpk_tensor *tu_random(cpk_dtype dt, int ndim, const int64_t *shape,
                      double lo, double hi, uint64_t seed) {
  cpk_tensor *t = NULL;
  tu_ok(cpk_tensor_new(&t, dt, ndim, shape));
  uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  int64_t n = cpk_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    double u = (double)(s >> 11) * 0x1.0p-53;
    cpk_tensor_set(t, i, lo + (hi - lo) * u);
  }
  return t;
}

void tu_assert_close_array(const double *a, const double *b, int64_t n,
                           double rtol, double atol, const char *what) {
  double scale = 0.0, worst = 0.0;
  int64_t at = -1;
  for (int64_t i = 0; i < n; i++)
    scale = fmax(scale, fabs(b[i]));
  for (int64_t i = 0; i < n; i++) {
    double err = fabs(a[i] - b[i]);
    if (!(err <= atol + rtol * scale) && (at < 0 || err > worst || isnan(err))) {
      worst = err;
      at = i;
    }
  }
  if (at >= 0) {
    print_error("%s: element %lld is %.17g, expected %.17g (|err| %.3g, "
                "tolerance %.3g)\n",
                what, (long long)at, a[at], b[at], worst, atol + rtol * scale);
    fail();
  }
}

void tu_assert_close(const cpk_tensor *a, const cpk_tensor *b, double rtol,
                     double atol, const char *what) {
  int64_t n = cpk_tensor_numel(b);
  if (a->ndim != b->ndim || cpk_tensor_numel(a) != n) {
    char sa[128], sb[128];
    print_error("%s: shape %s, expected %s\n", what,
                cpk_shape_str(sa, sizeof sa, a->ndim, a->shape),
                cpk_shape_str(sb, sizeof sb, b->ndim, b->shape));
    fail();
  }
  for (int i = 0; i < a->ndim; i++)
    assert_int_equal(a->shape[i], b->shape[i]);
  double *x = malloc((size_t)(n ? n : 1) * sizeof *x);
  double *y = malloc((size_t)(n ? n : 1) * sizeof *y);
  assert_non_null(x);
  assert_non_null(y);
  for (int64_t i = 0; i < n; i++) {
    x[i] = cpk_tensor_get(a, i);
    y[i] = cpk_tensor_get(b, i);
  }
  tu_assert_close_array(x, y, n, rtol, atol, what);
  free(x);
  free(y);
}

int tu_run(const char *cmd, char *err, size_t len) {
  char errfile[] = "/tmp/cpk-test-stderr-XXXXXX";
  int fd = mkstemp(errfile);
  assert_true(fd >= 0);
  close(fd);
  size_t n = strlen(cmd) + strlen(errfile) + 16;
  char *full = malloc(n);
  assert_non_null(full);
  snprintf(full, n, "%s 2>%s", cmd, errfile);
  int st = system(full);
  free(full);
  if (err != NULL && len > 0) {
    FILE *f = fopen(errfile, "r");
    size_t got = f ? fread(err, 1, len - 1, f) : 0;
    err[got] = '\0';
    if (f)
      fclose(f);
  }
  unlink(errfile);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

const char *tu_tempdir(void) {
  static char dir[64];
  strcpy(dir, "/tmp/cpk-test-XXXXXX");
  assert_non_null(mkdtemp(dir));
  return dir;
}

void tu_rmtree(const char *path) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
  if (system(cmd) != 0)
    print_error("could not remove %s\n", path);
}

int tu_count_entries(const char *path) {
  DIR *d = opendir(path);
  if (d == NULL)
    return -1;
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) != NULL;)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
      n++;
  closedir(d);
  return n;
}

void tu_product(int64_t m, int64_t n, int64_t k, const double *a,
                int64_t a_row, int64_t a_col, const double *b, double *c,
                double *mag) {
  for (int64_t i = 0; i < m; i++)
    for (int64_t j = 0; j < n; j++) {
      double s = 0, g = 0;
      for (int64_t l = 0; l < k; l++) {
        const double t = a[i * a_row + l * a_col] * b[l * n + j];
        s += t;
        g += fabs(t);
      }
      c[i * n + j] = s;
      if (mag != NULL)
        mag[i * n + j] = g;
    }
}

int tu_cpu_tile_level(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return 1;
#endif
  return 0;
}
