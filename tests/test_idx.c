/*
 * test_idx.c: cpk_idx_read on small IDX files this test writes itself,
 * plain and gzip-compressed (zlib), good and bad: every malformed-input
 * branch is an error naming the file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include "curvpack.h"
#include "testutil.h"

static char dir[256];

static int setup(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "%s", tu_tempdir());
  return 0;
}

static int teardown(void **state) {
  (void)state;
  tu_rmtree(dir);
  return 0;
}

static const char *path_of(const char *name) {
  static char buf[4][512];
  static int next;
  char *b = buf[next++ % 4];
  snprintf(b, sizeof buf[0], "%s/%s", dir, name);
  return b;
}

/* Write bytes to DIR/name, gzip-compressed when the name ends in .gz. */
static const char *write_file(const char *name, const unsigned char *bytes,
                              size_t len) {
  const char *p = path_of(name);
  size_t n = strlen(name);
  if (n > 3 && strcmp(name + n - 3, ".gz") == 0) {
    gzFile f = gzopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(gzwrite(f, bytes, (unsigned)len), (int)len);
    assert_int_equal(gzclose(f), Z_OK);
  } else {
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    fclose(f);
  }
  return p;
}

/* An IDX image of unsigned bytes: header for `dims`, then `count` data
 * bytes (value (i * 7) % 256 at flat index i), into buf; returns length. */
static size_t make_idx(unsigned char *buf, int type, int ndim,
                       const uint32_t *dims, size_t count) {
  size_t at = 0;
  buf[at++] = 0;
  buf[at++] = 0;
  buf[at++] = (unsigned char)type;
  buf[at++] = (unsigned char)ndim;
  for (int d = 0; d < ndim; d++) {
    buf[at++] = (unsigned char)(dims[d] >> 24);
    buf[at++] = (unsigned char)(dims[d] >> 16);
    buf[at++] = (unsigned char)(dims[d] >> 8);
    buf[at++] = (unsigned char)dims[d];
  }
  for (size_t i = 0; i < count; i++)
    buf[at++] = (unsigned char)((i * 7) % 256);
  return at;
}

static unsigned char buf[1 << 16];

/* The read fails with `status` and a message naming the file and
 * containing `needle`. */
static void fails(const char *path, int status, const char *needle) {
  cpk_tensor *t = (cpk_tensor *)1;
  int rc = cpk_idx_read(path, CPK_F32, 1.0 / 255.0, 0, &t);
  if (rc != status || strstr(cpk_last_error(), path) == NULL ||
      strstr(cpk_last_error(), needle) == NULL) {
    print_error("%s: got %s \"%s\", expected %s naming the file and \"%s\"\n",
                path, cpk_err_name(rc), cpk_last_error(), cpk_err_name(status),
                needle);
    fail();
  }
  assert_null(t);
}

static void test_images_plain_and_gz(void **state) {
  (void)state;
  const uint32_t dims[3] = {5, 3, 4};
  size_t len = make_idx(buf, 0x08, 3, dims, 60);
  const char *names[2] = {"images", "images.gz"};
  for (int k = 0; k < 2; k++) {
    const char *p = write_file(names[k], buf, len);
    for (int dt = 0; dt < 2; dt++) {
      cpk_tensor *t;
      tu_ok(cpk_idx_read(p, dt ? CPK_F64 : CPK_F32, 1.0 / 255.0, 0, &t));
      assert_int_equal(t->dtype, dt ? CPK_F64 : CPK_F32);
      assert_int_equal(t->ndim, 3);
      assert_int_equal(t->shape[0], 5);
      assert_int_equal(t->shape[1], 3);
      assert_int_equal(t->shape[2], 4);
      for (int64_t i = 0; i < 60; i++) {
        double want = (double)((i * 7) % 256) / 255.0;
        assert_true(fabs(cpk_tensor_get(t, i) - want) <= 1e-7);
      }
      cpk_tensor_free(t);
    }
    /* The first items only. */
    cpk_tensor *t;
    tu_ok(cpk_idx_read(p, CPK_F32, 1.0, 2, &t));
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(cpk_tensor_numel(t), 24);
    assert_true(cpk_tensor_get(t, 23) == (double)((23 * 7) % 256));
    cpk_tensor_free(t);
    /* More than there are: all of them. */
    tu_ok(cpk_idx_read(p, CPK_F32, 1.0, 99, &t));
    assert_int_equal(t->shape[0], 5);
    cpk_tensor_free(t);
  }
}

static void test_labels_int(void **state) {
  (void)state;
  const uint32_t dims[1] = {300};
  size_t len = make_idx(buf, 0x08, 1, dims, 300);
  const char *p = write_file("labels.gz", buf, len);
  cpk_tensor *t;
  tu_ok(cpk_idx_read(p, CPK_I64, 1.0, 0, &t));
  assert_int_equal(t->dtype, CPK_I64);
  assert_int_equal(t->shape[0], 300);
  for (int64_t i = 0; i < 300; i++)
    assert_int_equal(((int64_t *)t->data)[i], (i * 7) % 256);
  cpk_tensor_free(t);
  tu_ok(cpk_idx_read(p, CPK_I32, 1.0, 0, &t));
  assert_int_equal(((int32_t *)t->data)[299], (299 * 7) % 256);
  cpk_tensor_free(t);
  /* Integers take no scale; a negative count is refused. */
  assert_int_equal(cpk_idx_read(p, CPK_I64, 0.5, 0, &t), CPK_EINVAL);
  assert_int_equal(cpk_idx_read(p, CPK_F32, 1.0, -1, &t), CPK_EINVAL);
}

static void test_bad_files(void **state) {
  (void)state;
  const uint32_t dims[2] = {4, 4};
  size_t len = make_idx(buf, 0x08, 2, dims, 16);
  for (int gz = 0; gz < 2; gz++) {
    char name[64];
    const char *ext = gz ? ".gz" : "";
#define NAME(s) (snprintf(name, sizeof name, "%s%s", s, ext), name)
    /* missing */
    fails(path_of(NAME("absent")), CPK_EIO, "cannot open");
    /* empty, and a header cut short */
    fails(write_file(NAME("empty"), buf, 0), CPK_EFORMAT,
          "truncated IDX header");
    fails(write_file(NAME("short"), buf, 6), CPK_EFORMAT,
          "truncated IDX header");
    /* bad magic */
    unsigned char bad[64];
    memcpy(bad, buf, len);
    bad[0] = 0x1f;
    fails(write_file(NAME("magic"), bad, len), CPK_EFORMAT, "not an IDX file");
    /* an element type that exists but is not bytes, and one that does not */
    memcpy(bad, buf, len);
    bad[2] = 0x0D;
    fails(write_file(NAME("float"), bad, len), CPK_ENOTSUP, "float32");
    bad[2] = 0x42;
    fails(write_file(NAME("type"), bad, len), CPK_EFORMAT,
          "unknown IDX element type");
    /* no dimensions, too many */
    memcpy(bad, buf, len);
    bad[3] = 0;
    fails(write_file(NAME("dims0"), bad, len), CPK_EFORMAT, "0 dimensions");
    bad[3] = 9;
    fails(write_file(NAME("dims9"), bad, len), CPK_EFORMAT, "9 dimensions");
    /* an extent of 0 */
    const uint32_t zero[2] = {4, 0};
    size_t zl = make_idx(bad, 0x08, 2, zero, 0);
    fails(write_file(NAME("zero"), bad, zl), CPK_EFORMAT, "extent 0");
    /* data cut short, and data beyond what the header says */
    fails(write_file(NAME("cut"), buf, len - 3), CPK_EFORMAT,
          "truncated IDX data");
    unsigned char longer[64];
    memcpy(longer, buf, len);
    longer[len] = 1;
    fails(write_file(NAME("long"), longer, len + 1), CPK_EFORMAT,
          "data continues");
    /* extents whose product overflows */
    const uint32_t huge[3] = {0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu};
    size_t hl = make_idx(bad, 0x08, 3, huge, 0);
    fails(write_file(NAME("huge"), bad, hl), CPK_EOVERFLOW, "overflows");
#undef NAME
  }
  /* A corrupt gzip stream (its body overwritten). */
  const char *p = write_file("corrupt.gz", buf, len);
  FILE *f = fopen(p, "r+b");
  assert_non_null(f);
  fseek(f, 12, SEEK_SET);
  for (int i = 0; i < 8; i++)
    fputc(0xAB, f);
  fclose(f);
  cpk_tensor *t = NULL;
  int rc = cpk_idx_read(p, CPK_F32, 1.0, 0, &t);
  assert_true(rc == CPK_EFORMAT || rc == CPK_EIO);
  assert_non_null(strstr(cpk_last_error(), p));
  assert_null(t);
}

/* A header that announces far more than the file holds (3 x 2^30 bytes in a
 * 20-byte file) fails as truncated, without taking the memory first: under
 * a 64 MiB budget the read must end with CPK_EFORMAT, not CPK_ENOMEM. */
static void test_lying_header(void **state) {
  (void)state;
  const uint32_t dims[2] = {3, 1u << 30};
  unsigned char bad[64];
  size_t len = make_idx(bad, 0x08, 2, dims, 4);
  size_t before = cpk_memory_in_use();
  cpk_memory_set_limit((size_t)64 << 20);
  for (int gz = 0; gz < 2; gz++) {
    const char *p = write_file(gz ? "lying.gz" : "lying", bad, len);
    cpk_tensor *t = NULL;
    assert_int_equal(cpk_idx_read(p, CPK_F32, 1.0, 0, &t), CPK_EFORMAT);
    assert_non_null(strstr(cpk_last_error(), "truncated IDX data"));
    assert_null(t);
    /* Likewise the first item alone (2^30 bytes announced). */
    assert_int_equal(cpk_idx_read(p, CPK_F32, 1.0, 1, &t), CPK_EFORMAT);
  }
  cpk_memory_set_limit(0);
  assert_int_equal(cpk_memory_in_use(), before);
}

/* Fashion-MNIST as Debian ships it, when it is installed. */
static void test_fashion_mnist(void **state) {
  (void)state;
  const char *p = "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz";
  FILE *f = fopen(p, "rb");
  if (f == NULL)
    skip();
  fclose(f);
  cpk_tensor *t;
  tu_ok(cpk_idx_read(p, CPK_I64, 1.0, 0, &t));
  assert_int_equal(t->ndim, 1);
  assert_int_equal(t->shape[0], 10000);
  int64_t counts[10] = {0};
  for (int64_t i = 0; i < 10000; i++) {
    int64_t y = ((int64_t *)t->data)[i];
    assert_true(y >= 0 && y < 10);
    counts[y]++;
  }
  for (int c = 0; c < 10; c++)
    assert_int_equal(counts[c], 1000);
  cpk_tensor_free(t);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_images_plain_and_gz, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_labels_int, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_files, setup, teardown),
      cmocka_unit_test_setup_teardown(test_lying_header, setup, teardown),
      cmocka_unit_test(test_fashion_mnist),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
