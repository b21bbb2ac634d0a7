/* results.h: building a cpk_results (private). */
#ifndef CPK_RESULTS_H
#define CPK_RESULTS_H

#include "internal.h"

int cpk__results_new(cpk_results **out);
/* Append a tensor under `name`; takes ownership of `t` (freed on failure). */
int cpk__results_add(cpk_results *r, const char *name, cpk_tensor *t);
/* Allocate a zeroed tensor and append it; *t points to it (owned by r). */
int cpk__results_alloc(cpk_results *r, const char *name, cpk_dtype dtype,
                       int ndim, const int64_t *shape, cpk_tensor **t);
/* The same without the fill, for a result written in full before it is
 * read (see cpk__alloc_poison). */
int cpk__results_alloc_uninit(cpk_results *r, const char *name,
                              cpk_dtype dtype, int ndim, const int64_t *shape,
                              cpk_tensor **t);

/* Allocate later results on the device of `ctx` (a device pass); NULL:
 * on the host. cpk_results_to_host brings them back (and allocates on the
 * host again). */
void cpk__results_on(cpk_results *r, const cpk_context *ctx);
/* Replace the tensor of item i (the old one is freed; takes ownership). */
void cpk__results_set(cpk_results *r, int i, cpk_tensor *t);
/* Remove the item called `name` (if any), freeing its tensor. */
void cpk__results_drop(cpk_results *r, const char *name);

#endif
