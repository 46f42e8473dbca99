/* tls_resume.c: session records, ticket keys, the server's ticket sealing
 * and the client's session cache. See tls_resume.h. */
#include "agent/tls_resume.h"

#include <netinet/in.h>
#include <openssl/aead.h>
#include <openssl/crypto.h>
#include <openssl/mem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/log.h"
#include "agent/text.h"
#include "agent/x509_util.h"

enum {
  RECORD_VERSION = 1,
  /* version(1) auth_time(8) expires(8) peer_not_after(8) own_fp(32)
   * trust_fp(32) serial_len(1) id_len(2), then serial and ID bytes. */
  RECORD_FIXED = 1 + 8 + 8 + 8 + 32 + 32 + 1 + 2,
  CLIENT_SLOTS = 256, /* destinations remembered, process-wide */
  /* Single-use sessions kept per destination: each connection brings two
   * tickets and takes one, so this bounds the concurrent connections to one
   * destination that can resume at once. */
  SESSIONS_PER_SLOT = 32,
};

/* ---- counters ---- */

enum {
  REFUSED_UNREADABLE, /* unknown/retired key, forged, undecodable */
  REFUSED_EXPIRED,
  REFUSED_OWN_SVID_ROTATED,
  REFUSED_TRUST_CHANGED,
  REFUSED_NOT_TLS13,
  NUM_REFUSALS
};
static const char *const kRefusalNames[NUM_REFUSALS] = {"unreadable", "expired", "own_svid_rotated",
                                                        "trust_changed", "not_tls13"};
static atomic_ullong g_tickets_issued;
static atomic_ullong g_tickets_refused[NUM_REFUSALS];
static atomic_ullong g_client_offered;
static atomic_ullong g_resumed_without_record;

/* ---- ticket keys ---- */

typedef struct {
  uint8_t name[MT_TICKET_KEY_NAME_LEN];
  EVP_AEAD_CTX aead;
  time_t created;
  int valid;
} ticket_key;

struct mt_ticket_keys {
  pthread_mutex_t lock;
  time_t period;
  ticket_key current, previous;
};

static void key_clear(ticket_key *k) {
  if (k->valid) EVP_AEAD_CTX_cleanup(&k->aead); /* BoringSSL cleanses the key schedule */
  OPENSSL_cleanse(k, sizeof(*k));
}

static int key_make(ticket_key *k, time_t now) {
  uint8_t secret[MT_TICKET_KEY_LEN];
  memset(k, 0, sizeof(*k));
  if (!RAND_bytes(k->name, sizeof(k->name)) || !RAND_bytes(secret, sizeof(secret))) return 0;
  k->valid = EVP_AEAD_CTX_init(&k->aead, EVP_aead_aes_256_gcm(), secret, sizeof(secret),
                               MT_TICKET_TAG_LEN, NULL);
  OPENSSL_cleanse(secret, sizeof(secret));
  k->created = now;
  return k->valid;
}

mt_ticket_keys *mt_ticket_keys_new(time_t period_s, time_t now) {
  mt_ticket_keys *keys = calloc(1, sizeof(*keys));
  if (keys == NULL) return NULL;
  pthread_mutex_init(&keys->lock, NULL);
  keys->period = period_s > 0 ? period_s : MT_TICKET_KEY_PERIOD_S;
  if (!key_make(&keys->current, now)) {
    mt_ticket_keys_free(keys);
    return NULL;
  }
  return keys;
}

void mt_ticket_keys_free(mt_ticket_keys *keys) {
  if (keys == NULL) return;
  key_clear(&keys->current);
  key_clear(&keys->previous);
  pthread_mutex_destroy(&keys->lock);
  free(keys);
}

/* Under the lock. The previous key is kept only while its successor is
 * less than one period old; after a long quiet spell both are replaced. */
static void rotate(mt_ticket_keys *keys, time_t now) {
  if (now - keys->current.created < keys->period && now >= keys->current.created) return;
  ticket_key fresh;
  if (!key_make(&fresh, now)) return; /* keep sealing with the old key rather than none */
  key_clear(&keys->previous);
  if (now - keys->current.created < 2 * keys->period && now >= keys->current.created)
    keys->previous = keys->current;
  else
    key_clear(&keys->current);
  keys->current = fresh;
}

int mt_ticket_keys_seal(mt_ticket_keys *keys, time_t now, uint8_t *out, size_t *out_len,
                        size_t out_cap, const uint8_t *in, size_t in_len) {
  if (out_cap < in_len + MT_TICKET_OVERHEAD) return 0;
  pthread_mutex_lock(&keys->lock);
  rotate(keys, now);
  const ticket_key *k = &keys->current;
  uint8_t *nonce = out + MT_TICKET_KEY_NAME_LEN;
  size_t sealed = 0;
  int ok = k->valid && RAND_bytes(nonce, MT_TICKET_NONCE_LEN);
  if (ok) {
    memcpy(out, k->name, MT_TICKET_KEY_NAME_LEN);
    /* |in| may equal |out| (BoringSSL's contract): move it past the header. */
    memmove(out + MT_TICKET_KEY_NAME_LEN + MT_TICKET_NONCE_LEN, in, in_len);
    uint8_t *body = out + MT_TICKET_KEY_NAME_LEN + MT_TICKET_NONCE_LEN;
    ok = EVP_AEAD_CTX_seal(&k->aead, body, &sealed,
                           out_cap - MT_TICKET_KEY_NAME_LEN - MT_TICKET_NONCE_LEN, nonce,
                           MT_TICKET_NONCE_LEN, body, in_len, out, MT_TICKET_KEY_NAME_LEN);
  }
  pthread_mutex_unlock(&keys->lock);
  if (!ok) return 0;
  *out_len = MT_TICKET_KEY_NAME_LEN + MT_TICKET_NONCE_LEN + sealed;
  return 1;
}

int mt_ticket_keys_open(mt_ticket_keys *keys, time_t now, uint8_t *out, size_t *out_len,
                        size_t out_cap, const uint8_t *in, size_t in_len) {
  if (in_len < MT_TICKET_OVERHEAD) return 0;
  pthread_mutex_lock(&keys->lock);
  rotate(keys, now);
  const ticket_key *k = NULL;
  if (keys->current.valid && CRYPTO_memcmp(in, keys->current.name, MT_TICKET_KEY_NAME_LEN) == 0)
    k = &keys->current;
  else if (keys->previous.valid &&
           CRYPTO_memcmp(in, keys->previous.name, MT_TICKET_KEY_NAME_LEN) == 0)
    k = &keys->previous;
  int ok = k != NULL &&
           EVP_AEAD_CTX_open(&k->aead, out, out_len, out_cap, in + MT_TICKET_KEY_NAME_LEN,
                             MT_TICKET_NONCE_LEN, in + MT_TICKET_KEY_NAME_LEN + MT_TICKET_NONCE_LEN,
                             in_len - MT_TICKET_KEY_NAME_LEN - MT_TICKET_NONCE_LEN, in,
                             MT_TICKET_KEY_NAME_LEN);
  pthread_mutex_unlock(&keys->lock);
  return ok;
}

/* ---- session records ---- */

static void put_u64(uint8_t *p, uint64_t v) {
  for (int i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}
static uint64_t get_u64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}

size_t mt_session_record_size(const mt_session_record *rec) {
  return RECORD_FIXED + strlen(rec->serial) + strlen(rec->spiffe_id);
}

size_t mt_session_record_encode(const mt_session_record *rec, uint8_t *out, size_t cap) {
  size_t serial_len = strlen(rec->serial), id_len = strlen(rec->spiffe_id);
  size_t need = RECORD_FIXED + serial_len + id_len;
  if (need > cap || serial_len > MT_SERIAL_HEX_MAX || id_len > MT_SPIFFE_ID_MAX_LEN) return 0;
  uint8_t *p = out;
  *p++ = RECORD_VERSION;
  put_u64(p, (uint64_t)rec->auth_time), p += 8;
  put_u64(p, (uint64_t)rec->expires), p += 8;
  put_u64(p, (uint64_t)rec->peer_not_after), p += 8;
  memcpy(p, rec->own_fp, 32), p += 32;
  memcpy(p, rec->trust_fp, 32), p += 32;
  *p++ = (uint8_t)serial_len;
  *p++ = (uint8_t)(id_len >> 8);
  *p++ = (uint8_t)id_len;
  memcpy(p, rec->serial, serial_len), p += serial_len;
  memcpy(p, rec->spiffe_id, id_len);
  return need;
}

int mt_session_record_decode(mt_session_record *rec, const uint8_t *in, size_t len,
                             size_t *consumed) {
  if (len < RECORD_FIXED || in[0] != RECORD_VERSION) return 0;
  const uint8_t *p = in + 1;
  rec->auth_time = (int64_t)get_u64(p), p += 8;
  rec->expires = (int64_t)get_u64(p), p += 8;
  rec->peer_not_after = (int64_t)get_u64(p), p += 8;
  memcpy(rec->own_fp, p, 32), p += 32;
  memcpy(rec->trust_fp, p, 32), p += 32;
  size_t serial_len = *p++;
  size_t id_len = ((size_t)p[0] << 8) | p[1];
  p += 2;
  if (serial_len > MT_SERIAL_HEX_MAX || id_len == 0 || id_len > MT_SPIFFE_ID_MAX_LEN ||
      len - RECORD_FIXED < serial_len + id_len)
    return 0;
  memcpy(rec->serial, p, serial_len);
  rec->serial[serial_len] = '\0';
  p += serial_len;
  memcpy(rec->spiffe_id, p, id_len);
  rec->spiffe_id[id_len] = '\0';
  /* A NUL inside the ID would let a shorter ID be read: refuse it. */
  if (memchr(rec->spiffe_id, '\0', id_len) != NULL || memchr(rec->serial, '\0', serial_len))
    return 0;
  if (consumed) *consumed = RECORD_FIXED + serial_len + id_len;
  return 1;
}

static int refusal_code(const mt_session_record *rec, time_t now, const uint8_t own_fp[32],
                        const uint8_t trust_fp[32]) {
  if (rec->expires <= (int64_t)now || rec->peer_not_after <= (int64_t)now ||
      rec->auth_time > (int64_t)now)
    return REFUSED_EXPIRED;
  if (CRYPTO_memcmp(rec->own_fp, own_fp, 32) != 0) return REFUSED_OWN_SVID_ROTATED;
  if (CRYPTO_memcmp(rec->trust_fp, trust_fp, 32) != 0) return REFUSED_TRUST_CHANGED;
  return -1;
}

const char *mt_session_record_refusal(const mt_session_record *rec, time_t now,
                                      const uint8_t own_fp[32], const uint8_t trust_fp[32]) {
  int code = refusal_code(rec, now, own_fp, trust_fp);
  return code < 0 ? NULL : kRefusalNames[code];
}

int64_t mt_tls_chain_not_after(const STACK_OF(X509) * chain, time_t now) {
  int64_t earliest = 0;
  for (size_t i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
    time_t t = mt_x509_time(X509_get0_notAfter(sk_X509_value(chain, i)), now);
    if (t == 0) return 0; /* unreadable: no session can rely on it */
    if (earliest == 0 || (int64_t)t < earliest) earliest = (int64_t)t;
  }
  return earliest;
}

/* ---- per-context state ---- */

/* What a context's sessions are bound to; owned by the SSL_CTX (ex_data). */
typedef struct {
  int is_server;
  int lifetime_s;
  int64_t own_not_after; /* earliest notAfter of what we present */
  uint8_t own_fp[32];
  uint8_t trust_fp[32];
  uint8_t own_id_hash[32]; /* client cache key part: who we are */
} ctx_state;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_ctx_index = -1;     /* SSL_CTX -> ctx_state */
static int g_pending_index = -1; /* SSL -> packed_record (server: from the ticket) */
static int g_client_index = -1;  /* SSL -> client_state */
static int g_record_index = -1;  /* SSL_SESSION -> packed_record (client) */
static mt_ticket_keys *g_keys;

/* A session record as ex_data: encoded, so it costs its own size (about
 * 150 bytes), not the 2 KB that a maximal SPIFFE ID would need. */
typedef struct {
  size_t len;
  uint8_t data[];
} packed_record;

static packed_record *pack(const mt_session_record *rec) {
  size_t len = mt_session_record_size(rec);
  packed_record *p = malloc(sizeof(*p) + len);
  if (p == NULL) return NULL;
  p->len = mt_session_record_encode(rec, p->data, len);
  if (p->len == 0) {
    free(p);
    return NULL;
  }
  return p;
}

static int unpack(const packed_record *p, mt_session_record *out) {
  size_t used = 0;
  return p != NULL && mt_session_record_decode(out, p->data, p->len, &used) && used == p->len;
}

typedef struct {
  uint8_t key[32];        /* the cache slot this connection's sessions go to */
  SSL_SESSION *offered;   /* reference until the handshake ends, or NULL */
  packed_record *carried; /* after a resumption: what renewed sessions inherit */
} client_state;

static void free_plain(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl,
                       void *argp) {
  (void)parent, (void)ad, (void)index, (void)argl, (void)argp;
  free(ptr);
}

static void free_client_state(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int index, long argl,
                              void *argp) {
  (void)parent, (void)ad, (void)index, (void)argl, (void)argp;
  client_state *cs = ptr;
  if (cs == NULL) return;
  SSL_SESSION_free(cs->offered);
  free(cs->carried);
  free(cs);
}

static void init_once(void) {
  g_ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_plain);
  g_pending_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, free_plain);
  g_client_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, free_client_state);
  g_record_index = SSL_SESSION_get_ex_new_index(0, NULL, NULL, NULL, free_plain);
  g_keys = mt_ticket_keys_new(MT_TICKET_KEY_PERIOD_S, time(NULL));
}

static const ctx_state *state_of(const SSL *ssl) {
  return SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), g_ctx_index);
}

static void cert_fp(X509 *cert, uint8_t out[32]) {
  uint8_t *der = NULL;
  int len = i2d_X509(cert, &der);
  if (len > 0)
    SHA256(der, (size_t)len, out);
  else
    RAND_bytes(out, 32); /* unreadable: a fingerprint nothing will ever match */
  OPENSSL_free(der);
}

/* The record of a peer that a full handshake verified just now, or 0. */
static int fresh_record(const ctx_state *st, const mt_tls_peer *peer, time_t now,
                        mt_session_record *rec) {
  memset(rec, 0, sizeof(*rec));
  if (peer == NULL || peer->failure != MT_REASON_OK || peer->spiffe_id[0] == '\0' ||
      peer->not_after <= (int64_t)now)
    return 0;
  rec->auth_time = now;
  rec->peer_not_after = peer->not_after;
  int64_t expires = (int64_t)now + st->lifetime_s;
  if (peer->not_after < expires) expires = peer->not_after;
  if (st->own_not_after < expires) expires = st->own_not_after;
  rec->expires = expires;
  memcpy(rec->own_fp, st->own_fp, 32);
  memcpy(rec->trust_fp, st->trust_fp, 32);
  snprintf(rec->serial, sizeof(rec->serial), "%s", peer->serial);
  snprintf(rec->spiffe_id, sizeof(rec->spiffe_id), "%s", peer->spiffe_id);
  return 1;
}

/* ---- server: tickets carry the record ---- */

/* The record a ticket issued on |ssl| now carries, or 0 when the peer was
 * not verified (the ticket is then made unusable rather than refused, which
 * would fail the handshake). */
static int issue_record(SSL *ssl, const ctx_state *st, mt_session_record *rec) {
  memset(rec, 0, sizeof(*rec));
  if (SSL_session_reused(ssl)) /* a renewed ticket never outlives the first one */
    return unpack(SSL_get_ex_data(ssl, g_pending_index), rec);
  return fresh_record(st, mt_tls_peer_of(ssl), time(NULL), rec);
}

/* The sealed plaintext: u16 record length || record || BoringSSL's session. */
static size_t ticket_overhead(SSL *ssl) {
  (void)ssl;
  return MT_TICKET_OVERHEAD + 2 + RECORD_FIXED + MT_SERIAL_HEX_MAX + MT_SPIFFE_ID_MAX_LEN;
}

static int ticket_seal(SSL *ssl, uint8_t *out, size_t *out_len, size_t max_out_len,
                       const uint8_t *in, size_t in_len) {
  const ctx_state *st = state_of(ssl);
  mt_session_record *rec = malloc(sizeof(*rec));
  size_t plain_cap = 2 + RECORD_FIXED + MT_SERIAL_HEX_MAX + MT_SPIFFE_ID_MAX_LEN + in_len;
  uint8_t *plain = malloc(plain_cap);
  int ok = rec != NULL && plain != NULL && st != NULL;
  size_t n = 0;
  if (ok) {
    /* An unverified peer gets an empty record: a ticket no one can use. */
    size_t rec_len = issue_record(ssl, st, rec)
                         ? mt_session_record_encode(rec, plain + 2, plain_cap - 2 - in_len)
                         : 0;
    plain[0] = (uint8_t)(rec_len >> 8);
    plain[1] = (uint8_t)rec_len;
    memcpy(plain + 2 + rec_len, in, in_len);
    n = 2 + rec_len + in_len;
    ok = mt_ticket_keys_seal(g_keys, time(NULL), out, out_len, max_out_len, plain, n);
  }
  if (plain != NULL) OPENSSL_cleanse(plain, plain_cap); /* holds the resumption secret */
  free(plain);
  free(rec);
  if (ok) atomic_fetch_add(&g_tickets_issued, 1);
  return ok;
}

static enum ssl_ticket_aead_result_t refuse(int code) {
  atomic_fetch_add(&g_tickets_refused[code], 1);
  return ssl_ticket_aead_ignore_ticket;
}

static enum ssl_ticket_aead_result_t ticket_open(SSL *ssl, uint8_t *out, size_t *out_len,
                                                 size_t max_out_len, const uint8_t *in,
                                                 size_t in_len) {
  const ctx_state *st = state_of(ssl);
  time_t now = time(NULL);
  if (st == NULL) return refuse(REFUSED_UNREADABLE);
  if (SSL_version(ssl) != TLS1_3_VERSION) return refuse(REFUSED_NOT_TLS13);
  uint8_t *plain = malloc(in_len);
  size_t plain_len = 0;
  if (plain == NULL) return ssl_ticket_aead_error;
  mt_session_record *rec = calloc(1, sizeof(*rec));
  enum ssl_ticket_aead_result_t result = ssl_ticket_aead_success;
  int code = -1;
  size_t rec_len = 0, used = 0;
  if (rec == NULL) {
    result = ssl_ticket_aead_error;
  } else if (!mt_ticket_keys_open(g_keys, now, plain, &plain_len, in_len, in, in_len) ||
             plain_len < 2 || (rec_len = ((size_t)plain[0] << 8) | plain[1]) == 0 ||
             plain_len - 2 < rec_len || !mt_session_record_decode(rec, plain + 2, rec_len, &used) ||
             used != rec_len) {
    code = REFUSED_UNREADABLE;
  } else {
    code = refusal_code(rec, now, st->own_fp, st->trust_fp);
  }
  if (result == ssl_ticket_aead_success && code < 0) {
    size_t session_len = plain_len - 2 - rec_len;
    if (session_len > max_out_len) {
      code = REFUSED_UNREADABLE;
    } else {
      memcpy(out, plain + 2 + rec_len, session_len);
      *out_len = session_len;
      /* Held until the handshake ends: used only if BoringSSL resumes it. */
      packed_record *packed = pack(rec);
      packed_record *before = SSL_get_ex_data(ssl, g_pending_index);
      if (packed == NULL || !SSL_set_ex_data(ssl, g_pending_index, packed)) {
        free(packed);
        result = ssl_ticket_aead_error;
      } else {
        free(before);
      }
    }
  }
  OPENSSL_cleanse(plain, in_len);
  free(plain);
  free(rec);
  if (result != ssl_ticket_aead_success) return result;
  return code >= 0 ? refuse(code) : ssl_ticket_aead_success;
}

static const SSL_TICKET_AEAD_METHOD kTicketMethod = {
    .max_overhead = ticket_overhead,
    .seal = ticket_seal,
    .open = ticket_open,
};

/* ---- client: a bounded, single-use session cache ---- */

typedef struct {
  uint8_t key[32];
  int used;
  SSL_SESSION *sessions[SESSIONS_PER_SLOT];
  size_t count;
} client_slot;

static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static client_slot g_cache[CLIENT_SLOTS];

static client_slot *slot_for(const uint8_t key[32]) {
  uint32_t h =
      ((uint32_t)key[0] << 24) | ((uint32_t)key[1] << 16) | ((uint32_t)key[2] << 8) | key[3];
  return &g_cache[h % CLIENT_SLOTS];
}

static void slot_clear(client_slot *slot) {
  for (size_t i = 0; i < slot->count; i++) SSL_SESSION_free(slot->sessions[i]);
  memset(slot, 0, sizeof(*slot));
}

void mt_tls_resume_flush_client_cache(void) {
  pthread_mutex_lock(&g_cache_lock);
  for (size_t i = 0; i < CLIENT_SLOTS; i++) slot_clear(&g_cache[i]);
  pthread_mutex_unlock(&g_cache_lock);
}

static int session_usable(SSL_SESSION *s, const ctx_state *st, time_t now) {
  mt_session_record rec;
  if (!unpack(SSL_SESSION_get_ex_data(s, g_record_index), &rec) ||
      refusal_code(&rec, now, st->own_fp, st->trust_fp) >= 0)
    return 0;
  return (int64_t)(SSL_SESSION_get_time(s) + SSL_SESSION_get_timeout(s)) > (int64_t)now;
}

static void client_key(const struct sockaddr *dest, const char *const *expected, size_t count,
                       const ctx_state *st, uint8_t out[32]) {
  SHA256_CTX sha;
  SHA256_Init(&sha);
  uint8_t family = (uint8_t)dest->sa_family;
  SHA256_Update(&sha, &family, 1);
  if (dest->sa_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)dest;
    SHA256_Update(&sha, &a->sin6_addr, sizeof(a->sin6_addr));
    SHA256_Update(&sha, &a->sin6_port, sizeof(a->sin6_port));
  } else {
    const struct sockaddr_in *a = (const struct sockaddr_in *)dest;
    SHA256_Update(&sha, &a->sin_addr, sizeof(a->sin_addr));
    SHA256_Update(&sha, &a->sin_port, sizeof(a->sin_port));
  }
  for (size_t i = 0; i < count; i++) SHA256_Update(&sha, expected[i], strlen(expected[i]) + 1);
  SHA256_Update(&sha, st->own_id_hash, 32);
  SHA256_Final(out, &sha);
}

void mt_tls_resume_offer(SSL *ssl, const struct sockaddr *dest, const char *const *expected,
                         size_t count, const mt_identity *identity) {
  (void)identity;
  const ctx_state *st = state_of(ssl);
  if (st == NULL || st->is_server) return; /* resumption off for this context */
  client_state *cs = calloc(1, sizeof(*cs));
  if (cs == NULL) return;
  client_key(dest, expected, count, st, cs->key);
  if (!SSL_set_ex_data(ssl, g_client_index, cs)) {
    free(cs);
    return;
  }
  time_t now = time(NULL);
  pthread_mutex_lock(&g_cache_lock);
  client_slot *slot = slot_for(cs->key);
  if (slot->used && memcmp(slot->key, cs->key, 32) == 0) {
    /* Newest first; stale ones (expired, older SVID or bundle) are dropped. */
    while (slot->count > 0 && cs->offered == NULL) {
      SSL_SESSION *s = slot->sessions[--slot->count];
      slot->sessions[slot->count] = NULL;
      if (session_usable(s, st, now))
        cs->offered = s;
      else
        SSL_SESSION_free(s);
    }
  }
  pthread_mutex_unlock(&g_cache_lock);
  if (cs->offered != NULL && SSL_set_session(ssl, cs->offered))
    atomic_fetch_add(&g_client_offered, 1);
}

/* A NewSessionTicket arrived on an established client connection. */
static int on_new_session(SSL *ssl, SSL_SESSION *session) {
  const ctx_state *st = state_of(ssl);
  client_state *cs = SSL_get_ex_data(ssl, g_client_index);
  const mt_tls_peer *peer = mt_tls_peer_of(ssl);
  if (st == NULL || cs == NULL || peer == NULL ||
      SSL_SESSION_get_protocol_version(session) != TLS1_3_VERSION)
    return 0; /* not kept: BoringSSL frees it */
  mt_session_record rec;
  packed_record *packed = NULL;
  if (SSL_session_reused(ssl)) {
    /* A renewal inherits the first session's record, expiry included. */
    if (cs->carried != NULL && unpack(cs->carried, &rec)) packed = pack(&rec);
  } else if (fresh_record(st, peer, time(NULL), &rec)) {
    packed = pack(&rec);
  }
  if (packed == NULL) return 0;
  if (!SSL_SESSION_set_ex_data(session, g_record_index, packed)) {
    free(packed);
    return 0;
  }
  pthread_mutex_lock(&g_cache_lock);
  client_slot *slot = slot_for(cs->key);
  if (!slot->used || memcmp(slot->key, cs->key, 32) != 0) {
    slot_clear(slot); /* another destination had it: the newer one wins */
    memcpy(slot->key, cs->key, 32);
    slot->used = 1;
  }
  if (slot->count == SESSIONS_PER_SLOT) { /* drop the oldest */
    SSL_SESSION_free(slot->sessions[0]);
    memmove(slot->sessions, slot->sessions + 1, (SESSIONS_PER_SLOT - 1) * sizeof(SSL_SESSION *));
    slot->count--;
  }
  slot->sessions[slot->count++] = session; /* takes BoringSSL's reference */
  pthread_mutex_unlock(&g_cache_lock);
  return 1;
}

/* ---- hooks ---- */

int mt_tls_resume_configure(SSL_CTX *ctx, int is_server, const mt_config *config, X509 *leaf,
                            const STACK_OF(X509) * chain, const mt_identity *identity) {
  pthread_once(&g_once, init_once);
  if (!config->tls_session_resumption) {
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return 1;
  }
  if (g_ctx_index < 0 || g_pending_index < 0 || g_client_index < 0 || g_record_index < 0 ||
      g_keys == NULL)
    return 0;
  ctx_state *st = calloc(1, sizeof(*st));
  if (st == NULL) return 0;
  time_t now = time(NULL);
  st->is_server = is_server;
  st->lifetime_s = config->tls_session_lifetime_s;
  st->own_not_after = mt_x509_time(X509_get0_notAfter(leaf), now);
  int64_t chain_na = mt_tls_chain_not_after(chain, now);
  if (chain != NULL && sk_X509_num(chain) > 0 && (chain_na == 0 || chain_na < st->own_not_after))
    st->own_not_after = chain_na;
  cert_fp(leaf, st->own_fp);
  memcpy(st->trust_fp, mt_trust_fingerprint(mt_identity_trust(identity)), 32);
  const char *own_id = mt_identity_spiffe_id(identity);
  SHA256((const uint8_t *)own_id, strlen(own_id), st->own_id_hash);
  if (!SSL_CTX_set_ex_data(ctx, g_ctx_index, st)) {
    free(st);
    return 0;
  }
  SSL_CTX_clear_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_session_psk_dhe_timeout(ctx, (uint32_t)config->tls_session_lifetime_s);
  if (is_server) {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); /* tickets only: no server state */
    SSL_CTX_set_ticket_aead_method(ctx, &kTicketMethod);
  } else {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(ctx, on_new_session);
  }
  return 1;
}

int mt_tls_resume_established(SSL *ssl, mt_tls_peer *peer) {
  peer->resumed = 0;
  const ctx_state *st = state_of(ssl);
  packed_record *packed = NULL;
  client_state *cs = NULL;
  /* Take what vouches for a resumed peer; it is not needed past this point
   * (a server's renewed tickets are sealed inside the handshake). */
  if (SSL_is_server(ssl)) {
    packed = SSL_get_ex_data(ssl, g_pending_index);
    if (packed != NULL) SSL_set_ex_data(ssl, g_pending_index, NULL);
  } else if ((cs = SSL_get_ex_data(ssl, g_client_index)) != NULL && cs->offered != NULL) {
    packed_record *offered = SSL_SESSION_get_ex_data(cs->offered, g_record_index);
    if (offered != NULL && SSL_session_reused(ssl)) {
      packed = malloc(sizeof(*packed) + offered->len);
      if (packed != NULL) memcpy(packed, offered, sizeof(*packed) + offered->len);
    }
    SSL_SESSION_free(cs->offered);
    cs->offered = NULL;
  }
  if (!SSL_session_reused(ssl)) {
    free(packed);
    return 1;
  }
  mt_session_record rec;
  if (st == NULL || !unpack(packed, &rec) ||
      refusal_code(&rec, time(NULL), st->own_fp, st->trust_fp) >= 0) {
    free(packed);
    atomic_fetch_add(&g_resumed_without_record, 1);
    peer->failure = MT_REASON_HANDSHAKE_FAILED;
    snprintf(peer->detail, sizeof(peer->detail), "resumed session has no valid session record");
    return 0;
  }
  if (cs != NULL) { /* the client's renewed sessions inherit it */
    free(cs->carried);
    cs->carried = packed;
  } else {
    free(packed);
  }
  snprintf(peer->spiffe_id, sizeof(peer->spiffe_id), "%s", rec.spiffe_id);
  snprintf(peer->serial, sizeof(peer->serial), "%s", rec.serial);
  peer->not_after = rec.peer_not_after;
  peer->failure = MT_REASON_OK;
  peer->resumed = 1;
  return 1;
}

void mt_tls_resume_render_metrics(mt_text *out) {
  mt_text_printf(out,
                 "# HELP mtlsd_tls_tickets_issued_total Session tickets sealed by the inbound "
                 "side.\n# TYPE mtlsd_tls_tickets_issued_total counter\n"
                 "mtlsd_tls_tickets_issued_total %llu\n",
                 (unsigned long long)atomic_load(&g_tickets_issued));
  mt_text_printf(out,
                 "# HELP mtlsd_tls_tickets_refused_total Session tickets ignored (a full "
                 "handshake followed), by reason.\n"
                 "# TYPE mtlsd_tls_tickets_refused_total counter\n");
  for (int i = 0; i < NUM_REFUSALS; i++)
    mt_text_printf(out, "mtlsd_tls_tickets_refused_total{reason=\"%s\"} %llu\n", kRefusalNames[i],
                   (unsigned long long)atomic_load(&g_tickets_refused[i]));
  mt_text_printf(out,
                 "# HELP mtlsd_tls_sessions_offered_total Cached sessions offered by the "
                 "outbound side.\n# TYPE mtlsd_tls_sessions_offered_total counter\n"
                 "mtlsd_tls_sessions_offered_total %llu\n",
                 (unsigned long long)atomic_load(&g_client_offered));
  mt_text_printf(out,
                 "# HELP mtlsd_tls_resumed_without_record_total Resumed handshakes refused "
                 "because no valid session record vouched for the peer.\n"
                 "# TYPE mtlsd_tls_resumed_without_record_total counter\n"
                 "mtlsd_tls_resumed_without_record_total %llu\n",
                 (unsigned long long)atomic_load(&g_resumed_without_record));
}
