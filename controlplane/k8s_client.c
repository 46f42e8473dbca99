#include "controlplane/k8s_client.h"

#include <curl/curl.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "controlplane/file_stamp.h"

enum {
  DEFAULT_CONNECT_TIMEOUT_MS = 5000,
  /* TCP keepalive so a dead peer under a long watch is noticed by the kernel. */
  KEEPALIVE_IDLE_S = 30,
  KEEPALIVE_INTERVAL_S = 10,
  PATH_MAX_BYTES = 4096,
  /* libssh2.h's LIBSSH2_INIT_NO_CRYPTO: initialise without touching the
   * crypto library. Spelled here so that no libssh2 header is needed. */
  LIBSSH2_INIT_NO_CRYPTO_FLAG = 0x0001,
};

#define AUTH_PREFIX "Authorization: Bearer "

struct mt_k8s_client {
  struct ev_loop *loop;
  CURLM *multi;
  ev_timer timer; /* libcurl's single timeout */
  char server[MT_K8S_URL_MAX];
  char *token_file;
  char *ca_file;
  int64_t connect_timeout_ms;
  mt_file_stamp token_stamp;
  char token[MT_K8S_TOKEN_MAX_BYTES + 1];
  mt_k8s_request *requests; /* in flight, a doubly linked list */
};

struct mt_k8s_request {
  mt_k8s_client *client;
  CURL *easy;
  struct curl_slist *headers;
  mt_k8s_request_callbacks cb;
  void *ctx;
  char curl_error[CURL_ERROR_SIZE];
  mt_k8s_request *prev, *next;
};

/* One socket libcurl asked us to watch. */
typedef struct {
  ev_io io;
  mt_k8s_client *client;
  curl_socket_t fd;
} sock_watch;

static void on_done_messages(mt_k8s_client *client);

static int global_init_done;

/* curl_global_init calls libssh2_init(0), which runs OpenSSL's engine
 * set-up (ENGINE_load_builtin_engines) in libcrypto.so.3, whose internal
 * calls resolve partly to BoringSSL's same-named functions loaded first:
 * undefined behaviour. libssh2 initialises its crypto only on its first
 * init, so initialising it here first, without crypto, means no OpenSSL
 * code runs at all (requests are HTTPS only, so libssh2 is never used).
 * Looked up at run time: libssh2 is there only as libcurl's dependency. */
static void keep_libssh2_from_openssl(void) {
  int (*ssh2_init)(int) = (int (*)(int))dlsym(RTLD_DEFAULT, "libssh2_init");
  if (ssh2_init != NULL) ssh2_init(LIBSSH2_INIT_NO_CRYPTO_FLAG);
}

static void request_unlink_free(mt_k8s_request *r) {
  mt_k8s_client *c = r->client;
  if (r->prev) r->prev->next = r->next;
  if (r->next) r->next->prev = r->prev;
  if (c->requests == r) c->requests = r->next;
  curl_multi_remove_handle(c->multi, r->easy);
  curl_easy_cleanup(r->easy);
  curl_slist_free_all(r->headers);
  free(r);
}

/* --- libev <-> libcurl glue --- */

static void on_socket_ready(struct ev_loop *loop, ev_io *w, int revents) {
  (void)loop;
  sock_watch *s = (sock_watch *)w;
  mt_k8s_client *c = s->client;
  int flags =
      (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
  int running = 0;
  curl_multi_socket_action(c->multi, s->fd, flags, &running);
  on_done_messages(c);
}

static void on_curl_timeout(struct ev_loop *loop, ev_timer *w, int revents) {
  (void)loop;
  (void)revents;
  mt_k8s_client *c = w->data;
  int running = 0;
  curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  on_done_messages(c);
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching one socket. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
  (void)easy;
  mt_k8s_client *c = userp;
  sock_watch *s = socketp;
  if (what == CURL_POLL_REMOVE) {
    if (s != NULL) {
      ev_io_stop(c->loop, &s->io);
      curl_multi_assign(c->multi, fd, NULL);
      free(s);
    }
    return 0;
  }
  int events = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
  if (s == NULL) {
    s = calloc(1, sizeof(*s));
    if (s == NULL) return -1;
    s->client = c;
    s->fd = fd;
    curl_multi_assign(c->multi, fd, s);
  } else {
    ev_io_stop(c->loop, &s->io);
  }
  ev_io_init(&s->io, on_socket_ready, fd, events);
  ev_io_start(c->loop, &s->io);
  return 0;
}

/* CURLMOPT_TIMERFUNCTION: libcurl wants to be called back in |timeout_ms|. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
  (void)multi;
  mt_k8s_client *c = userp;
  ev_timer_stop(c->loop, &c->timer);
  if (timeout_ms >= 0) {
    ev_timer_set(&c->timer, (double)timeout_ms / 1000.0, 0.);
    ev_timer_start(c->loop, &c->timer);
  }
  return 0;
}

static void on_done_messages(mt_k8s_client *client) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(client->multi, &left)) != NULL) {
    if (msg->msg != CURLMSG_DONE) continue;
    mt_k8s_request *r = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    CURLcode result = msg->data.result;
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    char error[MT_K8S_ERROR_MAX] = "";
    if (result != CURLE_OK)
      snprintf(error, sizeof(error), "%s",
               r->curl_error[0] ? r->curl_error : curl_easy_strerror(result));
    mt_k8s_request_callbacks cb = r->cb;
    void *ctx = r->ctx;
    request_unlink_free(r);
    if (cb.on_done) cb.on_done(ctx, status, error);
  }
}

/* --- token --- */

/* Re-reads the token when its file changed since the last read. */
static int refresh_token(mt_k8s_client *c, char *err, size_t err_len) {
  mt_file_stamp now;
  mt_file_stamp_read(c->token_file, &now);
  if (c->token[0] != '\0' && mt_file_stamp_equal(&now, &c->token_stamp)) return 1;
  int fd = open(c->token_file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(err, err_len, "token file %s: %s", c->token_file, strerror(errno));
    return 0;
  }
  char buf[MT_K8S_TOKEN_MAX_BYTES + 1];
  size_t len = 0;
  ssize_t n;
  while (len < sizeof(buf) && (n = read(fd, buf + len, sizeof(buf) - len)) > 0) len += (size_t)n;
  close(fd);
  if (len > MT_K8S_TOKEN_MAX_BYTES) {
    snprintf(err, err_len, "token file %s: larger than %d bytes", c->token_file,
             MT_K8S_TOKEN_MAX_BYTES);
    return 0;
  }
  while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' ')) len--;
  for (size_t i = 0; i < len; i++) {
    /* A token goes into a header line: printable ASCII only. */
    if (buf[i] < '!' || buf[i] > '~') {
      snprintf(err, err_len, "token file %s: not a bearer token (byte %zu)", c->token_file, i);
      return 0;
    }
  }
  if (len == 0) {
    snprintf(err, err_len, "token file %s: empty", c->token_file);
    return 0;
  }
  memcpy(c->token, buf, len);
  c->token[len] = '\0';
  c->token_stamp = now;
  return 1;
}

/* --- client --- */

static int resolve_server(const mt_k8s_client_config *config, char *out, size_t out_len, char *err,
                          size_t err_len) {
  if (config->server != NULL && config->server[0] != '\0') {
    if (strncmp(config->server, "https://", strlen("https://")) != 0) {
      snprintf(err, err_len, "server %s: must be an https:// URL", config->server);
      return 0;
    }
    if ((size_t)snprintf(out, out_len, "%s", config->server) >= out_len) {
      snprintf(err, err_len, "server URL too long");
      return 0;
    }
    size_t len = strlen(out);
    if (len > 0 && out[len - 1] == '/') out[len - 1] = '\0';
    return 1;
  }
  const char *host = getenv("KUBERNETES_SERVICE_HOST");
  const char *port = getenv("KUBERNETES_SERVICE_PORT");
  if (host == NULL || host[0] == '\0' || port == NULL || port[0] == '\0') {
    snprintf(err, err_len,
             "no server given and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not set "
             "(not in a pod?)");
    return 0;
  }
  int v6 = strchr(host, ':') != NULL;
  if ((size_t)snprintf(out, out_len, "https://%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "",
                       port) >= out_len) {
    snprintf(err, err_len, "server URL too long");
    return 0;
  }
  return 1;
}

mt_k8s_client *mt_k8s_client_new(struct ev_loop *loop, const mt_k8s_client_config *config,
                                 char *err, size_t err_len) {
  if (!global_init_done) {
    keep_libssh2_from_openssl();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      snprintf(err, err_len, "libcurl did not initialise");
      return NULL;
    }
    global_init_done = 1;
  }
  mt_k8s_client *c = calloc(1, sizeof(*c));
  if (c == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  c->loop = loop;
  c->connect_timeout_ms =
      config->connect_timeout_ms > 0 ? config->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
  int has_token = config->token_file && config->token_file[0];
  int has_ca = config->ca_file && config->ca_file[0];
  c->token_file = strdup(has_token ? config->token_file : MT_K8S_SA_DIR "/token");
  c->ca_file = strdup(has_ca ? config->ca_file : MT_K8S_SA_DIR "/ca.crt");
  c->multi = curl_multi_init();
  if (c->token_file == NULL || c->ca_file == NULL || c->multi == NULL) {
    snprintf(err, err_len, "out of memory");
    mt_k8s_client_free(c);
    return NULL;
  }
  if (!resolve_server(config, c->server, sizeof(c->server), err, err_len) ||
      !refresh_token(c, err, err_len)) {
    mt_k8s_client_free(c);
    return NULL;
  }
  if (access(c->ca_file, R_OK) != 0) {
    snprintf(err, err_len, "CA file %s: %s", c->ca_file, strerror(errno));
    mt_k8s_client_free(c);
    return NULL;
  }
  ev_init(&c->timer, on_curl_timeout);
  c->timer.data = c;
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
  curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
  return c;
}

void mt_k8s_client_free(mt_k8s_client *client) {
  if (client == NULL) return;
  while (client->requests != NULL) request_unlink_free(client->requests);
  if (client->multi != NULL) {
    ev_timer_stop(client->loop, &client->timer);
    curl_multi_cleanup(client->multi);
  }
  free(client->token_file);
  free(client->ca_file);
  free(client);
}

const char *mt_k8s_client_server(const mt_k8s_client *client) { return client->server; }

static size_t on_curl_write(char *data, size_t size, size_t nmemb, void *userp) {
  mt_k8s_request *r = userp;
  size_t len = size * nmemb;
  if (r->cb.on_data != NULL && !r->cb.on_data(r->ctx, data, len)) return 0; /* abort */
  return len;
}

static int setup_easy(mt_k8s_request *r, const char *url, int64_t total_timeout_ms) {
  mt_k8s_client *c = r->client;
  CURL *e = r->easy;
  int ok = curl_easy_setopt(e, CURLOPT_URL, url) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https") == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_curl_write) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_WRITEDATA, r) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_PRIVATE, r) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->curl_error) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK;
  ok =
      ok && curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)total_timeout_ms) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, (long)KEEPALIVE_IDLE_S) == CURLE_OK;
  ok = ok && curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, (long)KEEPALIVE_INTERVAL_S) == CURLE_OK;
  return ok;
}

mt_k8s_request *mt_k8s_client_get(mt_k8s_client *client, const char *path_and_query,
                                  int64_t total_timeout_ms, const mt_k8s_request_callbacks *cb,
                                  void *ctx, char *err, size_t err_len) {
  if (!refresh_token(client, err, err_len)) return NULL;
  char url[MT_K8S_URL_MAX + PATH_MAX_BYTES];
  if (path_and_query[0] != '/' ||
      (size_t)snprintf(url, sizeof(url), "%s%s", client->server, path_and_query) >= sizeof(url)) {
    snprintf(err, err_len, "bad request path");
    return NULL;
  }
  char auth[sizeof(AUTH_PREFIX) + MT_K8S_TOKEN_MAX_BYTES];
  snprintf(auth, sizeof(auth), AUTH_PREFIX "%s", client->token);
  mt_k8s_request *r = calloc(1, sizeof(*r));
  if (r == NULL) {
    snprintf(err, err_len, "out of memory");
    return NULL;
  }
  r->client = client;
  r->cb = *cb;
  r->ctx = ctx;
  r->easy = curl_easy_init();
  struct curl_slist *h = curl_slist_append(NULL, auth);
  if (h != NULL) r->headers = h;
  h = h ? curl_slist_append(r->headers, "Accept: application/json") : NULL;
  if (r->easy == NULL || h == NULL || !setup_easy(r, url, total_timeout_ms) ||
      curl_multi_add_handle(client->multi, r->easy) != CURLM_OK) {
    snprintf(err, err_len, "could not set up the request");
    if (r->easy) curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r);
    return NULL;
  }
  explicit_bzero(auth, sizeof(auth));
  r->next = client->requests;
  if (r->next) r->next->prev = r;
  client->requests = r;
  return r;
}

long mt_k8s_request_status(const mt_k8s_request *request) {
  long status = 0;
  curl_easy_getinfo(request->easy, CURLINFO_RESPONSE_CODE, &status);
  return status;
}

void mt_k8s_request_cancel(mt_k8s_request *request) {
  if (request == NULL) return;
  request_unlink_free(request);
}
