/*
 * curvpack.h: the public C API of libcurvpack.
 *
 * curvpack runs a sequential network forward, then one backward pass that
 * computes the gradient of the loss and, next to it, the quantities that
 * extensions ask for (per-sample gradients, curvature diagonals, Kronecker
 * factors, ...). Values follow BackPACK's conventions (see contract.md).
 *
 * Conventions (after libuv and BLIS):
 *  - Every fallible call returns an int status: CPK_OK (0) or a negative
 *    cpk_status code. The library never prints and never exits; the message
 *    of the last failure on the calling thread is cpk_last_error().
 *  - The caller owns whatever a call hands back through an out-pointer and
 *    releases it with the matching *_free function. Every *_free accepts NULL.
 *  - Arrays are cpk_tensor: dense, C order (row major), float32 or float64
 *    (int64/int32 for class indices), 64-byte aligned, in host memory;
 *    results asked to stay on a CUDA device are the one exception
 *    (cpk_pass_options.results_on_device, cpk_tensor_on_device).
 *  - Batched data is laid out [N, *features]; blocks that flow backward are
 *    [V, N, *features].
 */
#ifndef CURVPACK_H
#define CURVPACK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CPK_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------ status */

/* X-macro list: name, message. Generates the enum and cpk_strerror(). */
#define CPK_STATUS_MAP(XX)                                                     \
  XX(EINVAL, -1, "invalid argument")                                           \
  XX(ENOMEM, -2, "out of memory")                                              \
  XX(EIO, -3, "input/output error")                                            \
  XX(EFORMAT, -4, "malformed file")                                            \
  XX(ESHAPE, -5, "shape mismatch")                                             \
  XX(ENOTSUP, -6, "not supported")                                             \
  XX(ENODEV, -7, "no CUDA device")                                             \
  XX(ERANGE, -8, "value out of range")                                         \
  XX(ENONFINITE, -9, "non-finite value")                                       \
  XX(EOVERFLOW, -10, "size overflow")                                          \
  XX(EUSAGE, -11, "usage error")

typedef enum {
  CPK_OK = 0,
#define CPK__STATUS_ENUM(name, code, msg) CPK_##name = (code),
  CPK_STATUS_MAP(CPK__STATUS_ENUM)
#undef CPK__STATUS_ENUM
} cpk_status;

/* Short description of a status code ("out of memory"). Never NULL. */
const char *cpk_strerror(int status);
/* Symbolic name of a status code ("CPK_ENOMEM"). Never NULL. */
const char *cpk_err_name(int status);
/* Message of the last failure on the calling thread, naming the file, array
 * or parameter and what was expected against what was found. Empty if none. */
const char *cpk_last_error(void);
/* Clear the calling thread's last error message. */
void cpk_clear_error(void);

/* Library version, e.g. "0.1.0". */
const char *cpk_version(void);

/* ----------------------------------------------------------------- tensors */

typedef enum { CPK_F32 = 0, CPK_F64 = 1, CPK_I64 = 2, CPK_I32 = 3 } cpk_dtype;

#define CPK_MAX_DIMS 8

typedef struct cpk_tensor {
  cpk_dtype dtype;
  int ndim;                        /* 0 for a scalar */
  int64_t shape[CPK_MAX_DIMS];     /* extents, shape[0] first */
  int64_t strides[CPK_MAX_DIMS];   /* in elements; C order when contiguous */
  void *data;                      /* 64-byte aligned when owned */
  int owns_data;                   /* nonzero: cpk_tensor_free frees data */
  void *device;                    /* internal: NULL for host memory; the
                                      CUDA device handle whose memory data
                                      is otherwise (cpk_tensor_on_device) */
} cpk_tensor;

/* Size in bytes of one element of `dtype`. */
size_t cpk_dtype_size(cpk_dtype dtype);
/* "float32", "float64", "int64", "int32". */
const char *cpk_dtype_name(cpk_dtype dtype);
/* Parse a dtype name; returns CPK_EINVAL for anything else. */
int cpk_dtype_parse(const char *name, cpk_dtype *out);

/* Allocate a zero-filled C-order tensor. Fails with CPK_EOVERFLOW when the
 * element count or byte size does not fit, CPK_ENOMEM (stating the bytes)
 * when the allocation fails. */
int cpk_tensor_new(cpk_tensor **out, cpk_dtype dtype, int ndim,
                   const int64_t *shape);
/* Deep copy of `src` in C order, converted to `dtype` (floats only). */
int cpk_tensor_convert(cpk_tensor **out, const cpk_tensor *src, cpk_dtype dtype);
void cpk_tensor_free(cpk_tensor *t);
/* Number of elements (1 for a scalar). */
int64_t cpk_tensor_numel(const cpk_tensor *t);
/* Element i (C-order index) as double, for any dtype. */
double cpk_tensor_get(const cpk_tensor *t, int64_t i);
/* Write element i (C-order index) from a double, for any dtype. */
void cpk_tensor_set(cpk_tensor *t, int64_t i, double v);
/* Format a shape as "(2, 3, 4)" into buf; returns buf. */
char *cpk_shape_str(char *buf, size_t len, int ndim, const int64_t *shape);

/* Tensors in CUDA device memory: results of cpk_compute_ex with
 * cpk_pass_options.results_on_device on a CUDA context (every other tensor
 * the library hands out is in host memory). Such a tensor's shape, dtype
 * and strides are read as usual, but its data is device memory: every
 * function that reads or writes tensor data on the host refuses it with
 * CPK_EUSAGE and a message saying so (cpk_tensor_convert, cpk_npy_write,
 * the inputs of cpk_compute and the other entry points, cpk_optim_prepare;
 * cpk_tensor_get returns NaN and cpk_tensor_set does nothing, both leaving
 * that message in cpk_last_error()). cpk_tensor_free frees it, also after
 * its context is gone: a device tensor keeps its device handle alive. */

/* Nonzero when t's data is in CUDA device memory. */
int cpk_tensor_on_device(const cpk_tensor *t);
/* A new host tensor (C order, same dtype and shape) holding t's values:
 * one download, waited for, from a device tensor; a copy of a host one.
 * CPK_EIO naming the CUDA failure if the copy fails. */
int cpk_tensor_copy_to_host(const cpk_tensor *t, cpk_tensor **out);
/* For CUDA-aware callers: the device address of t's data (numel elements
 * of its dtype, C order, on CUDA device 0 of the process, the device of the
 * context that computed it), or NULL for a host tensor. Written when
 * cpk_compute_ex returned (the library waited for its stream), so any
 * stream may read it. Valid until the tensor is freed (cpk_results_free)
 * or brought to the host (cpk_results_to_host); the memory belongs to the
 * library's stream-ordered pool: never cudaFree it. */
void *cpk_tensor_device_data(const cpk_tensor *t);

/* ------------------------------------------------------------------- files */

/* Read a .npy file (format 1.0, 2.0 or 3.0; float32, float64, int64 or int32;
 * either byte order; C or Fortran order). The result is C order, native
 * little-endian. Malformed files fail with CPK_EFORMAT naming the file. */
int cpk_npy_read(const char *path, cpk_tensor **out);
/* Parse a .npy image held in memory; `name` appears in error messages. */
int cpk_npy_parse(const void *bytes, size_t len, const char *name,
                  cpk_tensor **out);
/* Write `t` as a .npy file (version 1.0 unless the header needs 2.0), C order,
 * little-endian. Writes to a temporary name beside `path` and renames it, so
 * `path` is either absent, its old self, or complete. */
int cpk_npy_write(const char *path, const cpk_tensor *t);

/* ------------------------------------------------------------------- model */

typedef struct cpk_model cpk_model;

/* Parse a model file (contract.md: one layer per line). Errors name the file
 * and line. */
int cpk_model_load(cpk_model **out, const char *path);
/* Parse model text held in memory; `name` stands for the file in messages. */
int cpk_model_parse(cpk_model **out, const char *text, const char *name);
/* An empty model, for building through cpk_model_add_line(). */
int cpk_model_new(cpk_model **out);
/* Append one layer written as a model-file line, e.g. "linear 784 10". */
int cpk_model_add_line(cpk_model *model, const char *line);
void cpk_model_free(cpk_model *model);

/* Number of layers. */
int cpk_model_num_layers(const cpk_model *model);
/* Layer kind name as in the model file ("linear"). */
const char *cpk_model_layer_name(const cpk_model *model, int index);

/* Fix the shape of one sample, infer every layer's output shape and create
 * the parameters (zeroed) in `dtype`. Must be called before the parameters
 * are used. Errors name the offending line. */
int cpk_model_build(cpk_model *model, int ndim, const int64_t *sample_shape,
                    cpk_dtype dtype);
/* Shape of one output sample, after cpk_model_build. */
int cpk_model_output_shape(const cpk_model *model, int *ndim, int64_t *shape);
/* Number of parameter tensors, after cpk_model_build. */
int cpk_model_num_params(const cpk_model *model);
/* Parameter i: its name ("0.weight") and its tensor (owned by the model,
 * host memory). Asking for the tensor (tensor != NULL) counts as changing
 * it: the model's device copy of that parameter is refreshed at the next
 * pass on a CUDA context (see cpk_model_params_changed). */
int cpk_model_param(const cpk_model *model, int i, const char **name,
                    cpk_tensor **tensor);
/* On a CUDA context a model keeps a device copy of its parameters from one
 * pass (cpk_compute, forward mode, a curvature operator's creation) to the
 * next instead of uploading them at every pass. Every library call that
 * changes parameter values marks the copies out of date, so that the next
 * pass uploads them again: cpk_model_param (that parameter),
 * cpk_model_init_params, cpk_model_load_params, cpk_model_build,
 * cpk_problem_init_params, cpk_optim_apply, cpk_trainer_load and the
 * trainer's steps, batch norm's running statistics in training mode. A
 * caller that writes through a tensor pointer kept from an earlier
 * cpk_model_param call, after a pass, calls this before the next pass.
 * The copies live on the device of the context that made them; a pass on
 * another context (another CUDA device handle) makes new ones there. They
 * are freed with the model (cpk_model_free), which may come before or after
 * cpk_context_free: the copies hold their device handle until then.
 * Nothing happens on a CPU context. */
void cpk_model_params_changed(cpk_model *model);
/* Whether parameter i is trainable (buffers such as running_mean are not). */
int cpk_model_param_trainable(const cpk_model *model, int i);
/* Total number of trainable scalar parameters. */
int64_t cpk_model_param_count(const cpk_model *model);
/* Fill the parameters as PyTorch's default initialisation does for the same
 * layers (same distributions; not the same random stream). */
int cpk_model_init_params(cpk_model *model, uint64_t seed);
/* Load every parameter from DIR/INDEX.NAME.npy (contract layout), converting
 * to the model's dtype. Missing, misshapen or non-finite arrays fail naming
 * the file. */
int cpk_model_load_params(cpk_model *model, const char *dir);
/* Save every parameter as DIR/INDEX.NAME.npy (DIR must exist). */
int cpk_model_save_params(const cpk_model *model, const char *dir);

/* -------------------------------------------------------------- the engine */

typedef enum {
  CPK_LOSS_CROSS_ENTROPY = 0,
  CPK_LOSS_MSE = 1,
  CPK_LOSS_BCE_WITH_LOGITS = 2
} cpk_loss_kind;

typedef enum { CPK_REDUCTION_MEAN = 0, CPK_REDUCTION_SUM = 1 } cpk_reduction;

int cpk_loss_parse(const char *name, cpk_loss_kind *out);
const char *cpk_loss_name(cpk_loss_kind kind);
int cpk_reduction_parse(const char *name, cpk_reduction *out);

typedef enum { CPK_DEVICE_CPU = 0, CPK_DEVICE_CUDA = 1 } cpk_device;

/* Options of a context. Zero-initialise, then set what differs from the
 * defaults; or pass NULL to cpk_context_new for all defaults. */
typedef struct cpk_context_options {
  int threads;        /* 0: all cores */
  cpk_device device;  /* CPK_DEVICE_CPU */
  uint64_t seed;      /* seed of every random draw (MC samples, dropout) */
  int mc_samples;     /* 0 means 1 */
} cpk_context_options;

typedef struct cpk_context cpk_context;

/* Create a context. Fails with CPK_ENODEV when a CUDA device is asked for and
 * none is usable (or the library was built without CUDA). */
int cpk_context_new(cpk_context **out, const cpk_context_options *opts);
void cpk_context_free(cpk_context *ctx);
/* Whether this build of the library includes the CUDA path. */
int cpk_have_cuda(void);

/* ------------------------------------------------------- data parallelism
 * A context can compute data-parallel over MPI ranks: give it a
 * communicator with cpk_context_set_mpi_comm (curvpack_mpi.h, installed in
 * builds with MPI). Every rank then calls the same functions in the same
 * order with its own shard of the batch (rank r's samples follow rank
 * r-1's, in rank order; at least one per rank), and gets the result one
 * process computes on the whole batch: sums over the samples are summed
 * over the ranks, means (reduction=mean, Kronecker input factors) divide by
 * the whole batch's size, per-sample results are gathered in sample order,
 * Monte Carlo draws of a sample do not depend on the shard layout. A
 * failure on any rank makes the call fail on every rank with that rank's
 * status and message ("rank R: ..."), so no rank waits for ever. */

/* Whether this build includes the MPI path. */
int cpk_have_mpi(void);
/* This process's rank and the number of ranks (0 and 1 without a
 * communicator). */
int cpk_context_rank(const cpk_context *ctx);
int cpk_context_ranks(const cpk_context *ctx);
/* Collective: every rank passes its status (and, for a failure, a message;
 * NULL keeps cpk_last_error()). Returns CPK_OK when every rank passed
 * CPK_OK; otherwise the status of the lowest failing rank, whose message
 * becomes cpk_last_error() on every rank. Without a communicator it returns
 * `status`. A caller that fails between collective calls uses it to tell
 * the other ranks, which would otherwise wait for ever. */
int cpk_context_agree(cpk_context *ctx, int status, const char *message);

/* A named collection of result tensors ("loss", "output", "0.weight.grad",
 * "0.weight.grad_batch", ...). The names are the contract's file stems. */
typedef struct cpk_results cpk_results;
int cpk_results_count(const cpk_results *r);
const char *cpk_results_name(const cpk_results *r, int i);
const cpk_tensor *cpk_results_tensor(const cpk_results *r, int i);
/* The tensor called `name`, or NULL. */
const cpk_tensor *cpk_results_find(const cpk_results *r, const char *name);
/* Frees every tensor, host or device. Device results may be freed before or
 * after the context that computed them (cpk_context_free): each holds the
 * context's device handle (its CUDA stream and cuBLAS handle), which is
 * released with the last holder; freeing results first gives the memory
 * back sooner. */
void cpk_results_free(cpk_results *r);
/* Nonzero when some result of r is in device memory (results_on_device). */
int cpk_results_on_device(const cpk_results *r);
/* Bring every device result of r to host memory, in place: one download
 * each, waited for; the tensors (the pointers cpk_results_tensor and
 * cpk_results_find gave) stay the same and become host tensors, their
 * device memory freed, so device addresses taken before are invalid.
 * CPK_OK at once when none is on the device. On failure (CPK_EIO naming
 * the result) the results not yet copied stay on the device. */
int cpk_results_to_host(cpk_results *r);
/* An empty collection, and adding a tensor to one (ownership moves to the
 * collection, which frees the tensor even when adding fails). */
int cpk_results_new(cpk_results **out);
int cpk_results_add(cpk_results *r, const char *name, cpk_tensor *t);

/* What one forward + backward pass computes. */
typedef struct cpk_pass_spec {
  cpk_loss_kind loss;
  cpk_reduction reduction;
  /* Comma-separated extension names (contract.md), or NULL/"" for none. */
  const char *extensions;
  /* Nonzero: training mode (dropout active). Zero for curvature work. */
  int training;
} cpk_pass_spec;

/* Whether `name` is an extension of the contract, and whether this build
 * implements it. */
int cpk_extension_known(const char *name);
int cpk_extension_available(const char *name);
/* Check a comma-separated extension list without running anything:
 * CPK_EUSAGE for an unknown name (checked over the whole list first), then
 * CPK_ENOTSUP for a known one this build does not implement. */
int cpk_extensions_check(const char *list);

/* Validate a pass before running it: the extension list (CPK_EUSAGE for an
 * unknown name, CPK_ENOTSUP for one not implemented yet), the input shape
 * against the model and the target against the loss (values included: class
 * indices in range, everything finite). */
int cpk_check_pass(const cpk_model *model, const cpk_pass_spec *spec,
                   const cpk_tensor *input, const cpk_tensor *target);

/* One forward and backward pass: the loss, the output, the gradient of every
 * parameter and every requested extension, returned as named tensors in the
 * model's dtype. `input` is [N, *sample_shape] (converted to the model's
 * dtype); `target` is class indices [N, *spatial] for cross-entropy, floats
 * of the output's shape otherwise. */
int cpk_compute(cpk_context *ctx, cpk_model *model, const cpk_pass_spec *spec,
                const cpk_tensor *input, const cpk_tensor *target,
                cpk_results **out);

/* A visitor of per-sample gradients (cpk_pass_options.visit_grad_batch):
 * `chunk` [count, *S] holds the rows first .. first + count - 1 of the
 * per-sample gradients of parameter `param` ("1.weight"), as batch_grad
 * gives them (loss scale included: with `mean` they sum to the gradient).
 * Both are valid during the call only. Returns CPK_OK, or a status that
 * stops the pass (cpk_compute_ex returns it). With MPI ranks each rank
 * visits its own samples only, `first` counting in the whole batch. */
typedef int (*cpk_grad_batch_fn)(void *ud, const char *param, int64_t first,
                                 const cpk_tensor *chunk);

/* A visitor of the per-sample gradients of a Linear weight on [N, IN]
 * inputs in factored form (cpk_pass_options.visit_grad_factors): sample n's
 * gradient is the outer product g[n] x[n]^T, with g [N, OUT] the gradient
 * of the loss at the layer output (loss scale included) and x [N, IN] the
 * layer input, so that a caller can work on N * OUT * IN numbers without
 * holding them. Valid during the call only; a status other than CPK_OK
 * stops the pass. */
typedef int (*cpk_grad_factors_fn)(void *ud, const char *param,
                                   const cpk_tensor *g, const cpk_tensor *x);

/* Options of cpk_compute_ex; zero-initialise, or pass NULL for none. */
typedef struct cpk_pass_options {
  /* Nonzero: an extension that has no implementation at a parameter's
   * layer yet (CPK_ENOTSUP there, e.g. kfac at a convolution) leaves that
   * parameter without its results instead of failing the pass; the caller
   * sees the absence through cpk_results_find. */
  int skip_unsupported;
  /* When set, called at every trainable parameter during the backward pass
   * with its per-sample gradients in chunks of consecutive samples, sized
   * from the context's work budget: the whole [N, *S] is never held unless
   * an extension (batch_grad) keeps it anyway. */
  cpk_grad_batch_fn visit_grad_batch;
  /* When set, Linear weights on [N, IN] inputs go to this visitor in
   * factored form instead of to visit_grad_batch. */
  cpk_grad_factors_fn visit_grad_factors;
  void *visit_ud; /* the visitors' first argument */
  /* > 0: run the (local) batch through in passes of at most max_batch
   * samples and combine them into the results of one pass over all of it
   * (memory of one sub-batch, besides per-sample results). kfra cannot be
   * combined that way (its recursion averages over the whole batch at
   * every layer): CPK_ENOTSUP when it would take more than one pass.
   * Visitors need max_batch = 0. Independently of it, a pass (or one of
   * these passes) that fails with CPK_ENOMEM runs again on halves of its
   * batch, down to one sample, except in training mode, with kfra or with
   * visitors. */
  int64_t max_batch;
  /* Nonzero: on a CUDA context, leave the results in device memory instead
   * of downloading each to the host at the end of the pass (what a caller
   * that goes on computing on the GPU wants; PyTorch + BackPACK leave their
   * results on the GPU too). "loss", a 0-d float, is on the host anyway;
   * every other result is a device tensor (cpk_tensor_on_device): read it
   * through cpk_tensor_copy_to_host, cpk_results_to_host or, from CUDA
   * code, cpk_tensor_device_data. The pass has finished on the device when
   * cpk_compute_ex returns. Ignored (results on the host) on a CPU context
   * and with MPI ranks, whose results are combined in host memory; with
   * max_batch the sub-batches' results are combined on the device. */
  int results_on_device;
} cpk_pass_options;

/* cpk_compute with options (NULL: cpk_compute). */
int cpk_compute_ex(cpk_context *ctx, cpk_model *model,
                   const cpk_pass_spec *spec, const cpk_pass_options *opts,
                   const cpk_tensor *input, const cpk_tensor *target,
                   cpk_results **out);

/* ------------------------------------------------------------ forward mode
 * Jacobians of the model output f with respect to its input (and
 * parameters), evaluated at `input` [N, *in_shape] in evaluation mode
 * (dropout off, batch norm on its running statistics), in the model's
 * dtype. D_in and D_out are the element counts of one input and one output
 * sample. Memory beyond the results is bounded: tangents travel in chunks
 * of columns sized from the context's work budget. A model whose samples
 * are coupled (batch norm with track_running_stats=false) has no per-sample
 * Jacobian: cpk_jacobian and cpk_propagate fail on it with CPK_ENOTSUP. */

typedef enum {
  CPK_JACOBIAN_AUTO = 0,    /* forward when D_in < D_out, else reverse */
  CPK_JACOBIAN_FORWARD = 1, /* push the D_in identity columns through J */
  CPK_JACOBIAN_REVERSE = 2  /* pull the D_out identity rows back through J^T */
} cpk_jacobian_mode;

/* Per-sample Jacobian of the output with respect to the input:
 *   jac[n, o..., i...] = d f(x_n)[o...] / d x_n[i...]
 * *jac is [N, *out_shape, *in_shape] (caller frees; CPK_EINVAL when that has
 * more than CPK_MAX_DIMS axes). Forward and reverse mode give the same
 * numbers up to rounding; they differ in cost (~D_in against ~D_out
 * Jacobian products through the network). */
int cpk_jacobian(cpk_context *ctx, cpk_model *model, const cpk_tensor *input,
                 cpk_jacobian_mode mode, cpk_tensor **jac);

/* Forward-mode Jacobian-vector product of the batch output, on V tangents
 * at once:
 *   out[v] := J_x t[v] + sum_p J_{theta_p} u_p[v]          [V, N, *out]
 * the directional derivative of f(input; theta) along the input tangent t
 * ([N, *in_shape] for V = 1 or [V, N, *in_shape]; NULL for zero) and the
 * parameter tangents u (NULL for all zero, else one entry per parameter in
 * cpk_model_param order: NULL for zero, [V, *S] or S for V = 1; buffers
 * such as running_mean must be NULL). Tangents are converted to the model's
 * dtype; they must be finite and agree on V. *out is owned by the caller.
 * A parameter whose layer kind has no forward-mode product yet fails with
 * CPK_ENOTSUP naming it. */
int cpk_jvp(cpk_context *ctx, cpk_model *model, const cpk_tensor *input,
            const cpk_tensor *input_tangent,
            const cpk_tensor *const *param_tangents, cpk_tensor **out);

/* First-order propagation of independent input errors. `sigma` holds the
 * standard deviations of the input elements, shape in_shape (shared by the
 * samples) or [N, *in_shape]; finite and >= 0 (else CPK_ENONFINITE /
 * CPK_ERANGE naming "sigma"). Results (names are the contract's files):
 *   "output"      f(x_n)                                   [N, *out_shape]
 *   "sigma"       sqrt(C_n[o, o]) = sqrt(sum_i (J_oi sigma_i)^2)
 *                                                          [N, *out_shape]
 *   "covariance"  C_n = J_n diag(sigma_n^2) J_n^T           [N, D_out, D_out]
 * and with samples >= 2 (0: none; 1 is CPK_EINVAL) a Monte Carlo check:
 * `samples` Gaussian draws x_n + sigma_n * z per sample through the forward
 * pass, from a generator seeded with the context's seed at every call,
 *   "mc_mean"     mean of the draws' outputs               [N, *out_shape]
 *   "mc_sigma"    their standard deviation (divisor S - 1) [N, *out_shape]
 * The covariance goes through forward mode when D_in < D_out, else through
 * the reverse-mode J diag(sigma) held whole ([N, D_out, D_in]). */
int cpk_propagate(cpk_context *ctx, cpk_model *model, const cpk_tensor *input,
                  const cpk_tensor *sigma, int64_t samples, cpk_results **out);

/* ------------------------------------------------ curvature-vector products */

/* Which curvature of the loss a product applies (all symmetric, P x P over
 * the trainable parameters in cpk_model_param order, buffers skipped):
 *  HESSIAN           the Hessian of L (Pearlmutter's R-operator, forward
 *                    over reverse);
 *  GGN               the generalized Gauss-Newton matrix sum_n J_n^T H_n J_n;
 *  FISHER_MC         the Monte Carlo Fisher: H_n replaced by S S^T with the
 *                    sampled square root of diag_ggn_mc (--mc-samples, --seed);
 *  EMPIRICAL_FISHER  sum_n g_n g_n^T with g_n the per-sample gradients of
 *                    batch_grad. */
typedef enum {
  CPK_CURV_HESSIAN = 0,
  CPK_CURV_GGN = 1,
  CPK_CURV_FISHER_MC = 2,
  CPK_CURV_EMPIRICAL_FISHER = 3
} cpk_curvature;

int cpk_curvature_parse(const char *name, cpk_curvature *out);

typedef struct cpk_curvature_op cpk_curvature_op;

/* Run the forward pass (and the backward pass, for the Hessian) on one batch
 * and keep what the products need; the model must not change while the
 * operator lives: the operator fixes the parameters at creation (on a CUDA
 * context it keeps its own device copies). The layers' cached forward state
 * (max pooling's argmax) is shared by every pass on a model, so run other
 * passes on it (cpk_compute, forward mode, another operator) before creating
 * the operator or after freeing it. On a CUDA context the forward state
 * stays on the device and each apply uploads its vectors and downloads its
 * products once. */
int cpk_curvature_op_new(cpk_curvature_op **out, cpk_context *ctx,
                         cpk_model *model, const cpk_pass_spec *spec,
                         const cpk_tensor *input, const cpk_tensor *target,
                         cpk_curvature kind);
/* The same over a whole data set (with MPI ranks: this rank's part of it)
 * in passes of at most max_batch samples (0: one pass, as
 * cpk_curvature_op_new). Nothing is kept between products: each product
 * runs the passes again one after the other (forward, and backward for
 * the Hessian) and sums them, so memory is that of one pass of max_batch
 * samples. input and target are borrowed and must outlive the operator. */
int cpk_curvature_op_new_ex(cpk_curvature_op **out, cpk_context *ctx,
                            cpk_model *model, const cpk_pass_spec *spec,
                            const cpk_tensor *input, const cpk_tensor *target,
                            cpk_curvature kind, int64_t max_batch);
void cpk_curvature_op_free(cpk_curvature_op *op);
/* P, the number of trainable parameters. */
int64_t cpk_curvature_op_dim(const cpk_curvature_op *op);
/* out[j] := C in[j] for k vectors stored row by row ([k, P], float64, the
 * parameters flattened and concatenated in cpk_model_param order). The
 * block goes through the network at once. */
int cpk_curvature_op_apply(cpk_curvature_op *op, int64_t k, const double *in,
                           double *out);

/* How a Hessian product (CPK_CURV_HESSIAN) is computed. Both give the same
 * product up to rounding, from the same forward and backward pass at
 * creation, on blocks of k vectors, on either device:
 *  HVP_ROP              Pearlmutter's R-operator, forward over reverse:
 *                       the tangents go forward through every layer and
 *                       stay there; one reverse sweep from the loss Hessian
 *                       adds each layer's second-order terms as it passes;
 *  HVP_DOUBLE_BACKWARD  reverse over reverse: the backward pass differentiated
 *                       in reverse mode. Its adjoint sweep runs from the
 *                       input up, storing each layer's second-order
 *                       adjoints (and dropping the tangents as it goes),
 *                       then one reverse sweep over the forward graph from
 *                       the loss Hessian adds them.
 * The default is HVP_DOUBLE_BACKWARD, the faster as measured (BENCHMARKS.md,
 * "R-operator against double backward": about 3% per product on an MLP, the
 * same on a convolutional net) and the one that holds less memory. The other
 * kinds have no second-order terms and ignore the method. */
typedef enum {
  CPK_HVP_ROP = 0,
  CPK_HVP_DOUBLE_BACKWARD = 1
} cpk_hvp_method;

/* Choose the method of op's Hessian products (CPK_EINVAL for an unknown
 * one); it holds for every later cpk_curvature_op_apply. */
int cpk_curvature_op_set_method(cpk_curvature_op *op, cpk_hvp_method method);
cpk_hvp_method cpk_curvature_op_method(const cpk_curvature_op *op);

/* ----------------------------------------------------------------- spectra
 * Tools that work on any symmetric linear operator A of dimension P, given
 * only as a block product (Hessian-, GGN-, Fisher-vector products of the
 * engine, or an explicit matrix): top eigenpairs (Lanczos; power iteration
 * as a check), trace estimates (Hutchinson, Hutch++), the spectral density
 * (stochastic Lanczos quadrature, PyHessian's conventions). All in float64.
 * Random draws come from `seed` alone, so results are reproducible. */

/* out[j, :] := A in[j, :] for j < k: k vectors of length P, row major
 * [k, P]; `in` and `out` never overlap. A whole block arrives in one call so
 * that an implementation can run it through GEMM. Returns CPK_OK, or a
 * negative status after recording a message (cpk__fail). */
typedef int (*cpk_matvec_fn)(void *ud, int64_t k, const double *in,
                             double *out);

/* A symmetric operator of dimension `dim` (= P). */
typedef struct cpk_operator {
  int64_t dim;
  cpk_matvec_fn apply;
  void *ud;
} cpk_operator;

/* The curvature operator as a cpk_operator for the spectral tools (op must
 * outlive the operator). */
void cpk_curvature_op_as_operator(cpk_curvature_op *op, cpk_operator *out);

/* Options of the eigensolvers; zero-initialise (or pass NULL) for defaults. */
typedef struct cpk_eigen_options {
  /* Lanczos: most Lanczos steps (Krylov basis size) in one run, 0: min(P,
   * max(80, 3k)); the basis holds max_iter * P doubles. Power iteration:
   * most iterations per eigenpair, 0: 1000. */
  int64_t max_iter;
  /* A pair (lambda, v) has converged when ||A v - lambda v|| <= tol * s, s
   * the largest |Ritz value| seen (an estimate of ||A||). 0: 1e-8; never
   * below 64 * DBL_EPSILON. Products computed in float32 cannot reach much
   * below 1e-6: ask for about 1e-5 there. */
  double tol;
  uint64_t seed; /* of the random start vectors */
  /* Lanczos: a single start vector finds one copy of a repeated eigenvalue
   * only. After the top k pairs converge, Lanczos restarts from a fresh
   * random vector orthogonal to them; an eigenvalue above the k-th found
   * there is merged in and the check repeats. The check ends when its top
   * Ritz value converges at or below the k-th eigenvalue, or stays clearly
   * below it after as many steps as the first run took (so it costs at most
   * about as much again). Nonzero skips the check. */
  int no_restart_check;
  /* Power iteration runs on A - shift I: it finds the k eigenvalues farthest
   * from `shift` (default 0: largest magnitude, PyHessian's eigenvalues()). */
  double shift;
} cpk_eigen_options;

/* What an eigensolver did. */
typedef struct cpk_eigen_info {
  int converged;           /* 1: every returned pair met tol */
  int runs;                /* Lanczos runs (1 + restarts of the check) */
  int64_t iterations;      /* Lanczos steps over all runs, power iterations */
  int64_t matvecs;         /* vectors the operator was applied to */
  double max_rel_residual; /* max_i ||A v_i - lambda_i v_i|| / s (s as for
                              tol), measured with one more block product */
} cpk_eigen_info;

/* The k largest (algebraic) eigenvalues of A, largest first, into
 * eigenvalues[k], and their unit eigenvectors into eigenvectors [k, P] (row
 * i belongs to eigenvalue i; NULL: not wanted). Lanczos with full
 * reorthogonalisation from a seeded Gaussian start; the tridiagonal problem
 * through LAPACK dstev; Ritz vectors; a final Rayleigh-Ritz step on their
 * span, with one block product of k vectors that also measures the
 * residuals. 1 <= k <= P. Memory: (max_iter + 3k) * P doubles.
 * Not converging within max_iter is not an error: the best estimates are
 * returned and info->converged is 0 (pass `info` to see it). */
int cpk_eigen_lanczos(const cpk_operator *op, int64_t k,
                      const cpk_eigen_options *opts, double *eigenvalues,
                      double *eigenvectors, cpk_eigen_info *info);

/* The same by power iteration with deflation (each new vector kept
 * orthogonal to the pairs found before), one pair at a time, on A - shift I:
 * the k eigenvalues farthest from `shift`, in the order found (decreasing
 * |lambda - shift|). A check on Lanczos, and PyHessian's method. */
int cpk_eigen_power(const cpk_operator *op, int64_t k,
                    const cpk_eigen_options *opts, double *eigenvalues,
                    double *eigenvectors, cpk_eigen_info *info);

/* Options of the trace estimators; zero-initialise or pass NULL. */
typedef struct cpk_trace_options {
  int64_t block; /* probes per operator call, 0: 16 */
  uint64_t seed; /* of the Rademacher probes */
} cpk_trace_options;

/* Hutchinson: trace(A) ~ (1/S) sum_s z_s^T A z_s over S Rademacher probes
 * z_s (entries +-1), applied in blocks. *std_error = sample standard
 * deviation (divisor S - 1) / sqrt(S); NaN when S = 1. std_error may be
 * NULL. */
int cpk_trace_hutchinson(const cpk_operator *op, int64_t samples,
                         const cpk_trace_options *opts, double *trace,
                         double *std_error);

/* Hutch++ (Meyer, Musco, Musco, Woodruff 2021) with `matvecs` (>= 3)
 * products in all: s = matvecs / 3 Rademacher sketch vectors (at most P),
 * Q = orth(A S) by Householder QR (dgeqrf/dorgqr), then
 *   trace(A) ~ trace(Q^T A Q) + (1/g) sum z^T (I - QQ^T) A (I - QQ^T) z
 * over g = matvecs - 2s Rademacher probes. The sketch and A Q each go
 * through one block product. *std_error is that of the second term (given
 * Q). */
int cpk_trace_hutchpp(const cpk_operator *op, int64_t matvecs,
                      const cpk_trace_options *opts, double *trace,
                      double *std_error);

/* Options of the spectral density; zero-initialise or pass NULL. The
 * defaults are PyHessian's: density(iter=100, n_v=1) and
 * density_generate(num_bins=10000, sigma_squared=1e-5, overhead=0.01). */
typedef struct cpk_density_options {
  int64_t runs;         /* SLQ runs (n_v), 0: 1 */
  int64_t steps;        /* Lanczos steps per run (iter), 0: 100 */
  int64_t grid;         /* grid points (num_bins), 0: 10000; >= 2 */
  double sigma_squared; /* kernel variance factor, 0: 1e-5 */
  double overhead;      /* grid margin, 0: 0.01 */
  uint64_t seed;        /* of the Rademacher start vectors */
} cpk_density_options;

/* Stochastic Lanczos quadrature nodes and weights, nodes and weights
 * [runs, steps]: each run starts Lanczos (full reorthogonalisation) from a
 * normalised Rademacher vector; the nodes are the eigenvalues of its
 * tridiagonal matrix T, the weights the squared first components of T's
 * eigenvectors (they sum to 1 per run). A run stops early at an invariant
 * subspace (at the latest after P steps), where the quadrature is already
 * exact; its remaining slots repeat its smallest node with weight 0. */
int cpk_slq(const cpk_operator *op, const cpk_density_options *opts,
            double *nodes, double *weights);

/* PyHessian's density_generate on SLQ nodes and weights [runs, steps]:
 *   lmax = mean over runs of max node + overhead,
 *   lmin = mean over runs of min node - overhead,
 *   grid = linspace(lmin, lmax, G), s2 = sigma_squared * max(1, lmax - lmin),
 *   d(x) = (1/runs) sum_r sum_i w_ri exp(-(x - t_ri)^2 / (2 s2))
 *          / sqrt(2 pi s2),
 * normalised so that sum_j d(grid_j) * (grid_1 - grid_0) = 1. Writes
 * out[0, :] = grid and out[1, :] = density, out [2, G]. Fails when the
 * kernel is too narrow for the grid spacing (every value underflows). */
int cpk_density_from_slq(int64_t runs, int64_t steps, const double *nodes,
                         const double *weights,
                         const cpk_density_options *opts, double *out);

/* cpk_slq followed by cpk_density_from_slq: out [2, G]. */
int cpk_spectral_density(const cpk_operator *op,
                         const cpk_density_options *opts, double *out);

/* ----------------------------------------------- Kronecker-factored inverses
 * A Linear weight W [m, n] (m outputs, n inputs) has Kronecker factors
 * [A (m x m) output factor, B (n x n) input factor] (KFAC, KFLR, KFRA), with
 * curvature ~ A (x) B acting on W in row-major order: (A (x) B) vec(G) =
 * vec(A G B). A bias [m] has the factor A alone. Factors are symmetric
 * (their symmetric part is used), float64, row major. */
typedef enum {
  /* Exact damping: out = (A (x) B + damping I)^-1 G through the
   * eigendecompositions A = U diag(a) U^T, B = V diag(b) V^T (dsyevd):
   *   out = U [(U^T G V)_ij / (a_i b_j + damping)] V^T.
   * Needs a_i b_j + damping > 0 for all i, j. */
  CPK_KRON_DAMP_EXACT = 0,
  /* Factored (Tikhonov) damping, the cheaper KFAC approximation:
   *   out = (A + sqrt(damping) I)^-1 G (B + sqrt(damping) I)^-1
   * through Cholesky factors (dpotrf; dpotrs/dtrsm), i.e. the inverse of
   * (A + sqrt(damping) I) (x) (B + sqrt(damping) I). */
  CPK_KRON_DAMP_FACTORED = 1
} cpk_kron_damping;

/* A factored, damped inverse, prepared once and applied to many gradients. */
typedef struct cpk_kron_inverse cpk_kron_inverse;

/* Prepare the inverse for a weight (b != NULL: factors a [m, m], b [n, n])
 * or a bias (b == NULL, n ignored: (A + damping I)^-1 in either mode).
 * damping >= 0. Fails with CPK_ERANGE (naming the factor) when the damped
 * matrix is not positive definite, CPK_ENONFINITE on non-finite entries. */
int cpk_kron_inverse_new(cpk_kron_inverse **out, cpk_kron_damping mode,
                         int64_t m, const double *a, int64_t n,
                         const double *b, double damping);
/* out := inverse applied to g, both [m, n] (bias: [m]); out may equal g. */
int cpk_kron_inverse_apply(const cpk_kron_inverse *inv, const double *g,
                           double *out);
void cpk_kron_inverse_free(cpk_kron_inverse *inv);
/* One-shot: prepare, apply, free. */
int cpk_kron_solve(cpk_kron_damping mode, int64_t m, const double *a,
                   int64_t n, const double *b, double damping, const double *g,
                   double *out);

/* --------------------------------------------------------------- IDX data */

/* Read an IDX file (the MNIST format: magic 0x000008DD, D big-endian uint32
 * extents, unsigned bytes in C order), gzip-compressed or plain, into a
 * tensor of the file's shape in `dtype`: floats hold scale * byte (1/255
 * maps images to [0, 1]); integer dtypes hold the byte (scale must be 1).
 * max_items > 0 reads only the first max_items entries of axis 0 (the rest
 * of the file is not looked at); 0 reads the whole file, which must end
 * where the header says. Errors name the file: CPK_EFORMAT for a bad magic,
 * a zero extent, a truncated header or data, trailing data or a corrupt
 * gzip stream; CPK_ENOTSUP for IDX element types other than unsigned byte;
 * CPK_EOVERFLOW when the extents' product overflows; CPK_EIO when the file
 * cannot be read. */
int cpk_idx_read(const char *path, cpk_dtype dtype, double scale,
                 int64_t max_items, cpk_tensor **out);

/* ---------------------------------------------------------------- training
 * Built-in problems, optimizers, the diagnostics Cockpit tracks, and a
 * trainer that runs them together over a classification data set with the
 * cross-entropy loss (mean reduction). Everything is seeded: the same seed
 * gives the same batches, dropout masks, Monte Carlo draws and parameters,
 * also across a checkpoint and resume. */

/* The model-file text of a built-in problem (DeepOBS's architectures):
 * "mnist_logreg" (flatten, linear 784 10), "fmnist_mlp" (784-1000-500-100-10
 * with ReLUs), "fmnist_2c2d" (two 5x5 convolutions of 32 and 64 channels
 * with ReLU and 2x2 max pooling, linear 3136 1024, ReLU, linear 1024 10).
 * CPK_EUSAGE for another name. */
int cpk_problem_model(const char *name, const char **text);
/* Initialise a model built from cpk_problem_model(name) as DeepOBS does:
 * logreg all zeros; mlp weights from a normal of std 0.03 truncated at two
 * standard deviations, biases 0; 2c2d weights the same with std 0.05,
 * biases 0.05. */
int cpk_problem_init_params(cpk_model *model, const char *name,
                            uint64_t seed);

typedef enum {
  CPK_OPTIM_SGD = 0,      /* SGD with momentum (PyTorch's formula) */
  CPK_OPTIM_ADAM = 1,     /* Adam (PyTorch's) */
  CPK_OPTIM_DIAG_GGN = 2, /* damped diagonal-GGN Newton step */
  CPK_OPTIM_KFAC = 3      /* damped Kronecker-factored (KFAC) step */
} cpk_optim_kind;

int cpk_optim_parse(const char *name, cpk_optim_kind *out);
const char *cpk_optim_name(cpk_optim_kind kind);

/* Options of an optimizer; fill with cpk_optim_defaults, then change.
 * With g the gradient of the mean loss plus weight_decay * theta, an update
 * is theta += d where
 *   sgd       p = g
 *   diag_ggn  p = g / (diag_ggn + damping)           (elementwise)
 *   kfac      p = (G (x) A + damping)^-1 g per weight [G, A], (G + damping
 *             I)^-1 g per bias [G] (cpk_kron_inverse, kron_damping); a
 *             parameter whose layer has no Kronecker factors yet takes
 *             p = g (identity curvature, see cpk_optim_fallback)
 *   b = momentum * b + p (b = p at the first step),  d = -lr * b
 * and Adam (PyTorch): m = beta1 m + (1 - beta1) g, v = beta2 v +
 * (1 - beta2) g^2, d = -lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) +
 * eps). The curvature (diag_ggn, kfac) comes from the pass of every
 * update_every-th step (the first included) and is kept in between; with
 * ema > 0 it is a running average C = ema C + (1 - ema) C_new. */
typedef struct cpk_optim_options {
  cpk_optim_kind kind;
  double lr, momentum, weight_decay;
  double damping;        /* diag_ggn, kfac */
  double beta1, beta2, eps; /* adam */
  int64_t update_every;  /* steps between curvature refreshes, >= 1 */
  double ema;            /* in [0, 1) */
  int ggn_mc;            /* diag_ggn: 1 diag_ggn_mc, 0 diag_ggn_exact */
  cpk_kron_damping kron_damping; /* kfac */
} cpk_optim_options;

/* Defaults per kind: sgd lr 0.01, momentum 0.9; adam lr 1e-3, betas (0.9,
 * 0.999), eps 1e-8; diag_ggn lr 0.01, momentum 0.9, damping 0.1, MC; kfac
 * lr 0.003, momentum 0.9, damping 0.1, factored damping; update_every 10,
 * no weight decay, ema 0. The gradient must stay finite (CPK_ENONFINITE
 * when the training diverges). */
void cpk_optim_defaults(cpk_optim_kind kind, cpk_optim_options *o);

/* Check the options: CPK_EINVAL naming the first one out of range. */
int cpk_optim_check(const cpk_optim_options *o);

typedef struct cpk_optim cpk_optim;

/* An optimizer for the trainable parameters of a built model (its state is
 * float64, one buffer per parameter and kind); checks the options first. */
int cpk_optim_new(cpk_optim **out, const cpk_optim_options *opts,
                  const cpk_model *model);
void cpk_optim_free(cpk_optim *opt);
/* The extensions the next step's pass must compute: "", "diag_ggn_mc",
 * "diag_ggn_exact" or "kfac" (on curvature refresh steps). For kfac, run
 * the pass with cpk_pass_options.skip_unsupported. */
const char *cpk_optim_extensions(const cpk_optim *opt);
/* Compute the next update d from the results of that pass (the gradients
 * P.grad and the requested extensions); keeps it until cpk_optim_apply. */
int cpk_optim_prepare(cpk_optim *opt, const cpk_model *model,
                      const cpk_results *res);
/* The prepared update of parameter i (cpk_model_param order; NULL for a
 * buffer): numel(theta_i) doubles. */
const double *cpk_optim_update(const cpk_optim *opt, int i);
/* theta += d for every trainable parameter; counts the step. */
int cpk_optim_apply(cpk_optim *opt, cpk_model *model);
/* Steps applied so far. */
int64_t cpk_optim_steps(const cpk_optim *opt);
/* 1 when parameter i took the identity-curvature step at the last prepare
 * because the pass gave no curvature for it (kfac at a layer without
 * Kronecker factors). */
int cpk_optim_fallback(const cpk_optim *opt, int i);
/* Save the state (step count, buffers, curvature) as .npy files in DIR
 * (which must exist), and load it back into an optimizer of the same kind
 * and model. Kronecker inverses are rebuilt from the saved factors. */
int cpk_optim_save(const cpk_optim *opt, const char *dir);
int cpk_optim_load(cpk_optim *opt, const char *dir);

/* Mean cross-entropy and accuracy of a model on a labelled set, in
 * evaluation mode (dropout off, batch norm on running statistics), in
 * forward passes of at most `batch` samples. images [N, *sample], labels
 * int [N]. */
int cpk_evaluate(cpk_context *ctx, cpk_model *model, const cpk_tensor *images,
                 const cpk_tensor *labels, int64_t batch, double *loss,
                 double *accuracy);

/* The quantities a trainer can track (Cockpit's, after Schneider, Dangel and
 * Hennig 2021), as bit flags. With B the batch size, g_n = grad_batch[n]
 * (BackPACK's scaling: sum_n g_n = g), l_n the per-sample losses: */
enum {
  CPK_Q_LOSS = 1u << 0,     /* loss: the batch's mean loss */
  CPK_Q_ACCURACY = 1u << 1, /* accuracy: on the training batch */
  CPK_Q_GRAD_NORM = 1u << 2, /* grad_norm: ||g|| (and per parameter) */
  /* sample_grad_norm_{mean,min,max} of ||grad l_n|| = B ||g_n|| and
   * sample_grad_norm_hist: counts over CPK_TRACK_NORM_BINS log bins */
  CPK_Q_SAMPLE_NORMS = 1u << 3,
  /* gsnr per parameter and gsnr_mean over all elements (Cockpit's MeanGSNR):
   * g_i^2 / (B sum_n g_n,i^2 - g_i^2 + 1e-5) */
  CPK_Q_GSNR = 1u << 4,
  CPK_Q_VARIANCE = 1u << 5, /* variance: the sum of the variance extension */
  /* norm_test: sqrt(V1 / (B ||g||^2)), V1 = (B^2 sum_n ||g_n||^2 -
   * B ||g||^2) / (B - 1) (Byrd et al. 2012) */
  CPK_Q_NORM_TEST = 1u << 6,
  /* inner_test: sqrt(Vp / (B ||g||^4)), p_n = B sum_m g_n.g_m,
   * Vp = (sum_n p_n^2 - B ||g||^4) / (B - 1) (Bollapragada et al. 2017) */
  CPK_Q_INNER_TEST = 1u << 7,
  /* ortho_test: sqrt(Vo / (B ||g||^2)), Vo = (B^2 sum_n ||g_n||^2 -
   * sum_n p_n^2 / ||g||^2) / (B - 1) */
  CPK_Q_ORTHO_TEST = 1u << 8,
  CPK_Q_DISTANCE = 1u << 9,    /* distance: ||theta - theta_0|| */
  CPK_Q_UPDATE_SIZE = 1u << 10, /* update_size: ||d|| of this step */
  CPK_Q_HESS_TRACE = 1u << 11, /* hess_trace: sum of diag_hessian */
  /* hess_max_ev: the top Hessian eigenvalue (Lanczos, relative tol 1e-3) */
  CPK_Q_HESS_MAX_EV = 1u << 12,
  /* tic: sum_i B sum_n g_n,i^2 / (diag_hessian_i + 1e-7) (TICDiag) */
  CPK_Q_TIC = 1u << 13,
  /* alpha: Cockpit's normalised step length, from a noise-aware quadratic
   * fit of the loss and its projected gradients (means and variances over
   * the batch) before the update (this batch) and after it (the next one) */
  CPK_Q_ALPHA = 1u << 14,
  /* grad_hist_1d: counts of the elements of B g_n, clamped to [-2, 2], in
   * 100 equal bins (GradHist1d) */
  CPK_Q_GRAD_HIST_1D = 1u << 15,
  /* grad_hist_2d [40, 50]: elements of B g_n in (-1, 1) against the
   * parameter values in (-2, 2), clamped to the outer bin centres */
  CPK_Q_GRAD_HIST_2D = 1u << 16
};
#define CPK_TRACK_NORM_BINS 16 /* edges 10^-4, 10^-3.5, ..., 10^4 */

/* Cockpit's configurations: economy = Alpha, Distance, GradHist1d, GradNorm,
 * InnerTest, Loss, NormTest, OrthoTest, UpdateSize; business adds TICDiag
 * and HessTrace; full adds HessMaxEV and GradHist2d. Each also gets what
 * comes free from the extensions it runs anyway: accuracy, per-sample
 * gradient norms, GSNR and variance. "economy", "business", "full";
 * CPK_EUSAGE for another name. */
int cpk_track_preset(const char *name, unsigned *quantities);
/* Parse a comma-separated list of quantity names (loss, accuracy,
 * grad_norm, sample_grad_norms, gsnr, variance, norm_test, inner_test,
 * ortho_test, distance, update_size, hess_trace, hess_max_ev, tic, alpha,
 * grad_hist_1d, grad_hist_2d). */
int cpk_track_parse(const char *list, unsigned *quantities);
/* The extensions the quantities need, comma-separated ("" for none), into
 * buf (CPK_EINVAL when len is too small; 128 bytes always suffice). */
int cpk_track_extensions(unsigned quantities, char *buf, size_t len);
/* The name of one quantity flag ("norm_test"), or NULL. */
const char *cpk_track_name(unsigned quantity);

typedef struct cpk_trainer cpk_trainer;

/* A trainer: the model (built for images' sample shape), its optimizer and
 * context (borrowed: they must outlive the trainer), the training set
 * (images [N, *sample] of the model's dtype, labels int [N], borrowed), the
 * batch size and seed. Epoch e visits the samples in a permutation drawn
 * from (seed, e), in batches of batch_size (the last one smaller); step t
 * runs with the context seed drawn from (seed, t), so dropout masks and
 * Monte Carlo draws depend only on the step. Keeps theta_0, the parameters
 * at creation, for the distance. */
int cpk_trainer_new(cpk_trainer **out, cpk_context *ctx, cpk_model *model,
                    cpk_optim *opt, const cpk_tensor *images,
                    const cpk_tensor *labels, int64_t batch_size,
                    uint64_t seed);
void cpk_trainer_free(cpk_trainer *tr);

/* Where the trainer is: global step (updates made), epoch (0-based) and
 * the number of batches done in it, and batches per epoch. */
int64_t cpk_trainer_step(const cpk_trainer *tr);
int64_t cpk_trainer_epoch(const cpk_trainer *tr);
int64_t cpk_trainer_batch(const cpk_trainer *tr);
int64_t cpk_trainer_batches(const cpk_trainer *tr);

/* What one step is asked for. */
typedef struct cpk_step_request {
  unsigned track;         /* CPK_Q_* to measure at this step (0: none) */
  const char *dump_ext;   /* extensions whose results to hand back (NULL) */
} cpk_step_request;

/* What one step gives back (each NULL when there is nothing). */
typedef struct cpk_step_report {
  double loss;            /* the batch loss (always) */
  int64_t samples;        /* the batch size */
  /* Finished records of tracked steps, oldest first: named float64 tensors
   * "step", "epoch" and one per quantity (0-d, or 1-d/2-d for histograms;
   * per-parameter values as "P/grad_norm", "P/distance", "P/update_size",
   * "P/gsnr", "P/hess_trace"); NaN where a value is undefined (a batch of
   * one, a quantity the model cannot give). A step tracking alpha finishes
   * at the next step (its fit needs the next batch). */
  cpk_results *records[2];
  /* The requested extensions' results of this step's pass, the batch
   * ("input", "target") and the parameters before the update ("P"). */
  cpk_results *dump;
  /* Quantities that could not be computed at this step (a layer without
   * the products they need), as CPK_Q_* flags, with the reason. */
  unsigned unavailable;
  char unavailable_why[256];
} cpk_step_report;
void cpk_step_report_clear(cpk_step_report *r);

/* One training step: the next batch, one pass in training mode with the
 * union of the extensions the optimizer, the tracked quantities and the
 * dump need (plus a second pass at the same parameters for alpha's
 * projections, and the curvature operator's own passes for hess_max_ev),
 * the update, and the quantities. Batch-norm running statistics are
 * updated by the main pass only. */
int cpk_trainer_run_step(cpk_trainer *tr, const cpk_step_request *req,
                         cpk_step_report *rep);
/* The record of a tracked step still waiting for the next batch (alpha),
 * finished now with alpha = NaN; NULL when none waits. Call before a
 * checkpoint and at the end of training. */
int cpk_trainer_flush(cpk_trainer *tr, cpk_results **record);

/* Save the trainer's state in DIR (which must exist): the parameters
 * (contract layout), theta_0 in DIR/init, the optimizer's state in
 * DIR/optimizer and the position (trainer.npy). Load it back into a
 * trainer made with the same model, data, batch size and seed. */
int cpk_trainer_save(const cpk_trainer *tr, const char *dir);
int cpk_trainer_load(cpk_trainer *tr, const char *dir);

/* ---------------------------------------------------------- memory account */

/* Bytes currently held by library allocations, and the high-water mark since
 * the last cpk_memory_reset_peak(). Counted over all threads. */
size_t cpk_memory_in_use(void);
size_t cpk_memory_peak(void);
void cpk_memory_reset_peak(void);
/* Large freed blocks are kept for reuse (at most an eighth of the machine's
 * memory, and at least 1 GiB): give them back to the system. */
void cpk_memory_trim(void);
/* A budget for the library's memory, process-wide (`curvpack --max-memory`):
 * while it is nonzero, an allocation that would bring the bytes in use
 * (cpk_memory_in_use) above `bytes` fails, and the call that made it returns
 * CPK_ENOMEM with a message stating the bytes asked for, those in use and
 * the budget. Blocks kept for reuse count against it. Contexts created
 * after the call size their chunked intermediates (per-sample gradients,
 * Jacobian columns) to an eighth of it, so that large batches run in
 * smaller pieces instead of failing. 0 (the default) removes the budget.
 * Memory that OpenBLAS and the C library hold on their own is not
 * counted. */
void cpk_memory_set_limit(size_t bytes);
size_t cpk_memory_limit(void);

#ifdef __cplusplus
}
#endif
#endif /* CURVPACK_H */
