/* devtest.c: helpers of the device tests (see devtest.h). */
#include <stdio.h>
#include <stdlib.h>

#include "devtest.h"
#include "device.h"

cpk_device dt_device(void) {
  const char *e = getenv("CPK_TEST_DEVICE_AS_CPU");
  return e != NULL && e[0] == '1' ? CPK_DEVICE_CPU : CPK_DEVICE_CUDA;
}

cpk_context *dt_context(cpk_device device, int mc_samples) {
  cpk_context_options o = {.device = device, .seed = 7,
                           .mc_samples = mc_samples};
  cpk_context *ctx = NULL;
  if (cpk_context_new(&ctx, &o) != CPK_OK) {
    print_message("no CUDA device: %s\n", cpk_last_error());
    return NULL;
  }
  return ctx;
}

int dt_skip_program(void) {
  cpk_context_options o = {.device = dt_device()};
  cpk_context *ctx;
  if (cpk_context_new(&ctx, &o) != CPK_OK) {
    printf("1..0 # SKIP %s\n", cpk_last_error());
    return 1;
  }
  cpk_context_free(ctx);
  return 0;
}

cpk_model *dt_build(const char *text, int ndim, const int64_t *shape,
                    cpk_dtype dt) {
  cpk_model *m;
  tu_ok(cpk_model_parse(&m, text, "net"));
  tu_ok(cpk_model_build(m, ndim, shape, dt));
  tu_ok(cpk_model_init_params(m, 11));
  return m;
}

cpk_tensor *dt_target(cpk_loss_kind loss, int64_t n) {
  int64_t s2[2] = {n, 3};
  if (loss != CPK_LOSS_CROSS_ENTROPY)
    return tu_random(CPK_F64, 2, s2, 0, 1, 9);
  cpk_tensor *t;
  tu_ok(cpk_tensor_new(&t, CPK_I64, 1, &n));
  for (int64_t i = 0; i < n; i++)
    cpk_tensor_set(t, i, (double)((i * 5 + 1) % 3));
  return t;
}

cpk_tensor *dt_up(cpk_context *ctx, const cpk_tensor *t) {
  cpk_tensor *d;
  tu_ok(cpk__tensor_to_device(ctx, t, t->dtype, &d));
  return d;
}

void dt_check_down(cpk_context *ctx, const cpk_tensor *d, const cpk_tensor *c,
                   double rtol, double atol, const char *what) {
  cpk_tensor *h;
  tu_ok(cpk__device_sync(ctx));
  tu_ok(cpk_tensor_copy_to_host(d, &h));
  tu_assert_close(h, c, rtol, atol, what);
  cpk_tensor_free(h);
}

void dt_run_op(cpk_context *dev, const char *name, cpk_dtype dt, int nargs,
               const int64_t *sizes, int nout, dt_op_fn fn, double lo,
               uint64_t seed, double rtol) {
  cpk_context *cpu;
  tu_ok(cpk_context_new(&cpu, NULL));
  cpk_tensor *h[8], *d[8];
  void *hp[8], *dp[8];
  for (int i = 0; i < nargs; i++) {
    h[i] = tu_random(dt, 1, &sizes[i], lo, 1, seed + (uint64_t)i);
    d[i] = dt_up(dev, h[i]);
    hp[i] = h[i]->data;
    dp[i] = d[i]->data;
  }
  fn(cpu, dt, hp);
  fn(dev, dt, dp);
  for (int i = nargs - nout; i < nargs; i++) {
    char what[96];
    snprintf(what, sizeof what, "%s (%s), output %d", name,
             cpk_dtype_name(dt), i);
    dt_check_down(dev, d[i], h[i], rtol, rtol * 1e-2, what);
  }
  for (int i = 0; i < nargs; i++) {
    cpk_tensor_free(h[i]);
    cpk_tensor_free(d[i]);
  }
  cpk_context_free(cpu);
}
