/* train_dump.c: --dump and --dump-ext, per-parameter tensors of tracked
 * steps written to RUN/dumps/STEP/ (the file names of `curvpack
 * compute`: P.SUFFIX.npy; P.npy for the parameter itself). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "train.h"

/* Each --dump-ext name and the result suffixes it writes ("" = P.npy). */
static const struct {
  const char *name;
  const char *suffix[2];
} kinds[] = {
    {"grad", {"grad"}},
    {"param", {""}},
    {"batch", {NULL}}, /* input.npy, target.npy */
    {"batch_grad", {"grad_batch"}},
    {"batch_l2_grad", {"batch_l2"}},
    {"sum_grad_squared", {"sum_grad_squared"}},
    {"variance", {"variance"}},
    {"batch_dot_grad", {"batch_dot"}},
    {"diag_ggn_exact", {"diag_ggn_exact"}},
    {"diag_ggn_mc", {"diag_ggn_mc"}},
    {"batch_diag_ggn_exact", {"diag_ggn_exact_batch"}},
    {"batch_diag_ggn_mc", {"diag_ggn_mc_batch"}},
    {"diag_hessian", {"diag_h"}},
    {"batch_diag_hessian", {"diag_h_batch"}},
    {"kfac", {"kfac.0", "kfac.1"}},
    {"kflr", {"kflr.0", "kflr.1"}},
    {"kfra", {"kfra.0", "kfra.1"}},
    {"sqrt_ggn_exact", {"sqrt_ggn_exact"}},
    {"sqrt_ggn_mc", {"sqrt_ggn_mc"}},
};
#define NKINDS (sizeof kinds / sizeof kinds[0])

/* The index of `name` (len bytes) in kinds, or -1. */
static int kind_of(const char *name, size_t len) {
  for (size_t k = 0; k < NKINDS; k++)
    if (strlen(kinds[k].name) == len && strncmp(kinds[k].name, name, len) == 0)
      return (int)k;
  return -1;
}

int train_dump_setup(train_dump *d, const cpk_model *model, const char *params,
                     const char *names) {
  memset(d, 0, sizeof *d);
  if (names == NULL || names[0] == '\0')
    return cli_error(CPK_EUSAGE, "train: --dump needs --dump-ext");
  snprintf(d->names, sizeof d->names, "%s", names);
  for (const char *p = names; *p;) {
    size_t len = strcspn(p, ",");
    int k = kind_of(p, len);
    if (len > 0 && k < 0)
      return cli_error(CPK_EUSAGE,
                       "--dump-ext: unknown name '%.*s' (an extension of "
                       "curvpack compute, or grad, param, batch)",
                       (int)len, p);
    if (k >= 3) {
      size_t used = strlen(d->ext);
      snprintf(d->ext + used, sizeof d->ext - used, "%s%.*s", used ? "," : "",
               (int)len, p);
    }
    p += len + (p[len] == ',');
  }
  if (d->ext[0] != '\0') {
    for (const char *p = d->ext; *p;) {
      char one[64];
      size_t len = strcspn(p, ",");
      snprintf(one, sizeof one, "%.*s", (int)len, p);
      if (!cpk_extension_available(one))
        return cli_error(CPK_ENOTSUP,
                         "--dump-ext: extension '%s' is not "
                         "implemented yet",
                         one);
      p += len + (p[len] == ',');
    }
  }
  /* Default: every trainable parameter. */
  for (int i = 0; i < cpk_model_num_params(model); i++) {
    const char *name;
    cpk_model_param(model, i, &name, NULL);
    if (!cpk_model_param_trainable(model, i))
      continue;
    if (params != NULL && params[0] != '\0') {
      int listed = 0;
      for (const char *p = params; *p && !listed;) {
        size_t len = strcspn(p, ",");
        listed = strlen(name) == len && strncmp(name, p, len) == 0;
        p += len + (p[len] == ',');
      }
      if (!listed)
        continue;
    }
    size_t used = strlen(d->params);
    snprintf(d->params + used, sizeof d->params - used, "%s%s", used ? "," : "",
             name);
  }
  /* Every listed name must be a trainable parameter. */
  for (const char *p = params ? params : ""; *p;) {
    size_t len = strcspn(p, ",");
    int found = 0;
    for (const char *q = d->params; *q && !found;) {
      size_t l2 = strcspn(q, ",");
      found = l2 == len && strncmp(q, p, len) == 0;
      q += l2 + (q[l2] == ',');
    }
    if (len > 0 && !found)
      return cli_error(CPK_EUSAGE,
                       "--dump: '%.*s' is not a trainable parameter of the "
                       "model (names are INDEX.NAME, e.g. 1.weight)",
                       (int)len, p);
    p += len + (p[len] == ',');
  }
  return 0;
}

/* Write `t` as DIR/FILE. */
static int write_one(const char *dir, const char *file, const cpk_tensor *t) {
  char path[PATH_MAX];
  if (train_path(path, sizeof path, "%s/%s", dir, file) != 0)
    return CLI_EXIT_FAILURE;
  int st = cpk_npy_write(path, t);
  return st == CPK_OK ? 0 : cli_lib_error(st);
}

int train_dump_write(const train_dump *d, const char *run, int64_t step,
                     const cpk_results *dump) {
  if (cli_rank() != 0) /* under MPI rank 0 writes the run */
    return 0;
  char top[PATH_MAX], tmp[PATH_MAX], dst[PATH_MAX], file[160], key[128];
  int rc;
  if ((rc = train_path(top, sizeof top, "%s/dumps", run)) ||
      (rc =
           train_path(tmp, sizeof tmp, "%s/.%lld.tmp", top, (long long)step)) ||
      (rc = train_path(dst, sizeof dst, "%s/%lld", top, (long long)step)) ||
      (rc = cli_make_dir(top)) != 0 || (rc = train_remove_tree(tmp)) != 0)
    return rc;
  if (mkdir(tmp, 0777) != 0)
    return cli_error(CPK_EIO, "cannot create %s: %s", tmp, strerror(errno));
  for (const char *p = d->names; *p;) {
    size_t len = strcspn(p, ",");
    int k = kind_of(p, len);
    p += len + (p[len] == ',');
    if (k < 0)
      continue;
    if (kinds[k].suffix[0] == NULL) { /* batch */
      if ((rc = write_one(tmp, "input.npy", cpk_results_find(dump, "input"))) ||
          (rc = write_one(tmp, "target.npy", cpk_results_find(dump, "target"))))
        return rc;
      continue;
    }
    for (const char *q = d->params; *q;) {
      size_t l2 = strcspn(q, ",");
      for (int s = 0; s < 2 && kinds[k].suffix[s] != NULL; s++) {
        const char *suffix = kinds[k].suffix[s];
        snprintf(key, sizeof key, "%.*s%s%s", (int)l2, q, suffix[0] ? "." : "",
                 suffix);
        const cpk_tensor *t = cpk_results_find(dump, key);
        snprintf(file, sizeof file, "%s.npy", key);
        /* A parameter without the result (kfac at a layer without
         * factors) has no file. */
        if (t != NULL && (rc = write_one(tmp, file, t)) != 0)
          return rc;
      }
      q += l2 + (q[l2] == ',');
    }
  }
  if ((rc = train_remove_tree(dst)) != 0)
    return rc;
  if (rename(tmp, dst) != 0)
    return cli_error(CPK_EIO, "cannot rename %s to %s: %s", tmp, dst,
                     strerror(errno));
  return 0;
}
