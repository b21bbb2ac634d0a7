/*
 * forward.h: forward mode (private). Jacobian-vector products through the
 * layers of a model whose forward pass has run (cpk__forward keeps every
 * activation: acts[i] is layer i's input, acts[i+1] its output), with
 * respect to the input and to the parameters; per-sample input Jacobians
 * in forward or reverse mode; first-order error propagation.
 *
 * Blocks are [V, N, *features]: V tangents (columns) per sample. A block
 * at acts[i] has layer i's input shape; layer i's jac_mat maps it to a block
 * at acts[i+1], its jac_t_mat maps a block at acts[i+1] back to acts[i].
 */
#ifndef CPK_FORWARD_H
#define CPK_FORWARD_H

#include "engine.h"

/* Start a pass in evaluation mode (dropout off, batch norm on its running
 * statistics) on `input` [N, *in]: checks the input against the model
 * (dtype, shape, finite), then runs cpk__forward (on a CUDA context
 * after copying the parameters to the device). The caller ends the pass
 * with cpk__forward_end, also on failure. */
int cpk__forward_eval(cpk__pass *pass, cpk_context *ctx, cpk_model *model,
                      const cpk_tensor *input);
/* The end of a pass begun by cpk__forward_eval: releases the activations
 * and, on a CUDA context, the parameters' device copies and the layers'
 * cached device state (cpk__model_release_device). On the device the
 * activations, tangent blocks and Jacobians live in device memory; the
 * public entry points download their result once. */
void cpk__forward_end(cpk__pass *pass);

/* Forward-mode operations (ON_CUDA to gpu/products_cuda.cu; pointers on
 * the context's device), shapes flattened per sample:
 *   cpk__fwd_eye:     out[j, m, i0 + j] := s ? s[m, i0 + j] : 1, for j < c,
 *                     m < n; out [c, n, d] zero on entry;
 *   cpk__fwd_scatter: jac[m, o, i0 + j] := r[j, m, o], r [c, n, dout],
 *                     jac [n, dout, din];
 *   cpk__rev_scatter: jac[m, o0 + j, i] := r[j, m, i] * (s ? s[m, i] : 1),
 *                     r [c, n, din], s [n, din]. */
void cpk__fwd_eye(const cpk_context *ctx, cpk_dtype dt, int64_t c, int64_t n,
                  int64_t d, int64_t i0, const void *s, void *out);
void cpk__fwd_scatter(const cpk_context *ctx, cpk_dtype dt, int64_t c,
                      int64_t n, int64_t dout, int64_t din, int64_t i0,
                      const void *r, void *jac);
void cpk__rev_scatter(const cpk_context *ctx, cpk_dtype dt, int64_t c,
                      int64_t n, int64_t dout, int64_t din, int64_t o0,
                      const void *r, const void *s, void *jac);

/* A block `in` at acts[from] pushed forward to acts[to] (from <= to):
 *   *out := J_{to-1} ... J_{from} in        ([V, N, *shape of acts[to]])
 * through jac_mat of layers from .. to-1; *out is new (caller frees), also
 * when from == to (a copy). */
int cpk__jvp_through(cpk__pass *pass, int from, int to, const cpk_tensor *in,
                     cpk_tensor **out);
/* A block `in` at acts[to] pulled back to acts[from] (from <= to):
 *   *out := J_{from}^T ... J_{to-1}^T in    ([V, N, *shape of acts[from]])
 * through jac_t_mat of layers to-1 .. from; *out is new (caller frees). */
int cpk__vjp_through(cpk__pass *pass, int from, int to, const cpk_tensor *in,
                     cpk_tensor **out);

/* The output JVP, forward accumulation layer by layer: with t_0 = the input
 * tangent (zero when NULL),
 *   t_{i+1} = J_{x,i} t_i + sum_{p of layer i} J_{theta_p} v_p,
 *   *out = t_L                                        [V, N, *out]
 * i.e. the directional derivative of the batch output along (input_tangent,
 * param_tangents). `input_tangent` is [V, N, *in]; `param_tangents` (or
 * NULL: all zero) has one entry per model parameter in state_dict order
 * (cpk_model_param), NULL for zero; a trainable parameter of shape S takes
 * [V, *S]; buffers (running statistics) must be NULL. Everything in the
 * model's dtype, shapes checked against `v` (V >= 1). Layers below the
 * first nonzero tangent are skipped. This is the R-op that GGN-vector
 * products J^T H J v start from. */
int cpk__output_jvp(cpk__pass *pass, int64_t v, const cpk_tensor *input_tangent,
                    const cpk_tensor *const *param_tangents, cpk_tensor **out);

/* Nonzero when some layer couples the samples of a batch in evaluation
 * mode (batch norm without running statistics): then a per-sample input
 * Jacobian is not defined. Sets a CPK_ENOTSUP message naming the layer. */
int cpk__couples_samples(const cpk_model *model);

/* Per-sample input Jacobian, scaled column-wise:
 *   jac[n, o, i] = (d out_n[o] / d x_n[i]) * s[n, i]
 * (s = `scale` [N, D_in] in the model's dtype, or NULL for s = 1), with
 * jac [N, D_out, D_in] contiguous in the model's dtype (any shape of that
 * size). reverse = 0: identity columns [c, N, *in] pushed through jac_mat;
 * reverse = 1: identity rows [c, N, *out] pulled back through jac_t_mat;
 * c columns at a time, sized from ctx->work_bytes. */
int cpk__input_jacobian(cpk__pass *pass, int reverse, const cpk_tensor *scale,
                        cpk_tensor *jac);

#endif /* CPK_FORWARD_H */
