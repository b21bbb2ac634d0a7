/* rng.c: xoshiro256** (Blackman and Vigna), seeded through splitmix64. */
#include <math.h>

#include "rng.h"

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void cpk__rng_seed(cpk__rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++)
    r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t cpk__rng_next(cpk__rng *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double cpk__rng_uniform(cpk__rng *r) {
  return (double)(cpk__rng_next(r) >> 11) * 0x1.0p-53;
}

double cpk__rng_normal(cpk__rng *r) {
  double u1 = 1.0 - cpk__rng_uniform(r); /* (0, 1]: log is finite */
  double u2 = cpk__rng_uniform(r);
  return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void cpk__rng_skip(cpk__rng *r, int64_t count) {
  for (int64_t i = 0; i < count; i++)
    (void)cpk__rng_next(r);
}
