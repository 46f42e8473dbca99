/* target: a server address as configured, "host:port", parsed strictly.
 * Pure: no I/O, no lookup (resolver.h does those). */
#ifndef MT_GRPC_TARGET_H
#define MT_GRPC_TARGET_H

#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { MT_RESOLVE_HOST_MAX = 253 }; /* a DNS name's longest text form */

/* A parsed "host:port": |numeric| when the host is an IP literal (then
 * |address| holds it with the port) or the target is a Unix socket. */
typedef struct {
  char host[MT_RESOLVE_HOST_MAX + 1];
  char port[6];
  int numeric;
  struct sockaddr_storage address;
  socklen_t address_len;
} mt_resolve_target;

/* Parses "ip:port", "[ipv6]:port" or "name:port" (a DNS name of letters,
 * digits, '-' and '.', port 1..65535), or a Unix domain socket
 * "unix:/abs/path" / "unix:///abs/path" (|numeric|, no host or port).
 * Returns 1, or 0 when malformed. */
int mt_resolve_parse(const char *text, mt_resolve_target *out);

/* "unix:/abs/path" or "unix:///abs/path" (shorter than sun_path) into a
 * sockaddr_un in |out|. Returns 1, or 0 for anything else. */
int mt_unix_address_parse(const char *text, struct sockaddr_storage *out, socklen_t *out_len);

#ifdef __cplusplus
}
#endif

#endif /* MT_GRPC_TARGET_H */
