/*
 * device.h: where the tensors of a pass live (private). With a context on
 * the CUDA device a pass keeps its activations, blocks and results in
 * device memory; these helpers allocate, copy and free tensors on the
 * context's device so the code above them reads the same for both.
 * A NULL context means the host.
 */
#ifndef CPK_DEVICE_H
#define CPK_DEVICE_H

#include "context.h"

/* Nonzero when `ctx` computes on the CUDA device. */
int cpk__on_cuda(const cpk_context *ctx);

/* A zero-filled C-order tensor on the context's device. */
int cpk__tensor_new_on(const cpk_context *ctx, cpk_tensor **out,
                       cpk_dtype dtype, int ndim, const int64_t *shape);
/* The same without the fill (see cpk__alloc_poison), for a tensor whose
 * every element is written before anything reads it. */
int cpk__tensor_new_on_uninit(const cpk_context *ctx, cpk_tensor **out,
                              cpk_dtype dtype, int ndim,
                              const int64_t *shape);
/* A new tensor on the context's device holding `src` (host or device
 * memory of this context) converted to `dtype`. */
int cpk__tensor_to_device(const cpk_context *ctx, const cpk_tensor *src,
                          cpk_dtype dtype, cpk_tensor **out);
/* Bring t's data to host memory in place (one download, waited for; the
 * device memory is freed): the same cpk_tensor, now a C-order host tensor.
 * CPK_OK at once for a host tensor. */
int cpk__tensor_move_to_host(cpk_tensor *t);
/* Copy the contents of host tensor `src` into `dst` (same dtype and element
 * count) on the context's device. */
int cpk__tensor_fill_from_host(const cpk_context *ctx, cpk_tensor *dst,
                               const cpk_tensor *src);

/* Scratch memory of `bytes` on the context's device (not zeroed); NULL
 * with a CPK_ENOMEM message stating the bytes. */
void *cpk__scratch_alloc(const cpk_context *ctx, size_t bytes);
void cpk__scratch_free(const cpk_context *ctx, void *p);

/* Wait for the device; CPK_EIO naming the first CUDA failure since the
 * last call. CPK_OK at once on the host. */
int cpk__device_sync(const cpk_context *ctx);

/* Release device memory of `gpu` (a tensor's `device`) and the tensor's
 * hold on that handle (taken by cpk__tensor_new_on). */
void cpk__device_free(void *gpu, void *data);

#endif
