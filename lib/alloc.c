/* alloc.c: tracked, aligned allocation. Every buffer of the library goes
 * through here, so that a pass can report the peak memory it allocated. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define CPK__ALIGN 64
/* Each block starts with a header holding its size, padded to the alignment. */
#define CPK__HEADER CPK__ALIGN

static atomic_size_t in_use;
static atomic_size_t peak;

size_t cpk_memory_in_use(void) { return atomic_load(&in_use); }
size_t cpk_memory_peak(void) { return atomic_load(&peak); }
void cpk_memory_reset_peak(void) { atomic_store(&peak, atomic_load(&in_use)); }

static void account(size_t bytes) {
  size_t now = atomic_fetch_add(&in_use, bytes) + bytes;
  size_t old = atomic_load(&peak);
  while (now > old && !atomic_compare_exchange_weak(&peak, &old, now)) {
  }
}

void *cpk__malloc(size_t bytes) {
  size_t total;
  if (bytes > SIZE_MAX - 2 * CPK__ALIGN) {
    cpk__fail(CPK_ENOMEM, "out of memory: %zu bytes asked for", bytes);
    return NULL;
  }
  total = (bytes + CPK__HEADER + CPK__ALIGN - 1) / CPK__ALIGN * CPK__ALIGN;
  unsigned char *base = aligned_alloc(CPK__ALIGN, total);
  if (base == NULL) {
    cpk__fail(CPK_ENOMEM, "out of memory: %zu bytes asked for", bytes);
    return NULL;
  }
  memcpy(base, &total, sizeof total);
  account(total);
  return base + CPK__HEADER;
}

void *cpk__calloc(size_t bytes) {
  void *p = cpk__malloc(bytes);
  if (p != NULL)
    memset(p, 0, bytes);
  return p;
}

void cpk__free(void *p) {
  size_t total;
  unsigned char *base;
  if (p == NULL)
    return;
  base = (unsigned char *)p - CPK__HEADER;
  memcpy(&total, base, sizeof total);
  atomic_fetch_sub(&in_use, total);
  free(base);
}

char *cpk__strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = malloc(n);
  if (d == NULL) {
    cpk__fail(CPK_ENOMEM, "out of memory: %zu bytes asked for", n);
    return NULL;
  }
  memcpy(d, s, n);
  return d;
}
