/* device.c: tensors on the context's device (see device.h). */
#include "config.h"

#include <string.h>

#include "device.h"
#ifdef CPK_HAVE_CUDA
#include "gpu_ops.h"
#endif

int cpk__on_cuda(const cpk_context *ctx) {
  return ctx != NULL && ctx->device == CPK_DEVICE_CUDA;
}

#ifdef CPK_HAVE_CUDA
/* Byte size of a tensor of `shape`, overflow-checked. */
static int tensor_bytes(cpk_dtype dtype, int ndim, const int64_t *shape,
                        size_t *bytes) {
  int64_t numel;
  int rc;
  if (ndim < 0 || ndim > CPK_MAX_DIMS)
    return cpk__fail(CPK_EINVAL, "tensor of %d dimensions (at most %d)", ndim,
                     CPK_MAX_DIMS);
  if ((rc = cpk__shape_numel(ndim, shape, &numel, "tensor")) != CPK_OK)
    return rc;
  return cpk__mul_size((size_t)numel, cpk_dtype_size(dtype), bytes, "tensor");
}

/* CPK_EIO naming the first CUDA failure kept in handle g. */
static int gpu_failure(cpk__gpu *g) {
  char why[512];
  if (cpk__gpu_sync(g, why, sizeof why) != 0)
    return cpk__fail(CPK_EIO, "CUDA device: %s", why);
  return cpk__fail(CPK_EIO, "CUDA device: a copy failed");
}

/* Device memory for a tensor of `bytes`, with a message on failure. */
static void *gpu_alloc(const cpk_context *ctx, size_t bytes) {
  char why[512];
  void *p = cpk__gpu_alloc(ctx->gpu, bytes, why, sizeof why);
  if (p == NULL)
    cpk__fail(CPK_ENOMEM, "CUDA device: cannot allocate %zu bytes: %s", bytes,
              why);
  return p;
}
#endif

/* A C-order tensor on the context's device, zero-filled or not. */
static int tensor_new_on(const cpk_context *ctx, cpk_tensor **out,
                         cpk_dtype dtype, int ndim, const int64_t *shape,
                         int zero) {
  if (!cpk__on_cuda(ctx))
    return zero ? cpk_tensor_new(out, dtype, ndim, shape)
                : cpk__tensor_new_uninit(out, dtype, ndim, shape);
#ifdef CPK_HAVE_CUDA
  size_t bytes;
  int rc;
  *out = NULL;
  if ((rc = tensor_bytes(dtype, ndim, shape, &bytes)) != CPK_OK)
    return rc;
  cpk_tensor *t = cpk__calloc(sizeof *t);
  if (t == NULL)
    return CPK_ENOMEM;
  void *data = gpu_alloc(ctx, bytes);
  if (data == NULL) {
    cpk__free(t);
    return CPK_ENOMEM;
  }
  if (zero)
    cpk__gpu_fill_bytes(ctx->gpu, data, 0, bytes);
  else if (cpk__alloc_poisoning())
    cpk__gpu_fill_bytes(ctx->gpu, data, 0xff, bytes);
  cpk__tensor_view(t, dtype, data, ndim, shape);
  t->owns_data = 1;
  t->device = ctx->gpu;
  cpk__gpu_hold(ctx->gpu); /* let go in cpk__device_free */
  *out = t;
  return CPK_OK;
#else
  return cpk__fail(CPK_ENODEV, "this build of curvpack has no CUDA support");
#endif
}

int cpk__tensor_new_on(const cpk_context *ctx, cpk_tensor **out,
                       cpk_dtype dtype, int ndim, const int64_t *shape) {
  return tensor_new_on(ctx, out, dtype, ndim, shape, 1);
}

int cpk__tensor_new_on_uninit(const cpk_context *ctx, cpk_tensor **out,
                              cpk_dtype dtype, int ndim,
                              const int64_t *shape) {
  return tensor_new_on(ctx, out, dtype, ndim, shape, 0);
}

int cpk__tensor_to_device(const cpk_context *ctx, const cpk_tensor *src,
                          cpk_dtype dtype, cpk_tensor **out) {
  cpk_tensor *conv = NULL;
  int rc;
  if (!cpk__on_cuda(ctx))
    return cpk_tensor_convert(out, src, dtype);
  if (src->device == NULL && src->dtype != dtype) {
    if ((rc = cpk_tensor_convert(&conv, src, dtype)) != CPK_OK)
      return rc;
    src = conv;
  }
  rc = cpk__tensor_new_on(ctx, out, dtype, src->ndim, src->shape);
#ifdef CPK_HAVE_CUDA
  const int64_t n = cpk_tensor_numel(src);
  if (rc == CPK_OK && src->device == NULL)
    rc = cpk__tensor_fill_from_host(ctx, *out, src);
  else if (rc == CPK_OK && src->dtype == dtype)
    cpk__gpu_copy_d2d(ctx->gpu, (*out)->data, src->data,
                      (size_t)n * cpk_dtype_size(dtype));
  else if (rc == CPK_OK)
    cpk__cuda_convert(ctx->gpu, dtype == CPK_F64, n, src->data, (*out)->data);
#endif
  cpk_tensor_free(conv);
  return rc;
}

int cpk__tensor_fill_from_host(const cpk_context *ctx, cpk_tensor *dst,
                               const cpk_tensor *src) {
  const size_t bytes =
      (size_t)cpk_tensor_numel(src) * cpk_dtype_size(src->dtype);
  if (dst->device == NULL) {
    memcpy(dst->data, src->data, bytes);
    return CPK_OK;
  }
#ifdef CPK_HAVE_CUDA
  if (cpk__gpu_upload(ctx->gpu, dst->data, src->data, bytes) != 0)
    return cpk__device_sync(ctx);
#endif
  return CPK_OK;
}

/* dst (host memory) := the `bytes` of src's data, on the host or on the
 * device whose handle src holds (waited for). */
static int read_data(const cpk_tensor *src, void *dst, size_t bytes) {
  if (src->device == NULL) {
    memcpy(dst, src->data, bytes);
    return CPK_OK;
  }
#ifdef CPK_HAVE_CUDA
  if (cpk__gpu_download(src->device, dst, src->data, bytes) != 0)
    return gpu_failure(src->device);
#endif
  return CPK_OK;
}

int cpk_tensor_copy_to_host(const cpk_tensor *t, cpk_tensor **out) {
  int rc = cpk__tensor_new_uninit(out, t->dtype, t->ndim, t->shape);
  if (rc != CPK_OK)
    return rc;
  rc = read_data(t, (*out)->data,
                 (size_t)cpk_tensor_numel(t) * cpk_dtype_size(t->dtype));
  if (rc != CPK_OK) {
    cpk_tensor_free(*out);
    *out = NULL;
  }
  return rc;
}

int cpk__tensor_move_to_host(cpk_tensor *t) {
  cpk_tensor *host;
  if (t->device == NULL)
    return CPK_OK;
  int rc = cpk_tensor_copy_to_host(t, &host);
  if (rc != CPK_OK)
    return rc;
  if (t->owns_data)
    cpk__device_free(t->device, t->data);
  t->data = host->data;
  t->owns_data = 1;
  t->device = NULL;
  cpk__tensor_contiguous_strides(t);
  host->owns_data = 0; /* its data now belongs to t */
  cpk_tensor_free(host);
  return CPK_OK;
}

int cpk_tensor_on_device(const cpk_tensor *t) {
  return t != NULL && t->device != NULL;
}

void *cpk_tensor_device_data(const cpk_tensor *t) {
  return cpk_tensor_on_device(t) ? t->data : NULL;
}

int cpk__require_host(const cpk_tensor *t, const char *what) {
  if (!cpk_tensor_on_device(t))
    return CPK_OK;
  return cpk__fail(CPK_EUSAGE,
                   "%s: the tensor is in CUDA device memory (a result left "
                   "on the device); copy it to the host first "
                   "(cpk_tensor_copy_to_host or cpk_results_to_host)",
                   what);
}

void *cpk__scratch_alloc(const cpk_context *ctx, size_t bytes) {
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx))
    return gpu_alloc(ctx, bytes);
#endif
  return cpk__malloc(bytes);
}

void cpk__scratch_free(const cpk_context *ctx, void *p) {
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    if (p != NULL)
      cpk__gpu_free(ctx->gpu, p);
    return;
  }
#endif
  cpk__free(p);
}

int cpk__device_sync(const cpk_context *ctx) {
#ifdef CPK_HAVE_CUDA
  char why[512];
  if (cpk__on_cuda(ctx) && cpk__gpu_sync(ctx->gpu, why, sizeof why) != 0)
    return cpk__fail(CPK_EIO, "CUDA device: %s", why);
#else
  (void)ctx;
#endif
  return CPK_OK;
}

void cpk__device_free(void *gpu, void *data) {
#ifdef CPK_HAVE_CUDA
  cpk__gpu_free(gpu, data);
  cpk__gpu_let_go(gpu);
#else
  (void)gpu;
  (void)data;
#endif
}
