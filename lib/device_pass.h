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

/* Copy every parameter of `m` to the context's device for one pass
 * (cpk__param_value returns the copies), and release the copies and the
 * layers' cached forward state after it. */
int cpk__model_to_device(const cpk_context *ctx, cpk_model *m);
void cpk__model_release_device(cpk_model *m);

#endif
