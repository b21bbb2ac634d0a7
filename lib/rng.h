/* rng.h: a small seeded random generator (xoshiro256**, seeded by splitmix64).
 * Every random draw of the library goes through one of these, created from
 * the context's seed, so runs are reproducible. */
#ifndef CPK_RNG_H
#define CPK_RNG_H

#include <stdint.h>

typedef struct cpk__rng {
  uint64_t s[4];
} cpk__rng;

void cpk__rng_seed(cpk__rng *r, uint64_t seed);
uint64_t cpk__rng_next(cpk__rng *r);
/* Uniform in [0, 1) with 53 random bits. */
double cpk__rng_uniform(cpk__rng *r);
/* Advance by `count` draws of cpk__rng_next (cpk__rng_uniform takes one,
 * cpk__rng_normal two): how a shard of a batch skips the draws of the
 * samples before and after it, so that each sample's draws do not depend
 * on how the batch is split. */
void cpk__rng_skip(cpk__rng *r, int64_t count);
/* Standard normal (Box-Muller; one draw per call). */
double cpk__rng_normal(cpk__rng *r);

#endif
