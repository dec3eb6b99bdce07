// seal.h: the encrypted, authenticated exchange between parties (parties.keys; docs/privacy.md, "The network").
//
// Each party holds an X25519 key pair (pcmoe keygen) and every other party's public key, in its parties.keys
// file. Each ordered pair of parties (p -> q) gets a key of its own: libsodium's crypto_kx between the two
// (the lower party as its client), keyed again at every start with a session id that every rank helps draw,
// so no key and nonce are ever used twice, in this run or any other. Every payload that crosses a party line
// is sealed with XChaCha20-Poly1305 (16 bytes of tag) under a nonce of its message kind, sender and receiver
// (party, local rank), the training step and the MoE layer it belongs to, and the count of messages the
// sender has sealed for that receiver: a tampered byte, a replayed or reordered message does not open.
// This file is MPI-free: comm.c does the sending.
#ifndef PCMOE_SEAL_H
#define PCMOE_SEAL_H

#include <stddef.h> // size_t
#include <stdint.h> // uint64_t

#include "config.h" // CONFIG_MAX_PARTIES, CONFIG_PATH_LEN

#define SEAL_KEY_BYTES 32 // X25519 keys, session keys
#define SEAL_TAG_BYTES 16 // what sealing adds to each message
#define SEAL_ID_BYTES 32  // a rank's share of the session id, and the id

typedef struct Seal {
    int party, n_parties;                                   // this party, and how many there are
    char path[CONFIG_PATH_LEN];                             // the keys file it was read from
    unsigned char secret[SEAL_KEY_BYTES];                   // this party's X25519 secret key
    unsigned char pub[CONFIG_MAX_PARTIES][SEAL_KEY_BYTES];  // every party's public key
    unsigned char tx[CONFIG_MAX_PARTIES][SEAL_KEY_BYTES];   // session keys this party -> party q (q != party)
    unsigned char rx[CONFIG_MAX_PARTIES][SEAL_KEY_BYTES];   // session keys party q -> this party
} Seal;

// What a message is, for its nonce: its kind (MsgKind), sender and receiver, step and layer (-1: none), and
// its index among the messages the sender sealed for that receiver.
typedef struct {
    int kind;
    int from_party, from_local, to_party, to_local;
    int step, layer;
    uint64_t seq;
} SealMsg;

// Reads parties.keys for `party` of n_parties: `path` with "{party}" replaced by the party's index. Lines
// "secret = HEX" (this party's, 64 hex digits) and "public.Q = HEX" for every other party Q (its own is
// derived, and must match when given); # comments. The file must not be readable by others. Returns 0, or
// 2 with a one-line message naming the file, the line and what is wrong.
int seal_load(Seal *s, const char *path, int party, int n_parties, char *err, size_t len);
// This rank's share of the session id: SEAL_ID_BYTES random bytes.
void seal_random_share(unsigned char *share);
// id (SEAL_ID_BYTES): the session id, the BLAKE2b-256 of every rank's share (n of them, in world rank order).
void seal_session_id(unsigned char *id, const unsigned char *shares, int n);
// Derives the session keys of every pair of parties from their crypto_kx keys and the session id.
void seal_start(Seal *s, const unsigned char *id);
// ct (n + SEAL_TAG_BYTES bytes) = pt (n bytes) sealed for m's receiver.
void seal_box(const Seal *s, const SealMsg *m, const void *pt, size_t n, unsigned char *ct);
// pt (n bytes) = ct (n + SEAL_TAG_BYTES) opened from m's sender. Returns 0, or -1 when it does not open (a
// wrong key, a changed byte, another message's nonce: replayed, reordered or forged); pt is then zeroed.
int seal_open(const Seal *s, const SealMsg *m, const unsigned char *ct, size_t n, void *pt);
// Zeroes every key of s.
void seal_wipe(Seal *s);

// pcmoe keygen --out FILE [--party P]: writes a new key pair, FILE (the secret key, mode 0600) and FILE.pub
// (the public key, as the line other parties add to their keys files). Refuses to overwrite. Returns the exit
// status.
int seal_keygen(const char *out, int party);

#endif
