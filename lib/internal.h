/*
 * internal.h: helpers shared inside libcurvpack (not installed).
 * Internal non-static symbols carry a double underscore: cpk__name.
 */
#ifndef CPK_INTERNAL_H
#define CPK_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "curvpack.h"

#if defined(__GNUC__)
#define CPK__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define CPK__PRINTF(f, a)
#endif

/* Record `fmt` as the calling thread's last error and return `status`.
 * Usage: return cpk__fail(CPK_EINVAL, "%s: expected ...", path); */
int cpk__fail(int status, const char *fmt, ...) CPK__PRINTF(2, 3);
/* Prefix the current last error with "prefix: " (for adding context such as a
 * file name on the way up). Returns `status`. */
int cpk__fail_prefix(int status, const char *fmt, ...) CPK__PRINTF(2, 3);

/* Evaluate a status expression; on failure jump to `label` with `rc` set. */
#define CPK__TRY(rc, expr, label)                                              \
  do {                                                                         \
    (rc) = (expr);                                                             \
    if ((rc) != CPK_OK) goto label;                                            \
  } while (0)

/* The machine's physical memory in bytes, 0 where it cannot be read. */
size_t cpk__machine_memory(void);

/* Tracked, 64-byte aligned allocation (counts toward cpk_memory_*).
 * Returns NULL and records a CPK_ENOMEM message stating the bytes asked for.
 * cpk__calloc zero-fills. Sizes of 0 allocate a minimal block. */
void *cpk__malloc(size_t bytes);
void *cpk__calloc(size_t bytes);
void cpk__free(void *p);

/* Overflow-checked size arithmetic: return 0 and store the result, or
 * return CPK_EOVERFLOW with a message naming `what`. */
int cpk__mul_size(size_t a, size_t b, size_t *out, const char *what);
int cpk__shape_numel(int ndim, const int64_t *shape, int64_t *out,
                     const char *what);

/* cpk_tensor_new without the zero fill, for tensors written in full
 * before anything reads them (a download from the device, the output of a
 * layer whose kind says fills_output). */
int cpk__tensor_new_uninit(cpk_tensor **out, cpk_dtype dtype, int ndim,
                           const int64_t *shape);
/* For tests: while on, unfilled tensors (cpk__tensor_new_uninit and
 * cpk__tensor_new_on_uninit, host or device) come filled with all-ones
 * bytes, a NaN in both float types, so that a producer that skips or reads
 * an element of its output shows up in the results. Off by default. */
void cpk__alloc_poison(int on);
int cpk__alloc_poisoning(void);
/* Wrap an existing buffer as a contiguous tensor header (no ownership). */
void cpk__tensor_view(cpk_tensor *t, cpk_dtype dtype, void *data, int ndim,
                      const int64_t *shape);
/* Reset the strides of `t` to C order. */
void cpk__tensor_contiguous_strides(cpk_tensor *t);
int cpk__is_float(cpk_dtype dtype);
/* CPK_EUSAGE naming `what` when t's data is in device memory (a result
 * left on the device): every reader of tensor data on the host checks it
 * first. CPK_OK for a host tensor. */
int cpk__require_host(const cpk_tensor *t, const char *what);
/* Fail with CPK_ENONFINITE naming `what` if any element is NaN or inf
 * (CPK_EUSAGE for a tensor in device memory, as cpk__require_host). */
int cpk__check_finite(const cpk_tensor *t, const char *what);
/* The same for an array about to be converted to `as`: float64 values beyond
 * float32's range fail too when `as` is CPK_F32 (they would become inf). */
int cpk__check_finite_in(const cpk_tensor *t, cpk_dtype as, const char *what);

/* Duplicate a string through malloc (NULL on failure, with message). */
char *cpk__strdup(const char *s);

/* oneDNN (builds with CPK_HAVE_DNNL; lib/layers/conv_dnnl.c). On unless
 * CPK_DNNL=0 in the environment or cpk__dnnl_enable(0). */
int cpk__dnnl_enabled(void);
/* oneDNN's single-precision GEMM, row-major as cblas_sgemm: about a tenth
 * faster than OpenBLAS's on this library's shapes (its beta = 0 fill
 * included). CPK_OK once computed; nonzero where oneDNN is off or fails
 * (the caller then uses BLAS). */
int cpk__dnnl_sgemm(int trans_a, int trans_b, int64_t m, int64_t n, int64_t k,
                    float alpha, const float *a, int64_t lda, const float *b,
                    int64_t ldb, float beta, float *c, int64_t ldc);

#endif /* CPK_INTERNAL_H */
