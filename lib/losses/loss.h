/*
 * loss.h: the losses (one file each). Every loss is L = c * sum_n l_n
 * (backpack-reference.md, "Scaling"): c = 1 for sum; for mean, c = 1/R with
 * R = N times the spatial positions (cross-entropy) or the number of output
 * elements (MSE, BCE-with-logits), exactly as PyTorch defines them.
 * Values are accumulated in double whatever the dtype.
 */
#ifndef CPK_LOSS_H
#define CPK_LOSS_H

#include "context.h"
#include "internal.h"

typedef struct cpk__loss_def {
  cpk_loss_kind kind;
  const char *name;
  /* Validate the target against the output f [N, *out]: dtype, shape and
   * values (class indices in range, finite floats). */
  int (*check_target)(const cpk_tensor *f, const cpk_tensor *target);
  /* The number R that `mean` divides by. */
  int64_t (*mean_count)(const cpk_tensor *f);
  /* *loss := L, grad := dL/df ([N, *out], f's dtype). c is the scale. */
  int (*value_grad)(cpk_context *ctx, double c, const cpk_tensor *f,
                    const cpk_tensor *target, double *loss, cpk_tensor *grad);
  /* Columns V of the exact square root (C for cross-entropy times the
   * spatial positions, the output size for MSE and BCE). */
  int64_t (*sqrt_columns)(const cpk_tensor *f);
  /* Exact square root of the loss Hessian, out [V, N, *out]:
   * sum_v out[v,n] out[v,n]^T = c * d^2 l_n / d f_n^2 (backpack-reference.md,
   * "Square roots of the loss Hessian"). */
  int (*sqrt_hessian)(cpk_context *ctx, double c, const cpk_tensor *f,
                      const cpk_tensor *target, cpk_tensor *out);
  /* Optional: a square root with fewer columns (the Hessian's rank), any
   * factor with the same outer products, for the extensions that only use
   * those (diagonals, Kronecker factors, Hessian terms); NULL where the
   * contract's root is already minimal. */
  int64_t (*compact_sqrt_columns)(const cpk_tensor *f);
  int (*compact_sqrt_hessian)(cpk_context *ctx, double c, const cpk_tensor *f,
                              const cpk_tensor *target, cpk_tensor *out);
  /* Monte Carlo square root, out [M, N, *out]: the loss gradient at targets
   * drawn from the model's likelihood, times sqrt(c / M), so that
   * E[sum_m out[m,n] out[m,n]^T] = c * d^2 l_n / d f_n^2. */
  int (*sqrt_hessian_mc)(cpk_context *ctx, double c, const cpk_tensor *f,
                         int64_t m, cpk__rng *rng, cpk_tensor *out);
  /* out[v, n] := c * (d^2 l_n / d f_n^2) in[v, n] for a block in
   * [V, N, *out] (the loss Hessian applied to V directions per sample). */
  int (*hessian_mat)(cpk_context *ctx, double c, const cpk_tensor *f,
                     const cpk_tensor *in, cpk_tensor *out);
} cpk__loss_def;

const cpk__loss_def *cpk__loss_get(cpk_loss_kind kind);
/* c of the reduction for this output. */
/* The scale c of a shard f [n, ...] of a batch of `total` samples: that of
 * the whole batch (mean: 1 / (count per sample * total)). */
double cpk__loss_scale_total(const cpk__loss_def *def, cpk_reduction red,
                             const cpk_tensor *f, int64_t total);
double cpk__loss_scale(const cpk__loss_def *def, cpk_reduction red,
                       const cpk_tensor *f);
/* Shared check: a float target of exactly f's shape, all finite. */
int cpk__loss_check_float_target(const cpk__loss_def *def, const cpk_tensor *f,
                                 const cpk_tensor *target);

extern const cpk__loss_def cpk__cross_entropy_loss;
extern const cpk__loss_def cpk__mse_loss;
extern const cpk__loss_def cpk__bce_with_logits_loss;

#endif
