/* grpc_probe: our gRPC client or server as a process, so that a real gRPC
 * stack (Python grpcio, tests/grpc/interop_test.py) can be tested against it.
 *
 *   grpc_probe client --target IP:PORT --ca ROOT.pem [--authority NAME]
 *       [--server-name NAME] [--cert C.pem --key K.pem] --path /pkg.Svc/Method
 *       [--data HEX] [--metadata name=value]... [--deadline-ms N]
 *       [--expect-status N] [--expect-message TEXT] [--expect-count N]
 *     Makes one call. Prints "message HEX" per response message, then
 *     "status N NAME" and "status-message TEXT". Exit 0 when every --expect-*
 *     holds, 1 when one does not, 2 on bad usage.
 *
 *   grpc_probe server --listen IP:PORT --cert C.pem --key K.pem [--ca ROOT.pem]
 *       [--max-message N]
 *     Prints "listening PORT" once bound, serves until SIGTERM/SIGINT.
 *     With --ca, client certificates are requested and verified (optional).
 *     Logs to stderr, one line each, connections that end in error
 *     ("connection from PEER: WHAT") and calls refused before any handler
 *     ("refused call from PEER to PATH: STATUS_NAME: MESSAGE").
 *     Methods (request and response bytes are opaque):
 *       /test.Echo/Unary     the request, once
 *       /test.Echo/Stream    the request, three times
 *       /test.Echo/Status    request "N:text": finishes with status N, text
 *       /test.Echo/Metadata  the value of the "authorization" metadata
 *       /test.Echo/Timeout   the grpc-timeout received, in ms ("-1": none)
 *       /test.Echo/Peer      the client certificate's CN ("none")
 *       /test.Echo/Sleep     never answers; prints "closed NAME" when it ends */
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "grpc/client.h"
#include "grpc/server.h"

enum {
  EXIT_MISMATCH = 1,
  EXIT_USAGE = 2,
  MAX_METADATA = 16,
  TEXT_MAX = 256,
  STREAM_COPIES = 3,
  DECIMAL = 10,
};

typedef struct {
  const char *mode;
  const char *target, *listen, *ca, *cert, *key, *authority, *server_name, *path, *data;
  const char *expect_message;
  int expect_status, expect_count;
  long deadline_ms;
  size_t max_message;
  mt_grpc_metadata metadata[MAX_METADATA];
  size_t metadata_count;
} probe_args;

static int usage(const char *why) {
  fprintf(stderr, "grpc_probe: %s\nsee the comment at the top of grpc_probe.c\n", why);
  return EXIT_USAGE;
}

/* Splits "name=value" in place into a metadata entry. */
static int add_metadata(probe_args *a, char *pair) {
  char *eq = strchr(pair, '=');
  if (eq == NULL || a->metadata_count == MAX_METADATA) return 0;
  *eq = '\0';
  a->metadata[a->metadata_count].name = pair;
  a->metadata[a->metadata_count].value = eq + 1;
  a->metadata_count++;
  return 1;
}

/* Stores the value of a numeric option; 0 when |opt| is not one. */
static int numeric_option(probe_args *a, const char *opt, const char *val) {
  if (strcmp(opt, "--deadline-ms") == 0)
    a->deadline_ms = strtol(val, NULL, DECIMAL);
  else if (strcmp(opt, "--expect-status") == 0)
    a->expect_status = atoi(val);
  else if (strcmp(opt, "--expect-count") == 0)
    a->expect_count = atoi(val);
  else if (strcmp(opt, "--max-message") == 0)
    a->max_message = strtoul(val, NULL, DECIMAL);
  else
    return 0;
  return 1;
}

static int parse_args(int argc, char **argv, probe_args *a) {
  memset(a, 0, sizeof(*a));
  a->expect_status = -1;
  a->expect_count = -1;
  const struct {
    const char *flag;
    const char **value;
  } strings[] = {
      {"--target", &a->target},
      {"--listen", &a->listen},
      {"--ca", &a->ca},
      {"--cert", &a->cert},
      {"--key", &a->key},
      {"--authority", &a->authority},
      {"--server-name", &a->server_name},
      {"--path", &a->path},
      {"--data", &a->data},
      {"--expect-message", &a->expect_message},
  };
  if (argc < 2) return 0;
  a->mode = argv[1];
  for (int i = 2; i < argc; i += 2) {
    const char *opt = argv[i];
    if (i + 1 >= argc) return 0;
    char *val = argv[i + 1];
    int known = numeric_option(a, opt, val);
    for (size_t k = 0; !known && k < sizeof(strings) / sizeof(strings[0]); k++) {
      if (strcmp(opt, strings[k].flag) == 0) {
        *strings[k].value = val;
        known = 1;
      }
    }
    if (!known && strcmp(opt, "--metadata") == 0) known = add_metadata(a, val);
    if (!known) return 0;
  }
  return 1;
}

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + DECIMAL;
  if (c >= 'A' && c <= 'F') return c - 'A' + DECIMAL;
  return -1;
}

/* Decodes |hex| into a new buffer; returns NULL when malformed. */
static uint8_t *from_hex(const char *hex, size_t *len) {
  size_t n = strlen(hex);
  if (n % 2) return NULL;
  uint8_t *out = malloc(n / 2 + 1);
  if (out == NULL) return NULL;
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hex_digit(hex[2 * i]), lo = hex_digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      free(out);
      return NULL;
    }
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  *len = n / 2;
  return out;
}

static void print_tls_error(const char *what) {
  unsigned long e = ERR_get_error();
  fprintf(stderr, "grpc_probe: %s: %s\n", what, e ? ERR_reason_error_string(e) : "failed");
}

/* Loads an optional certificate + key and an optional CA for peer checks. */
static SSL_CTX *make_ctx(const probe_args *a, int is_server) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (ctx == NULL) return NULL;
  if (a->cert && (!SSL_CTX_use_certificate_chain_file(ctx, a->cert) ||
                  !SSL_CTX_use_PrivateKey_file(ctx, a->key, SSL_FILETYPE_PEM))) {
    print_tls_error("loading --cert/--key");
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (a->ca && !SSL_CTX_load_verify_locations(ctx, a->ca, NULL)) {
    print_tls_error("loading --ca");
    SSL_CTX_free(ctx);
    return NULL;
  }
  if (!is_server || a->ca) SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
  return ctx;
}

/* ---- client ---- */

typedef struct {
  int count;
  int closed;
  int status;
  char message[TEXT_MAX];
} client_result;

static void on_client_message(void *arg, const uint8_t *msg, size_t len) {
  client_result *r = arg;
  r->count++;
  printf("message ");
  for (size_t i = 0; i < len; i++) printf("%02x", msg[i]);
  printf("\n");
}

static void on_client_close(void *arg, mt_grpc_status status, const char *message) {
  client_result *r = arg;
  r->closed = 1;
  r->status = status;
  snprintf(r->message, sizeof(r->message), "%s", message);
  printf("status %d %s\nstatus-message %s\n", status, mt_grpc_status_name(status), message);
  fflush(stdout);
  ev_break(EV_DEFAULT, EVBREAK_ALL);
}

static int run_client(const probe_args *a) {
  if (a->target == NULL || a->path == NULL) return usage("client needs --target and --path");
  size_t req_len = 0;
  uint8_t *req = from_hex(a->data ? a->data : "", &req_len);
  if (req == NULL) return usage("--data must be hex");
  SSL_CTX *ctx = make_ctx(a, 0);
  if (ctx == NULL) {
    free(req);
    return EXIT_USAGE;
  }
  /* Check the server's name: --server-name, else the authority's host. */
  char host[TEXT_MAX] = "";
  const char *name = a->server_name;
  if (name == NULL && a->authority != NULL) {
    snprintf(host, sizeof(host), "%s", a->authority);
    char *colon = strrchr(host, ':');
    if (colon && host[0] != '[') *colon = '\0';
    name = host;
  }
  mt_grpc_client_options o;
  memset(&o, 0, sizeof(o));
  o.target = a->target;
  o.ssl_ctx = ctx;
  o.authority = a->authority;
  o.server_name = name;
  mt_grpc_client *client = mt_grpc_client_new(EV_DEFAULT, &o);
  if (client == NULL) {
    free(req);
    SSL_CTX_free(ctx);
    return usage("bad client options (is --target numeric ip:port?)");
  }
  client_result r;
  memset(&r, 0, sizeof(r));
  mt_grpc_call_handlers h = {on_client_message, on_client_close};
  mt_grpc_call *call = mt_grpc_client_start_call(client, a->path, a->metadata, a->metadata_count,
                                                 req, req_len, a->deadline_ms, &h, &r);
  free(req);
  if (call == NULL) {
    mt_grpc_client_free(client);
    SSL_CTX_free(ctx);
    return usage("the call was refused (bad path or metadata)");
  }
  ev_run(EV_DEFAULT, 0);
  mt_grpc_client_free(client);
  SSL_CTX_free(ctx);
  int ok = r.closed && (a->expect_status < 0 || r.status == a->expect_status) &&
           (a->expect_count < 0 || r.count == a->expect_count) &&
           (a->expect_message == NULL || strcmp(r.message, a->expect_message) == 0);
  return ok ? 0 : EXIT_MISMATCH;
}

/* ---- server ---- */

static void reply_text(mt_grpc_stream *stream, const char *text) {
  mt_grpc_stream_send(stream, (const uint8_t *)text, strlen(text));
  mt_grpc_stream_finish(stream, MT_GRPC_OK, NULL);
}

static void on_unary(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  mt_grpc_stream_send(stream, req->message, req->message_len);
  mt_grpc_stream_finish(stream, MT_GRPC_OK, NULL);
}

static void on_stream(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  for (int i = 0; i < STREAM_COPIES; i++)
    mt_grpc_stream_send(stream, req->message, req->message_len);
  mt_grpc_stream_finish(stream, MT_GRPC_OK, NULL);
}

static void on_status(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  char text[TEXT_MAX];
  size_t n = req->message_len < sizeof(text) - 1 ? req->message_len : sizeof(text) - 1;
  memcpy(text, req->message, n);
  text[n] = '\0';
  char *colon = strchr(text, ':');
  int status = atoi(text);
  mt_grpc_stream_finish(stream, (mt_grpc_status)status, colon ? colon + 1 : "");
}

static void on_metadata(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  const char *auth = mt_grpc_request_metadata(req, "authorization");
  reply_text(stream, auth ? auth : "");
}

static void on_timeout(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  char text[TEXT_MAX];
  snprintf(text, sizeof(text), "%lld", (long long)req->timeout_ms);
  reply_text(stream, text);
}

static void on_peer(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  char cn[TEXT_MAX] = "none";
  if (req->peer_cert != NULL)
    X509_NAME_get_text_by_NID(X509_get_subject_name(req->peer_cert), NID_commonName, cn,
                              sizeof(cn));
  reply_text(stream, cn);
}

static void on_sleep_closed(void *arg, mt_grpc_status why) {
  (void)arg;
  printf("closed %s\n", mt_grpc_status_name(why));
  fflush(stdout);
}

static void on_sleep(void *arg, mt_grpc_stream *stream, const mt_grpc_request *req) {
  (void)arg;
  (void)req;
  mt_grpc_stream_set_on_closed(stream, on_sleep_closed, NULL);
}

static void on_connection_error(void *arg, const char *peer, const char *what) {
  (void)arg;
  fprintf(stderr, "grpc_probe: connection from %s: %s\n", peer, what);
}

static void on_call_refused(void *arg, const char *peer, const char *path, mt_grpc_status status,
                            const char *message) {
  (void)arg;
  fprintf(stderr, "grpc_probe: refused call from %s to %s: %s: %s\n", peer, path,
          mt_grpc_status_name(status), message);
}

static void on_signal(struct ev_loop *loop, ev_signal *w, int revents) {
  (void)w;
  (void)revents;
  ev_break(loop, EVBREAK_ALL);
}

static int run_server(const probe_args *a) {
  if (a->listen == NULL || a->cert == NULL || a->key == NULL)
    return usage("server needs --listen, --cert and --key");
  SSL_CTX *ctx = make_ctx(a, 1);
  if (ctx == NULL) return EXIT_USAGE;
  mt_grpc_server_options o;
  memset(&o, 0, sizeof(o));
  o.listen = a->listen;
  o.ssl_ctx = ctx;
  o.max_message_bytes = a->max_message;
  o.on_connection_error = on_connection_error;
  o.on_call_refused = on_call_refused;
  mt_grpc_server *server = mt_grpc_server_new(EV_DEFAULT, &o);
  if (server == NULL) {
    perror("grpc_probe: listen");
    SSL_CTX_free(ctx);
    return EXIT_USAGE;
  }
  static const struct {
    const char *path;
    mt_grpc_handler_fn fn;
  } kRoutes[] = {
      {"/test.Echo/Unary", on_unary},     {"/test.Echo/Stream", on_stream},
      {"/test.Echo/Status", on_status},   {"/test.Echo/Metadata", on_metadata},
      {"/test.Echo/Timeout", on_timeout}, {"/test.Echo/Peer", on_peer},
      {"/test.Echo/Sleep", on_sleep},
  };
  for (size_t i = 0; i < sizeof(kRoutes) / sizeof(kRoutes[0]); i++)
    mt_grpc_server_handle(server, kRoutes[i].path, kRoutes[i].fn, NULL);
  ev_signal term, intr;
  ev_signal_init(&term, on_signal, SIGTERM);
  ev_signal_init(&intr, on_signal, SIGINT);
  ev_signal_start(EV_DEFAULT, &term);
  ev_signal_start(EV_DEFAULT, &intr);
  printf("listening %d\n", mt_grpc_server_port(server));
  fflush(stdout);
  ev_run(EV_DEFAULT, 0);
  mt_grpc_server_free(server);
  SSL_CTX_free(ctx);
  return 0;
}

int main(int argc, char **argv) {
  probe_args a;
  if (!parse_args(argc, argv, &a)) return usage("bad arguments");
  if (strcmp(a.mode, "client") == 0) return run_client(&a);
  if (strcmp(a.mode, "server") == 0) return run_server(&a);
  return usage("mode must be client or server");
}
