// rng.h: a small, seedable, serialisable random number generator (xoshiro256**, seeded by splitmix64).
// Every random choice in pcmoe (initialisation, batch sampling, row shuffles) draws from an Rng whose
// state is explicit, so a run is reproducible from its seed and the state can be checkpointed.
#ifndef PCMOE_RNG_H
#define PCMOE_RNG_H

#include <stdint.h> // uint64_t

typedef struct {
    uint64_t s[4];
} Rng;

void rng_seed(Rng *r, uint64_t seed);          // derive the 256-bit state from one 64-bit seed
uint64_t rng_next(Rng *r);                     // 64 random bits
uint64_t rng_below(Rng *r, uint64_t n);        // uniform in [0, n), n > 0, without modulo bias
float rng_uniform(Rng *r);                     // uniform in [0, 1)
float rng_normal(Rng *r);                      // standard normal (Box-Muller)

#endif
