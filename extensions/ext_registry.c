/* ext_registry.c: every extension name of the contract, and which this build
 * implements. Adding an extension adds its file and fills its line here. */
#include <string.h>

#include "extension.h"

static const cpk__extension_entry registry[] = {
    {"batch_grad", &cpk__batch_grad_ext},
    {"batch_l2_grad", &cpk__batch_l2_grad_ext},
    {"sum_grad_squared", &cpk__sum_grad_squared_ext},
    {"variance", &cpk__variance_ext},
    {"batch_dot_grad", &cpk__batch_dot_grad_ext},
    {"diag_ggn_exact", &cpk__diag_ggn_exact_ext},
    {"diag_ggn_mc", &cpk__diag_ggn_mc_ext},          {"batch_diag_ggn_exact", &cpk__batch_diag_ggn_exact_ext},
    {"batch_diag_ggn_mc", &cpk__batch_diag_ggn_mc_ext},    {"diag_hessian", &cpk__diag_hessian_ext},
    {"batch_diag_hessian", &cpk__batch_diag_hessian_ext},   {"kfac", &cpk__kfac_ext},
    {"kflr", &cpk__kflr_ext},                 {"kfra", &cpk__kfra_ext},
    {"sqrt_ggn_exact", &cpk__sqrt_ggn_exact_ext},       {"sqrt_ggn_mc", &cpk__sqrt_ggn_mc_ext},
};

static const cpk__extension_entry *find(const char *name, size_t len) {
  for (size_t i = 0; i < sizeof registry / sizeof registry[0]; i++)
    if (strlen(registry[i].name) == len &&
        strncmp(registry[i].name, name, len) == 0)
      return &registry[i];
  return NULL;
}

int cpk_extension_known(const char *name) {
  return find(name, strlen(name)) != NULL;
}

int cpk_extension_available(const char *name) {
  const cpk__extension_entry *e = find(name, strlen(name));
  return e != NULL && e->impl != NULL;
}

int cpk__extensions_parse(const char *list, const cpk__extension_entry **out,
                          int *count) {
  const cpk__extension_entry *missing = NULL;
  *count = 0;
  if (list == NULL)
    return CPK_OK;
  for (const char *p = list; *p;) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len > 0) {
      const cpk__extension_entry *e = find(p, len);
      if (e == NULL)
        return cpk__fail(CPK_EUSAGE,
                         "unknown extension '%.*s' (see curvpack compute "
                         "--help for the list)",
                         (int)len, p);
      if (e->impl == NULL && missing == NULL)
        missing = e; /* reported after every name is known to be valid */
      int dup = 0;
      for (int i = 0; i < *count; i++)
        dup |= out[i] == e;
      if (!dup && *count < CPK__MAX_EXTENSIONS)
        out[(*count)++] = e;
      /* Registry order, so batch_grad (which others reuse) runs first. */
      for (int i = *count - 1; i > 0 && out[i] < out[i - 1]; i--) {
        const cpk__extension_entry *t = out[i];
        out[i] = out[i - 1];
        out[i - 1] = t;
      }
    }
    p += len + (end ? 1 : 0);
  }
  if (missing != NULL)
    return cpk__fail(CPK_ENOTSUP, "extension '%s' is not implemented yet",
                     missing->name);
  return CPK_OK;
}

int cpk_extensions_check(const char *list) {
  const cpk__extension_entry *ext[CPK__MAX_EXTENSIONS];
  int count;
  return cpk__extensions_parse(list, ext, &count);
}
