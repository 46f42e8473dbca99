/* peer_auth: per-port mTLS modes. See peer_auth.h. */
#include "agent/peer_auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  uint16_t port;
  mt_mtls_mode mode;
  char *source;
} port_mode;

struct mt_peer_auth {
  mt_mtls_mode mode;
  char *source;
  port_mode *ports; /* few (portLevelMtls): a linear scan */
  size_t num_ports;
};

mt_peer_auth *mt_peer_auth_new(mt_mtls_mode mode, const char *source) {
  mt_peer_auth *pa = calloc(1, sizeof(*pa));
  if (pa == NULL) return NULL;
  pa->mode = mode;
  pa->source = strdup(source != NULL ? source : "");
  if (pa->source == NULL) {
    free(pa);
    return NULL;
  }
  return pa;
}

void mt_peer_auth_free(mt_peer_auth *pa) {
  if (pa == NULL) return;
  for (size_t i = 0; i < pa->num_ports; i++) free(pa->ports[i].source);
  free(pa->ports);
  free(pa->source);
  free(pa);
}

int mt_peer_auth_add_port(mt_peer_auth *pa, uint16_t port, mt_mtls_mode mode, const char *source,
                          char *err, size_t err_len) {
  if (port == 0) return snprintf(err, err_len, "port 0 is not a workload port"), 0;
  for (size_t i = 0; i < pa->num_ports; i++)
    if (pa->ports[i].port == port)
      return snprintf(err, err_len, "port %u is given twice", (unsigned)port), 0;
  port_mode *grown = realloc(pa->ports, (pa->num_ports + 1) * sizeof(*grown));
  if (grown == NULL) return snprintf(err, err_len, "out of memory"), 0;
  pa->ports = grown;
  char *copy = strdup(source != NULL ? source : "");
  if (copy == NULL) return snprintf(err, err_len, "out of memory"), 0;
  pa->ports[pa->num_ports++] = (port_mode){port, mode, copy};
  return 1;
}

mt_mtls_mode mt_peer_auth_mode(const mt_peer_auth *pa, uint16_t port, const char **source) {
  for (size_t i = 0; i < pa->num_ports; i++) {
    if (pa->ports[i].port == port) {
      if (source != NULL) *source = pa->ports[i].source;
      return pa->ports[i].mode;
    }
  }
  if (source != NULL) *source = pa->source;
  return pa->mode;
}

int mt_peer_auth_admits_plaintext(const mt_peer_auth *pa, uint16_t port) {
  return mt_peer_auth_mode(pa, port, NULL) != MT_MTLS_STRICT;
}

size_t mt_peer_auth_num_ports(const mt_peer_auth *pa) { return pa->num_ports; }

void mt_peer_auth_port(const mt_peer_auth *pa, size_t i, uint16_t *port, mt_mtls_mode *mode,
                       const char **source) {
  *port = pa->ports[i].port;
  *mode = pa->ports[i].mode;
  *source = pa->ports[i].source;
}

const char *mt_mtls_mode_str(mt_mtls_mode mode) {
  switch (mode) {
    case MT_MTLS_STRICT: return "STRICT";
    case MT_MTLS_PERMISSIVE: return "PERMISSIVE";
    case MT_MTLS_DISABLE: return "DISABLE";
  }
  return "UNKNOWN";
}
