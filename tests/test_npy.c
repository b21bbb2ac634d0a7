/*
 * test_npy.c: the .npy reader and writer (lib/npy.c).
 *
 * Fixtures in tests/data/npy/ come from make_npy_cases.py (NumPy). Every
 * fixture array holds value(i) at C-order flat index i, with the formulas of
 * that script repeated in fixture_value() below. Malformed files are built in
 * memory here and handed to cpk_npy_parse.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "curvpack.h"

#ifndef CPK_TEST_SRCDIR
#define CPK_TEST_SRCDIR "."
#endif
#define DATA_DIR CPK_TEST_SRCDIR "/tests/data/npy/"

static char tmpdir[512]; /* a fresh directory for written files */

/* ------------------------------------------------------------------ helpers */

static const char *const CODES[] = {"f4", "f8", "i8", "i4"};
static const cpk_dtype DTYPES[] = {CPK_F32, CPK_F64, CPK_I64, CPK_I32};

/* The element make_npy_cases.py stores at C-order flat index i. */
static double fixture_value(int64_t i, cpk_dtype dtype) {
  double v = (double)(i * 3 - 7) * 0.25 + (double)i / 3.0;
  switch (dtype) {
  case CPK_F32:
    return (float)v;
  case CPK_F64:
    return v;
  case CPK_I64:
    return (double)(i * 1000000007 - 3000000000LL);
  case CPK_I32:
    return (double)(int32_t)(i * 100003 - 1000000);
  }
  return NAN;
}

static void fill_values(cpk_tensor *t) {
  int64_t n = cpk_tensor_numel(t);
  for (int64_t i = 0; i < n; i++)
    cpk_tensor_set(t, i, fixture_value(i, t->dtype));
}

/* Exact comparison with the fixture formula, integers compared as integers. */
static void assert_fixture_values(const cpk_tensor *t) {
  int64_t n = cpk_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) {
    if (t->dtype == CPK_I64)
      assert_true(((const int64_t *)t->data)[i] ==
                  i * 1000000007 - 3000000000LL);
    else
      assert_true(cpk_tensor_get(t, i) == fixture_value(i, t->dtype));
  }
}

static void assert_shape(const cpk_tensor *t, cpk_dtype dtype, int ndim,
                         const int64_t *shape) {
  int64_t stride = 1;
  assert_int_equal(t->dtype, dtype);
  assert_int_equal(t->ndim, ndim);
  for (int i = ndim - 1; i >= 0; i--) {
    assert_int_equal(t->shape[i], shape[i]);
    assert_int_equal(t->strides[i], stride);
    stride *= shape[i];
  }
  assert_true(t->owns_data);
  assert_true(((uintptr_t)t->data & 63) == 0);
}

static cpk_tensor *read_fixture(const char *name) {
  char path[1024];
  cpk_tensor *t = NULL;
  snprintf(path, sizeof path, "%s%s", DATA_DIR, name);
  int rc = cpk_npy_read(path, &t);
  if (rc != CPK_OK)
    fail_msg("reading %s: %s", path, cpk_last_error());
  assert_non_null(t);
  return t;
}

/* Read a fixture and check its dtype, shape and values. */
static void check_fixture(const char *name, cpk_dtype dtype, int ndim,
                          const int64_t *shape) {
  cpk_tensor *t = read_fixture(name);
  assert_shape(t, dtype, ndim, shape);
  assert_fixture_values(t);
  cpk_tensor_free(t);
}

static unsigned char *read_bytes(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL)
    fail_msg("cannot open %s: %s", path, strerror(errno));
  unsigned char *buf = malloc(1 << 20);
  assert_non_null(buf);
  *len = fread(buf, 1, 1 << 20, f);
  fclose(f);
  return buf;
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* Number of entries in `dir` whose name contains `part`. */
static int count_entries(const char *dir, const char *part) {
  int n = 0;
  DIR *d = opendir(dir);
  struct dirent *e;
  assert_non_null(d);
  while ((e = readdir(d)) != NULL)
    n += strstr(e->d_name, part) != NULL;
  closedir(d);
  return n;
}

/* An in-memory .npy image: magic, version, header length, `dict` padded
 * with spaces and '\n' to a multiple of `align` bytes, then `data`. */
typedef struct {
  unsigned char bytes[4096];
  size_t len;
} image;

static void make_image_aligned(image *im, int major, const char *dict,
                               const void *data, size_t data_len,
                               size_t align) {
  size_t len_bytes = major == 1 ? 2 : 4, pre = 8 + len_bytes;
  size_t hlen = strlen(dict) + 1;
  while ((pre + hlen) % align != 0)
    hlen++;
  assert_true(pre + hlen + data_len <= sizeof im->bytes);
  memcpy(im->bytes, "\x93NUMPY", 6);
  im->bytes[6] = (unsigned char)major;
  im->bytes[7] = 0;
  for (size_t i = 0; i < len_bytes; i++)
    im->bytes[8 + i] = (unsigned char)(hlen >> (8 * i));
  memset(im->bytes + pre, ' ', hlen);
  memcpy(im->bytes + pre, dict, strlen(dict));
  im->bytes[pre + hlen - 1] = '\n';
  if (data != NULL)
    memcpy(im->bytes + pre + hlen, data, data_len);
  else
    memset(im->bytes + pre + hlen, 0, data_len);
  im->len = pre + hlen + data_len;
}

static void make_image(image *im, int major, const char *dict,
                       const void *data, size_t data_len) {
  make_image_aligned(im, major, dict, data, data_len, 64);
}

/* Parse must fail with `status`, no tensor, and a message naming the file
 * and containing `needle`. */
static void expect_reject(const void *bytes, size_t len, int status,
                          const char *needle) {
  cpk_tensor *t = (cpk_tensor *)(uintptr_t)1;
  size_t before = cpk_memory_in_use();
  cpk_clear_error();
  int rc = cpk_npy_parse(bytes, len, "bad.npy", &t);
  if (rc != status || strstr(cpk_last_error(), needle) == NULL ||
      strstr(cpk_last_error(), "bad.npy") == NULL)
    fail_msg("expected %s with '%s', got %s: %s", cpk_err_name(status),
             needle, cpk_err_name(rc), cpk_last_error());
  assert_true(t == NULL);
  assert_true(strchr(cpk_last_error(), '\n') == NULL);
  assert_int_equal(cpk_memory_in_use(), before);
}

/* A header dict for 6 float64 zeros must be rejected. */
static void expect_dict_reject(const char *dict, size_t data_len,
                               const char *needle) {
  image im;
  make_image(&im, 1, dict, NULL, data_len);
  expect_reject(im.bytes, im.len, CPK_EFORMAT, needle);
}

/* A header dict with 6 doubles 0..5 (little-endian) must be accepted. */
static void expect_dict_accept(int major, const char *dict, int ndim,
                               const int64_t *shape) {
  double data[6] = {0, 1, 2, 3, 4, 5};
  image im;
  cpk_tensor *t = NULL;
  make_image(&im, major, dict, data, sizeof data);
  int rc = cpk_npy_parse(im.bytes, im.len, "ok.npy", &t);
  if (rc != CPK_OK)
    fail_msg("header %s: %s", dict, cpk_last_error());
  assert_shape(t, CPK_F64, ndim, shape);
  for (int i = 0; i < 6; i++)
    assert_true(cpk_tensor_get(t, i) == i);
  cpk_tensor_free(t);
}

static void tmp_path(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", tmpdir, name);
}

/* ------------------------------------------------------- reading fixtures */

static void test_read_every_layout(void **state) {
  static const char *const orders[] = {"c", "f"};
  static const char *const endians[] = {"le", "be"};
  const int64_t shape[] = {2, 3, 4};
  char name[64];
  for (int d = 0; d < 4; d++)
    for (int o = 0; o < 2; o++)
      for (int e = 0; e < 2; e++) {
        snprintf(name, sizeof name, "%s_%s_%s.npy", orders[o], endians[e],
                 CODES[d]);
        check_fixture(name, DTYPES[d], 3, shape);
      }
}

static void test_read_versions(void **state) {
  const int64_t shape[] = {2, 3, 4};
  check_fixture("v2_c_le_f8.npy", CPK_F64, 3, shape);
  check_fixture("v2_f_be_i4.npy", CPK_I32, 3, shape);
  check_fixture("v3_c_le_f4.npy", CPK_F32, 3, shape);
  check_fixture("v3_f_be_i8.npy", CPK_I64, 3, shape);
}

static void test_read_ranks(void **state) {
  const int64_t d1[] = {7}, d4[] = {2, 3, 1, 4}, empty[] = {0, 3};
  check_fixture("d0_f8.npy", CPK_F64, 0, NULL);
  check_fixture("d1_i4.npy", CPK_I32, 1, d1);
  check_fixture("d4_f_be_f8.npy", CPK_F64, 4, d4);
  check_fixture("empty_f4.npy", CPK_F32, 2, empty);
  cpk_tensor *t = read_fixture("d0_f8.npy");
  assert_int_equal(cpk_tensor_numel(t), 1);
  assert_true(cpk_tensor_get(t, 0) == -1.75);
  cpk_tensor_free(t);
}

/* cpk_npy_parse on the bytes of a file gives what cpk_npy_read gives. */
static void test_parse_matches_read(void **state) {
  size_t len;
  cpk_tensor *a = read_fixture("f_be_f8.npy"), *b = NULL;
  unsigned char *bytes = read_bytes(DATA_DIR "f_be_f8.npy", &len);
  assert_int_equal(cpk_npy_parse(bytes, len, "mem", &b), CPK_OK);
  assert_int_equal(b->ndim, a->ndim);
  assert_true(memcmp(a->data, b->data, 24 * 8) == 0);
  free(bytes);
  cpk_tensor_free(a);
  cpk_tensor_free(b);
}

/* Headers NumPy would accept that np.save does not write. */
static void test_header_variants(void **state) {
  const int64_t s23[] = {2, 3}, s6[] = {6}, s1623[] = {1, 6, 1};
  expect_dict_accept(1, "{'shape': (2, 3), 'fortran_order': False, "
                        "'descr': '<f8'}", 2, s23);
  expect_dict_accept(1, " {  \"descr\" :'<f8' ,'fortran_order':False,"
                        "'shape':( 2 ,3 , ) , }", 2, s23);
  expect_dict_accept(1, "{'descr': '=f8', 'fortran_order': False, "
                        "'shape': (6,)}", 1, s6);
  expect_dict_accept(1, "{'descr': 'f8', 'fortran_order': False, "
                        "'shape': (6,)}", 1, s6);
  expect_dict_accept(1, "{'descr': '|f8', 'fortran_order': True, "
                        "'shape': (6,)}", 1, s6);
  expect_dict_accept(1, "{'descr': '<f8',\n\t'fortran_order': True,\r\n"
                        "'shape': (1, 6, 1), }", 3, s1623);
  /* Python 2 longs, accepted by NumPy for versions 1.0 and 2.0 */
  expect_dict_accept(2, "{'descr': '<f8', 'fortran_order': False, "
                        "'shape': (2L, 3L), }", 2, s23);
  expect_dict_accept(3, "{'descr': '<f8', 'fortran_order': False, "
                        "'shape': (2, 3), }", 2, s23);
  /* a later duplicate key wins, as in a Python dict */
  expect_dict_accept(1, "{'descr': '<i4', 'descr': '<f8', 'fortran_order': "
                        "False, 'shape': (6,), }", 1, s6);
  /* data not aligned to 64 bytes (older writers padded to 16) */
  double data[6] = {0, 1, 2, 3, 4, 5};
  image im;
  cpk_tensor *t = NULL;
  make_image_aligned(&im, 1, "{'descr': '<f8', 'fortran_order': False, "
                             "'shape': (6,), }", data, sizeof data, 16);
  assert_true((im.len - sizeof data) % 64 != 0);
  assert_int_equal(cpk_npy_parse(im.bytes, im.len, "old.npy", &t), CPK_OK);
  assert_true(cpk_tensor_get(t, 5) == 5.0);
  cpk_tensor_free(t);
}

/* Fortran order and big-endian built by hand: a 2x3 int32 matrix. */
static void test_fortran_big_endian_by_hand(void **state) {
  /* C order: [[1, 2, 3], [4, 5, 6]]; Fortran order: 1 4 2 5 3 6. */
  const unsigned char data[] = {0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 2,
                                0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 1, 6};
  image im;
  cpk_tensor *t = NULL;
  make_image(&im, 1, "{'descr': '>i4', 'fortran_order': True, "
                     "'shape': (2, 3), }", data, sizeof data);
  assert_int_equal(cpk_npy_parse(im.bytes, im.len, "m.npy", &t), CPK_OK);
  const int32_t want[] = {1, 2, 3, 4, 5, 256 + 6};
  assert_int_equal(t->dtype, CPK_I32);
  for (int i = 0; i < 6; i++)
    assert_int_equal(((int32_t *)t->data)[i], want[i]);
  cpk_tensor_free(t);
}

/* ---------------------------------------------------------------- writing */

/* The arrays of make_npy_cases.py WRITE_CASES. */
static const struct {
  const char *name;
  cpk_dtype dtype;
  int ndim;
  int64_t shape[CPK_MAX_DIMS];
} WRITE_CASES[] = {
    {"f4_0d", CPK_F32, 0, {0}},
    {"f8_1d", CPK_F64, 1, {5}},
    {"i8_2d", CPK_I64, 2, {2, 3}},
    {"i4_4d", CPK_I32, 4, {2, 1, 3, 2}},
    {"f8_8d", CPK_F64, 8, {1, 2, 1, 1, 2, 1, 1, 3}},
    {"f4_empty", CPK_F32, 2, {0, 3}},
    {"f8_wide", CPK_F64, 2, {1000000000000LL, 0}},
    {"i4_wide8", CPK_I32, 8, {0, 99999, 99999, 99999, 999, 1, 1, 1}},
};

/* Our writer's bytes equal np.save's for the same array; the file reads
 * back to the same tensor. With CPK_TEST_NPY_OUT=DIR the files are also left
 * in DIR for `make_npy_cases.py --check DIR`. */
static void test_write_matches_numpy(void **state) {
  const char *keep = getenv("CPK_TEST_NPY_OUT");
  char path[1024], want_path[1024];
  size_t n = sizeof WRITE_CASES / sizeof WRITE_CASES[0];
  for (size_t c = 0; c < n; c++) {
    cpk_tensor *t = NULL, *back = NULL;
    assert_int_equal(cpk_tensor_new(&t, WRITE_CASES[c].dtype,
                                    WRITE_CASES[c].ndim, WRITE_CASES[c].shape),
                     CPK_OK);
    fill_values(t);
    snprintf(path, sizeof path, "%s/written_%s.npy", keep ? keep : tmpdir,
             WRITE_CASES[c].name);
    if (cpk_npy_write(path, t) != CPK_OK)
      fail_msg("%s", cpk_last_error());
    snprintf(want_path, sizeof want_path, "%ssaved_%s.npy", DATA_DIR,
             WRITE_CASES[c].name);
    size_t got_len, want_len;
    unsigned char *got = read_bytes(path, &got_len);
    unsigned char *want = read_bytes(want_path, &want_len);
    if (got_len != want_len || memcmp(got, want, got_len) != 0)
      fail_msg("%s differs from NumPy's %s", path, want_path);
    assert_int_equal(cpk_npy_read(path, &back), CPK_OK);
    assert_shape(back, t->dtype, t->ndim, t->shape);
    assert_fixture_values(back);
    free(got);
    free(want);
    cpk_tensor_free(back);
    cpk_tensor_free(t);
    if (!keep)
      remove(path);
  }
}

/* Every dtype at ranks 0, 1 and 4, with values that need every bit. */
static void test_roundtrip(void **state) {
  static const int ndims[] = {0, 1, 4};
  static const int64_t shapes[][4] = {{0}, {5}, {2, 3, 1, 4}};
  char path[1024];
  tmp_path(path, sizeof path, "rt.npy");
  for (int d = 0; d < 4; d++)
    for (int s = 0; s < 3; s++) {
      cpk_tensor *t = NULL, *back = NULL;
      assert_int_equal(
          cpk_tensor_new(&t, DTYPES[d], ndims[s], shapes[s]), CPK_OK);
      size_t bytes = (size_t)cpk_tensor_numel(t) * cpk_dtype_size(DTYPES[d]);
      unsigned char *p = t->data;
      for (size_t i = 0; i < bytes; i++)
        p[i] = (unsigned char)(i * 37 + 11 + d);
      if (DTYPES[d] == CPK_F64 && ndims[s] == 1) {
        ((double *)p)[0] = -0.0;
        ((double *)p)[1] = INFINITY;
        ((double *)p)[2] = NAN;
        ((double *)p)[3] = 5e-324;
      }
      if (DTYPES[d] == CPK_I64 && ndims[s] == 1) {
        ((int64_t *)p)[0] = INT64_MIN;
        ((int64_t *)p)[1] = INT64_MAX;
      }
      assert_int_equal(cpk_npy_write(path, t), CPK_OK);
      assert_int_equal(cpk_npy_read(path, &back), CPK_OK);
      assert_shape(back, DTYPES[d], ndims[s], shapes[s]);
      assert_true(memcmp(back->data, t->data, bytes) == 0);
      cpk_tensor_free(back);
      cpk_tensor_free(t);
    }
  assert_int_equal(count_entries(tmpdir, ".tmp."), 0);
  remove(path);
}

/* A strided view (a transpose) is written in C order of its own shape. */
static void test_write_strided(void **state) {
  float base[6] = {1, 2, 3, 4, 5, 6};
  cpk_tensor view, *back = NULL;
  char path[1024];
  tmp_path(path, sizeof path, "transposed.npy");
  memset(&view, 0, sizeof view);
  view.dtype = CPK_F32;
  view.ndim = 2;
  view.shape[0] = 3, view.shape[1] = 2;
  view.strides[0] = 1, view.strides[1] = 3; /* base viewed as (3, 2)^T */
  view.data = base;
  assert_int_equal(cpk_npy_write(path, &view), CPK_OK);
  assert_int_equal(cpk_npy_read(path, &back), CPK_OK);
  const float want[] = {1, 4, 2, 5, 3, 6};
  assert_int_equal(back->shape[0], 3);
  assert_int_equal(back->shape[1], 2);
  for (int i = 0; i < 6; i++)
    assert_true(((float *)back->data)[i] == want[i]);
  cpk_tensor_free(back);
  remove(path);
}

static void test_write_replaces(void **state) {
  const int64_t s1[] = {3}, s2[] = {2, 2};
  cpk_tensor *a = NULL, *b = NULL, *back = NULL;
  char path[1024];
  tmp_path(path, sizeof path, "replace.npy");
  assert_int_equal(cpk_tensor_new(&a, CPK_F64, 1, s1), CPK_OK);
  assert_int_equal(cpk_tensor_new(&b, CPK_I32, 2, s2), CPK_OK);
  fill_values(b);
  assert_int_equal(cpk_npy_write(path, a), CPK_OK);
  assert_int_equal(cpk_npy_write(path, b), CPK_OK);
  assert_int_equal(cpk_npy_read(path, &back), CPK_OK);
  assert_shape(back, CPK_I32, 2, s2);
  assert_fixture_values(back);
  assert_int_equal(count_entries(tmpdir, ".tmp."), 0);
  cpk_tensor_free(a);
  cpk_tensor_free(b);
  cpk_tensor_free(back);
  remove(path);
}

static void test_write_missing_dir(void **state) {
  const int64_t shape[] = {2};
  cpk_tensor *t = NULL;
  char path[1024];
  tmp_path(path, sizeof path, "no/such/dir/x.npy");
  assert_int_equal(cpk_tensor_new(&t, CPK_F32, 1, shape), CPK_OK);
  assert_int_equal(cpk_npy_write(path, t), CPK_EIO);
  assert_non_null(strstr(cpk_last_error(), path));
  assert_non_null(strstr(cpk_last_error(), "No such file or directory"));
  assert_false(file_exists(path));
  cpk_tensor_free(t);
}

/* rename() onto a directory fails: EIO, and the temporary is removed. */
static void test_write_onto_directory(void **state) {
  const int64_t shape[] = {2};
  cpk_tensor *t = NULL;
  char path[1024];
  tmp_path(path, sizeof path, "adir");
  assert_int_equal(mkdir(path, 0700), 0);
  assert_int_equal(cpk_tensor_new(&t, CPK_F32, 1, shape), CPK_OK);
  assert_int_equal(cpk_npy_write(path, t), CPK_EIO);
  assert_non_null(strstr(cpk_last_error(), "cannot write"));
  assert_non_null(strstr(cpk_last_error(), path));
  assert_int_equal(count_entries(tmpdir, ".tmp."), 0);
  assert_int_equal(rmdir(path), 0);
  cpk_tensor_free(t);
}

static void test_write_bad_tensor(void **state) {
  cpk_tensor t;
  char path[1024];
  tmp_path(path, sizeof path, "bad.npy");
  memset(&t, 0, sizeof t);
  t.dtype = CPK_F32;
  t.ndim = CPK_MAX_DIMS + 1;
  assert_int_equal(cpk_npy_write(path, &t), CPK_EINVAL);
  t.ndim = 1;
  t.shape[0] = -2;
  assert_int_equal(cpk_npy_write(path, &t), CPK_EINVAL);
  t.shape[0] = 2; /* no data */
  assert_int_equal(cpk_npy_write(path, &t), CPK_EINVAL);
  t.dtype = (cpk_dtype)7;
  assert_int_equal(cpk_npy_write(path, &t), CPK_EINVAL);
  assert_false(file_exists(path));
}

/* ---------------------------------------------------------------- errors */

static void test_read_io_errors(void **state) {
  cpk_tensor *t = NULL;
  char path[1024];
  tmp_path(path, sizeof path, "missing.npy");
  assert_int_equal(cpk_npy_read(path, &t), CPK_EIO);
  assert_true(t == NULL);
  assert_non_null(strstr(cpk_last_error(), path));
  assert_non_null(strstr(cpk_last_error(), "No such file or directory"));
  assert_int_equal(cpk_npy_read(tmpdir, &t), CPK_EIO);
  assert_non_null(strstr(cpk_last_error(), "Is a directory"));
  /* a format error from a file names the path */
  tmp_path(path, sizeof path, "empty.npy");
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  fclose(f);
  assert_int_equal(cpk_npy_read(path, &t), CPK_EFORMAT);
  assert_non_null(strstr(cpk_last_error(), path));
  remove(path);
}

static void test_reject_preamble(void **state) {
  image im;
  make_image(&im, 1, "{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (6,), }", NULL, 48);
  unsigned char b[4096];
  memcpy(b, im.bytes, im.len);
  expect_reject(b, 0, CPK_EFORMAT, "truncated");
  expect_reject(b, 3, CPK_EFORMAT, "truncated");
  expect_reject(b, 7, CPK_EFORMAT, "truncated");
  expect_reject(b, 9, CPK_EFORMAT, "truncated");
  expect_reject("GIF89a", 6, CPK_EFORMAT, "not a .npy file");
  expect_reject("\x93NUMPX\x01\x00", 8, CPK_EFORMAT, "not a .npy file");
  expect_reject("PK", 2, CPK_EFORMAT, "not a .npy file");
  b[6] = 4;
  expect_reject(b, im.len, CPK_EFORMAT, "version 4.0");
  b[6] = 1, b[7] = 1;
  expect_reject(b, im.len, CPK_EFORMAT, "version 1.1");
  b[6] = 0, b[7] = 0;
  expect_reject(b, im.len, CPK_EFORMAT, "version 0.0");
  b[6] = 1, b[7] = 0;
  /* header length beyond the file */
  b[8] = 0xff, b[9] = 0xff;
  expect_reject(b, im.len, CPK_EFORMAT, "points past the end");
  b[8] = im.bytes[8], b[9] = im.bytes[9];
  expect_reject(b, 100, CPK_EFORMAT, "points past the end");
  /* a version 2.0 file needs 4 length bytes */
  b[6] = 2;
  expect_reject(b, 11, CPK_EFORMAT, "truncated");
  b[8] = 0xf0, b[9] = 0xff, b[10] = 0xff, b[11] = 0xff;
  expect_reject(b, im.len, CPK_EFORMAT, "points past the end");
  /* no header at all */
  const unsigned char zero_len[] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 0, 0};
  expect_reject(zero_len, sizeof zero_len, CPK_EFORMAT, "malformed");
}

static void test_reject_malformed_dict(void **state) {
  static const struct {
    const char *dict, *needle;
  } cases[] = {
      {"", "malformed"},
      {"['descr', '<f8']", "malformed"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (6,), ",
       "malformed"},
      {"{'descr' '<f8', 'fortran_order': False, 'shape': (6,)}", "':'"},
      {"{'descr': '<f8' 'fortran_order': False, 'shape': (6,)}", "','"},
      {"{'descr': '<f8, 'fortran_order': False, 'shape': (6,)}",
       "malformed"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (6,)} x",
       "end of the header"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (6,)}}",
       "end of the header"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (6,),,}",
       "malformed"},
      {"{descr: '<f8', 'fortran_order': False, 'shape': (6,)}", "malformed"},
      {"{'descr': <f8, 'fortran_order': False, 'shape': (6,)}", "malformed"},
      {"{'descr': '<f8', 'fortran_order': 0, 'shape': (6,)}",
       "fortran_order must be True or False"},
      {"{'descr': '<f8', 'fortran_order': true, 'shape': (6,)}",
       "fortran_order must be True or False"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': 6}", "tuple"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (6)}",
       "shape must be a tuple"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': [6]}", "tuple"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (6.0,)}",
       "malformed"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (0x6,)}",
       "malformed"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (06,)}",
       "leading zeros"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (,)}", "malformed"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (2 3)}",
       "malformed"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3}",
       "malformed"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (-,)}",
       "malformed"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': ('6',)}",
       "malformed"},
      {"{'descr': '<f8', 'fortran_order': False, 'shape': (6,)\x01}",
       "unexpected character"},
      /* Python 2 longs are not accepted in version 3.0 (see below) */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_dict_reject(cases[i].dict, 48, cases[i].needle);
  image im;
  make_image(&im, 3, "{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (6L,), }", NULL, 48);
  expect_reject(im.bytes, im.len, CPK_EFORMAT, "malformed");
}

static void test_reject_keys(void **state) {
  expect_dict_reject("{}", 48, "no key 'descr'");
  expect_dict_reject("{'descr': '<f8', 'shape': (6,)}", 48,
                     "no key 'fortran_order'");
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False}", 48,
                     "no key 'shape'");
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (6,), 'extra': 1}",
                     48, "unexpected key string 'extra'");
  expect_dict_reject("{'Descr': '<f8', 'fortran_order': False, "
                     "'shape': (6,)}",
                     48, "unexpected key");
}

static void test_reject_dtypes(void **state) {
  static const struct {
    const char *descr, *needle;
  } cases[] = {
      {"'|O'", "object arrays"},      {"'O'", "object arrays"},
      {"'<f2'", "unsupported dtype '<f2'"},
      {"'<c8'", "unsupported dtype '<c8'"},
      {"'<c16'", "unsupported dtype"}, {"'|b1'", "unsupported dtype '|b1'"},
      {"'<U3'", "unsupported dtype '<U3'"},
      {"'|u1'", "unsupported dtype"}, {"'<u4'", "unsupported dtype '<u4'"},
      {"'<f16'", "unsupported dtype"}, {"'<f'", "unsupported dtype"},
      {"'<M8[ns]'", "unsupported dtype"}, {"'|V8'", "unsupported dtype"},
      {"''", "unsupported dtype"},     {"'<'", "unsupported dtype"},
      {"'<<f8'", "unsupported dtype"}, {"'float64'", "unsupported dtype"},
      {"[('a', '<f8')]", "structured"}, {"('<f8', (2,))", "subarray"},
      {"None", "expected a dtype string"}, {"8", "expected a dtype string"},
  };
  char dict[256];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(dict, sizeof dict,
             "{'descr': %s, 'fortran_order': False, 'shape': (6,), }",
             cases[i].descr);
    expect_dict_reject(dict, 48, cases[i].needle);
  }
}

static void test_reject_shapes(void **state) {
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (1, 1, 1, 1, 1, 1, 1, 1, 6), }",
                     48, "9 dimensions");
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (-6,), }",
                     48, "negative extent -6");
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (2, -3), }",
                     48, "negative extent");
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (0, -3), }",
                     0, "negative extent");
  /* element count overflows int64 */
  expect_dict_reject("{'descr': '<f4', 'fortran_order': False, "
                     "'shape': (4611686018427387904, 4), }",
                     48, "overflows");
  /* element count fits, byte size does not */
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (4611686018427387904,), }",
                     48, "byte size");
  expect_dict_reject("{'descr': '<f4', 'fortran_order': False, "
                     "'shape': (2305843009213693952,), }",
                     48, "byte size");
  /* NumPy checks the size even when an extent is zero */
  expect_dict_reject("{'descr': '<f8', 'fortran_order': True, "
                     "'shape': (0, 4294967296, 4294967296), }",
                     0, "byte size");
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (18446744073709551616,), }",
                     48, "does not fit in 64 bits");
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (9223372036854775808,), }",
                     48, "does not fit in 64 bits");
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (-9223372036854775808,), }",
                     48, "negative extent");
}

static void test_reject_data_size(void **state) {
  const char *dict = "{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (2, 3), }";
  expect_dict_reject(dict, 47, "data truncated");
  expect_dict_reject(dict, 47, "needs 48 bytes, the file has 47");
  expect_dict_reject(dict, 0, "data truncated");
  expect_dict_reject(dict, 49, "file has 1 bytes after the data");
  expect_dict_reject(dict, 96, "file has 48 bytes after the data");
  expect_dict_reject("{'descr': '<f8', 'fortran_order': False, "
                     "'shape': (), }",
                     0, "data truncated");
  expect_dict_reject("{'descr': '<i4', 'fortran_order': False, "
                     "'shape': (0, 3), }",
                     4, "bytes after the data");
}

static void test_parse_bad_arguments(void **state) {
  cpk_tensor *t = NULL;
  assert_int_equal(cpk_npy_parse("x", 1, "x", NULL), CPK_EINVAL);
  assert_int_equal(cpk_npy_parse(NULL, 10, "x", &t), CPK_EINVAL);
  assert_int_equal(cpk_npy_read(NULL, &t), CPK_EINVAL);
  assert_int_equal(cpk_npy_write(NULL, NULL), CPK_EINVAL);
}

/* ----------------------------------------------------------------- driver */

/* Every test must hand back all library memory it took. */
static size_t memory_before;

static int before_each(void **state) {
  memory_before = cpk_memory_in_use();
  return 0;
}

static int after_each(void **state) {
  if (cpk_memory_in_use() != memory_before) {
    print_error("library memory leaked: %zu bytes\n",
                cpk_memory_in_use() - memory_before);
    return -1;
  }
  return 0;
}

static int make_tmpdir(void **state) {
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/test_npy.XXXXXX",
           base && *base ? base : "/tmp");
  return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int remove_tmpdir(void **state) {
  char path[1024];
  DIR *d = opendir(tmpdir);
  struct dirent *e;
  if (d == NULL)
    return -1;
  while ((e = readdir(d)) != NULL)
    if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
      tmp_path(path, sizeof path, e->d_name);
      remove(path);
    }
  closedir(d);
  return rmdir(tmpdir);
}

#define T(f) cmocka_unit_test_setup_teardown(f, before_each, after_each)

/* Streams that never end: /dev/zero is not a .npy file (refused after
 * the first block), and a valid header followed by endless data is read
 * only to one byte past what the header announces. */
static void test_endless_streams(void **state) {
  (void)state;
  cpk_tensor *t = NULL;
  assert_int_equal(cpk_npy_read("/dev/zero", &t), CPK_EFORMAT);
  assert_non_null(strstr(cpk_last_error(), "not a .npy file"));
  assert_null(t);
  char fifo[600], head[600], cmd[2048];
  snprintf(fifo, sizeof fifo, "%s/endless.npy", tmpdir);
  snprintf(head, sizeof head, "%s/head.npy", tmpdir);
  const int64_t shape[1] = {4};
  cpk_tensor *small = NULL;
  assert_int_equal(cpk_tensor_new(&small, CPK_F64, 1, shape), CPK_OK);
  assert_int_equal(cpk_npy_write(head, small), CPK_OK);
  cpk_tensor_free(small);
  assert_int_equal(mkfifo(fifo, 0600), 0);
  snprintf(cmd, sizeof cmd, "(cat '%s'; cat /dev/zero) >'%s' 2>/dev/null &",
           head, fifo);
  assert_int_equal(system(cmd), 0);
  const size_t before = cpk_memory_in_use();
  assert_int_equal(cpk_npy_read(fifo, &t), CPK_EFORMAT);
  assert_non_null(strstr(cpk_last_error(), "after the data"));
  assert_null(t);
  assert_int_equal(cpk_memory_in_use(), before);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      T(test_endless_streams),
      T(test_read_every_layout),
      T(test_read_versions),
      T(test_read_ranks),
      T(test_parse_matches_read),
      T(test_header_variants),
      T(test_fortran_big_endian_by_hand),
      T(test_write_matches_numpy),
      T(test_roundtrip),
      T(test_write_strided),
      T(test_write_replaces),
      T(test_write_missing_dir),
      T(test_write_onto_directory),
      T(test_write_bad_tensor),
      T(test_read_io_errors),
      T(test_reject_preamble),
      T(test_reject_malformed_dict),
      T(test_reject_keys),
      T(test_reject_dtypes),
      T(test_reject_shapes),
      T(test_reject_data_size),
      T(test_parse_bad_arguments),
  };
  return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir) != 0;
}
