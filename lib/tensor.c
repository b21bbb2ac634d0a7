/* tensor.c: dense tensors, dtypes and overflow-checked shape arithmetic. */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "internal.h"

size_t cpk_dtype_size(cpk_dtype dtype) {
  switch (dtype) {
  case CPK_F32:
  case CPK_I32:
    return 4;
  case CPK_F64:
  case CPK_I64:
    return 8;
  }
  return 0;
}

const char *cpk_dtype_name(cpk_dtype dtype) {
  switch (dtype) {
  case CPK_F32:
    return "float32";
  case CPK_F64:
    return "float64";
  case CPK_I64:
    return "int64";
  case CPK_I32:
    return "int32";
  }
  return "unknown";
}

int cpk_dtype_parse(const char *name, cpk_dtype *out) {
  if (strcmp(name, "float32") == 0)
    *out = CPK_F32;
  else if (strcmp(name, "float64") == 0)
    *out = CPK_F64;
  else
    return cpk__fail(CPK_EINVAL,
                     "unknown dtype '%s' (expected float32 or float64)", name);
  return CPK_OK;
}

int cpk__is_float(cpk_dtype dtype) {
  return dtype == CPK_F32 || dtype == CPK_F64;
}

int cpk__mul_size(size_t a, size_t b, size_t *out, const char *what) {
  if (a != 0 && b > SIZE_MAX / a)
    return cpk__fail(CPK_EOVERFLOW, "%s: size %zu x %zu overflows", what, a, b);
  *out = a * b;
  return CPK_OK;
}

int cpk__shape_numel(int ndim, const int64_t *shape, int64_t *out,
                     const char *what) {
  int64_t n = 1;
  char buf[256];
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return cpk__fail(CPK_EINVAL, "%s: negative extent in shape %s", what,
                       cpk_shape_str(buf, sizeof buf, ndim, shape));
    if (shape[i] != 0 && n > INT64_MAX / shape[i])
      return cpk__fail(CPK_EOVERFLOW, "%s: the size of shape %s overflows",
                       what, cpk_shape_str(buf, sizeof buf, ndim, shape));
    n *= shape[i];
  }
  *out = n;
  return CPK_OK;
}

char *cpk_shape_str(char *buf, size_t len, int ndim, const int64_t *shape) {
  size_t pos = 0;
  pos += (size_t)snprintf(buf, len, "(");
  for (int i = 0; i < ndim && pos < len; i++)
    pos += (size_t)snprintf(buf + pos, len - pos, "%s%lld", i ? ", " : "",
                            (long long)shape[i]);
  if (pos < len)
    snprintf(buf + pos, len - pos, ndim == 1 ? ",)" : ")");
  return buf;
}

void cpk__tensor_contiguous_strides(cpk_tensor *t) {
  int64_t s = 1;
  for (int i = t->ndim - 1; i >= 0; i--) {
    t->strides[i] = s;
    s *= t->shape[i];
  }
}

void cpk__tensor_view(cpk_tensor *t, cpk_dtype dtype, void *data, int ndim,
                      const int64_t *shape) {
  memset(t, 0, sizeof *t);
  t->dtype = dtype;
  t->ndim = ndim;
  if (ndim > 0) /* a 0-d tensor may come without a shape array */
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
  cpk__tensor_contiguous_strides(t);
  t->data = data;
  t->owns_data = 0;
}

/* A C-order tensor, its data zero-filled or not. */
static int tensor_alloc(cpk_tensor **out, cpk_dtype dtype, int ndim,
                        const int64_t *shape, int zero) {
  int64_t numel;
  size_t bytes;
  int rc;
  *out = NULL;
  if (ndim < 0 || ndim > CPK_MAX_DIMS)
    return cpk__fail(CPK_EINVAL, "tensor of %d dimensions (at most %d)", ndim,
                     CPK_MAX_DIMS);
  if ((rc = cpk__shape_numel(ndim, shape, &numel, "tensor")) != CPK_OK)
    return rc;
  if ((rc = cpk__mul_size((size_t)numel, cpk_dtype_size(dtype), &bytes,
                          "tensor")) != CPK_OK)
    return rc;
  if (bytes > (size_t)PTRDIFF_MAX)
    return cpk__fail(CPK_EOVERFLOW, "tensor: %zu bytes overflow the address "
                     "space", bytes);
  cpk_tensor *t = cpk__calloc(sizeof *t);
  if (t == NULL)
    return CPK_ENOMEM;
  void *data = zero ? cpk__calloc(bytes) : cpk__malloc(bytes);
  if (data == NULL) {
    cpk__free(t);
    return CPK_ENOMEM;
  }
  if (!zero && cpk__alloc_poisoning())
    memset(data, 0xff, bytes);
  cpk__tensor_view(t, dtype, data, ndim, shape);
  t->owns_data = 1;
  *out = t;
  return CPK_OK;
}

int cpk_tensor_new(cpk_tensor **out, cpk_dtype dtype, int ndim,
                   const int64_t *shape) {
  return tensor_alloc(out, dtype, ndim, shape, 1);
}

int cpk__tensor_new_uninit(cpk_tensor **out, cpk_dtype dtype, int ndim,
                           const int64_t *shape) {
  return tensor_alloc(out, dtype, ndim, shape, 0);
}

void cpk_tensor_free(cpk_tensor *t) {
  if (t == NULL)
    return;
  if (t->owns_data && t->device != NULL)
    cpk__device_free(t->device, t->data);
  else if (t->owns_data)
    cpk__free(t->data);
  cpk__free(t);
}

int64_t cpk_tensor_numel(const cpk_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++)
    n *= t->shape[i];
  return n;
}

double cpk_tensor_get(const cpk_tensor *t, int64_t i) {
  if (t->device != NULL) { /* a plain test: this runs per element */
    (void)cpk__require_host(t, "cpk_tensor_get");
    return NAN;
  }
  switch (t->dtype) {
  case CPK_F32:
    return ((const float *)t->data)[i];
  case CPK_F64:
    return ((const double *)t->data)[i];
  case CPK_I64:
    return (double)((const int64_t *)t->data)[i];
  case CPK_I32:
    return ((const int32_t *)t->data)[i];
  }
  return 0.0;
}

void cpk_tensor_set(cpk_tensor *t, int64_t i, double v) {
  if (t->device != NULL) {
    (void)cpk__require_host(t, "cpk_tensor_set");
    return;
  }
  switch (t->dtype) {
  case CPK_F32:
    ((float *)t->data)[i] = (float)v;
    break;
  case CPK_F64:
    ((double *)t->data)[i] = v;
    break;
  case CPK_I64:
    ((int64_t *)t->data)[i] = (int64_t)v;
    break;
  case CPK_I32:
    ((int32_t *)t->data)[i] = (int32_t)v;
    break;
  }
}

int cpk_tensor_convert(cpk_tensor **out, const cpk_tensor *src,
                       cpk_dtype dtype) {
  *out = NULL;
  int rc = cpk__require_host(src, "cpk_tensor_convert");
  if (rc == CPK_OK)
    rc = cpk_tensor_new(out, dtype, src->ndim, src->shape);
  if (rc != CPK_OK)
    return rc;
  int64_t n = cpk_tensor_numel(src);
  if (src->dtype == dtype) {
    memcpy((*out)->data, src->data, (size_t)n * cpk_dtype_size(dtype));
  } else {
    for (int64_t i = 0; i < n; i++)
      cpk_tensor_set(*out, i, cpk_tensor_get(src, i));
  }
  return CPK_OK;
}

int cpk__check_finite_in(const cpk_tensor *t, cpk_dtype as, const char *what) {
  int rc = cpk__check_finite(t, what);
  if (rc != CPK_OK || t->dtype != CPK_F64 || as != CPK_F32)
    return rc;
  /* Finite in float64 but beyond float32's range: inf after conversion. */
  const double *x = t->data;
  const int64_t n = cpk_tensor_numel(t);
  for (int64_t i = 0; i < n; i++)
    if (fabs(x[i]) > FLT_MAX)
      return cpk__fail(CPK_ENONFINITE,
                       "%s: value %g at flat index %lld is beyond float32's "
                       "range (it would become inf in --dtype float32)",
                       what, x[i], (long long)i);
  return CPK_OK;
}

int cpk__check_finite(const cpk_tensor *t, const char *what) {
  int64_t n = cpk_tensor_numel(t);
  int rc = cpk__require_host(t, what);
  if (rc != CPK_OK)
    return rc;
  if (t->dtype == CPK_F32) {
    const float *x = t->data;
    for (int64_t i = 0; i < n; i++)
      if (!isfinite(x[i]))
        return cpk__fail(CPK_ENONFINITE,
                         "%s: non-finite value %g at flat index %lld", what,
                         (double)x[i], (long long)i);
  } else if (t->dtype == CPK_F64) {
    const double *x = t->data;
    for (int64_t i = 0; i < n; i++)
      if (!isfinite(x[i]))
        return cpk__fail(CPK_ENONFINITE,
                         "%s: non-finite value %g at flat index %lld", what,
                         x[i], (long long)i);
  }
  return CPK_OK;
}
