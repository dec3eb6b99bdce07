// pool.h: the shared expert pool's sharding. Expert e of every MoE layer lives on party e % P
// (round-robin: with m % P != 0 the first m % P parties hold one expert more). Inside a party of R ranks,
// the party's experts (its i-th is p + i P) are dealt round-robin to its ranks: the i-th to its rank i % R.
// A rank is named by its index among all the parties' ranks, s = party R + (its rank in the party); with
// R = 1 rank s is party s. Senders pack their rows for the experts grouped by owner rank, rank 0 first, so
// that each owner's rows form one block.
// Used by the exchange, the optimizer groups, checkpoints and `pcmoe info`: no MPI here.
#ifndef PCMOE_POOL_H
#define PCMOE_POOL_H

// The party that owns expert e when P parties share the pool.
static inline int pool_owner(int e, int P) { return e % P; }

// The rank that holds expert e when P parties of R ranks share the pool.
static inline int pool_owner_rank(int e, int P, int R) { return (e % P) * R + (e / P) % R; }

// The j-th expert (j = 0, 1, ...) rank s holds; m or more: none.
static inline int pool_rank_expert(int s, int j, int P, int R) { return s / R + (s % R + j * R) * P; }

// order (m): the sender packing order, experts grouped by owner rank (R = 1: 0, P, 2P, ..., 1, P + 1, ...).
static inline void pool_packing_order(int *order, int m, int P, int R) {
    int i = 0;
    for (int s = 0; s < P * R; s++)
        for (int j = 0, e; (e = pool_rank_expert(s, j, P, R)) < m; j++) order[i++] = e;
}

#endif
