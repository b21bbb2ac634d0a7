/* alloc.c: tracked, aligned allocation. Every buffer of the library goes
 * through here, so that a pass can report the peak memory it allocated.
 * Large blocks that are freed are kept in a small cache and handed out
 * again for the same size: repeated passes (training steps, --repeat,
 * Lanczos products) then neither map nor fault in fresh pages each time
 * (up to an eighth of the machine's memory).
 * Fresh large blocks ask the kernel for transparent huge pages: a 1.6 GiB
 * result (fmnist_2c2d's per-sample gradients) otherwise takes 400,000 page
 * faults, more time than writing it. */
#define _DEFAULT_SOURCE /* MADV_HUGEPAGE */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define CPK__ALIGN 64
/* Each block starts with a header holding its size, padded to the alignment. */
#define CPK__HEADER CPK__ALIGN

static atomic_size_t in_use;
static atomic_size_t peak;
/* The memory budget (0: none): bytes in use may not grow beyond it. */
static atomic_size_t limit;

/* Blocks from this size on are backed by huge pages where the kernel has
 * them (Linux: madvise mode of transparent huge pages). */
#define HUGE_MIN_BYTES ((size_t)8 << 20)
#define HUGE_PAGE ((uintptr_t)2 << 20)

/* Ask for huge pages over the 2 MiB-aligned part of a fresh block; a
 * refusal (no THP, another system) changes nothing but the speed. */
static void advise_huge(unsigned char *base, size_t total) {
#ifdef MADV_HUGEPAGE
  if (total < HUGE_MIN_BYTES)
    return;
  const uintptr_t lo = ((uintptr_t)base + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
  const uintptr_t hi = ((uintptr_t)base + total) & ~(HUGE_PAGE - 1);
  if (hi > lo)
    (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
  (void)base;
  (void)total;
#endif
}

/* The cache of freed large blocks (by their full size), under a spin lock. */
#define CACHE_SLOTS 64
#define CACHE_MIN_BYTES ((size_t)64 << 10)
#define CACHE_FLOOR_BYTES ((size_t)1 << 30)
static struct {
  unsigned char *base;
  size_t total;
} cache[CACHE_SLOTS];
static int cache_count;
static size_t cache_bytes;
static atomic_flag cache_lock = ATOMIC_FLAG_INIT;

static void lock(void) {
  while (atomic_flag_test_and_set_explicit(&cache_lock, memory_order_acquire)) {
  }
}
static void unlock(void) {
  atomic_flag_clear_explicit(&cache_lock, memory_order_release);
}

/* A cached block of `total` bytes or up to an eighth more, or NULL. */
static unsigned char *cache_take(size_t total) {
  unsigned char *base = NULL;
  int best = -1;
  if (total < CACHE_MIN_BYTES)
    return NULL;
  lock();
  for (int i = 0; i < cache_count; i++)
    if (cache[i].total >= total && cache[i].total - total <= total / 8 &&
        (best < 0 || cache[i].total < cache[best].total))
      best = i;
  if (best >= 0) {
    base = cache[best].base;
    cache_bytes -= cache[best].total;
    cache[best] = cache[--cache_count];
  }
  unlock();
  return base;
}

/* How much the cache may hold: an eighth of the machine's memory, at least
 * 1 GiB. Large enough for the per-sample results of the DeepOBS problems
 * (fmnist_2c2d's batch_grad is 1.6 GiB), whose fresh pages the kernel would
 * otherwise zero on every pass, costing about as much as writing them.
 * cpk_memory_trim() gives the held blocks back; a memory budget counts
 * them. Called under the lock. */
static size_t cache_max_bytes(void) {
  static size_t max;
  if (max == 0) {
    const size_t eighth = cpk__machine_memory() / 8;
    max = eighth > CACHE_FLOOR_BYTES ? eighth : CACHE_FLOOR_BYTES;
  }
  return max;
}

size_t cpk__machine_memory(void) {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
}

/* Keep a freed block for reuse; 0 when the cache has no room for it. */
static int cache_put(unsigned char *base, size_t total) {
  int kept = 0;
  if (total < CACHE_MIN_BYTES)
    return 0;
  lock();
  size_t budget = atomic_load(&limit);
  /* Under a budget, blocks held for reuse count against it too. */
  if (cache_count < CACHE_SLOTS && cache_bytes + total <= cache_max_bytes() &&
      (budget == 0 || atomic_load(&in_use) + cache_bytes + total <= budget)) {
    cache[cache_count].base = base;
    cache[cache_count++].total = total;
    cache_bytes += total;
    kept = 1;
  }
  unlock();
  return kept;
}

static size_t cache_held(void) {
  lock();
  size_t held = cache_bytes;
  unlock();
  return held;
}

void cpk_memory_trim(void) {
  lock();
  for (int i = 0; i < cache_count; i++)
    free(cache[i].base);
  cache_count = 0;
  cache_bytes = 0;
  unlock();
}

size_t cpk_memory_in_use(void) { return atomic_load(&in_use); }
size_t cpk_memory_peak(void) { return atomic_load(&peak); }
void cpk_memory_reset_peak(void) { atomic_store(&peak, atomic_load(&in_use)); }

static void note_peak(size_t now) {
  size_t old = atomic_load(&peak);
  while (now > old && !atomic_compare_exchange_weak(&peak, &old, now)) {
  }
}

void cpk_memory_set_limit(size_t bytes) {
  atomic_store(&limit, bytes);
  if (bytes != 0)
    cpk_memory_trim(); /* cached blocks are memory held, too */
}
size_t cpk_memory_limit(void) { return atomic_load(&limit); }

/* "123456789 bytes (117.7 MiB)" */
static const char *human(char *buf, size_t len, size_t bytes) {
  static const char *const unit[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  double v = (double)bytes;
  int u = -1;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    u++;
  }
  if (u < 0)
    snprintf(buf, len, "%zu bytes", bytes);
  else
    snprintf(buf, len, "%zu bytes (%.1f %s)", bytes, v, unit[u]);
  return buf;
}

/* Record the failure of an allocation of `bytes` (payload) with the state of
 * the account: over the budget (`over`) or refused by the system. */
static void fail_alloc(size_t bytes, size_t used, size_t budget, int over) {
  char a[64], b[64], c[64];
  if (over)
    cpk__fail(CPK_ENOMEM,
              "out of memory: %s asked for with %s in use, over the memory "
              "budget of %s",
              human(a, sizeof a, bytes), human(b, sizeof b, used),
              human(c, sizeof c, budget));
  else
    cpk__fail(CPK_ENOMEM,
              "out of memory: %s asked for with %s in use; the system has "
              "no more to give",
              human(a, sizeof a, bytes), human(b, sizeof b, used));
}

void *cpk__malloc(size_t bytes) {
  size_t total, budget = atomic_load(&limit);
  if (bytes > SIZE_MAX - 2 * CPK__ALIGN ||
      bytes > (size_t)PTRDIFF_MAX - 2 * CPK__ALIGN) {
    fail_alloc(bytes, atomic_load(&in_use), budget, 0);
    return NULL;
  }
  total = (bytes + CPK__HEADER + CPK__ALIGN - 1) / CPK__ALIGN * CPK__ALIGN;
  /* Reserve the bytes first, so that threads allocating at once cannot
   * pass the budget together. */
  size_t now = atomic_fetch_add(&in_use, total) + total;
  if (budget != 0 && now > budget) {
    atomic_fetch_sub(&in_use, total);
    fail_alloc(bytes, now - total, budget, 1);
    return NULL;
  }
  unsigned char *base = cache_take(total);
  if (base != NULL) {
    size_t own;
    memcpy(&own, base, sizeof own); /* the block's own, maybe larger, size */
    if (budget != 0 && now + (own - total) > budget) {
      free(base); /* its extra bytes would pass the budget */
      base = NULL;
    } else {
      atomic_fetch_add(&in_use, own - total);
      now += own - total;
      total = own;
    }
  }
  if (base == NULL) {
    if (budget != 0 && now + cache_held() > budget)
      cpk_memory_trim(); /* held in the cache, but not in use */
    base = aligned_alloc(CPK__ALIGN, total);
    if (base == NULL) {
      atomic_fetch_sub(&in_use, total);
      fail_alloc(bytes, now - total, budget, 0);
      return NULL;
    }
    advise_huge(base, total);
  }
  memcpy(base, &total, sizeof total);
  note_peak(now);
  return base + CPK__HEADER;
}

static atomic_int poison_uninit;

void cpk__alloc_poison(int on) { atomic_store(&poison_uninit, on != 0); }

int cpk__alloc_poisoning(void) { return atomic_load(&poison_uninit); }

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
  if (!cache_put(base, total))
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
