/*
 * test_fuzz_replay.c: the fuzz harnesses of fuzz/ run as ordinary code
 * over their seed corpora (fuzz/corpus/HARNESS/) and over the inputs of
 * every crash the fuzzers found (fuzz/regressions/HARNESS/), so that the
 * normal suite, the sanitizer build and valgrind see them all. A harness
 * traps on any broken promise (a failure without a message, a tensor left
 * behind), so passing means: each input is accepted or refused cleanly.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "curvpack.h"
#include "testutil.h"

#define FUZZ_ENTRY replay_npy
#include "../fuzz/fuzz_npy.c"
#undef FUZZ_ENTRY
#define FUZZ_ENTRY replay_modelfile
#include "../fuzz/fuzz_modelfile.c"
#undef FUZZ_ENTRY
#define FUZZ_ENTRY replay_idx
#include "../fuzz/fuzz_idx.c"
#undef FUZZ_ENTRY
#define FUZZ_ENTRY replay_cli
#include "../fuzz/fuzz_cli.c"
#undef FUZZ_ENTRY

typedef int (*entry_fn)(const uint8_t *, size_t);

/* Run every file of fuzz/KIND/NAME through `fn`; returns how many. */
static int replay_dir(const char *kind, const char *name, entry_fn fn) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/fuzz/%s/%s", CPK_TEST_SRCDIR, kind, name);
  DIR *d = opendir(dir);
  int count = 0;
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (e->d_name[0] == '.')
      continue;
    char path[2048];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    fn(buf, (size_t)n);
    free(buf);
    count++;
  }
  closedir(d);
  cpk_memory_set_limit(0);
  return count;
}

static void replay(const char *name, entry_fn fn, int min_seeds) {
  int seeds = replay_dir("corpus", name, fn);
  int crashes = replay_dir("regressions", name, fn);
  print_message("# %s: %d seeds, %d regression inputs\n", name, seeds, crashes);
  assert_true(seeds >= min_seeds);
}

static void test_npy(void **state) {
  (void)state;
  replay("npy", replay_npy, 30);
}
static void test_modelfile(void **state) {
  (void)state;
  replay("modelfile", replay_modelfile, 10);
}
static void test_idx(void **state) {
  (void)state;
  replay("idx", replay_idx, 5);
}
static void test_cli(void **state) {
  (void)state;
  replay("cli", replay_cli, 5);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_npy),
      cmocka_unit_test(test_modelfile),
      cmocka_unit_test(test_idx),
      cmocka_unit_test(test_cli),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
