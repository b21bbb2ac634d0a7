/*
 * hessian_terms.h: the Hessian of the loss with respect to a layer's output,
 * per sample, held backward as a sum of cheap terms (for diag_hessian):
 *
 *   H_n = sum_v sign[v,n] F[v,n] F[v,n]^T          factor block F [V, N, D]
 *       + diag(d[n])                                diagonal term d [N, D]
 *       + E_n W^T diag(s[n]) W E_n                  lazy rows, E_n = diag(e[n])
 *
 * At the loss H_n is the exact square root's S S^T. Through a layer,
 * H_in = J^T H J + (f''(x) o g) for elementwise layers with curvature (the
 * residual, which is diagonal). Diagonal terms stay diagonal through
 * elementwise layers, reshapes and selections; through a dense linear layer
 * a diagonal term becomes "lazy rows": the one-hot square roots sqrt|d_i| e_i
 * times W are scaled rows of W, so nothing is multiplied until another
 * non-elementwise layer needs the block (and a linear layer's own diagonal
 * only needs diag(H), which the lazy form gives by one GEMM). Other layers
 * expand diagonal terms into one-hot factor blocks, as BackPACK does.
 * Every term lives on the context's device (ops only, no host access).
 */
#ifndef CPK_HESSIAN_TERMS_H
#define CPK_HESSIAN_TERMS_H

#include "extension.h"

struct cpk__hterms {
  const cpk_context *ctx; /* where the terms live (host or CUDA device) */
  int64_t n;
  cpk_tensor *f, *sign; /* [V, N, *D], [V, N]; NULL when empty */
  cpk_tensor *d;        /* [N, *D] or NULL */
  cpk_tensor *ls;       /* lazy rows: s [N, K] or NULL */
  const cpk_tensor *lw; /* W [K, D] (the model's weight) */
  cpk_tensor *le;       /* e [N, D] */
};

/* Start from the exact square root of the loss Hessian S [V, N, *out]
 * (copied), on the device of ctx. */
int cpk__hterms_start(cpk__hterms *h, const cpk_context *ctx,
                      const cpk_tensor *sqrt_exact);
/* Move the terms from layer l's output to its input; g is dL/dy at the
 * output ([1, N, *out]). */
int cpk__hterms_through(cpk__hterms *h, cpk__layer *l, cpk_context *ctx,
                        const cpk_tensor *x, const cpk_tensor *y,
                        const cpk_tensor *g);
void cpk__hterms_free(cpk__hterms *h);

/* Add the diagonal of J_theta^T H J_theta (per sample when batch) of the
 * site's parameter to out. May expand lazy or diagonal terms into factors
 * (the state stays equivalent). */
int cpk__hterms_param_diag(cpk__hterms *h, cpk__param_site *s, int batch,
                           cpk_tensor *out);

#endif
