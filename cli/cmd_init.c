/* cmd_init.c: `curvpack init`, parameters initialised as PyTorch does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

/* "1,28,28" -> shape. Returns 0 or an exit status. */
static int parse_shape(const char *text, int *ndim, int64_t *shape) {
  *ndim = 0;
  for (const char *p = text; *p;) {
    char *end;
    long long v = strtoll(p, &end, 10);
    if (end == p || v <= 0 || *ndim == CPK_MAX_DIMS - 1 ||
        (*end != ',' && *end != '\0'))
      return cli_error(CPK_EUSAGE,
                       "--input-shape: expected positive integers like "
                       "1,28,28, got '%s'",
                       text);
    shape[(*ndim)++] = v;
    p = *end == ',' ? end + 1 : end;
    if (*end == ',' && *p == '\0')
      return cli_error(CPK_EUSAGE, "--input-shape: trailing comma in '%s'",
                       text);
  }
  if (*ndim == 0)
    return cli_error(CPK_EUSAGE, "--input-shape: empty");
  return 0;
}

int cmd_init(int argc, char **argv) {
  const char *model_path = NULL, *shape_text = NULL, *out = NULL,
             *seed_text = NULL, *dtype_text = NULL;
  const cli_opt opts[] = {
      {"model", "FILE", "model file (one layer per line)", &model_path, NULL},
      {"input-shape", "SHAPE",
       "shape of one input sample, without the batch axis (e.g. 1,28,28)",
       &shape_text, NULL},
      {"out", "DIR", "parameter directory to write (created if missing)", &out,
       NULL},
      {"seed", "S", "seed (default 0)", &seed_text, NULL},
      {"dtype", "T", "float32 (default) or float64", &dtype_text, NULL},
  };
  int rc = cli_parse("init",
                     "Write parameters INDEX.NAME.npy initialised from the "
                     "same distributions as PyTorch's defaults.",
                     argc, argv, opts, (int)(sizeof opts / sizeof opts[0]));
  if (rc != 0)
    return rc < 0 ? CLI_EXIT_OK : rc;
  if ((rc = cli_require("init", "model", model_path)) ||
      (rc = cli_require("init", "input-shape", shape_text)) ||
      (rc = cli_require("init", "out", out)))
    return rc;
  int ndim;
  int64_t shape[CPK_MAX_DIMS], seed = 0;
  cpk_dtype dtype = CPK_F32;
  if ((rc = parse_shape(shape_text, &ndim, shape)) != 0)
    return rc;
  if (seed_text && (rc = cli_parse_int("seed", seed_text, 0, &seed)) != 0)
    return rc;
  if (dtype_text && cpk_dtype_parse(dtype_text, &dtype) != CPK_OK)
    return cli_error(CPK_EUSAGE,
                     "--dtype: expected float32 or float64, got '%s'",
                     dtype_text);
  cpk_model *model = NULL;
  int st = cpk_model_load(&model, model_path);
  if (st == CPK_OK)
    st = cpk_model_build(model, ndim, shape, dtype);
  if (st == CPK_OK)
    st = cpk_model_init_params(model, (uint64_t)seed);
  if (st != CPK_OK) {
    rc = cli_lib_error(st);
  } else {
    /* All the files or none: through the results writer. */
    cpk_results *res = NULL;
    st = cpk_results_new(&res);
    for (int i = 0; st == CPK_OK && i < cpk_model_num_params(model); i++) {
      const char *name;
      cpk_tensor *t, *copy = NULL;
      if ((st = cpk_model_param(model, i, &name, &t)) == CPK_OK &&
          (st = cpk_tensor_convert(&copy, t, t->dtype)) == CPK_OK)
        st = cpk_results_add(res, name, copy);
    }
    rc = st != CPK_OK ? cli_lib_error(st) : cli_write_results(out, res);
    cpk_results_free(res);
  }
  cpk_model_free(model);
  return rc;
}
