/* results.c: a named list of result tensors. */
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "results.h"

struct cpk_results {
  const cpk_context *ctx; /* where cpk__results_alloc allocates (NULL: host) */
  int count, cap;
  struct {
    char name[64];
    cpk_tensor *t;
  } *items;
};

int cpk__results_new(cpk_results **out) {
  *out = cpk__calloc(sizeof **out);
  return *out ? CPK_OK : CPK_ENOMEM;
}

int cpk__results_add(cpk_results *r, const char *name, cpk_tensor *t) {
  if (strlen(name) >= sizeof r->items[0].name) {
    cpk_tensor_free(t);
    return cpk__fail(CPK_EINVAL, "result name '%s' is too long", name);
  }
  if (r->count == r->cap) {
    int cap = r->cap ? 2 * r->cap : 16;
    void *grown = cpk__malloc((size_t)cap * sizeof *r->items);
    if (grown == NULL) {
      cpk_tensor_free(t);
      return CPK_ENOMEM;
    }
    if (r->count)
      memcpy(grown, r->items, (size_t)r->count * sizeof *r->items);
    cpk__free(r->items);
    r->items = grown;
    r->cap = cap;
  }
  snprintf(r->items[r->count].name, sizeof r->items[0].name, "%s", name);
  r->items[r->count++].t = t;
  return CPK_OK;
}

/* A new result on the list's device, zero-filled or not. */
static int results_alloc(cpk_results *r, const char *name, cpk_dtype dtype,
                         int ndim, const int64_t *shape, int zero,
                         cpk_tensor **t) {
  int rc = zero ? cpk__tensor_new_on(r->ctx, t, dtype, ndim, shape)
                : cpk__tensor_new_on_uninit(r->ctx, t, dtype, ndim, shape);
  if (rc != CPK_OK)
    return cpk__fail_prefix(rc, "result %s", name);
  return cpk__results_add(r, name, *t);
}

int cpk__results_alloc(cpk_results *r, const char *name, cpk_dtype dtype,
                       int ndim, const int64_t *shape, cpk_tensor **t) {
  return results_alloc(r, name, dtype, ndim, shape, 1, t);
}

int cpk__results_alloc_uninit(cpk_results *r, const char *name,
                              cpk_dtype dtype, int ndim, const int64_t *shape,
                              cpk_tensor **t) {
  return results_alloc(r, name, dtype, ndim, shape, 0, t);
}

void cpk__results_on(cpk_results *r, const cpk_context *ctx) { r->ctx = ctx; }

int cpk_results_to_host(cpk_results *r) {
  int rc = CPK_OK;
  for (int i = 0; i < r->count && rc == CPK_OK; i++)
    if ((rc = cpk__tensor_move_to_host(r->items[i].t)) != CPK_OK)
      rc = cpk__fail_prefix(rc, "result %s", r->items[i].name);
  r->ctx = NULL;
  return rc;
}

int cpk_results_on_device(const cpk_results *r) {
  for (int i = 0; i < r->count; i++)
    if (cpk_tensor_on_device(r->items[i].t))
      return 1;
  return 0;
}

int cpk_results_count(const cpk_results *r) { return r->count; }

const char *cpk_results_name(const cpk_results *r, int i) {
  return i >= 0 && i < r->count ? r->items[i].name : NULL;
}

const cpk_tensor *cpk_results_tensor(const cpk_results *r, int i) {
  return i >= 0 && i < r->count ? r->items[i].t : NULL;
}

const cpk_tensor *cpk_results_find(const cpk_results *r, const char *name) {
  for (int i = 0; i < r->count; i++)
    if (strcmp(r->items[i].name, name) == 0)
      return r->items[i].t;
  return NULL;
}

void cpk_results_free(cpk_results *r) {
  if (r == NULL)
    return;
  for (int i = 0; i < r->count; i++)
    cpk_tensor_free(r->items[i].t);
  cpk__free(r->items);
  cpk__free(r);
}

int cpk_results_new(cpk_results **out) { return cpk__results_new(out); }

int cpk_results_add(cpk_results *r, const char *name, cpk_tensor *t) {
  return cpk__results_add(r, name, t);
}

void cpk__results_set(cpk_results *r, int i, cpk_tensor *t) {
  cpk_tensor_free(r->items[i].t);
  r->items[i].t = t;
}

void cpk__results_drop(cpk_results *r, const char *name) {
  for (int i = 0; i < r->count; i++)
    if (strcmp(r->items[i].name, name) == 0) {
      cpk_tensor_free(r->items[i].t);
      memmove(r->items + i, r->items + i + 1,
              (size_t)(r->count - i - 1) * sizeof *r->items);
      r->count--;
      return;
    }
}
