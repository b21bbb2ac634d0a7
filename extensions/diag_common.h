/* diag_common.h: diagonals of J_theta^T H J_theta from a factored or
 * diagonal H at the layer output (see diag_common.c). */
#ifndef CPK_DIAG_COMMON_H
#define CPK_DIAG_COMMON_H

#include "extension.h"

/* h[n, k] := sum_v sign[v, n] S[v, n, k]^2 for a block S [V, N, K]
 * (sign [V, N] or NULL for all +1). */
int cpk__rows_from_factor(const cpk_context *ctx, const cpk_tensor *S,
                          const cpk_tensor *sign,
                          int64_t n, cpk_tensor **h);
/* Linear layers on [N, IN]: write (not add) the parameter's diagonal for
 * the per-sample output-curvature diagonal h [N, OUT] into out, which need
 * not be zeroed. */
int cpk__diag_dense_linear(cpk__param_site *s, const cpk_tensor *h, int batch,
                           cpk_tensor *out);
/* Any layer: add sum_{v,(n)} sign (J_theta^T S)^2: summed, from the
 * layer's param_sq_sum where it has one (convolution weights), otherwise
 * and per sample from per-sample products in chunks of samples. */
int cpk__diag_from_factor(cpk__param_site *s, const cpk_tensor *S,
                          const cpk_tensor *sign, int batch, cpk_tensor *out);
/* Layers with param_jac_is_input: add sum_o d[n, o] (d y_o / d theta)^2 for
 * a diagonal curvature d [N, *out], through param_jac_t_mat on x o x. */
int cpk__diag_from_diagonal(cpk__param_site *s, const cpk_tensor *d, int batch,
                            cpk_tensor *out);

#endif
