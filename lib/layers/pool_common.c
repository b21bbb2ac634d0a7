/*
 * pool_common.c: window arguments, window geometry and the CPU plane
 * kernels (kernels/pool.inc, instantiated for float and double) shared by
 * the pooling and padding layers. See pool_common.h.
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "device.h"
#include "pool_common.h"
#ifdef CPK_HAVE_CUDA
#include "gpu_ops.h"
#include "layers_cuda.h"
#endif

/* Work below this many elements runs on one thread. */
#define CPK_POOL_PAR 32768

#define CPK_T float
#define CPK_SFX f32
#include "kernels/pool.inc"
#undef CPK_T
#undef CPK_SFX

#define CPK_T double
#define CPK_SFX f64
#include "kernels/pool.inc"
#undef CPK_T
#undef CPK_SFX

/* Kernel sizes, strides and dilations above this are refused, which keeps
 * every window computation below within int64. */
#define CPK_POOL_MAX_ARG INT32_MAX
/* Spatial extents above this are refused for the same reason. */
#define CPK_POOL_MAX_EXTENT (INT64_MAX / 4)

static int positive_tuple(const cpk__layer *l, const char *name, int dims,
                          const int64_t *v) {
  for (int i = 0; i < dims; i++)
    if (v[i] < 1 || v[i] > CPK_POOL_MAX_ARG)
      return cpk__fail(CPK_EFORMAT, "%s: %s must be between 1 and %d, got %lld",
                       l->where, name, CPK_POOL_MAX_ARG, (long long)v[i]);
  return CPK_OK;
}

int cpk__pool_window_parse(cpk__pool_window *w, const cpk__layer *l, int dims,
                           const cpk__arg_value *kernel,
                           const cpk__arg_value *stride,
                           const cpk__arg_value *padding,
                           const cpk__arg_value *dilation, int ceil_mode) {
  int rc;
  memset(w, 0, sizeof *w);
  w->dims = dims;
  w->ceil_mode = ceil_mode;
  if ((rc = cpk__args_tuple(kernel, "kernel_size", dims, w->kernel,
                            l->where)) != CPK_OK ||
      (rc = positive_tuple(l, "kernel_size", dims, w->kernel)) != CPK_OK)
    return rc;
  /* stride=None (not given) means stride = kernel_size. */
  if (!stride->given)
    memcpy(w->stride, w->kernel, sizeof w->stride);
  else if ((rc = cpk__args_tuple(stride, "stride", dims, w->stride,
                                 l->where)) != CPK_OK ||
           (rc = positive_tuple(l, "stride", dims, w->stride)) != CPK_OK)
    return rc;
  for (int i = 0; i < dims; i++)
    w->dilation[i] = 1;
  if (dilation != NULL &&
      ((rc = cpk__args_tuple(dilation, "dilation", dims, w->dilation,
                             l->where)) != CPK_OK ||
       (rc = positive_tuple(l, "dilation", dims, w->dilation)) != CPK_OK))
    return rc;
  if ((rc = cpk__args_tuple(padding, "padding", dims, w->padding, l->where)) !=
      CPK_OK)
    return rc;
  for (int i = 0; i < dims; i++)
    if (w->padding[i] < 0 || w->padding[i] > w->kernel[i] / 2)
      return cpk__fail(CPK_EFORMAT,
                       "%s: padding must be between 0 and half the kernel "
                       "size, got padding=%lld with kernel_size=%lld",
                       l->where, (long long)w->padding[i],
                       (long long)w->kernel[i]);
  return CPK_OK;
}

void cpk__pool_geom_drop_device(cpk__pool_geom *g) {
  cpk_tensor_free(g->dev);
  g->dev = NULL;
}

void cpk__pool_geom_free(cpk__pool_geom *g) {
  cpk__pool_geom_drop_device(g);
  cpk__free(g->tables);
  memset(g, 0, sizeof *g);
}

/* Set l->out_shape = [C, *out] and size the tables: per axis (leading unit axes
 * included) first, count and div of out entries. The unit axes get one tap
 * at 0 with divisor 1; the caller fills the spatial ones. */
static int geom_alloc(cpk__pool_geom *g, cpk__layer *l, int dims,
                      const int64_t *out) {
  cpk__pool_geom_free(g);
  l->out_ndim = l->in_ndim;
  l->out_shape[0] = l->in_shape[0];
  size_t total = 0, bytes;
  for (int a = 0; a < 3; a++) {
    cpk__pool_axis *ax = &g->ax[a];
    int spatial = a - (3 - dims); /* index among the spatial axes, or < 0 */
    ax->in = spatial < 0 ? 1 : l->in_shape[1 + spatial];
    ax->out = spatial < 0 ? 1 : out[spatial];
    ax->step = ax->kernel = ax->stride = ax->full_hi = 1;
    ax->pad = ax->full_lo = 0;
    if (spatial >= 0)
      l->out_shape[1 + spatial] = ax->out;
    total += 3 * (size_t)ax->out;
  }
  int rc = cpk__mul_size(total, sizeof *g->tables, &bytes, l->where);
  if (rc != CPK_OK)
    return rc;
  if ((g->tables = cpk__malloc(bytes)) == NULL)
    return CPK_ENOMEM;
  int64_t *t = g->tables;
  for (int a = 0; a < 3; a++) {
    cpk__pool_axis *ax = &g->ax[a];
    ax->first = t;
    ax->count = t + ax->out;
    ax->div = t + 2 * ax->out;
    t += 3 * ax->out;
    if (a < 3 - dims) {
      ax->first[0] = 0;
      ax->count[0] = 1;
      ax->div[0] = 1;
    }
  }
  return CPK_OK;
}

/* floor(a / b) for b > 0. */
static int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/* "L", "H, W" or "D, H, W": the spatial axes of a `dims`-d pool. */
static const char *axis_names(int dims) {
  return dims == 1 ? "L" : dims == 2 ? "H, W" : "D, H, W";
}

/* Name of spatial axis i of a `dims`-d pool. */
static const char *axis_name(int dims, int i) {
  static const char *const names[3] = {"D", "H", "W"};
  return dims == 1 ? "L" : names[3 - dims + i];
}

/* The sample must be [C, *spatial] with `dims` spatial axes. */
static int check_sample(const cpk__layer *l, int dims) {
  char buf[128];
  cpk_shape_str(buf, sizeof buf, l->in_ndim, l->in_shape);
  if (l->in_ndim != dims + 1)
    return cpk__fail(CPK_ESHAPE,
                     "%s: expected a sample of shape (C, %s) with %d "
                     "spatial axes, got a sample of shape %s",
                     l->where, axis_names(dims), dims, buf);
  for (int i = 0; i < dims; i++)
    if (l->in_shape[1 + i] > CPK_POOL_MAX_EXTENT)
      return cpk__fail(CPK_EOVERFLOW, "%s: sample shape %s is too large",
                       l->where, buf);
  /* Then plane sizes (products of extents) fit int64 too. */
  int64_t numel;
  return cpk__shape_numel(l->in_ndim, l->in_shape, &numel, l->where);
}

int cpk__pool_geom_window(cpk__pool_geom *g, cpk__layer *l,
                          const cpk__pool_window *w, cpk__pool_mode mode) {
  char buf[128];
  int64_t out[3] = {1, 1, 1};
  int rc;
  const int dims = w->dims;
  if ((rc = check_sample(l, dims)) != CPK_OK)
    return rc;
  for (int i = 0; i < dims; i++) {
    const int64_t in = l->in_shape[1 + i], k = w->kernel[i];
    const int64_t s = w->stride[i], p = w->padding[i], d = w->dilation[i];
    int64_t o =
        floor_div(in + 2 * p - d * (k - 1) - 1 + (w->ceil_mode ? s - 1 : 0),
                  s) +
        1;
    if (w->ceil_mode && (o - 1) * s >= in + p)
      o--;
    if (o < 1)
      return cpk__fail(CPK_ESHAPE,
                       "%s: the window (kernel_size=%lld, dilation=%lld) is "
                       "larger than the padded input (size %lld, "
                       "padding=%lld) along %s of a sample of shape %s: "
                       "output size %lld",
                       l->where, (long long)k, (long long)d, (long long)in,
                       (long long)p, axis_name(dims, i),
                       cpk_shape_str(buf, sizeof buf, l->in_ndim, l->in_shape),
                       (long long)o);
    out[i] = o;
  }
  if ((rc = geom_alloc(g, l, dims, out)) != CPK_OK)
    return rc;
  for (int i = 0; i < dims; i++) {
    cpk__pool_axis *ax = &g->ax[3 - dims + i];
    const int64_t in = ax->in, k = w->kernel[i], s = w->stride[i];
    const int64_t p = w->padding[i], d = w->dilation[i];
    ax->step = mode == CPK__POOL_MAX ? d : 1;
    ax->kernel = k;
    ax->stride = s;
    ax->pad = p;
    for (int64_t o = 0; o < ax->out; o++) {
      const int64_t start = o * s - p;
      if (mode == CPK__POOL_MAX) {
        /* Taps start + j*d, j < k, inside [0, in). */
        int64_t end = start + d * (k - 1) + 1;
        if (end > in)
          end = in;
        int64_t first = start < 0 ? start + (-start + d - 1) / d * d : start;
        ax->first[o] = first;
        ax->count[o] = first < end ? (end - 1 - first) / d + 1 : 0;
        ax->div[o] = 1;
      } else {
        /* [start, end_pad) clipped to the padded input; the input part is
         * [first, last), never empty since start < in and end_pad > 0. */
        const int64_t end_pad = start + k < in + p ? start + k : in + p;
        const int64_t first = start > 0 ? start : 0;
        const int64_t last = end_pad < in ? end_pad : in;
        ax->first[o] = first;
        ax->count[o] = last - first;
        ax->div[o] =
            mode == CPK__POOL_AVG_WITH_PAD ? end_pad - start : last - first;
      }
    }
    /* Windows move right with o, so the full ones are contiguous. */
    ax->full_lo = ax->full_hi = 0;
    for (int64_t o = 0; o < ax->out; o++)
      if (ax->count[o] == k) {
        if (ax->full_hi == 0)
          ax->full_lo = o;
        ax->full_hi = o + 1;
      }
  }
  return CPK_OK;
}

int cpk__pool_geom_adaptive(cpk__pool_geom *g, cpk__layer *l, int dims,
                            const int64_t *out) {
  int rc;
  if ((rc = check_sample(l, dims)) != CPK_OK)
    return rc;
  /* (o + 1) * in + out below must stay within int64. */
  for (int i = 0; i < dims; i++)
    if (l->in_shape[1 + i] > INT64_MAX / 2 / (out[i] + 1))
      return cpk__fail(CPK_EOVERFLOW,
                       "%s: output_size %lld of an input of size %lld is too "
                       "large",
                       l->where, (long long)out[i],
                       (long long)l->in_shape[1 + i]);
  if ((rc = geom_alloc(g, l, dims, out)) != CPK_OK)
    return rc;
  for (int i = 0; i < dims; i++) {
    cpk__pool_axis *ax = &g->ax[3 - dims + i];
    for (int64_t o = 0; o < ax->out; o++) {
      /* [floor(o*in/out), ceil((o+1)*in/out)) */
      const int64_t first = o * ax->in / ax->out;
      const int64_t end = ((o + 1) * ax->in + ax->out - 1) / ax->out;
      ax->first[o] = first;
      ax->count[o] = end - first;
      ax->div[o] = end - first;
    }
  }
  return CPK_OK;
}

#ifdef CPK_HAVE_CUDA
/* Put g's tables on the context's device (once per pass): first, count and
 * div of every axis as g->tables holds them, then per axis olo[in] and
 * ohi[in], the outputs whose window holds each input position (windows move
 * right with o, so these outputs are consecutive; none: olo = out > 0 = ohi). */
static int avg_tables_on(const cpk_context *ctx, cpk__pool_geom *g) {
  if (g->dev != NULL && g->dev->device == ctx->gpu)
    return CPK_OK;
  cpk__pool_geom_drop_device(g);
  int64_t fwd = 0, total = 0;
  for (int a = 0; a < 3; a++)
    fwd += 3 * g->ax[a].out;
  total = fwd;
  for (int a = 0; a < 3; a++)
    total += 2 * g->ax[a].in;
  cpk_tensor *h;
  int rc = cpk_tensor_new(&h, CPK_I64, 1, &total);
  if (rc != CPK_OK)
    return rc;
  int64_t *t = h->data;
  memcpy(t, g->tables, (size_t)fwd * sizeof *t);
  int64_t *inv = t + fwd;
  for (int a = 0; a < 3; a++) {
    const cpk__pool_axis *ax = &g->ax[a];
    int64_t *olo = inv, *ohi = inv + ax->in;
    for (int64_t i = 0; i < ax->in; i++) {
      olo[i] = ax->out;
      ohi[i] = 0;
    }
    for (int64_t o = 0; o < ax->out; o++)
      for (int64_t i = ax->first[o]; i < ax->first[o] + ax->count[o]; i++) {
        if (o < olo[i])
          olo[i] = o;
        if (o + 1 > ohi[i])
          ohi[i] = o + 1;
      }
    inv += 2 * ax->in;
  }
  rc = cpk__tensor_to_device(ctx, h, CPK_I64, &g->dev);
  cpk_tensor_free(h);
  return rc;
}
#endif

int cpk__pool_avg_apply(const cpk_context *ctx, cpk__pool_geom *g,
                        int transpose, const cpk_tensor *in, cpk_tensor *out) {
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    int rc = avg_tables_on(ctx, g);
    if (rc != CPK_OK)
      return rc;
    cpk__cuda_avg_geom c = {.divisor_override = g->divisor_override};
    for (int a = 0; a < 3; a++) {
      c.in[a] = g->ax[a].in;
      c.out[a] = g->ax[a].out;
    }
    if (transpose)
      cpk__cuda_pool_avg_t(ctx->gpu, in->dtype == CPK_F64, &c, g->dev->data,
                           cpk_tensor_numel(in) / cpk__pool_out_plane(g),
                           in->data, out->data);
    else
      cpk__cuda_pool_avg(ctx->gpu, in->dtype == CPK_F64, &c, g->dev->data,
                         cpk_tensor_numel(in) / cpk__pool_in_plane(g),
                         in->data, out->data);
    return CPK_OK;
  }
#endif
  if (transpose)
    cpk__pool_avg_t(in->dtype, g, cpk_tensor_numel(in) / cpk__pool_out_plane(g),
                    in->data, out->data);
  else
    cpk__pool_avg(in->dtype, g, cpk_tensor_numel(in) / cpk__pool_in_plane(g),
                  in->data, out->data);
  return CPK_OK;
}

/* ---- dtype dispatch of the kernels ---- */

#ifdef CPK_HAVE_CUDA
/* The windows of g as the CUDA kernels take them: an im2col geometry whose
 * taps are the pooling window's (planes in place of channels). */
static cpk__im2col_geom cuda_geom(const cpk__pool_geom *g, int64_t planes) {
  cpk__im2col_geom c = {.channels = planes};
  for (int a = 0; a < 3; a++) {
    const cpk__pool_axis *ax = &g->ax[a];
    c.in[a] = ax->in;
    c.out[a] = ax->out;
    c.k[a] = ax->kernel > 0 ? ax->kernel : 1;
    c.stride[a] = ax->stride > 0 ? ax->stride : 1;
    c.pad[a] = ax->pad;
    c.dil[a] = ax->step > 0 ? ax->step : 1;
  }
  return c;
}
#endif

void cpk__pool_max(const cpk_context *ctx, cpk_dtype dt,
                   const cpk__pool_geom *g, int64_t planes, const void *x,
                   void *y, int32_t *idx) {
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    const cpk__im2col_geom c = cuda_geom(g, planes);
    cpk__cuda_pool_max(ctx->gpu, dt == CPK_F64, &c, planes, x, y, idx);
    return;
  }
#endif
  if (dt == CPK_F32)
    pool_max_f32(g, planes, x, y, idx);
  else
    pool_max_f64(g, planes, x, y, idx);
}

void cpk__pool_gather(const cpk_context *ctx, cpk_dtype dt, int64_t planes,
                      int64_t ip, int64_t in_plane, int64_t out_plane,
                      const int32_t *idx, const void *in, void *out) {
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    cpk__cuda_pool_gather(ctx->gpu, dt == CPK_F64, planes, ip, in_plane,
                          out_plane, idx, in, out);
    return;
  }
#endif
  if (dt == CPK_F32)
    pool_gather_f32(planes, ip, in_plane, out_plane, idx, in, out);
  else
    pool_gather_f64(planes, ip, in_plane, out_plane, idx, in, out);
}

void cpk__pool_scatter(const cpk_context *ctx, cpk_dtype dt, int64_t planes,
                       int64_t ip, int64_t in_plane, int64_t out_plane,
                       const int32_t *idx, const void *in, void *out) {
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    cpk__cuda_pool_scatter(ctx->gpu, dt == CPK_F64, planes, ip, in_plane,
                           out_plane, idx, in, out);
    return;
  }
#endif
  if (dt == CPK_F32)
    pool_scatter_f32(planes, ip, in_plane, out_plane, idx, in, out);
  else
    pool_scatter_f64(planes, ip, in_plane, out_plane, idx, in, out);
}

void cpk__pool_avg(cpk_dtype dt, const cpk__pool_geom *g, int64_t planes,
                   const void *in, void *out) {
  if (dt == CPK_F32)
    pool_avg_f32(g, planes, in, out);
  else
    pool_avg_f64(g, planes, in, out);
}

void cpk__pool_avg_t(cpk_dtype dt, const cpk__pool_geom *g, int64_t planes,
                     const void *in, void *out) {
  if (dt == CPK_F32)
    pool_avg_t_f32(g, planes, in, out);
  else
    pool_avg_t_f64(g, planes, in, out);
}

void cpk__pad2d(const cpk_context *ctx, cpk_dtype dt, int64_t planes,
                int64_t hi, int64_t wi, int64_t ho, int64_t wo, int64_t top,
                int64_t left, const void *in, void *out) {
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) { /* an unfolding with a 1x1 kernel: the same map */
    const cpk__im2col_geom g = {.channels = planes,
                                .in = {1, hi, wi},
                                .out = {1, ho, wo},
                                .k = {1, 1, 1},
                                .stride = {1, 1, 1},
                                .pad = {0, top, left},
                                .dil = {1, 1, 1}};
    cpk__cuda_im2col(ctx->gpu, dt == CPK_F64, &g, 1, in, out);
    return;
  }
#endif
  if (dt == CPK_F32)
    pad2d_f32(planes, hi, wi, ho, wo, top, left, in, out);
  else
    pad2d_f64(planes, hi, wi, ho, wo, top, left, in, out);
}
