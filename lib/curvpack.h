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
 *    (int64/int32 for class indices), 64-byte aligned.
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
/* Parameter i: its name ("0.weight") and its tensor (owned by the model). */
int cpk_model_param(const cpk_model *model, int i, const char **name,
                    cpk_tensor **tensor);
/* Total number of scalar parameters. */
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

/* A named collection of result tensors ("loss", "output", "0.weight.grad",
 * "0.weight.grad_batch", ...). The names are the contract's file stems. */
typedef struct cpk_results cpk_results;
int cpk_results_count(const cpk_results *r);
const char *cpk_results_name(const cpk_results *r, int i);
const cpk_tensor *cpk_results_tensor(const cpk_results *r, int i);
/* The tensor called `name`, or NULL. */
const cpk_tensor *cpk_results_find(const cpk_results *r, const char *name);
void cpk_results_free(cpk_results *r);

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

/* ---------------------------------------------------------- memory account */

/* Bytes currently held by library allocations, and the high-water mark since
 * the last cpk_memory_reset_peak(). Counted over all threads. */
size_t cpk_memory_in_use(void);
size_t cpk_memory_peak(void);
void cpk_memory_reset_peak(void);

#ifdef __cplusplus
}
#endif
#endif /* CURVPACK_H */
