/*
 * devtest.h: what the device tests (tests/test_cuda*.c, test_conv_batched.c)
 * share: the context under test, models and targets, copies to and from
 * the device, and one operation run on the CPU and on the device.
 * With CPK_TEST_DEVICE_AS_CPU=1 in the environment the "device" is a second
 * CPU context: a dry run of the tests' own logic on a machine without a GPU
 * (the checks that only a device can pass then fail, as they should).
 */
#ifndef CPK_DEVTEST_H
#define CPK_DEVTEST_H

#include "internal.h"
#include "testutil.h"

/* The device under test: CUDA, or the CPU for a dry run. */
cpk_device dt_device(void);
/* A context (seed 7) on `device`: a CPU one always; a CUDA one or NULL,
 * with the reason printed, when there is no usable device. */
cpk_context *dt_context(cpk_device device, int mc_samples);
/* For main(): 1, after printing TAP's whole-program skip with the reason,
 * when no context can be made on the device under test. */
int dt_skip_program(void);

/* A model from its text, built for [*shape] samples of dt, parameters
 * initialised with seed 11. */
cpk_model *dt_build(const char *text, int ndim, const int64_t *shape,
                    cpk_dtype dt);
/* Targets of N samples for 3 outputs: classes (5i + 1) mod 3 for
 * cross-entropy, uniform [0, 1) values (seed 9) for MSE and BCE. */
cpk_tensor *dt_target(cpk_loss_kind loss, int64_t n);

/* A copy of t on the context's device. */
cpk_tensor *dt_up(cpk_context *ctx, const cpk_tensor *t);
/* Bring device tensor d down and compare it with the CPU's c. */
void dt_check_down(cpk_context *ctx, const cpk_tensor *d, const cpk_tensor *c,
                   double rtol, double atol, const char *what);

/* An operation on contexts: a[i] are its arrays, inputs then outputs. */
typedef void (*dt_op_fn)(const cpk_context *ctx, cpk_dtype dt, void **a);
/* fn on host arrays (a CPU context) and on their device copies: nargs
 * arrays of sizes[i] elements drawn from [lo, 1) (seed seed + i); the last
 * nout are compared to rtol (atol rtol / 100). */
void dt_run_op(cpk_context *dev, const char *name, cpk_dtype dt, int nargs,
               const int64_t *sizes, int nout, dt_op_fn fn, double lo,
               uint64_t seed, double rtol);

#endif
