/* testutil.h: helpers shared by the cmocka test programs. */
#ifndef CPK_TESTUTIL_H
#define CPK_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "curvpack.h"

#ifndef CPK_TEST_SRCDIR
#define CPK_TEST_SRCDIR "."
#endif
#ifndef CPK_TEST_BUILDDIR
#define CPK_TEST_BUILDDIR "."
#endif

/* Path under the source tree (static buffer, rotating over 8 slots). */
const char *tu_src(const char *rel);

/* A tensor of the given shape filled with uniform draws in [lo, hi)
 * from a fixed-seed generator (seed). Fails the test on error. */
cpk_tensor *tu_random(cpk_dtype dt, int ndim, const int64_t *shape,
                      double lo, double hi, uint64_t seed);
/* Assert a status is CPK_OK, printing cpk_last_error() otherwise. */
#define tu_ok(expr) tu_ok_at((expr), #expr, __FILE__, __LINE__)
void tu_ok_at(int rc, const char *expr, const char *file, int line);

/* Assert |a - b| <= atol + rtol * max|b| elementwise over two tensors (or
 * arrays); reports the worst element. */
void tu_assert_close(const cpk_tensor *a, const cpk_tensor *b, double rtol,
                     double atol, const char *what);
void tu_assert_close_array(const double *a, const double *b, int64_t n,
                           double rtol, double atol, const char *what);

/* c [m, n] = A B by direct sums, A [m, k] read at a[i * a_row + l * a_col]
 * (a_row = k, a_col = 1 for A itself; 1 and m for the transpose of a
 * [k, m]), B [k, n] row major; mag (unless NULL) gets the sum of the
 * magnitudes of each entry's terms, a scale for rounding tolerances. */
void tu_product(int64_t m, int64_t n, int64_t k, const double *a,
                int64_t a_row, int64_t a_col, const double *b, double *c,
                double *mag);

/* The widest instruction set this CPU offers the register tiles of
 * ops_tiles.c: 2 AVX-512, 1 AVX2 with FMA, 0 neither. */
int tu_cpu_tile_level(void);

/* Run a shell command; returns its exit status and stores its stderr
 * (truncated to len) in err when err != NULL. */
int tu_run(const char *cmd, char *err, size_t len);

/* A fresh empty temporary directory (static buffer). */
const char *tu_tempdir(void);
/* Remove a directory tree (rm -rf). */
void tu_rmtree(const char *path);
/* Number of entries in a directory (not counting . and ..), -1 if absent. */
int tu_count_entries(const char *dir);

#endif
