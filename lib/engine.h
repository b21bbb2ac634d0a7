/*
 * engine.h: one forward and backward pass through a sequential model
 * (private). The forward pass keeps every layer's input and output
 * (acts[i] is layer i's input, acts[i+1] its output); the backward pass
 * turns the loss gradient into parameter gradients and drives the
 * extensions.
 */
#ifndef CPK_ENGINE_H
#define CPK_ENGINE_H

#include "extension.h"
#include "hessian_terms.h"
#include "losses/loss.h"
#include "model.h"

/* The blocks [V, N, *features] that flow backward: the gradient (V = 1)
 * always; the square roots of the loss Hessian when an extension needs them. */
enum { CPK__BLOCK_GRAD, CPK__BLOCK_SQRT_EXACT, CPK__BLOCK_SQRT_MC, CPK__NBLOCKS };

typedef struct cpk__pass {
  cpk_context *ctx;
  cpk_model *model;
  const cpk_pass_spec *spec;
  const cpk_pass_options *opts; /* cpk_compute_ex's (NULL: none) */
  const cpk__loss_def *loss;
  double scale;              /* c of the reduction: L = c * sum_n l_n */
  int64_t n;                 /* batch size (of this pass) */
  int64_t n_total;           /* of the whole batch this pass is a shard of */
  cpk_tensor **acts;         /* nlayers + 1 activations */
  int owns_input;            /* acts[0] was converted (and is ours) */
  const cpk__extension_entry *ext[CPK__MAX_EXTENSIONS];
  int next;
  unsigned needs;            /* union of the extensions' CPK__NEED_* */
  cpk_tensor *blocks[CPK__NBLOCKS]; /* at the output of the current layer */
  cpk__hterms *hterms;       /* the Hessian as terms (diag_hessian) */
  cpk_tensor *kfra;          /* KFRA's averaged GGN matrix */
  cpk_results *results;
  int relu_taken;            /* 1 + the index of a ReLU whose J^T the blocks
                                already carry (relu_before_pool), 0: none */
} cpk__pass;

/* The input must be [N, *in] of the model's sample shape, a float dtype,
 * N >= 1, finite; the model built. */
int cpk__check_input(const cpk_model *m, const cpk_tensor *input);

/* Run the layers forward on `input`, filling pass->acts. */
int cpk__forward(cpk__pass *pass, const cpk_tensor *input);
/* Release the activations. */
void cpk__pass_release(cpk__pass *pass);

/* Rows [first, first + count) of t along axis 0, as a view. */
void cpk__rows_view(cpk_tensor *view, const cpk_tensor *t, int64_t first,
                    int64_t count);

/* Allocate a block [V, N, *shape] on the host, or on the context's device
 * (cpk__block_new_on). */
int cpk__block_new(cpk_tensor **out, cpk_dtype dt, int64_t v, int64_t n,
                   int ndim, const int64_t *shape);
int cpk__block_new_on(const cpk_context *ctx, cpk_tensor **out, cpk_dtype dt,
                      int64_t v, int64_t n, int ndim, const int64_t *shape);

#endif
