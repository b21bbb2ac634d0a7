/*
 * batchnorm.c: nn.BatchNorm1d (sample [F] or [F, L]) and nn.BatchNorm2d
 * (sample [F, H, W]). Per channel c, with x_hat = (x - mean[c]) * istd[c]
 * and istd[c] = 1 / sqrt(var[c] + eps):
 *
 *   y = x_hat * weight[c] + bias[c]       (weight 1, bias 0 if affine=false)
 *
 * The batch is viewed as x [N, F, L] (L = 1, the length, or H*W); blocks as
 * [V, N, F, L]; M = N*L values per channel.
 *
 * Evaluation mode (training == 0 in forward, and every curvature
 * computation, as BackPACK): mean and var are the buffers running_mean and
 * running_var. The layer is an affine map of each sample on its own:
 *   J = J^T = diag(weight[c] istd[c]).
 *
 * Batch statistics (training != 0, or track_running_stats=false in either
 * mode, as PyTorch): mean[c] and var[c] are the mean and the biased variance
 * of the M values of channel c. The forward then also updates the buffers as
 * PyTorch does, in the forward itself:
 *   running_mean := (1 - momentum) running_mean + momentum mean
 *   running_var  := (1 - momentum) running_var  + momentum var * M / (M - 1)
 * (the unbiased variance). Every output depends on every input of its
 * channel, so the input Jacobian is of the whole batch; per channel, on the
 * M values, it is the symmetric matrix
 *   J = J^T = weight istd (I - 1 1^T / M - x_hat x_hat^T / M),
 * applied to each of the V columns of a block (jac_t_mat and jac_mat).
 *
 * Parameter Jacobians, in both modes (x_hat does not depend on weight and
 * bias): d y[n,c,l] / d weight[c] = x_hat[n,c,l], d y[n,c,l] / d bias[c] = 1.
 * So the summed products are the usual sum_{n,l} g x_hat and sum_{n,l} g,
 * and the per-sample ones are sample n's terms sum_l g_n x_hat_n and
 * sum_l g_n. With batch statistics these per-sample terms are the
 * contributions of each sample's output to the batch gradient (they sum to
 * it), with the statistics held fixed: BackPACK's and PyTorch's per-sample
 * convention, not the gradient of a loss of sample n alone (which is not
 * defined once samples are coupled).
 *
 * The forward keeps the statistics it normalised with (mean[F], istd[F], in
 * double) and whether they were batch statistics; the derivatives rebuild
 * x_hat from the x they are given. That keeps no [N, F, L] buffer per layer
 * and lets the per-sample parameter products run on any chunk of the batch.
 *
 * Parameters in state_dict order: weight (F,), bias (F,) (trainable; absent
 * when affine=false), running_mean (F,), running_var (F,) (buffers; absent
 * when track_running_stats=false). PyTorch's num_batches_tracked is not
 * kept, so momentum=None (a cumulative average) is not supported.
 *
 * On a CUDA context (a device pass) the data-sized work runs in the CUDA
 * twins of the kernels (gpu/layers_cuda.cu): the batch statistics' sums, the
 * forward and every derivative. The F-sized steps stay on the host as on
 * the CPU: the statistics come down (mean and biased variance, 2F doubles),
 * the running-statistic update is applied right there to the model's own
 * (host) running_mean and running_var, the same formula and order as the
 * CPU's, and the updated buffers are copied to their device copies for the
 * rest of the pass. So the update reaches the model at once, exactly as on
 * the CPU, with no write-back step at the end of the pass. The statistics
 * the layer normalised with (mean, istd) then go up (s->dev, [2, F]
 * doubles), for the kernels of the derivatives; drop_cache frees them at
 * the end of the pass.
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "device.h"
#include "layer.h"
#include "ops.h"
#ifdef CPK_HAVE_CUDA
#include "gpu_ops.h"
#include "layers_cuda.h"
#endif

#define CPK_T float
#define CPK_SFX f32
#include "kernels/batchnorm.inc"
#undef CPK_T
#undef CPK_SFX

#define CPK_T double
#define CPK_SFX f64
#include "kernels/batchnorm.inc"
#undef CPK_T
#undef CPK_SFX

/* Sample axes a kind accepts: batchnorm1d [F] or [F, L], batchnorm2d
 * [F, H, W]. */
typedef struct {
  int min_axes, max_axes;
  const char *what; /* the batched shapes, for messages */
} bn_axes;

static const bn_axes bn1d_axes = {1, 2, "(N, F) or (N, F, L)"},
                     bn2d_axes = {3, 3, "(N, F, H, W)"};

typedef struct {
  int64_t features;
  double eps, momentum;
  int affine, track;
  int p_weight, p_bias, p_mean, p_var; /* slots in l->params, -1 if absent */
  double *mean, *istd;                 /* [F], of the last forward */
  int ready;                           /* a forward has run */
  int batch_stats;                     /* it used batch statistics */
  cpk_tensor *dev; /* device pass: mean and istd of the last forward,
                      double [2, F] on the device; NULL otherwise */
} batchnorm;

static const cpk__arg_spec bn_args[] = {
    {"num_features", CPK__ARG_INT, NULL},
    {"eps", CPK__ARG_FLOAT, "1e-5"},
    {"momentum", CPK__ARG_FLOAT, "0.1"},
    {"affine", CPK__ARG_BOOL, "true"},
    {"track_running_stats", CPK__ARG_BOOL, "true"},
};

static void bn_destroy(cpk__layer *l) {
  batchnorm *s = l->priv;
  if (s != NULL) {
    cpk_tensor_free(s->dev);
    cpk__free(s->mean);
    cpk__free(s->istd);
  }
  cpk__free(s);
}

static int bn_configure(cpk__layer *l, const cpk__arg_value *a) {
  if (a[0].ints[0] <= 0)
    return cpk__fail(CPK_EFORMAT, "%s: num_features must be positive, got %lld",
                     l->where, (long long)a[0].ints[0]);
  if (!(a[1].f >= 0.0))
    return cpk__fail(CPK_EFORMAT, "%s: eps must not be negative, got %g",
                     l->where, a[1].f);
  batchnorm *s = cpk__calloc(sizeof *s);
  if (s == NULL)
    return CPK_ENOMEM;
  l->priv = s;
  s->features = a[0].ints[0];
  s->eps = a[1].f;
  s->momentum = a[2].f;
  s->affine = a[3].b;
  s->track = a[4].b;
  /* On failure the caller destroys l (and s with it). */
  size_t bytes;
  int rc = cpk__mul_size((size_t)s->features, sizeof(double), &bytes, l->where);
  if (rc != CPK_OK)
    return rc;
  s->mean = cpk__malloc(bytes);
  s->istd = cpk__malloc(bytes);
  if (s->mean == NULL || s->istd == NULL)
    return CPK_ENOMEM;
  return CPK_OK;
}

static int bn_build(cpk__layer *l) {
  batchnorm *s = l->priv;
  const bn_axes *ax = l->kind->data;
  char buf[128];
  int rc = CPK_OK;
  if (l->in_ndim < ax->min_axes || l->in_ndim > ax->max_axes)
    return cpk__fail(CPK_ESHAPE,
                     "%s: expected an input %s, got samples of shape %s",
                     l->where, ax->what,
                     cpk_shape_str(buf, sizeof buf, l->in_ndim, l->in_shape));
  if (l->in_shape[0] != s->features)
    return cpk__fail(CPK_ESHAPE,
                     "%s: num_features is %lld but the input has %lld channels "
                     "(sample shape %s)",
                     l->where, (long long)s->features,
                     (long long)l->in_shape[0],
                     cpk_shape_str(buf, sizeof buf, l->in_ndim, l->in_shape));
  l->out_ndim = l->in_ndim;
  memcpy(l->out_shape, l->in_shape, sizeof l->in_shape);
  s->p_weight = s->p_bias = s->p_mean = s->p_var = -1;
  s->ready = 0;
  if (s->affine) {
    s->p_weight = l->nparams;
    rc = cpk__layer_declare_param(l, "weight", 1, 1, &s->features);
    s->p_bias = l->nparams;
    if (rc == CPK_OK)
      rc = cpk__layer_declare_param(l, "bias", 1, 1, &s->features);
  }
  if (s->track && rc == CPK_OK) {
    s->p_mean = l->nparams;
    rc = cpk__layer_declare_param(l, "running_mean", 0, 1, &s->features);
    s->p_var = l->nparams;
    if (rc == CPK_OK)
      rc = cpk__layer_declare_param(l, "running_var", 0, 1, &s->features);
  }
  return rc;
}

/* The data of parameter slot p, or NULL when the layer has no such slot. */
static void *bn_param_data(const cpk__layer *l, int p) {
  return p < 0 ? NULL : l->params[p].value->data;
}

/* The weight's data for a computation on ctx (the device copy on a CUDA
 * context), or NULL when affine=false. */
static const void *bn_weight_on(const cpk__layer *l, const cpk_context *ctx) {
  const batchnorm *s = l->priv;
  return s->p_weight < 0 ? NULL : cpk__param_value(l, ctx, s->p_weight)->data;
}

/* Positions per channel: L = product of the sample axes after the first. */
static int64_t bn_positions(const cpk__layer *l) {
  return cpk__layer_in_numel(l) / l->in_shape[0];
}

/* The running-statistic update from the batch statistics s->mean and
 * s->istd (holding the biased variance on the way in), then istd in place:
 * s->istd[c] := 1 / sqrt(var[c] + eps). m = N*L values per channel. */
static void bn_update(cpk__layer *l, double m) {
  batchnorm *s = l->priv;
  if (s->track) /* the model's device copies of the buffers are out of date */
    l->params[s->p_mean].stale = l->params[s->p_var].stale = 1;
  for (int64_t c = 0; c < s->features; c++) {
    const double var = s->istd[c];
    if (s->track) {
      cpk_tensor *rm = l->params[s->p_mean].value;
      cpk_tensor *rv = l->params[s->p_var].value;
      const double mo = s->momentum;
      cpk_tensor_set(rm, c,
                     (1.0 - mo) * cpk_tensor_get(rm, c) + mo * s->mean[c]);
      cpk_tensor_set(
          rv, c, (1.0 - mo) * cpk_tensor_get(rv, c) + mo * var * m / (m - 1.0));
    }
    s->istd[c] = 1.0 / sqrt(var + s->eps);
  }
}

/* Batch statistics need at least two values per channel. */
static int bn_check_batch(const cpk__layer *l, const cpk_tensor *x) {
  const int64_t n = x->shape[0], pos = bn_positions(l);
  char buf[128];
  if (n * pos < 2)
    return cpk__fail(CPK_EINVAL,
                     "%s: batch statistics need more than one value per "
                     "channel, got an input of shape %s",
                     l->where,
                     cpk_shape_str(buf, sizeof buf, x->ndim, x->shape));
  return CPK_OK;
}

/* Batch statistics into s->mean, s->istd (var kept in s->istd on the way),
 * and the running-statistic update when the layer tracks them. */
static int bn_batch_stats(cpk__layer *l, const cpk_tensor *x) {
  batchnorm *s = l->priv;
  const int64_t n = x->shape[0], f = s->features, pos = bn_positions(l);
  int rc = bn_check_batch(l, x);
  if (rc != CPK_OK)
    return rc;
  if (x->dtype == CPK_F32)
    bn_stats_f32(n, f, pos, x->data, s->mean, s->istd);
  else
    bn_stats_f64(n, f, pos, x->data, s->mean, s->istd);
  bn_update(l, (double)(n * pos));
  return CPK_OK;
}

/* Evaluation statistics from the running buffers (host values). */
static void bn_running_stats(cpk__layer *l) {
  batchnorm *s = l->priv;
  const cpk_tensor *rm = l->params[s->p_mean].value;
  const cpk_tensor *rv = l->params[s->p_var].value;
  for (int64_t c = 0; c < s->features; c++) {
    s->mean[c] = cpk_tensor_get(rm, c);
    s->istd[c] = 1.0 / sqrt(cpk_tensor_get(rv, c) + s->eps);
  }
}

#ifdef CPK_HAVE_CUDA
/* The forward on the CUDA device (see the top of the file). */
static int bn_forward_cuda(cpk__layer *l, cpk_context *ctx,
                           const cpk_tensor *x, cpk_tensor *y) {
  batchnorm *s = l->priv;
  const int64_t n = x->shape[0], f = s->features, pos = bn_positions(l);
  const size_t bytes = (size_t)f * sizeof(double);
  const int f64 = x->dtype == CPK_F64;
  int rc;
  if (s->dev == NULL || s->dev->device != ctx->gpu) {
    const int64_t shape[2] = {2, f};
    cpk_tensor_free(s->dev);
    s->dev = NULL;
    if ((rc = cpk__tensor_new_on(ctx, &s->dev, CPK_F64, 2, shape)) != CPK_OK)
      return rc;
  }
  double *dmean = s->dev->data, *distd = dmean + f;
  if (s->batch_stats) {
    if ((rc = bn_check_batch(l, x)) != CPK_OK)
      return rc;
    /* mean and var into the device buffer, then down */
    cpk__cuda_bn_stats(ctx->gpu, f64, n, f, pos, x->data, dmean, distd);
    const int down = cpk__gpu_download(ctx->gpu, s->mean, dmean, bytes) |
                     cpk__gpu_download(ctx->gpu, s->istd, distd, bytes);
    if ((rc = cpk__device_sync(ctx)) != CPK_OK || down != 0)
      return cpk__fail_prefix(rc != CPK_OK ? rc : CPK_EIO, "%s: forward",
                              l->where);
    bn_update(l, (double)(n * pos));
    for (int p = 0; s->track && p < 2; p++) {
      cpk__param *q = &l->params[p == 0 ? s->p_mean : s->p_var];
      if (q->dev == NULL)
        continue;
      if ((rc = cpk__tensor_fill_from_host(ctx, q->dev, q->value)) != CPK_OK)
        return rc;
      if (q->dev == q->resident) /* (not a curvature operator's own copy) */
        q->stale = 0;
    }
  } else {
    bn_running_stats(l);
  }
  if ((cpk__gpu_upload(ctx->gpu, dmean, s->mean, bytes) |
       cpk__gpu_upload(ctx->gpu, distd, s->istd, bytes)) != 0) {
    rc = cpk__device_sync(ctx);
    return cpk__fail_prefix(rc != CPK_OK ? rc : CPK_EIO, "%s: forward",
                            l->where);
  }
  const cpk_tensor *w = s->p_weight >= 0 ? cpk__param_value(l, ctx, s->p_weight)
                                         : NULL;
  const cpk_tensor *b =
      s->p_bias >= 0 ? cpk__param_value(l, ctx, s->p_bias) : NULL;
  cpk__cuda_bn_forward(ctx->gpu, f64, n, f, pos, x->data, dmean, distd,
                       w ? w->data : NULL, b ? b->data : NULL, y->data);
  s->ready = 1;
  return CPK_OK;
}
#endif

static int bn_forward(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                      cpk_tensor *y, int training) {
  batchnorm *s = l->priv;
  const int64_t n = x->shape[0], f = s->features, pos = bn_positions(l);
  s->ready = 0;
  s->batch_stats = training || !s->track;
  if (s->batch_stats && ctx->shard_total > 0 && ctx->shard_total != n)
    return cpk__fail(CPK_ENOTSUP,
                     "%s: batch norm with batch statistics (training, or "
                     "track_running_stats=false) couples the samples of the "
                     "whole batch; it cannot run on a shard of %lld of %lld "
                     "samples (MPI ranks or passes in batches): use one "
                     "process and one pass",
                     l->where, (long long)n, (long long)ctx->shard_total);
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx))
    return bn_forward_cuda(l, ctx, x, y);
#endif
  if (s->batch_stats) {
    int rc = bn_batch_stats(l, x);
    if (rc != CPK_OK)
      return rc;
  } else {
    bn_running_stats(l);
  }
  const void *w = bn_param_data(l, s->p_weight),
             *b = bn_param_data(l, s->p_bias);
  if (x->dtype == CPK_F32)
    bn_forward_f32(n, f, pos, x->data, s->mean, s->istd, w, b, y->data);
  else
    bn_forward_f64(n, f, pos, x->data, s->mean, s->istd, w, b, y->data);
  s->ready = 1;
  return CPK_OK;
}

static int bn_require_forward(const cpk__layer *l, const cpk_context *ctx) {
  const batchnorm *s = l->priv;
  if (!s->ready || (cpk__on_cuda(ctx) && s->dev == NULL))
    return cpk__fail(CPK_EINVAL,
                     "%s: derivatives asked for before a successful forward",
                     l->where);
  return CPK_OK;
}

/* Both J and J^T (the same symmetric map, see the top of the file):
 * in [V, N, F, L] -> out [V, N, F, L]. */
static int bn_jac(cpk__layer *l, cpk_context *ctx, const cpk_tensor *x,
                  const cpk_tensor *y, const cpk_tensor *in, cpk_tensor *out) {
  const batchnorm *s = l->priv;
  const int64_t n = x->shape[0], f = s->features, pos = bn_positions(l);
  const int64_t v = cpk__block_v(in, n, f * pos);
  const void *w = bn_param_data(l, s->p_weight);
  int rc = bn_require_forward(l, ctx);
  if (rc != CPK_OK)
    return rc;
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    const double *dmean = s->dev->data, *distd = dmean + f;
    const void *dw = bn_weight_on(l, ctx);
    if (!s->batch_stats)
      cpk__cuda_bn_scale(ctx->gpu, in->dtype == CPK_F64, v * n, f, pos, dw,
                         distd, in->data, out->data);
    else
      cpk__cuda_bn_coupled(ctx->gpu, in->dtype == CPK_F64, v, n, f, pos,
                           x->data, dmean, distd, dw, in->data, out->data);
    return CPK_OK;
  }
#endif
  if (!s->batch_stats) {
    if (in->dtype == CPK_F32)
      bn_scale_f32(v * n, f, pos, w, s->istd, in->data, out->data);
    else
      bn_scale_f64(v * n, f, pos, w, s->istd, in->data, out->data);
  } else if (in->dtype == CPK_F32) {
    bn_coupled_f32(v, n, f, pos, x->data, s->mean, s->istd, w, in->data,
                   out->data);
  } else {
    bn_coupled_f64(v, n, f, pos, x->data, s->mean, s->istd, w, in->data,
                   out->data);
  }
  return CPK_OK;
}

/* weight: sum_{(n),l} in x_hat; bias: sum_{(n),l} in (see bn_param in
 * kernels/batchnorm.inc for the shapes and beta). */
static int bn_param_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                              const cpk_tensor *x, const cpk_tensor *in,
                              int per_sample, double beta, cpk_tensor *out) {
  const batchnorm *s = l->priv;
  const int64_t n = x->shape[0], f = s->features, pos = bn_positions(l);
  const int64_t v = cpk__block_v(in, n, f * pos);
  int rc = bn_require_forward(l, ctx);
  if (rc != CPK_OK)
    return rc;
  if (p != s->p_weight && p != s->p_bias)
    return cpk__fail(CPK_EINVAL, "%s: parameter %d is not trainable", l->where,
                     p);
  const int use_xhat = p == s->p_weight;
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    const double *dmean = s->dev->data;
    cpk__cuda_bn_param(ctx->gpu, in->dtype == CPK_F64, v, n, f, pos, x->data,
                       dmean, dmean + f, use_xhat, per_sample, beta, in->data,
                       out->data);
    return CPK_OK;
  }
#endif
  if (in->dtype == CPK_F32)
    bn_param_f32(v, n, f, pos, x->data, s->mean, s->istd, use_xhat, per_sample,
                 beta, in->data, out->data);
  else
    bn_param_f64(v, n, f, pos, x->data, s->mean, s->istd, use_xhat, per_sample,
                 beta, in->data, out->data);
  return CPK_OK;
}

/* Forward mode in the parameters (the statistics do not depend on them, in
 * either mode): weight tangent t[v] [F]: out += t[v,c] x_hat; bias tangent:
 * out += t[v,c] (bn_param_fwd in kernels/batchnorm.inc). */
static int bn_param_jac_mat(cpk__layer *l, cpk_context *ctx, int p,
                            const cpk_tensor *x, const cpk_tensor *t,
                            double beta, cpk_tensor *out) {
  const batchnorm *s = l->priv;
  const int64_t n = x->shape[0], f = s->features, pos = bn_positions(l);
  const int64_t v = cpk__block_v(out, n, f * pos);
  int rc = bn_require_forward(l, ctx);
  if (rc != CPK_OK)
    return rc;
  if (p != s->p_weight && p != s->p_bias)
    return cpk__fail(CPK_EINVAL, "%s: parameter %d is not trainable", l->where,
                     p);
  const int use_xhat = p == s->p_weight;
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    const double *dmean = s->dev->data;
    cpk__cuda_bn_param_fwd(ctx->gpu, out->dtype == CPK_F64, v, n, f, pos,
                           x->data, dmean, dmean + f, use_xhat, beta, t->data,
                           out->data);
    return CPK_OK;
  }
#endif
  if (out->dtype == CPK_F32)
    bn_param_fwd_f32(v, n, f, pos, x->data, s->mean, s->istd, use_xhat, beta,
                     t->data, out->data);
  else
    bn_param_fwd_f64(v, n, f, pos, x->data, s->mean, s->istd, use_xhat, beta,
                     t->data, out->data);
  return CPK_OK;
}

/* out := w[c] istd[c] in over `rows` rows [rows, F, L] (w NULL: 1), on
 * the context's device. */
static void bn_scale_on(const cpk__layer *l, const cpk_context *ctx,
                        cpk_dtype dt, int64_t rows, const void *w,
                        const void *in, void *out) {
  const batchnorm *s = l->priv;
  const int64_t f = s->features, pos = bn_positions(l);
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    cpk__cuda_bn_scale(ctx->gpu, dt == CPK_F64, rows, f, pos, w,
                       (const double *)s->dev->data + f, in, out);
    return;
  }
#endif
  if (dt == CPK_F32)
    bn_scale_f32(rows, f, pos, w, s->istd, in, out);
  else
    bn_scale_f64(rows, f, pos, w, s->istd, in, out);
}

/* The mixed second derivatives need evaluation mode: with batch statistics
 * every output depends on the whole batch, nonlinearly. */
static int bn_mixed_ready(const cpk__layer *l, const cpk_context *ctx) {
  const batchnorm *s = l->priv;
  int rc = bn_require_forward(l, ctx);
  if (rc == CPK_OK && s->batch_stats)
    rc = cpk__fail(CPK_ENOTSUP,
                   "%s: Hessian products through batch statistics (training "
                   "mode, or track_running_stats=false) are not supported; "
                   "use evaluation mode with running statistics",
                   l->where);
  return rc;
}

/* Mixed second derivatives (layer.h) of the weight in evaluation mode,
 * where J_x = diag(weight istd) and dy/dweight = x_hat = (x - mean) istd
 * (the bias adds nothing); g [N, F, L]:
 *   to the input:  out[v, n, c, l] += t[v, c] istd[c] g[n, c, l]
 *                  (bn_scale of g with weight t[v], per column);
 *   to the weight: out[v, c] += sum_{n,l} u[v, n, c, l] istd[c] g[n, c, l]
 *                  (istd g once, times every column, then bn_param's sums). */
static int bn_mixed_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                              const cpk_tensor *x, const cpk_tensor *g,
                              const cpk_tensor *t, cpk_tensor *out) {
  const batchnorm *s = l->priv;
  const int64_t n = x->shape[0], f = s->features, per = cpk_tensor_numel(x);
  const int64_t v = cpk_tensor_numel(t) / f;
  const size_t es = cpk_dtype_size(g->dtype);
  cpk_tensor *tmp;
  if (p != s->p_weight)
    return CPK_OK;
  int rc = bn_mixed_ready(l, ctx);
  if (rc != CPK_OK ||
      (rc = cpk__tensor_new_on(ctx, &tmp, g->dtype, 1, &per)) != CPK_OK)
    return rc;
  for (int64_t b = 0; b < v; b++) {
    const char *tb = (const char *)t->data + (size_t)(b * f) * es;
    bn_scale_on(l, ctx, g->dtype, n, tb, g->data, tmp->data);
    cpk__axpy(ctx, g->dtype, per, 1.0, tmp->data,
              (char *)out->data + (size_t)(b * per) * es);
  }
  cpk_tensor_free(tmp);
  return CPK_OK;
}

static int bn_mixed_param_jac_t_mat(cpk__layer *l, cpk_context *ctx, int p,
                                    const cpk_tensor *x, const cpk_tensor *g,
                                    const cpk_tensor *u, cpk_tensor *out) {
  const batchnorm *s = l->priv;
  const int64_t n = x->shape[0], f = s->features, pos = bn_positions(l);
  const int64_t per = cpk_tensor_numel(x), v = cpk_tensor_numel(u) / per;
  const int64_t total = v * per;
  cpk_tensor *gi = NULL, *prod = NULL;
  if (p != s->p_weight)
    return CPK_OK;
  int rc = bn_mixed_ready(l, ctx);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on(ctx, &gi, g->dtype, 1, &per);
  if (rc == CPK_OK)
    rc = cpk__tensor_new_on(ctx, &prod, g->dtype, 1, &total);
  if (rc != CPK_OK)
    goto done;
  bn_scale_on(l, ctx, g->dtype, n, NULL, g->data, gi->data);
  cpk__mul_broadcast(ctx, g->dtype, v, per, gi->data, u->data, prod->data);
#ifdef CPK_HAVE_CUDA
  if (cpk__on_cuda(ctx)) {
    const double *dmean = s->dev->data;
    cpk__cuda_bn_param(ctx->gpu, g->dtype == CPK_F64, v, n, f, pos, x->data,
                       dmean, dmean + f, 0, 0, 1.0, prod->data, out->data);
    goto done;
  }
#endif
  if (g->dtype == CPK_F32)
    bn_param_f32(v, n, f, pos, x->data, s->mean, s->istd, 0, 0, 1.0,
                 prod->data, out->data);
  else
    bn_param_f64(v, n, f, pos, x->data, s->mean, s->istd, 0, 0, 1.0,
                 prod->data, out->data);
done:
  cpk_tensor_free(gi);
  cpk_tensor_free(prod);
  return rc;
}

/* The device statistics do not outlive a device pass. */
static void bn_drop_cache(cpk__layer *l) {
  batchnorm *s = l->priv;
  if (s != NULL) {
    cpk_tensor_free(s->dev);
    s->dev = NULL;
  }
}

/* As PyTorch's reset_parameters(): weight 1, bias 0, running_mean 0,
 * running_var 1. */
static int bn_init(cpk__layer *l, cpk__rng *rng) {
  const batchnorm *s = l->priv;
  const int slots[4] = {s->p_weight, s->p_bias, s->p_mean, s->p_var};
  const double values[4] = {1.0, 0.0, 0.0, 1.0};
  for (int i = 0; i < 4; i++)
    for (int64_t c = 0; slots[i] >= 0 && c < s->features; c++)
      cpk_tensor_set(l->params[slots[i]].value, c, values[i]);
  return CPK_OK;
}

const cpk__layer_kind cpk__batchnorm1d_kind = {
    .name = "batchnorm1d",
    .args = bn_args,
    .nargs = 5,
    .data = &bn1d_axes,
    .configure = bn_configure,
    .build = bn_build,
    .forward = bn_forward,
    .jac_t_mat = bn_jac,
    .fills_output = 1,
    .jac_mat = bn_jac,
    .param_jac_t_mat = bn_param_jac_t_mat,
    .param_jac_mat = bn_param_jac_mat,
    .mixed_jac_t_mat = bn_mixed_jac_t_mat,
    .mixed_param_jac_t_mat = bn_mixed_param_jac_t_mat,
    .init = bn_init,
    .destroy = bn_destroy,
    .drop_cache = bn_drop_cache,
    .cuda = 1,
};

const cpk__layer_kind cpk__batchnorm2d_kind = {
    .name = "batchnorm2d",
    .args = bn_args,
    .nargs = 5,
    .data = &bn2d_axes,
    .configure = bn_configure,
    .build = bn_build,
    .forward = bn_forward,
    .jac_t_mat = bn_jac,
    .fills_output = 1,
    .jac_mat = bn_jac,
    .param_jac_t_mat = bn_param_jac_t_mat,
    .param_jac_mat = bn_param_jac_mat,
    .mixed_jac_t_mat = bn_mixed_jac_t_mat,
    .mixed_param_jac_t_mat = bn_mixed_param_jac_t_mat,
    .init = bn_init,
    .destroy = bn_destroy,
    .drop_cache = bn_drop_cache,
    .cuda = 1,
};
