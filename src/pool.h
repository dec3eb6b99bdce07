// pool.h: the shared expert pool's sharding. Expert e of every MoE layer lives on party e % P
// (round-robin: with m % P != 0 the first m % P parties hold one expert more). Senders pack their rows
// for the experts grouped by owner, owner 0 first, so that each owner's rows form one block.
// Used by the exchange, the optimizer groups, checkpoints and `pcmoe info`: no MPI here.
#ifndef PCMOE_POOL_H
#define PCMOE_POOL_H

// The party that owns expert e when P parties share the pool.
static inline int pool_owner(int e, int P) { return e % P; }

// order (m): the sender packing order, experts grouped by owner: 0, P, 2P, ..., 1, P + 1, ...
static inline void pool_packing_order(int *order, int m, int P) {
    int i = 0;
    for (int p = 0; p < P; p++)
        for (int e = p; e < m; e += P) order[i++] = e;
}

#endif
