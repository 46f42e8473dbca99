/* libFuzzer target: mt_config_load on arbitrary file contents.
 *
 * The input is written to one fixed file per process,
 * ${TMPDIR:-/tmp}/mtlsd-config-fuzz-<pid>.yaml, removed at exit.
 *
 * Oracles, besides "never crashes" and "never leaks" (ASan/UBSan/LSan):
 *  - on failure the error is NUL-terminated and reads "<path>:<line>: <text>"
 *    with 1 <= line <= (number of line breaks in the input) + 1;
 *  - on success the snapshot satisfies what config.h and the validation
 *    promise: a valid own trust domain that has a bundle, at least one
 *    listener, valid destination IDs that the config's mesh view finds, a
 *    known TLS version, a policy that decides with a named rule. */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "agent/config.h"
#include "agent/mesh.h"
#include "agent/policy.h"
#include "agent/svid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define CHECK(cond)                                                                          \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      fprintf(stderr, "config_fuzz: invariant failed at %s:%d: %s\n", __FILE__, __LINE__, \
              #cond);                                                                        \
      abort();                                                                               \
    }                                                                                        \
  } while (0)

static char g_path[512];

static void remove_file(void) {
  if (g_path[0] != '\0') unlink(g_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  const char *dir = getenv("TMPDIR");
  if (dir == NULL || dir[0] == '\0') dir = "/tmp";
  snprintf(g_path, sizeof(g_path), "%s/mtlsd-config-fuzz-%ld.yaml", dir, (long)getpid());
  atexit(remove_file);
  return 0;
}

static void write_file(const uint8_t *data, size_t size) {
  int fd = open(g_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    fprintf(stderr, "config_fuzz: cannot create %s: %s\n", g_path, strerror(errno));
    abort();
  }
  size_t off = 0;
  while (off < size) {
    ssize_t n = write(fd, data + off, size - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      fprintf(stderr, "config_fuzz: cannot write %s: %s\n", g_path, strerror(errno));
      abort();
    }
    off += (size_t)n;
  }
  close(fd);
}

/* An upper bound on the line numbers libyaml can report. It breaks lines at
 * LF, CR, CRLF, NEL (U+0085) and LS/PS (U+2028/9); counting every LF, CR,
 * 0x85, 0xA8 and 0xA9 byte over-counts, which is safe. UTF-16 input (found
 * by its BOM) encodes those differently: bound it by characters instead.
 * One more: at the end of a stream whose last line has no line break,
 * libyaml forces a line break (yaml_parser_fetch_stream_end), so an error
 * there is reported on the line after the last one. */
static unsigned long max_line(const uint8_t *data, size_t size) {
  if (size >= 2 && ((data[0] == 0xFE && data[1] == 0xFF) || (data[0] == 0xFF && data[1] == 0xFE)))
    return (unsigned long)(size / 2) + 2;
  unsigned long breaks = 0;
  for (size_t i = 0; i < size; i++) {
    uint8_t b = data[i];
    if (b == '\n' || b == '\r' || b == 0x85 || b == 0xA8 || b == 0xA9) breaks++;
  }
  return breaks + 2;
}

static void check_error(const char *err, size_t err_size, const uint8_t *data, size_t size) {
  CHECK(memchr(err, '\0', err_size) != NULL);
  size_t plen = strlen(g_path);
  if (strncmp(err, g_path, plen) != 0 || err[plen] != ':') {
    fprintf(stderr, "config_fuzz: error does not start with \"%s:\": \"%s\"\n", g_path, err);
    abort();
  }
  const char *p = err + plen + 1;
  unsigned long line = 0;
  const char *digits = p;
  while (*p >= '0' && *p <= '9' && p - digits < 12) line = line * 10 + (unsigned long)(*p++ - '0');
  if (p == digits || *p != ':' || line == 0 || line > max_line(data, size)) {
    fprintf(stderr, "config_fuzz: error has no valid line number (max %lu): \"%s\"\n",
            max_line(data, size), err);
    abort();
  }
  CHECK(p[1] == ' ' && p[2] != '\0'); /* "file:line: what is wrong" */
}

static void check_config(const mt_config *c) {
  CHECK(c->path != NULL && strcmp(c->path, g_path) == 0);
  CHECK(c->trust_domain != NULL);
  CHECK(mt_trust_domain_validate(c->trust_domain, strlen(c->trust_domain)) == MT_SPIFFE_OK);
  CHECK(c->access_log != NULL && c->access_log[0] != '\0');
  CHECK(c->workers >= 0);
  CHECK(c->max_connections >= 1);
  CHECK(c->log_level >= MT_LOG_DEBUG && c->log_level <= MT_LOG_ERROR);
  CHECK(c->tls_min_version == TLS1_2_VERSION || c->tls_min_version == TLS1_3_VERSION);
  CHECK(c->handshake_timeout_ms >= 1 && c->connect_timeout_ms >= 1 && c->idle_timeout_ms >= 1);
  CHECK(c->drain_timeout_ms >= 0);
  CHECK(c->reload_interval_ms >= 1);
  if (c->has_control_plane) {
    /* Identity from the CA: no files, an ID in our trust domain, and the
     * control plane fully named. */
    CHECK(c->cert_file == NULL && c->key_file == NULL && c->pkcs12_file == NULL);
    CHECK(c->spiffe_id != NULL && c->cp_address != NULL && c->cp_root_file != NULL &&
          c->cp_spiffe_id != NULL);
    mt_spiffe_id_view view;
    CHECK(mt_spiffe_id_parse(c->spiffe_id, strlen(c->spiffe_id), &view) == MT_SPIFFE_OK);
    CHECK(view.trust_domain_len == strlen(c->trust_domain) &&
          memcmp(view.trust_domain, c->trust_domain, view.trust_domain_len) == 0);
  } else {
    /* Identity: a cert/key pair or a PKCS#12 file, not both. */
    int pair = c->cert_file != NULL && c->key_file != NULL;
    CHECK(pair != (c->pkcs12_file != NULL));
    CHECK((c->cert_file != NULL) == (c->key_file != NULL));
    CHECK(c->num_trust_bundles >= 1 && c->trust_bundles != NULL);
  }
  int own = 0;
  for (size_t i = 0; i < c->num_trust_bundles; i++) {
    const mt_trust_bundle_config *b = &c->trust_bundles[i];
    CHECK(b->trust_domain != NULL && b->file != NULL);
    CHECK(mt_trust_domain_validate(b->trust_domain, strlen(b->trust_domain)) == MT_SPIFFE_OK);
    own |= strcmp(b->trust_domain, c->trust_domain) == 0;
    for (size_t j = 0; j < i; j++) CHECK(strcmp(c->trust_bundles[j].trust_domain, b->trust_domain) != 0);
  }
  /* Bundles may come from the control plane's stream instead. */
  CHECK(own || c->has_control_plane);

  CHECK(c->num_inbound_listeners + c->num_outbound_listeners >= 1);
  for (size_t i = 0; i < c->num_inbound_listeners; i++) {
    const mt_listener_config *l = &c->inbound_listeners[i];
    CHECK(l->listen.addr_len != 0);
    if (l->has_fixed_target) CHECK(l->app_port != 0);
  }
  for (size_t i = 0; i < c->num_outbound_listeners; i++) {
    const mt_listener_config *l = &c->outbound_listeners[i];
    CHECK(l->listen.addr_len != 0);
    if (l->has_fixed_target) CHECK(l->destination.addr_len != 0);
  }
  for (size_t i = 0; i < c->num_destinations; i++) {
    const mt_destination_config *d = &c->destinations[i];
    CHECK(d->address.addr_len != 0 && d->num_spiffe_ids > 0);
    for (size_t j = 0; j < d->num_spiffe_ids; j++)
      CHECK(mt_spiffe_id_parse(d->spiffe_ids[j], strlen(d->spiffe_ids[j]), NULL) == MT_SPIFFE_OK);
    /* The mesh answers for the address with exactly these IDs. */
    mt_expected_ids ids;
    CHECK(mt_mesh_expected_ids(c->mesh, (const struct sockaddr *)&d->address.addr, &ids));
    CHECK(ids.count == d->num_spiffe_ids);
    for (size_t j = 0; j < d->num_spiffe_ids; j++)
      CHECK(mt_expected_ids_contain(&ids, d->spiffe_ids[j]));
    char text[64];
    mt_sockaddr_format((const struct sockaddr *)&d->address.addr, text, sizeof(text));
    mt_sockaddr round;
    CHECK(mt_sockaddr_parse(text, &round, 0)); /* port 0: an IP-alone destination */
    CHECK(mt_sockaddr_equal((const struct sockaddr *)&round.addr,
                            (const struct sockaddr *)&d->address.addr));
  }

  CHECK(c->policy != NULL);
  static const char *const peers[] = {
      "spiffe://example.org/ns/default/sa/frontend",
      "spiffe://example.org/ns/prod/sa/x",
      "spiffe://partner.org",
      "not-an-id",
  };
  static const uint16_t ports[] = {1, 80, 8080, 65535};
  for (size_t i = 0; i < sizeof(peers) / sizeof(peers[0]); i++) {
    for (size_t j = 0; j < sizeof(ports) / sizeof(ports[0]); j++) {
      mt_decision d = mt_policy_decide(c->policy, peers[i], ports[j]);
      CHECK(d.rule != NULL && d.rule[0] != '\0' && d.reason != NULL);
      CHECK(d.action == MT_ACTION_ALLOW || d.action == MT_ACTION_DENY);
    }
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  write_file(data, size);
  char err[1024];
  memset(err, 0x5A, sizeof(err));
  mt_config *c = mt_config_load(g_path, err, sizeof(err));
  if (c == NULL) {
    check_error(err, sizeof(err), data, size);
    return 0;
  }
  check_config(c);
  mt_config_free(c);
  return 0;
}
