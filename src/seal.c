// seal.c: parties.keys, the session keys of each pair of parties, and sealing and opening one message.
#include "seal.h"

#include <errno.h>    // errno
#include <fcntl.h>    // open
#include <sodium.h>   // crypto_kx_*, crypto_aead_xchacha20poly1305_ietf_*, crypto_generichash, randombytes_buf
#include <stdio.h>    // FILE, fopen
#include <string.h>   // strchr, strcmp
#include <sys/stat.h> // stat
#include <unistd.h>   // write, close

#include "util.h"     // error_set

// ------------------------------------------------------------------------------------------ the keys file

// out (SEAL_KEY_BYTES) from 64 hex digits. Returns 0, or -1.
static int parse_key(const char *hex, unsigned char *out) {
    size_t n = 0;
    const char *end = NULL;
    if (strlen(hex) != 2 * SEAL_KEY_BYTES) return -1;
    if (sodium_hex2bin(out, SEAL_KEY_BYTES, hex, strlen(hex), NULL, &n, &end) != 0 || n != SEAL_KEY_BYTES) return -1;
    return 0;
}

// One line "name = value" of a keys file into s (have: which keys were set). Returns 0, or 2 with err set.
static int key_line(Seal *s, char *line, int *have, const char *file, int ln, char *err, size_t len) {
    char *eq = strchr(line, '=');
    if (!eq) return error_set(err, len, "parties.keys = %s:%d: not a line \"name = value\"", file, ln);
    *eq = '\0';
    char *name = str_trim(line), *value = str_trim(eq + 1);
    int q = -1, n = -1;
    unsigned char *dst = NULL;
    if (!strcmp(name, "secret")) dst = s->secret, q = CONFIG_MAX_PARTIES;
    else if (sscanf(name, "public.%d%n", &q, &n) == 1 && n == (int)strlen(name) && q >= 0 && q < CONFIG_MAX_PARTIES)
        dst = s->pub[q]; // (a party beyond parties.count: kept, unused; it may join later)
    else if (n >= 0 || !strncmp(name, "public", 6))
        return error_set(err, len, "parties.keys = %s:%d: %s: not a party (public.0 .. public.%d)", file, ln, name,
                         CONFIG_MAX_PARTIES - 1);
    else return error_set(err, len, "parties.keys = %s:%d: unknown name '%s' (secret, public.Q)", file, ln, name);
    if (parse_key(value, dst))
        return error_set(err, len, "parties.keys = %s:%d: %s: not a key (64 hex digits)", file, ln, name);
    have[q] = 1;
    return 0;
}

// s's secret key and the public keys of the file (already read into s) checked: every party's there, this
// party's (derived from the secret) equal to what the file says of it. Returns 0, or 2 with err set.
static int keys_complete(Seal *s, const int *have, const char *file, char *err, size_t len) {
    if (!have[CONFIG_MAX_PARTIES]) return error_set(err, len, "parties.keys = %s: no line \"secret = ...\"", file);
    unsigned char mine[SEAL_KEY_BYTES];
    crypto_scalarmult_base(mine, s->secret);
    if (have[s->party] && sodium_memcmp(mine, s->pub[s->party], SEAL_KEY_BYTES))
        return error_set(err, len, "parties.keys = %s: public.%d is not the public key of this file's secret key (is "
                         "this party %d's file?)", file, s->party, s->party);
    memcpy(s->pub[s->party], mine, SEAL_KEY_BYTES);
    for (int q = 0; q < s->n_parties; q++)
        if (!have[q] && q != s->party)
            return error_set(err, len, "parties.keys = %s: no public key for party %d (a line \"public.%d = ...\" from "
                             "its pcmoe keygen .pub file)", file, q, q);
    return 0;
}

int seal_load(Seal *s, const char *path, int party, int n_parties, char *err, size_t len) {
    memset(s, 0, sizeof *s);
    s->party = party;
    s->n_parties = n_parties;
    const char *at = strstr(path, "{party}");
    if (at) snprintf(s->path, sizeof s->path, "%.*s%d%s", (int)(at - path), path, party, at + 7);
    else snprintf(s->path, sizeof s->path, "%s", path);
    if (sodium_init() < 0) return error_set(err, len, "parties.keys: libsodium failed to initialise");
    struct stat st;
    if (stat(s->path, &st) != 0) return error_set(err, len, "parties.keys = %s: %s", s->path, strerror(errno));
    if (st.st_mode & 077)
        return error_set(err, len, "parties.keys = %s: others may read it (mode %03o): it holds a secret key; chmod "
                         "600 it", s->path, (unsigned)(st.st_mode & 0777));
    FILE *f = fopen(s->path, "r");
    if (!f) return error_set(err, len, "parties.keys = %s: %s", s->path, strerror(errno));
    int have[CONFIG_MAX_PARTIES + 1] = {0}, ln = 0, rc = 0; // (have[CONFIG_MAX_PARTIES]: the secret)
    char line[1024];
    while (!rc && fgets(line, sizeof line, f)) {
        ln++;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        if (*str_trim(line)) rc = key_line(s, line, have, s->path, ln, err, len);
    }
    fclose(f);
    if (!rc) rc = keys_complete(s, have, s->path, err, len);
    if (rc) seal_wipe(s);
    return rc;
}

// ------------------------------------------------------------------------------------------ the session

void seal_random_share(unsigned char *share) { randombytes_buf(share, SEAL_ID_BYTES); }

void seal_session_id(unsigned char *id, const unsigned char *shares, int n) {
    crypto_generichash(id, SEAL_ID_BYTES, shares, (unsigned long long)n * SEAL_ID_BYTES, NULL, 0);
}

void seal_start(Seal *s, const unsigned char *id) {
    static const char context[] = "pcmoe exchange 1";
    for (int q = 0; q < s->n_parties; q++) {
        if (q == s->party) continue;
        unsigned char rx[SEAL_KEY_BYTES], tx[SEAL_KEY_BYTES]; // the pair's keys (the lower party is kx's client)
        int rc = s->party < q ? crypto_kx_client_session_keys(rx, tx, s->pub[s->party], s->secret, s->pub[q])
                              : crypto_kx_server_session_keys(rx, tx, s->pub[s->party], s->secret, s->pub[q]);
        if (rc != 0) memset(rx, 0, sizeof rx), memset(tx, 0, sizeof tx); // (an invalid peer key: nothing opens)
        crypto_generichash_state st; // this session's: BLAKE2b keyed with the pair's key, of the id and context
        crypto_generichash_init(&st, tx, sizeof tx, SEAL_KEY_BYTES);
        crypto_generichash_update(&st, id, SEAL_ID_BYTES);
        crypto_generichash_update(&st, (const unsigned char *)context, sizeof context);
        crypto_generichash_final(&st, s->tx[q], SEAL_KEY_BYTES);
        crypto_generichash_init(&st, rx, sizeof rx, SEAL_KEY_BYTES);
        crypto_generichash_update(&st, id, SEAL_ID_BYTES);
        crypto_generichash_update(&st, (const unsigned char *)context, sizeof context);
        crypto_generichash_final(&st, s->rx[q], SEAL_KEY_BYTES);
        sodium_memzero(rx, sizeof rx);
        sodium_memzero(tx, sizeof tx);
    }
}

// ------------------------------------------------------------------------------------------ one message

// The 24-byte nonce of message m: kind, sender, receiver, step, layer (little-endian), then its sequence number.
static void nonce_of(const SealMsg *m, unsigned char *nonce) {
    memset(nonce, 0, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
    int v[6] = {m->from_party, m->from_local, m->to_party, m->to_local, m->step, m->layer};
    nonce[0] = (unsigned char)m->kind;
    for (int i = 0; i < 4; i++) {
        nonce[1 + 2 * i] = (unsigned char)v[i];
        nonce[2 + 2 * i] = (unsigned char)(v[i] >> 8);
    }
    for (int b = 0; b < 4; b++) nonce[9 + b] = (unsigned char)((unsigned)v[4] >> (8 * b));
    nonce[13] = (unsigned char)v[5];
    nonce[14] = (unsigned char)((unsigned)v[5] >> 8);
    for (int b = 0; b < 8; b++) nonce[16 + b] = (unsigned char)(m->seq >> (8 * b));
}

void seal_box(const Seal *s, const SealMsg *m, const void *pt, size_t n, unsigned char *ct) {
    unsigned char nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
    nonce_of(m, nonce);
    crypto_aead_xchacha20poly1305_ietf_encrypt(ct, NULL, pt, n, NULL, 0, NULL, nonce, s->tx[m->to_party]);
}

int seal_open(const Seal *s, const SealMsg *m, const unsigned char *ct, size_t n, void *pt) {
    unsigned char nonce[crypto_aead_xchacha20poly1305_ietf_NPUBBYTES];
    nonce_of(m, nonce);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(pt, NULL, NULL, ct, n + SEAL_TAG_BYTES, NULL, 0, nonce,
                                                   s->rx[m->from_party]) == 0)
        return 0;
    memset(pt, 0, n);
    return -1;
}

void seal_wipe(Seal *s) { sodium_memzero(s, sizeof *s); }

// ------------------------------------------------------------------------------------------ pcmoe keygen

// Writes text to a new file (never over one) of mode `mode`. Returns 0, or 2 after saying why.
static int write_new(const char *path, const char *text, int mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    size_t n = strlen(text);
    if (fd < 0 || write(fd, text, n) != (ssize_t)n || fsync(fd) != 0) {
        fprintf(stderr, "pcmoe: error: %s: %s%s\n", path, strerror(errno),
                errno == EEXIST ? " (pcmoe keygen never overwrites a key)" : "");
        if (fd >= 0) close(fd);
        return 2;
    }
    close(fd);
    return 0;
}

int seal_keygen(const char *out, int party) {
    if (sodium_init() < 0) { fprintf(stderr, "pcmoe: error: keygen: libsodium failed to initialise\n"); return 1; }
    unsigned char pk[crypto_kx_PUBLICKEYBYTES], sk[crypto_kx_SECRETKEYBYTES];
    crypto_kx_keypair(pk, sk);
    char pk_hex[2 * SEAL_KEY_BYTES + 1], sk_hex[2 * SEAL_KEY_BYTES + 1], text[1024], pub_path[CONFIG_PATH_LEN + 8];
    sodium_bin2hex(pk_hex, sizeof pk_hex, pk, sizeof pk);
    sodium_bin2hex(sk_hex, sizeof sk_hex, sk, sizeof sk);
    snprintf(pub_path, sizeof pub_path, "%s.pub", out);
    snprintf(text, sizeof text, "# party %d's X25519 key pair (pcmoe keygen). Keep this file secret; parties.keys "
             "names it.\n# Append every other party's .pub file to it: cat party1.key.pub party2.key.pub ... >> this "
             "file\nsecret = %s\npublic.%d = %s\n", party, sk_hex, party, pk_hex);
    sodium_memzero(sk, sizeof sk);
    int rc = write_new(out, text, 0600);
    sodium_memzero(text, sizeof text);
    sodium_memzero(sk_hex, sizeof sk_hex);
    if (rc) return rc;
    snprintf(text, sizeof text, "# party %d's public key (pcmoe keygen): give it to the other parties\n"
             "public.%d = %s\n", party, party, pk_hex);
    if (write_new(pub_path, text, 0644)) { unlink(out); return 2; }
    printf("pcmoe keygen: party %d: secret key in %s (mode 0600), public key in %s\n", party, out, pub_path);
    return 0;
}
