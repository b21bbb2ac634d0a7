/* device_pass.h: a pass on the CUDA device (see device_pass.c). Private. */
#ifndef CPK_DEVICE_PASS_H
#define CPK_DEVICE_PASS_H

#include "context.h"

/* CPK_ENOTSUP naming `what` when ctx is on the CUDA device (entry points
 * the device path does not cover yet); CPK_OK otherwise. */
int cpk__host_only(const cpk_context *ctx, const char *what);

/* On a CUDA context: CPK_ENOTSUP naming the first layer of `m` without a
 * CUDA path, or `needs_what` when `needs` (backpropagated quantities the
 * device path lacks) is nonzero. CPK_OK otherwise. */
int cpk__device_covers(const cpk_context *ctx, const cpk_model *m,
                       unsigned needs, const char *needs_what);

/* The parameters of `m` on the context's device for one pass: each
 * parameter's resident copy, (re)made where there is none, where it lives
 * on another device handle or where the value is stale, is put in place
 * (cpk__param_value returns it). cpk__model_release_device ends the pass:
 * the copies go out of place (the model keeps them) and the layers' cached
 * forward state is freed. */
int cpk__model_to_device(const cpk_context *ctx, cpk_model *m);
void cpk__model_release_device(cpk_model *m);
/* New device copies of every parameter of `m` for a computation that fixes
 * them (a curvature operator), into slots[i * CPK__MAX_PARAMS + p] for
 * parameter p of layer i: taken on the device from the resident copies
 * (brought up to date first). */
int cpk__model_copy_params(const cpk_context *ctx, cpk_model *m,
                           cpk_tensor **slots);
/* Free the resident copies (the model is freed or rebuilt). */
void cpk__model_free_device(cpk_model *m);

#endif
