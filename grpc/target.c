/* target.c: "host:port" parsing. */
#include "grpc/target.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>

static int host_name_valid(const char *host) {
  size_t len = strlen(host);
  if (len == 0 || len > MT_RESOLVE_HOST_MAX || host[0] == '-' || host[0] == '.') return 0;
  for (const char *p = host; *p; p++) {
    char ch = *p;
    int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
             ch == '-' || ch == '.';
    if (!ok || (ch == '.' && p[1] == '.')) return 0;
  }
  return 1;
}

static int port_valid(const char *port) {
  if (port[0] == '\0' || strlen(port) > 5) return 0;
  long v = 0;
  for (const char *p = port; *p; p++) {
    if (*p < '0' || *p > '9') return 0;
    v = v * 10 + (*p - '0');
  }
  return v >= 1 && v <= 65535;
}

/* "1.2.3.4:port" or "[v6]:port" with a valid port. */
static int parse_numeric(const char *text, mt_resolve_target *out) {
  char host[INET6_ADDRSTRLEN + 1];
  const char *port;
  if (text[0] == '[') {
    const char *close = strchr(text, ']');
    if (close == NULL || close[1] != ':' || (size_t)(close - text - 1) >= sizeof(host)) return 0;
    memcpy(host, text + 1, (size_t)(close - text - 1));
    host[close - text - 1] = '\0';
    port = close + 2;
  } else {
    const char *colon = strrchr(text, ':');
    if (colon == NULL || strchr(text, ':') != colon || (size_t)(colon - text) >= sizeof(host))
      return 0;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    port = colon + 1;
  }
  if (!port_valid(port)) return 0;
  unsigned value = 0;
  for (const char *p = port; *p; p++) value = value * 10 + (unsigned)(*p - '0');
  struct sockaddr_in *v4 = (struct sockaddr_in *)&out->address;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->address;
  if (text[0] != '[' && inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)value);
    out->address_len = sizeof(*v4);
  } else if (text[0] == '[' && inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)value);
    out->address_len = sizeof(*v6);
  } else {
    return 0;
  }
  out->numeric = 1;
  snprintf(out->host, sizeof(out->host), "%s", host);
  snprintf(out->port, sizeof(out->port), "%s", port);
  return 1;
}

int mt_unix_address_parse(const char *text, struct sockaddr_storage *out, socklen_t *out_len) {
  if (text == NULL || strncmp(text, "unix:", strlen("unix:")) != 0) return 0;
  const char *path = text + strlen("unix:");
  if (strncmp(path, "//", 2) == 0) path += 2; /* unix:///abs: an empty authority */
  struct sockaddr_un *un = (struct sockaddr_un *)out;
  size_t len = strlen(path);
  if (path[0] != '/' || len >= sizeof(un->sun_path)) return 0;
  memset(out, 0, sizeof(*out));
  un->sun_family = AF_UNIX;
  memcpy(un->sun_path, path, len + 1);
  *out_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
  return 1;
}

int mt_resolve_parse(const char *text, mt_resolve_target *out) {
  memset(out, 0, sizeof(*out));
  if (text == NULL) return 0;
  if (strncmp(text, "unix:", strlen("unix:")) == 0) {
    out->numeric = mt_unix_address_parse(text, &out->address, &out->address_len);
    return out->numeric;
  }
  if (parse_numeric(text, out)) return 1;
  const char *colon = strrchr(text, ':');
  if (colon == NULL || text[0] == '[' || (size_t)(colon - text) > MT_RESOLVE_HOST_MAX ||
      strlen(colon + 1) >= sizeof(out->port))
    return 0;
  snprintf(out->host, sizeof(out->host), "%.*s", (int)(colon - text), text);
  snprintf(out->port, sizeof(out->port), "%s", colon + 1);
  /* A string with an IP shape that did not parse as one (e.g. a port out of
   * range on an IP) is malformed, not a name to look up. */
  unsigned char probe[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, out->host, probe) == 1) return 0;
  return host_name_valid(out->host) && port_valid(out->port);
}
