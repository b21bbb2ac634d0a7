/*
 * pool_common.h: window geometry and plane kernels shared by the pooling and
 * padding layers (maxpool.c, avgpool.c, adaptive_avgpool.c, zeropad.c).
 *
 * Pooling inputs are [N, C, *spatial] with 1 to 3 spatial axes. Every kernel
 * works on planes: the contiguous [*spatial] slices of a batch [N, C, ...]
 * (N*C planes) or of a block [V, N, C, ...] (V*N*C planes). 1-d and 2-d
 * layers are described as 3-d ones with leading unit axes (in = out = 1, one
 * tap), so one loop nest serves all. The kernels are written once for both
 * float types in kernels/pool.inc and run over planes with OpenMP.
 */
#ifndef CPK_POOL_COMMON_H
#define CPK_POOL_COMMON_H

#include "layer.h"

/* One spatial axis. Output position o reads the input positions
 * first[o] + j*step for j < count[o], all inside [0, in); averaging layers
 * divide by the product over the axes of div[o]. */
typedef struct {
  int64_t in, out;             /* extents */
  int64_t step;                /* distance between taps: dilation, else 1 */
  int64_t kernel, stride, pad; /* window o starts at o*stride - pad (pools) */
  int64_t full_lo, full_hi;    /* the outputs whose kernel taps all lie
                                  inside: full_lo <= o < full_hi (pools) */
  int64_t *first;              /* [out], in the geometry's tables */
  int64_t *count;              /* [out] */
  int64_t *div;                /* [out] */
} cpk__pool_axis;

typedef struct {
  cpk__pool_axis ax[3];     /* depth, height, width */
  int64_t divisor_override; /* nonzero: every average divides by this */
  int64_t *tables;          /* owns first, count and div of every axis */
  cpk_tensor *dev;          /* averaging on a CUDA pass: the tables and, per
                               axis, the outputs holding each input position
                               (gpu/layers_cuda.h), on the device; NULL
                               otherwise (cpk__pool_geom_drop_device) */
} cpk__pool_geom;

/* The window arguments of nn.MaxPoolNd / nn.AvgPoolNd, expanded to `dims`
 * values each (dilation 1 for average pools). */
typedef struct {
  int dims;
  int64_t kernel[3], stride[3], padding[3], dilation[3];
  int ceil_mode;
} cpk__pool_window;

/* What a window geometry is for: max pooling (taps every `dilation`, may
 * start in the padding) or average pooling, whose divisor counts the padding
 * (count_include_pad=true) or only the input positions. */
typedef enum {
  CPK__POOL_MAX,
  CPK__POOL_AVG_WITH_PAD,
  CPK__POOL_AVG_NO_PAD
} cpk__pool_mode;

/* Expand and check kernel_size, stride (not given: kernel_size), padding and
 * dilation (NULL: 1) as PyTorch does: kernel, stride and dilation positive,
 * 0 <= padding <= kernel/2. Errors are CPK_EFORMAT naming l->where. */
int cpk__pool_window_parse(cpk__pool_window *w, const cpk__layer *l, int dims,
                           const cpk__arg_value *kernel,
                           const cpk__arg_value *stride,
                           const cpk__arg_value *padding,
                           const cpk__arg_value *dilation, int ceil_mode);

/* Build g for l->in_shape = [C, *spatial] (dims spatial axes) and set
 * l->out_shape = [C, *out]. Per axis (PyTorch's pooling_output_shape):
 *   out = floor((in + 2p - dil*(k-1) - 1 + (ceil_mode ? s-1 : 0)) / s) + 1,
 *   minus one when ceil_mode and (out-1)*s >= in + p (the last window must
 *   start inside the input or the left padding);
 * window o starts at o*s - p. Max: taps at start + j*dil inside [0, in).
 * Average: the input positions of [start, start + k); div is
 * min(start + k, in + p) - start with the padding, else the number of input
 * positions. Fails with CPK_ESHAPE when the sample is not [C, *spatial] or an
 * output extent is < 1 (kernel larger than the padded input). */
int cpk__pool_geom_window(cpk__pool_geom *g, cpk__layer *l,
                          const cpk__pool_window *w, cpk__pool_mode mode);

/* Build g for adaptive average pooling of l->in_shape = [C, *spatial] to
 * out[dims]: window o of an axis is [floor(o*in/out), ceil((o+1)*in/out)),
 * div its length. Sets l->out_shape. */
int cpk__pool_geom_adaptive(cpk__pool_geom *g, cpk__layer *l, int dims,
                            const int64_t *out);

void cpk__pool_geom_free(cpk__pool_geom *g);

/* Free g's device tables (the end of a device pass: a kind's drop_cache). */
void cpk__pool_geom_drop_device(cpk__pool_geom *g);

/* Elements of one input / output plane. */
static inline int64_t cpk__pool_in_plane(const cpk__pool_geom *g) {
  return g->ax[0].in * g->ax[1].in * g->ax[2].in;
}
static inline int64_t cpk__pool_out_plane(const cpk__pool_geom *g) {
  return g->ax[0].out * g->ax[1].out * g->ax[2].out;
}

/* The averaging map of g applied to a block [..., C, *spatial] (planes:
 * numel(in) / plane size): its J, which is also the forward
 * (transpose = 0), or J^T (transpose = 1). On a CUDA context in and out are
 * device memory, and the first call of a pass uploads g's tables (g->dev,
 * kept until cpk__pool_geom_drop_device); CPK_ENOMEM when that fails. */
int cpk__pool_avg_apply(const cpk_context *ctx, cpk__pool_geom *g,
                        int transpose, const cpk_tensor *in, cpk_tensor *out);

/* ---- plane kernels (x, y, in, out: buffers of dtype dt) ---- */

/* Max pooling of `planes` planes: y[p,o] := max of x[p,i] over the taps i
 * of window o, scanning depth, height, width in increasing order and taking
 * the first maximum (a NaN counts as the maximum), as PyTorch does;
 * idx[p,o] := that i (the first tap when every value is -inf; -1 and
 * y = -inf when the window holds no input position). */
void cpk__pool_max(const cpk_context *ctx, cpk_dtype dt,
                   const cpk__pool_geom *g, int64_t planes, const void *x,
                   void *y, int32_t *idx);

/* J of max pooling: out[p,o] := in[p, idx[p mod ip, o]] (0 where idx < 0);
 * in planes have in_plane elements, out and idx planes out_plane. */
void cpk__pool_gather(const cpk_context *ctx, cpk_dtype dt, int64_t planes,
                      int64_t ip, int64_t in_plane, int64_t out_plane,
                      const int32_t *idx, const void *in, void *out);

/* J^T of max pooling: out[p,:] := 0, then out[p, idx[p mod ip, o]] +=
 * in[p,o]; in and idx planes have out_plane elements, out planes in_plane. */
void cpk__pool_scatter(const cpk_context *ctx, cpk_dtype dt, int64_t planes,
                       int64_t ip, int64_t in_plane, int64_t out_plane,
                       const int32_t *idx, const void *in, void *out);

/* Average pooling (and its J, the same linear map):
 * out[p,o] := sum_{i in window o} in[p,i] / div(o), div(o) the product of
 * the axes' div or the divisor override. */
void cpk__pool_avg(cpk_dtype dt, const cpk__pool_geom *g, int64_t planes,
                   const void *in, void *out);

/* J^T of average pooling: out[p,:] := 0, then out[p,i] += in[p,o] / div(o)
 * for every i in window o. */
void cpk__pool_avg_t(cpk_dtype dt, const cpk__pool_geom *g, int64_t planes,
                     const void *in, void *out);

/* Zero padding and cropping of [hi, wi] planes into [ho, wo] planes:
 * out[p,h,w] := in[p, h - top, w - left] where that lies inside the input,
 * else 0. (Negative top/left crop; the transpose is the same map with
 * -top, -left and the extents swapped.) */
void cpk__pad2d(const cpk_context *ctx, cpk_dtype dt, int64_t planes,
                int64_t hi, int64_t wi, int64_t ho, int64_t wo, int64_t top,
                int64_t left, const void *in, void *out);

#endif /* CPK_POOL_COMMON_H */
