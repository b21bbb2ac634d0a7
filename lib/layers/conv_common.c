/*
 * conv_common.c: configuration, shapes and the compute core shared by the
 * convolution and transposed-convolution layers (see conv_common.h).
 */
#include "config.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "conv_common.h"

/* Arguments larger than this are refused, so that the shape arithmetic
 * below (products of two of them with an extent) cannot overflow. */
#define CONV_ARG_MAX ((int64_t)1 << 31)

/* ------------------------------------------------------- configuration */

static int check_range(const cpk__layer *l, const char *name, const int64_t *v,
                       int dims, int64_t lo) {
  for (int a = 0; a < dims; a++) {
    if (v[a] < lo)
      return cpk__fail(CPK_EFORMAT, "%s: %s must be %s, got %lld", l->where,
                       name, lo > 0 ? "positive" : "non-negative",
                       (long long)v[a]);
    if (v[a] > CONV_ARG_MAX)
      return cpk__fail(CPK_EFORMAT, "%s: %s=%lld is too large (at most %lld)",
                       l->where, name, (long long)v[a],
                       (long long)CONV_ARG_MAX);
  }
  return CPK_OK;
}

/* Channels and groups: PyTorch requires groups to divide both counts. */
static int read_channels(const cpk__layer *l, const cpk__arg_value *a,
                         const cpk__conv_slots *sl, cpk__conv *s) {
  int rc;
  s->in_channels = a[sl->in_channels].ints[0];
  s->out_channels = a[sl->out_channels].ints[0];
  s->groups = a[sl->groups].ints[0];
  if ((rc = check_range(l, "in_channels", &s->in_channels, 1, 1)) ||
      (rc = check_range(l, "out_channels", &s->out_channels, 1, 1)) ||
      (rc = check_range(l, "groups", &s->groups, 1, 1)))
    return rc;
  if (s->in_channels % s->groups != 0 || s->out_channels % s->groups != 0)
    return cpk__fail(CPK_EFORMAT,
                     "%s: in_channels (%lld) and out_channels (%lld) must "
                     "both be divisible by groups (%lld)",
                     l->where, (long long)s->in_channels,
                     (long long)s->out_channels, (long long)s->groups);
  return CPK_OK;
}

/* Padding: a tuple, or the words 'valid' (0) and 'same' (ConvNd, stride 1:
 * total d*(k-1) per axis, left = total/2, right = total - left). */
static int read_padding(const cpk__layer *l, const cpk__arg_value *pad,
                        cpk__conv *s) {
  const int dims = s->dims;
  int rc;
  if (strcmp(pad->word, "same") == 0) {
    for (int a = 0; a < dims; a++)
      if (s->stride[a] != 1)
        return cpk__fail(CPK_EFORMAT,
                         "%s: padding='same' needs stride 1, got stride %lld",
                         l->where, (long long)s->stride[a]);
    for (int a = 0; a < dims; a++) {
      int64_t total = s->dilation[a] * (s->kernel[a] - 1);
      s->pad_lo[a] = total / 2;
      s->pad_hi[a] = total - total / 2;
    }
    return CPK_OK;
  }
  if (strcmp(pad->word, "valid") == 0)
    return CPK_OK; /* zero, as calloc left it */
  if ((rc = cpk__args_tuple(pad, "padding", dims, s->pad_lo, l->where)) ||
      (rc = check_range(l, "padding", s->pad_lo, dims, 0)))
    return rc;
  memcpy(s->pad_hi, s->pad_lo, sizeof s->pad_hi);
  return CPK_OK;
}

/* PyTorch: output_padding must be smaller than stride or dilation. */
static int read_output_padding(const cpk__layer *l, const cpk__arg_value *op,
                               cpk__conv *s) {
  int rc;
  if ((rc = cpk__args_tuple(op, "output_padding", s->dims, s->output_padding,
                            l->where)) ||
      (rc = check_range(l, "output_padding", s->output_padding, s->dims, 0)))
    return rc;
  for (int a = 0; a < s->dims; a++)
    if (s->output_padding[a] >= s->stride[a] &&
        s->output_padding[a] >= s->dilation[a])
      return cpk__fail(CPK_EFORMAT,
                       "%s: output_padding (%lld) must be smaller than stride "
                       "(%lld) or dilation (%lld)",
                       l->where, (long long)s->output_padding[a],
                       (long long)s->stride[a], (long long)s->dilation[a]);
  return CPK_OK;
}

static int read_args(const cpk__layer *l, const cpk__arg_value *a,
                     const cpk__conv_slots *sl, cpk__conv *s) {
  const int dims = s->dims;
  int rc;
  if ((rc = read_channels(l, a, sl, s)) ||
      (rc = cpk__args_tuple(&a[sl->kernel_size], "kernel_size", dims, s->kernel,
                            l->where)) ||
      (rc = check_range(l, "kernel_size", s->kernel, dims, 1)) ||
      (rc = cpk__args_tuple(&a[sl->stride], "stride", dims, s->stride,
                            l->where)) ||
      (rc = check_range(l, "stride", s->stride, dims, 1)) ||
      (rc = cpk__args_tuple(&a[sl->dilation], "dilation", dims, s->dilation,
                            l->where)) ||
      (rc = check_range(l, "dilation", s->dilation, dims, 1)) ||
      (rc = read_padding(l, &a[sl->padding], s)))
    return rc;
  if (sl->output_padding >= 0 &&
      (rc = read_output_padding(l, &a[sl->output_padding], s)))
    return rc;
  s->bias = a[sl->bias].b;
  return CPK_OK;
}

int cpk__conv_configure(cpk__layer *l, const cpk__arg_value *args,
                        int transposed, const cpk__conv_slots *slots) {
  cpk__conv *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  s->dims = *(const int *)l->kind->data;
  s->transposed = transposed;
  int rc = read_args(l, args, slots, s);
  if (rc != CPK_OK) {
    cpk__free(s);
    return rc;
  }
  l->priv = s;
  return CPK_OK;
}

/* ---------------------------------------------------------------- shapes */

/* Output extent of axis a for input extent `in`, or an error. */
static int out_extent(const cpk__layer *l, const cpk__conv *s, int a,
                      int64_t in, int64_t *out) {
  const int64_t span = s->dilation[a] * (s->kernel[a] - 1); /* < 2^62 */
  const int64_t pads = s->pad_lo[a] + s->pad_hi[a];
  if (!s->transposed) {
    if (in > INT64_MAX - pads)
      return cpk__fail(CPK_EOVERFLOW, "%s: padded input size overflows",
                       l->where);
    if (in + pads < span + 1)
      return cpk__fail(CPK_ESHAPE,
                       "%s: kernel (dilated size %lld) is larger than the "
                       "padded input (size %lld) along spatial axis %d",
                       l->where, (long long)(span + 1), (long long)(in + pads),
                       a + 1);
    *out = (in + pads - span - 1) / s->stride[a] + 1;
    return CPK_OK;
  }
  if (in - 1 > (INT64_MAX - span - s->output_padding[a] - 1) / s->stride[a])
    return cpk__fail(CPK_EOVERFLOW, "%s: output size overflows", l->where);
  *out = (in - 1) * s->stride[a] - pads + span + s->output_padding[a] + 1;
  if (*out <= 0)
    return cpk__fail(CPK_ESHAPE,
                     "%s: output size %lld <= 0 along spatial axis %d (input "
                     "size %lld, padding %lld)",
                     l->where, (long long)*out, a + 1, (long long)in,
                     (long long)s->pad_lo[a]);
  return CPK_OK;
}

static int check_sample(const cpk__layer *l, const cpk__conv *s) {
  char buf[128];
  if (l->in_ndim == s->dims + 1 && l->in_shape[0] == s->in_channels)
    return CPK_OK;
  return cpk__fail(CPK_ESHAPE,
                   "%s: expected an input sample (channels, %d spatial "
                   "axes) with %lld channels, got a sample of shape %s",
                   l->where, s->dims, (long long)s->in_channels,
                   cpk_shape_str(buf, sizeof buf, l->in_ndim, l->in_shape));
}

/* The 3-d im2col geometry of the core: X grid -> Y grid, leading trivial
 * axes for D < 3. */
static void set_geometry(cpk__conv *s, const int64_t *xs, const int64_t *ys) {
  cpk__im2col_geom *g = &s->geom;
  const int lead = 3 - s->dims;
  s->cx = s->transposed ? s->out_channels : s->in_channels;
  s->cy = s->transposed ? s->in_channels : s->out_channels;
  g->channels = s->cx;
  for (int a = 0; a < 3; a++) {
    int in_d = a >= lead;
    g->in[a] = in_d ? xs[a - lead] : 1;
    g->out[a] = in_d ? ys[a - lead] : 1;
    g->k[a] = in_d ? s->kernel[a - lead] : 1;
    g->stride[a] = in_d ? s->stride[a - lead] : 1;
    g->pad[a] = in_d ? s->pad_lo[a - lead] : 0;
    g->dil[a] = in_d ? s->dilation[a - lead] : 1;
  }
}

int cpk__conv_build(cpk__layer *l) {
  cpk__conv *s = l->priv;
  int64_t out[3], wshape[2 + 3];
  int rc;
  if ((rc = check_sample(l, s)) != CPK_OK)
    return rc;
  for (int a = 0; a < s->dims; a++)
    if ((rc = out_extent(l, s, a, l->in_shape[1 + a], &out[a])) != CPK_OK)
      return rc;
  l->out_ndim = l->in_ndim;
  l->out_shape[0] = s->out_channels;
  memcpy(l->out_shape + 1, out, (size_t)s->dims * sizeof *out);
  if (s->transposed)
    set_geometry(s, out, l->in_shape + 1);
  else
    set_geometry(s, l->in_shape + 1, out);
  wshape[0] = s->cy;
  wshape[1] = s->cx / s->groups;
  memcpy(wshape + 2, s->kernel, (size_t)s->dims * sizeof *wshape);
  if ((rc = cpk__layer_declare_param(l, "weight", 1, 2 + s->dims, wshape)))
    return rc;
  if (s->bias)
    rc = cpk__layer_declare_param(l, "bias", 1, 1, &s->out_channels);
  return rc;
}

int cpk__conv_init(cpk__layer *l, cpk__rng *rng) {
  const cpk__conv *s = l->priv;
  double fan_in = (double)(s->cx / s->groups);
  for (int a = 0; a < s->dims; a++)
    fan_in *= (double)s->kernel[a];
  for (int p = 0; p < l->nparams; p++)
    cpk__init_uniform(l->params[p].value, 1.0 / sqrt(fan_in), rng);
  return CPK_OK;
}

void cpk__conv_destroy(cpk__layer *l) { cpk__free(l->priv); }

/* ------------------------------------------------------------ the core */


/* Below this many multiply-adds in all a call runs on one thread: a
 * parallel region costs microseconds, far more when the cores are shared
 * and idle threads spin. */
#define CONV_PARALLEL_MIN_MACS ((int64_t)1 << 16)

/* Threads over `count` independent images of the core (each cy*kx*ly
 * multiply-adds): all of OpenMP's, at most one per image. With one thread
 * there is no parallel region and BLAS may thread. Images are handed out
 * dynamically, one at a time: on a machine shared with other processes a
 * descheduled thread does not hold the rest back. */
static int threads_for(const cpk__conv_dims *d, int64_t count) {
  const int nt = omp_get_max_threads();
  if (count <= 1 || d->wsz * d->ly < CONV_PARALLEL_MIN_MACS / count)
    return 1;
  return count < nt ? (int)count : nt;
}

/* One unfolding buffer per thread, nt * [cx*prod(K), Ly] (NULL when the
 * core needs none); sets d->colsz, the elements of one. */
static int scratch_new(cpk__conv_dims *d, int nt, char **out) {
  static const char what[] = "convolution unfolding buffers";
  size_t elems, bytes;
  *out = NULL;
  if (!d->unfold)
    return CPK_OK;
  int rc = cpk__mul_size((size_t)(d->g * d->kx), (size_t)d->ly, &elems, what);
  if (rc == CPK_OK)
    rc = cpk__mul_size(elems, d->es, &bytes, what);
  if (rc == CPK_OK)
    rc = cpk__mul_size(bytes, (size_t)nt, &bytes, what);
  if (rc != CPK_OK)
    return rc;
  d->colsz = (int64_t)elems;
  *out = cpk__malloc(bytes);
  return *out ? CPK_OK : CPK_ENOMEM;
}

#ifdef CPK_HAVE_DNNL
/* Images per oneDNN call: it may copy its operands into layouts of its
 * own, so the images of one call, input and output, stay within the work
 * budget (at least one image per call). */
static int64_t dnnl_images(const cpk_context *ctx, const cpk__conv_dims *d,
                           int64_t count) {
  const size_t budget = ctx != NULL ? ctx->work_bytes : (size_t)64 << 20;
  const size_t one = (size_t)(d->xsz + d->ysz) * d->es;
  const int64_t c = (int64_t)(budget / (one ? one : 1));
  return c < 1 ? 1 : c > count ? count : c;
}

enum dnnl_op { DNNL_APPLY, DNNL_ADJOINT, DNNL_WEIGHT_GRAD };

/* One of oneDNN's maps over count images, in chunks (dnnl_images):
 *   apply:        out [count, cy, ..] := beta out + W * in [count, cx, ..] + b
 *   adjoint:      out [count, cx, ..] := beta out + W^T in [count, cy, ..]
 *   weight grad:  out [cy, cx/G, *K] := beta out + sum_n in_n (x) y_n
 * (the weight gradient accumulates over the chunks after the first's
 * beta). CPK__CONV_DECLINED when oneDNN declines the shapes, which it
 * decides at the first chunk. */
static int dnnl_in_chunks(const cpk__conv *s, const cpk_context *ctx,
                          const cpk__conv_dims *d, enum dnnl_op op,
                          int64_t count, const float *in, const float *w,
                          const float *b, float beta, float *out) {
  const int64_t step = dnnl_images(ctx, d, count);
  int rc = CPK_OK;
  for (int64_t at = 0; at < count && rc == CPK_OK; at += step) {
    const int64_t c = count - at < step ? count - at : step;
    if (op == DNNL_APPLY)
      rc = cpk__dnnl_conv_apply(s, c, in + at * d->xsz, w, b, beta,
                                out + at * d->ysz);
    else if (op == DNNL_ADJOINT)
      rc = cpk__dnnl_conv_adjoint(s, c, in + at * d->ysz, w, beta,
                                  out + at * d->xsz);
    else /* w is Y [count, cy, ..] here */
      rc = cpk__dnnl_conv_weight_grad(s, c, in + at * d->xsz,
                                      w + at * d->ysz, at == 0 ? beta : 1.0f,
                                      out);
    if (rc == CPK__CONV_DECLINED && at > 0) /* earlier chunks are written */
      rc = cpk__fail(CPK_EIO, "oneDNN declined %lld images of a shape it "
                              "took before", (long long)c);
  }
  return rc;
}
#endif

/* The unfolding of image x into this thread's buffer (or x itself). */
static const char *unfold_into(const cpk__conv *s, const cpk__conv_dims *d,
                               const cpk_context *ctx, cpk_dtype dt,
                               const char *x, char *scratch) {
  if (!d->unfold)
    return x;
  char *cols = scratch + (size_t)omp_get_thread_num() * d->colsz * d->es;
  cpk__im2col(ctx, dt, &s->geom, 1, x, cols);
  return cols;
}

/* y := beta*y + W . cols, one image, group by group. */
static void gemm_apply(const cpk__conv_dims *d, const cpk_context *ctx, cpk_dtype dt,
                       const char *w, const char *cols, double beta, char *y) {
  for (int64_t g = 0; g < d->g; g++)
    cpk__gemm(ctx, dt, 0, 0, d->cyg, d->ly, d->kx, 1.0,
              w + (size_t)(g * d->cyg * d->kx) * d->es, d->kx,
              cols + (size_t)(g * d->kx * d->ly) * d->es, d->ly, beta,
              y + (size_t)(g * d->cyg * d->ly) * d->es, d->ly);
}

int cpk__conv_apply(const cpk__conv *s, const cpk_context *ctx, cpk_dtype dt,
                    int64_t count, const void *x, const void *w, const void *b,
                    double beta, void *y) {
  if (cpk__on_cuda(ctx))
    return cpk__conv_apply_batched(s, ctx, dt, count, x, w, b, beta, y);
  cpk__conv_dims d = cpk__conv_dims_of(s, dt);
#ifdef CPK_HAVE_DNNL
  if (dt == CPK_F32) {
    const int rc = dnnl_in_chunks(s, ctx, &d, DNNL_APPLY, count, x, w, b,
                                  (float)beta, y);
    if (rc != CPK__CONV_DECLINED)
      return rc;
  }
#endif
  const int nt = threads_for(&d, count);
  char *scratch;
  int rc = scratch_new(&d, nt, &scratch);
  if (rc != CPK_OK)
    return rc;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t i = 0; i < count; i++) {
    const char *xi = (const char *)x + (size_t)(i * d.xsz) * d.es;
    char *yi = (char *)y + (size_t)(i * d.ysz) * d.es;
    const char *cols = unfold_into(s, &d, ctx, dt, xi, scratch);
    if (b) /* y := beta*y + b, then y += W . cols */
      cpk__channel_bias(ctx, dt, 1, s->cy, d.ly, b, beta, yi);
    gemm_apply(&d, ctx, dt, w, cols, b ? 1.0 : beta, yi);
  }
  cpk__free(scratch);
  return CPK_OK;
}

int cpk__conv_adjoint(const cpk__conv *s, const cpk_context *ctx, cpk_dtype dt,
                      int64_t count, const void *y, const void *w,
                      const void *b, double beta, void *x) {
  if (cpk__on_cuda(ctx))
    return cpk__conv_adjoint_batched(s, ctx, dt, count, y, w, b, beta, x);
  cpk__conv_dims d = cpk__conv_dims_of(s, dt);
#ifdef CPK_HAVE_DNNL
  if (dt == CPK_F32 && b == NULL) {
    const int rc = dnnl_in_chunks(s, ctx, &d, DNNL_ADJOINT, count, y, w, NULL,
                                  (float)beta, x);
    if (rc != CPK__CONV_DECLINED)
      return rc;
  }
#endif
  const int nt = threads_for(&d, count);
  char *scratch;
  int rc = scratch_new(&d, nt, &scratch);
  if (rc != CPK_OK)
    return rc;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t i = 0; i < count; i++) {
    const char *yi = (const char *)y + (size_t)(i * d.ysz) * d.es;
    char *xi = (char *)x + (size_t)(i * d.xsz) * d.es;
    /* x := beta*x (+ b), then cols[g] [kx, ly] := W[g]^T [kx, cyg] . y[g]
     * [cyg, ly] and x += fold(cols); without unfolding the columns are x
     * itself and the product accumulates there. */
    char *cols =
        d.unfold ? scratch + (size_t)omp_get_thread_num() * d.colsz * d.es : xi;
    const double acc = b ? 1.0 : beta;
    if (b)
      cpk__channel_bias(ctx, dt, 1, s->cx, d.lx, b, beta, xi);
    for (int64_t g = 0; g < d.g; g++)
      cpk__gemm(ctx, dt, 1, 0, d.kx, d.ly, d.cyg, 1.0,
                (const char *)w + (size_t)(g * d.cyg * d.kx) * d.es, d.kx,
                yi + (size_t)(g * d.cyg * d.ly) * d.es, d.ly,
                d.unfold ? 0.0 : acc, cols + (size_t)(g * d.kx * d.ly) * d.es,
                d.ly);
    if (d.unfold)
      cpk__col2im(ctx, dt, &s->geom, 1, cols, acc, xi);
  }
  cpk__free(scratch);
  return CPK_OK;
}

/* acc [wsz] := beta*acc + Y . unfold(X)^T for one image pair, per group. */
static void gemm_weight(const cpk__conv_dims *d, const cpk_context *ctx,
                        cpk_dtype dt, const char *yi, const char *cols,
                        double beta, char *acc) {
  for (int64_t g = 0; g < d->g; g++)
    cpk__gemm(ctx, dt, 0, 1, d->cyg, d->kx, d->ly, 1.0,
              yi + (size_t)(g * d->cyg * d->ly) * d->es, d->ly,
              cols + (size_t)(g * d->kx * d->ly) * d->es, d->ly, beta,
              acc + (size_t)(g * d->cyg * d->kx) * d->es, d->kx);
}

/* The operands of a weight product and where image (v, n) lives. */
typedef struct {
  const char *x, *y;
  int64_t v, n;
  int x_has_v, y_has_v;
} weight_operands;

static const char *image_x(const weight_operands *o, const cpk__conv_dims *d,
                           int64_t v, int64_t n) {
  return o->x + (size_t)(((o->x_has_v ? v * o->n : 0) + n) * d->xsz) * d->es;
}

static const char *image_y(const weight_operands *o, const cpk__conv_dims *d,
                           int64_t v, int64_t n) {
  return o->y + (size_t)(((o->y_has_v ? v * o->n : 0) + n) * d->ysz) * d->es;
}

/* acc[v] := beta*acc[v] + sum_{n in [n0, n1)} Y_{v,n} unfold(X_{v,n})^T
 * (acc [V, wsz]); a shared X is unfolded once per sample. */
static void weight_range(const cpk__conv *s, const cpk__conv_dims *d,
                         const cpk_context *ctx, cpk_dtype dt,
                         const weight_operands *o, int64_t n0, int64_t n1,
                         double beta, char *scratch, char *acc) {
  const char *cols = NULL;
  for (int64_t n = n0; n < n1; n++)
    for (int64_t v = 0; v < o->v; v++) {
      if (v == 0 || o->x_has_v)
        cols = unfold_into(s, d, ctx, dt, image_x(o, d, v, n), scratch);
      gemm_weight(d, ctx, dt, image_y(o, d, v, n), cols, n == n0 ? beta : 1.0,
                  acc + (size_t)(v * d->wsz) * d->es);
    }
}

/* Per sample: out[v, n] := Y_{v,n} unfold(X_{v,n})^T, threads over n. */
static void weight_per_sample(const cpk__conv *s, const cpk__conv_dims *d,
                              const cpk_context *ctx, cpk_dtype dt,
                              const weight_operands *o, int nt, char *scratch,
                              char *out) {
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t n = 0; n < o->n; n++) {
    const char *cols = NULL;
    for (int64_t v = 0; v < o->v; v++) {
      if (v == 0 || o->x_has_v)
        cols = unfold_into(s, d, ctx, dt, image_x(o, d, v, n), scratch);
      gemm_weight(d, ctx, dt, image_y(o, d, v, n), cols, 0.0,
                  out + (size_t)((v * o->n + n) * d->wsz) * d->es);
    }
  }
}

/* Per sample with a shared X and several columns: the V products of
 * sample n all take unfold(X_n), so they run as one product per group,
 *   [V*cyg, kx] = [Y_{0,n}; ...; Y_{V-1,n}] unfold(X_n)^T,
 * the V blocks of Y gathered side by side first and the result scattered
 * to out[v, n] after (V small GEMMs each pack unfold(X_n) again and run
 * at about two thirds of the rate of the stacked one). Per thread,
 * `stacked` holds the gathered [G, V, cyg, ly] and the result
 * [G, V, cyg, kx]; `scratch` the unfolding, as for the others. */
static void weight_per_sample_stacked(const cpk__conv *s,
                                      const cpk__conv_dims *d,
                                      const cpk_context *ctx, cpk_dtype dt,
                                      const weight_operands *o, int nt,
                                      char *scratch, char *stacked,
                                      char *out) {
  const int64_t v = o->v, gy = d->cyg * d->ly, gw = d->cyg * d->kx;
  const int64_t per_thread = v * d->g * (gy + gw);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t n = 0; n < o->n; n++) {
    char *ys = stacked + (size_t)(omp_get_thread_num() * per_thread) * d->es;
    char *ws = ys + (size_t)(v * d->g * gy) * d->es;
    const char *cols = unfold_into(s, d, ctx, dt, image_x(o, d, 0, n), scratch);
    for (int64_t g = 0; g < d->g; g++)
      for (int64_t c = 0; c < v; c++)
        memcpy(ys + (size_t)((g * v + c) * gy) * d->es,
               image_y(o, d, c, n) + (size_t)(g * gy) * d->es,
               (size_t)gy * d->es);
    for (int64_t g = 0; g < d->g; g++) {
      cpk__gemm(ctx, dt, 0, 1, v * d->cyg, d->kx, d->ly, 1.0,
                ys + (size_t)(g * v * gy) * d->es, d->ly,
                cols + (size_t)(g * d->kx * d->ly) * d->es, d->ly, 0.0,
                ws + (size_t)(g * v * gw) * d->es, d->kx);
      for (int64_t c = 0; c < v; c++)
        memcpy(out + (size_t)((c * o->n + n) * d->wsz + g * gw) * d->es,
               ws + (size_t)((g * v + c) * gw) * d->es, (size_t)gw * d->es);
    }
  }
}

int cpk__conv_sq_sum_pays(const cpk__conv *s, int64_t v) {
  const cpk__conv_dims d = cpk__conv_dims_of(s, CPK_F32);
  return (d.kx + d.cyg) * d.ly < 2 * v * d.cyg * d.kx;
}

int cpk__conv_weight_sq_sum(const cpk__conv *s, const cpk_context *ctx,
                            cpk_dtype dt, int64_t v, int64_t n, const void *x,
                            int x_has_v, const void *y, int y_has_v,
                            const void *weights, int64_t w_stride, void *out) {
  /* rows 0: only whether the tiles run here */
  if (cpk__on_cuda(ctx) || !cpk__sq_product_add(ctx, dt, 0, 1, 1, NULL, 0,
                                                NULL, 0, 0.0, NULL, 0, NULL))
    return CPK__CONV_DECLINED;
  cpk__conv_dims d = cpk__conv_dims_of(s, dt);
  const weight_operands o = {x, y, v, n, x_has_v, y_has_v};
  const int nt = threads_for(&d, n);
  char *scratch, *mine = NULL;
  int rc = scratch_new(&d, nt, &scratch);
  /* per thread: the transposed unfolding U^T [G, Ly, kx], the transposed
   * image Y^T [Ly, cy], the tiles' scratch and its partial sums, transposed
   * ([G, kx, cyg]); then room for turning them ([*W], within one more
   * thread's share) */
  const size_t xsz = ((size_t)(d.g * d.kx * d.ly) * d.es + 63) / 64 * 64;
  const size_t ysz = ((size_t)d.ysz * d.es + 63) / 64 * 64;
  const size_t ksz = (cpk__sq_product_scratch(d.ly) + 63) / 64 * 64;
  const size_t psz = ((size_t)d.wsz * d.es + 63) / 64 * 64;
  const size_t per_thread = xsz + ysz + ksz + psz;
  const int64_t cy = d.g * d.cyg;
  size_t bytes;
  if (rc == CPK_OK)
    rc = cpk__mul_size(per_thread, (size_t)nt + 1, &bytes,
                       "convolution squared products");
  if (rc == CPK_OK && (mine = cpk__malloc(bytes)) == NULL)
    rc = CPK_ENOMEM;
  if (rc != CPK_OK) {
    cpk__free(scratch);
    return rc;
  }
  /* Thread t sums its fixed share of the batch into its partial sums,
   * added to out in order after: the same result for the same number of
   * threads. Group g of the weight, transposed (kx, the patch length and
   * usually the longer side, as the tiles' rows):
   *   acc_g[k, r] += w (sum_l U_g^T[l, k] Y^T[l, g*cyg + r])^2. */
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int t = omp_get_thread_num();
    char *ut = mine + (size_t)t * per_thread, *yt = ut + xsz, *ks = yt + ysz;
    char *acc = ks + ksz;
    memset(acc, 0, (size_t)d.wsz * d.es);
    for (int64_t i = t * n / nt; i < (t + 1) * n / nt; i++)
      for (int64_t c = 0; c < v; c++) {
        if (c == 0 || x_has_v) {
          const char *cols =
              unfold_into(s, &d, ctx, dt, image_x(&o, &d, c, i), scratch);
          for (int64_t g = 0; g < d.g; g++) /* [kx, Ly] -> [Ly, kx] */
            cpk__transpose_tiles(dt, d.kx, d.ly,
                                 cols + (size_t)(g * d.kx * d.ly) * d.es,
                                 ut + (size_t)(g * d.ly * d.kx) * d.es);
        }
        cpk__transpose_tiles(dt, cy, d.ly, image_y(&o, &d, c, i), yt);
        const size_t at = (size_t)(c * w_stride + i) * d.es;
        const double wt = weights == NULL ? 1.0
                          : dt == CPK_F32
                              ? *(const float *)((const char *)weights + at)
                              : *(const double *)((const char *)weights + at);
        for (int64_t g = 0; g < d.g; g++)
          cpk__sq_product_add(ctx, dt, d.kx, d.ly, d.cyg,
                              ut + (size_t)(g * d.ly * d.kx) * d.es, d.kx,
                              yt + (size_t)(g * d.cyg) * d.es, cy, wt,
                              acc + (size_t)(g * d.kx * d.cyg) * d.es, d.cyg,
                              ks);
      }
  }
  char *turned = mine + (size_t)nt * per_thread;
  for (int t = 0; t < nt; t++) {
    const char *acc = mine + (size_t)t * per_thread + xsz + ysz + ksz;
    for (int64_t g = 0; g < d.g; g++) /* [kx, cyg] -> [cyg, kx] */
      cpk__transpose_tiles(dt, d.kx, d.cyg,
                           acc + (size_t)(g * d.kx * d.cyg) * d.es,
                           turned + (size_t)(g * d.cyg * d.kx) * d.es);
    cpk__axpy(ctx, dt, d.wsz, 1.0, turned, out);
  }
  cpk__free(mine);
  cpk__free(scratch);
  return CPK_OK;
}

/* Chunks of the batch for a summed product: 4 per thread (so that a thread
 * slowed down by another process leaves work to the others), fewer where
 * the partial sums, (chunks - 1) * bytes, would pass 64 MiB. */
static int64_t chunks_for(int64_t n, int nt, size_t bytes) {
  const size_t budget = (size_t)64 << 20;
  int64_t nc = 4 * (int64_t)nt;
  if (nt == 1)
    return 1;
  while (nc > nt && (size_t)(nc - 1) * bytes > budget)
    nc--;
  return nc < n ? nc : n;
}

/* Summed, with the same result whatever the threads do: the batch is cut
 * into nc fixed chunks [c*N/nc, (c+1)*N/nc); chunk 0 sums into out (with
 * beta), chunk c > 0 into partial[c-1]; threads take chunks as they come
 * free; then out += partial[0] + partial[1] + ... in order. */
static int weight_summed(const cpk__conv *s, const cpk__conv_dims *d,
                         const cpk_context *ctx, cpk_dtype dt,
                         const weight_operands *o, int nt, double beta,
                         char *scratch, char *out) {
  const int64_t total = o->v * d->wsz;
  const int64_t nc = chunks_for(o->n, nt, (size_t)total * d->es);
  char *partial = NULL;
  if (nc > 1) {
    size_t bytes;
    int rc = cpk__mul_size((size_t)total * d->es, (size_t)(nc - 1), &bytes,
                           "convolution weight partial sums");
    if (rc != CPK_OK)
      return rc;
    if ((partial = cpk__malloc(bytes)) == NULL)
      return CPK_ENOMEM;
  }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
  for (int64_t c = 0; c < nc; c++)
    weight_range(s, d, ctx, dt, o, o->n * c / nc, o->n * (c + 1) / nc,
                 c == 0 ? beta : 0.0, scratch,
                 c == 0 ? out : partial + (size_t)((c - 1) * total) * d->es);
  for (int64_t c = 1; c < nc; c++)
    cpk__axpy(ctx, dt, total, 1.0, partial + (size_t)((c - 1) * total) * d->es,
              out);
  cpk__free(partial);
  return CPK_OK;
}

int cpk__conv_weight_grad(const cpk__conv *s, const cpk_context *ctx,
                          cpk_dtype dt, int64_t v, int64_t n, const void *x,
                          int x_has_v, const void *y, int y_has_v,
                          int per_sample, double beta, void *out) {
  if (cpk__on_cuda(ctx))
    return cpk__conv_weight_grad_batched(s, ctx, dt, v, n, x, x_has_v, y,
                                         y_has_v, per_sample, beta, out);
  cpk__conv_dims d = cpk__conv_dims_of(s, dt);
#ifdef CPK_HAVE_DNNL
  if (dt == CPK_F32 && v == 1 && !per_sample) {
    const int rc = dnnl_in_chunks(s, ctx, &d, DNNL_WEIGHT_GRAD, n, x, y, NULL,
                                  (float)beta, out);
    if (rc != CPK__CONV_DECLINED)
      return rc;
  }
#endif
  const weight_operands o = {x, y, v, n, x_has_v, y_has_v};
  const int nt = threads_for(&d, n);
  char *scratch;
  int rc = scratch_new(&d, nt, &scratch);
  if (rc != CPK_OK)
    return rc;
  /* the gathered Y and the stacked result, per thread, within the work
   * budget (many columns, e.g. a root per output position, go one by one) */
  const size_t stacked_bytes =
      (size_t)nt * (size_t)(v * d.g * d.cyg * (d.ly + d.kx)) * d.es;
  if (per_sample && v > 1 && !x_has_v &&
      stacked_bytes <= (ctx != NULL ? ctx->work_bytes : (size_t)64 << 20)) {
    char *stacked = cpk__malloc(stacked_bytes);
    if (stacked == NULL) {
      cpk__free(scratch);
      return CPK_ENOMEM;
    }
    weight_per_sample_stacked(s, &d, ctx, dt, &o, nt, scratch, stacked, out);
    cpk__free(stacked);
  } else if (per_sample)
    weight_per_sample(s, &d, ctx, dt, &o, nt, scratch, out);
  else
    rc = weight_summed(s, &d, ctx, dt, &o, nt, beta, scratch, out);
  cpk__free(scratch);
  return rc;
}

void cpk__conv_bias_grad(const cpk_context *ctx, cpk_dtype dt, int64_t v,
                         int64_t n, int64_t c, int64_t m, const void *in,
                         int per_sample, double beta, void *out) {
  const size_t es = cpk_dtype_size(dt);
  if (per_sample) /* V*N*C channels of one image */
    cpk__channel_sum(ctx, dt, 1, v * n * c, m, in, 0.0, out);
  else
    for (int64_t b = 0; b < v; b++)
      cpk__channel_sum(ctx, dt, n, c, m,
                       (const char *)in + (size_t)(b * n * c * m) * es, beta,
                       (char *)out + (size_t)(b * c) * es);
}

/* One column v of the parameter tangent into out[v] [N, OUT, *out]: the
 * layer's forward with weight t[v] and no bias, or t[v] as the bias. */
static int param_column(const cpk__layer *l, const cpk__conv *s,
                        const cpk_context *ctx, int p, const cpk_tensor *x,
                        const char *tv, double beta, char *ov) {
  const cpk_dtype dt = x->dtype;
  const int64_t n = x->shape[0];
  if (p == 1) {
    const int64_t m = cpk__layer_out_numel(l) / s->out_channels;
    cpk__channel_bias(ctx, dt, n, s->out_channels, m, tv, beta, ov);
    return CPK_OK;
  }
  if (s->transposed)
    return cpk__conv_adjoint(s, ctx, dt, n, x->data, tv, NULL, beta, ov);
  return cpk__conv_apply(s, ctx, dt, n, x->data, tv, NULL, beta, ov);
}

int cpk__conv_param_jac_mat(cpk__layer *l, cpk_context *ctx, int p,
                            const cpk_tensor *x, const cpk_tensor *t,
                            double beta, cpk_tensor *out) {
  const cpk__conv *s = l->priv;
  const int64_t n = x->shape[0], dout = cpk__layer_out_numel(l);
  const int64_t v = cpk__block_v(out, n, dout);
  const int64_t np = cpk_tensor_numel(l->params[p].value);
  const size_t es = cpk_dtype_size(out->dtype);
  int rc = CPK_OK;
  for (int64_t b = 0; b < v && rc == CPK_OK; b++)
    rc = param_column(l, s, ctx, p, x,
                      (const char *)t->data + (size_t)(b * np) * es, beta,
                      (char *)out->data + (size_t)(b * n * dout) * es);
  return rc;
}

int cpk__conv_mixed_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                              const cpk_tensor *x, const cpk_tensor *g,
                              const cpk_tensor *t, cpk_tensor *out) {
  const cpk__conv *s = l->priv;
  const int64_t n = x->shape[0], din = cpk__layer_in_numel(l);
  const int64_t np = cpk_tensor_numel(l->params[0].value);
  const int64_t v = cpk_tensor_numel(t) / np;
  const size_t es = cpk_dtype_size(g->dtype);
  int rc = CPK_OK;
  if (p != 0)
    return CPK_OK;
  for (int64_t b = 0; b < v && rc == CPK_OK; b++) {
    const char *tb = (const char *)t->data + (size_t)(b * np) * es;
    char *ob = (char *)out->data + (size_t)(b * n * din) * es;
    rc = s->transposed
             ? cpk__conv_apply(s, ctx, g->dtype, n, g->data, tb, NULL, 1.0, ob)
             : cpk__conv_adjoint(s, ctx, g->dtype, n, g->data, tb, NULL, 1.0,
                                 ob);
  }
  return rc;
}

int cpk__conv_mixed_param_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                                    const cpk_tensor *x, const cpk_tensor *g,
                                    const cpk_tensor *u, cpk_tensor *out) {
  const cpk__conv *s = l->priv;
  const int64_t n = x->shape[0];
  const int64_t v = cpk__block_v(u, n, cpk__layer_in_numel(l));
  if (p != 0)
    return CPK_OK;
  if (s->transposed) /* X = g (the output side), Y = u */
    return cpk__conv_weight_grad(s, ctx, g->dtype, v, n, g->data, 0, u->data,
                                 1, 0, 1.0, out->data);
  return cpk__conv_weight_grad(s, ctx, g->dtype, v, n, u->data, 1, g->data, 0,
                               0, 1.0, out->data);
}

/* ------------------------------------------------------ for extensions */

const cpk__conv *cpk__conv_of(const cpk__layer *l) {
  const cpk__layer_kind *k = l->kind;
  if (k == &cpk__conv1d_kind || k == &cpk__conv2d_kind ||
      k == &cpk__conv3d_kind || k == &cpk__conv_transpose1d_kind ||
      k == &cpk__conv_transpose2d_kind || k == &cpk__conv_transpose3d_kind)
    return l->priv;
  return NULL;
}

int cpk__conv_unfold_input(const cpk__layer *l, const cpk_context *ctx,
                           const cpk_tensor *x, cpk_tensor **out) {
  const cpk__conv *s = cpk__conv_of(l);
  *out = NULL;
  if (s == NULL)
    return cpk__fail(CPK_EINVAL, "%s: not a convolution", l->where);
  cpk__im2col_geom g = s->geom;
  const int64_t kv = cpk__conv_kvol(&g);
  const int64_t n = x->shape[0], c = s->in_channels;
  /* ConvNd: x is on the X grid; ConvTransposeNd: on the Y grid, and its
   * patches are laid out on the X grid. */
  const int64_t l_out = s->transposed ? g.in[0] * g.in[1] * g.in[2]
                                      : g.out[0] * g.out[1] * g.out[2];
  int64_t shape[4] = {n, s->groups, c / s->groups * kv, l_out};
  int rc = cpk__tensor_new_on(ctx, out, x->dtype, 4, shape);
  if (rc != CPK_OK)
    return rc;
  g.channels = c;
  if (s->transposed)
    cpk__im2col_transposed(ctx, x->dtype, &g, n, x->data, (*out)->data);
  else
    cpk__im2col(ctx, x->dtype, &g, n, x->data, (*out)->data);
  return CPK_OK;
}
