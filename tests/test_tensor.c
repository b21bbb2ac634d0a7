/* test_tensor.c: tensors, dtypes, size overflow, statuses, memory accounting
 * and the random generator. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"
#include "rng.h"
#include "testutil.h"

static void test_new_and_access(void **state) {
  int64_t shape[3] = {2, 3, 4};
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, CPK_F32, 3, shape));
  assert_int_equal(cpk_tensor_numel(t), 24);
  assert_int_equal(t->strides[0], 12);
  assert_int_equal(t->strides[1], 4);
  assert_int_equal(t->strides[2], 1);
  assert_int_equal((uintptr_t)t->data % 64, 0);
  for (int i = 0; i < 24; i++)
    assert_true(cpk_tensor_get(t, i) == 0.0);
  cpk_tensor_set(t, 5, 1.5);
  assert_true(cpk_tensor_get(t, 5) == 1.5);
  cpk_tensor *d;
  tu_ok(cpk_tensor_convert(&d, t, CPK_F64));
  assert_int_equal(d->dtype, CPK_F64);
  assert_true(cpk_tensor_get(d, 5) == 1.5);
  cpk_tensor_free(d);
  cpk_tensor_free(t);
  cpk_tensor *s;
  tu_ok(cpk_tensor_new(&s, CPK_F64, 0, NULL));
  assert_int_equal(cpk_tensor_numel(s), 1);
  cpk_tensor_free(s);
  cpk_tensor_free(NULL);
}

static void test_overflow_and_bad_shapes(void **state) {
  int64_t huge[3] = {INT64_MAX / 2, 4, 1};
  cpk_tensor *t = (cpk_tensor *)1;
  assert_int_equal(cpk_tensor_new(&t, CPK_F64, 3, huge), CPK_EOVERFLOW);
  assert_null(t);
  assert_non_null(strstr(cpk_last_error(), "overflow"));
  int64_t bytes[1] = {INT64_MAX / 4};
  assert_int_equal(cpk_tensor_new(&t, CPK_F64, 1, bytes), CPK_EOVERFLOW);
  int64_t neg[2] = {2, -1};
  assert_int_equal(cpk_tensor_new(&t, CPK_F64, 2, neg), CPK_EINVAL);
  int64_t many[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
  assert_int_equal(cpk_tensor_new(&t, CPK_F64, 9, many), CPK_EINVAL);
}

static void test_out_of_memory_states_amount(void **state) {
  int64_t big[1] = {(int64_t)1 << 60};
  cpk_tensor *t;
  assert_int_equal(cpk_tensor_new(&t, CPK_I32, 1, big), CPK_ENOMEM);
  assert_non_null(strstr(cpk_last_error(), "4611686018427387904 bytes"));
}

static void test_statuses(void **state) {
  assert_string_equal(cpk_strerror(CPK_OK), "success");
  assert_string_equal(cpk_strerror(CPK_ENOMEM), "out of memory");
  assert_string_equal(cpk_err_name(CPK_EFORMAT), "CPK_EFORMAT");
  assert_string_equal(cpk_err_name(12345), "CPK_UNKNOWN");
  assert_string_equal(cpk_version(), CPK_VERSION_STRING);
  cpk_dtype d;
  tu_ok(cpk_dtype_parse("float64", &d));
  assert_int_equal(d, CPK_F64);
  assert_int_equal(cpk_dtype_parse("float16", &d), CPK_EINVAL);
  assert_string_equal(cpk_dtype_name(CPK_I32), "int32");
  char buf[64];
  int64_t one[1] = {5}, two[2] = {2, 3};
  assert_string_equal(cpk_shape_str(buf, sizeof buf, 1, one), "(5,)");
  assert_string_equal(cpk_shape_str(buf, sizeof buf, 2, two), "(2, 3)");
  assert_string_equal(cpk_shape_str(buf, sizeof buf, 0, NULL), "()");
}

static void test_memory_accounting(void **state) {
  size_t before = cpk_memory_in_use();
  cpk_memory_reset_peak();
  int64_t shape[1] = {1000};
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, CPK_F64, 1, shape));
  assert_true(cpk_memory_in_use() >= before + 8000);
  cpk_tensor_free(t);
  assert_int_equal(cpk_memory_in_use(), before);
  assert_true(cpk_memory_peak() >= before + 8000);
}

static void test_rng(void **state) {
  cpk__rng a, b;
  cpk__rng_seed(&a, 42);
  cpk__rng_seed(&b, 42);
  for (int i = 0; i < 100; i++)
    assert_true(cpk__rng_next(&a) == cpk__rng_next(&b));
  double sum = 0, sq = 0;
  for (int i = 0; i < 100000; i++) {
    double z = cpk__rng_normal(&a);
    sum += z;
    sq += z * z;
  }
  /* mean 0 +- 0.01 (4 sd), variance 1 +- 0.02 */
  assert_true(fabs(sum / 100000) < 0.0127);
  assert_true(fabs(sq / 100000 - 1) < 0.02);
  double u = 0;
  for (int i = 0; i < 100000; i++)
    u += cpk__rng_uniform(&a);
  assert_true(fabs(u / 100000 - 0.5) < 0.004);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_new_and_access),
      cmocka_unit_test(test_overflow_and_bad_shapes),
      cmocka_unit_test(test_out_of_memory_states_amount),
      cmocka_unit_test(test_statuses),
      cmocka_unit_test(test_memory_accounting),
      cmocka_unit_test(test_rng),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
