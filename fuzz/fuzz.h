/* fuzz.h: what the fuzz harnesses share. Each harness defines
 * LLVMFuzzerTestOneInput; tests/test_fuzz_replay.c includes the harness
 * sources under other names (FUZZ_ENTRY) to run the corpora and the inputs
 * of fixed crashes through the normal test suite. */
#ifndef CPK_FUZZ_H
#define CPK_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#ifndef FUZZ_ENTRY
#define FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

/* Memory budget under which every harness runs: a header that asks for
 * gigabytes must fail with CPK_ENOMEM, not take them. */
#define FUZZ_MEMORY_BUDGET ((size_t)256 << 20)

#endif
