/* redirect.c: `mtlsd init-iptables`. The first half turns a config into
 * iptables-restore text (pure, no I/O); the second half runs iptables and
 * iptables-restore with fork/exec and reports what they said. */
#include "agent/redirect.h"

#include "agent/node_info_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
  ERR_TEXT_MAX = 4096,
  TOOL_OUTPUT_MAX = 1 << 20, /* bytes kept of a tool's stdout or stderr */
  TOOL_TIMEOUT_MS = 60000,   /* iptables waits at most XTABLES_WAIT_S for the lock */
  READ_CHUNK = 4096,
  IPV4_HOST_BITS = 32,
  IPV6_HOST_BITS = 128,
};

#define XTABLES_WAIT "--wait=10" /* seconds to wait for the xtables lock */

static const char *const our_chains[] = {MT_CHAIN_INBOUND, MT_CHAIN_IN_REDIRECT, MT_CHAIN_OUTPUT,
                                         MT_CHAIN_REDIRECT, MT_CHAIN_NODE_OUT};
enum { NUM_CHAINS = sizeof(our_chains) / sizeof(our_chains[0]) };

/* The jumps from the built-in chains, as `iptables -S` prints them (after -A). */
#define PREROUTING_JUMP "PREROUTING -p tcp -j " MT_CHAIN_INBOUND
#define OUTPUT_JUMP "OUTPUT -p tcp -j " MT_CHAIN_OUTPUT

/* ---- a growable string ------------------------------------------------- */

typedef struct {
  char *data;
  size_t len, cap;
  int oom;
} strbuf;

static void sb_bytes(strbuf *b, const char *p, size_t n) {
  if (b->oom) return;
  if (b->data == NULL || b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n + 1) cap *= 2;
    char *d = realloc(b->data, cap);
    if (d == NULL) {
      b->oom = 1;
      return;
    }
    b->data = d;
    b->cap = cap;
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0';
}

static void sb_printf(strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(strbuf *b, const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(line, sizeof(line), fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof(line)) {
    b->oom = 1; /* no rule we write comes near; refuse rather than truncate */
    return;
  }
  sb_bytes(b, line, (size_t)n);
}

/* Hands the text to the caller ("" when empty), or NULL after a failure. */
static char *sb_take(strbuf *b) {
  if (!b->oom && b->data == NULL) sb_bytes(b, "", 0);
  if (b->oom) {
    free(b->data);
    return NULL;
  }
  return b->data;
}

/* ---- addresses --------------------------------------------------------- */

/* "ip/len" of a CIDR. */
static void format_cidr(const mt_cidr *c, char *buf, size_t len) {
  char host[INET6_ADDRSTRLEN];
  inet_ntop(c->family, c->addr, host, sizeof(host));
  snprintf(buf, len, "%s/%d", host, c->prefix_len);
}

/* "ip/32" or "ip/128" of a socket address's host. */
static void format_host(const mt_sockaddr *a, char *buf, size_t len) {
  char host[INET6_ADDRSTRLEN];
  const struct sockaddr *sa = (const struct sockaddr *)&a->addr;
  if (sa->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof(host));
    snprintf(buf, len, "%s/%d", host, IPV6_HOST_BITS);
  } else {
    inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
    snprintf(buf, len, "%s/%d", host, IPV4_HOST_BITS);
  }
}

static int family_of(const mt_sockaddr *a) {
  return ((const struct sockaddr *)&a->addr)->sa_family;
}

static uint16_t port_of(const mt_sockaddr *a) {
  return mt_sockaddr_port((const struct sockaddr *)&a->addr);
}

/* 127.0.0.1 or ::1: already covered by the loopback RETURN. */
static int is_loopback_host(const mt_sockaddr *a) {
  const struct sockaddr *sa = (const struct sockaddr *)&a->addr;
  if (sa->sa_family == AF_INET)
    return ((const struct sockaddr_in *)sa)->sin_addr.s_addr == htonl(INADDR_LOOPBACK);
  if (sa->sa_family == AF_INET6)
    return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
  return 0;
}

static int list_has(const uint16_t *ports, size_t n, uint16_t port) {
  for (size_t i = 0; i < n; i++) {
    if (ports[i] == port) return 1;
  }
  return 0;
}

/* ---- rule text --------------------------------------------------------- */

static void emit_header(strbuf *b) {
  sb_printf(b, "*nat\n");
  /* With --noflush, declaring a chain creates it or, when it exists, flushes it. */
  for (size_t i = 0; i < NUM_CHAINS; i++) sb_printf(b, ":%s - [0:0]\n", our_chains[i]);
}

/* Ports MTLSD_INBOUND returns for: the excluded ones, then the agent's own
 * inbound listeners (traffic addressed to a listener directly, such as a
 * fixed app_port mapping, must keep its own port). */
static int inbound_port_returns(const mt_config *c, uint16_t port, size_t upto_listener) {
  const mt_port_list *ex = &c->interception.exclude_inbound_ports;
  if (list_has(ex->ports, ex->count, port)) return 1;
  for (size_t i = 0; i < upto_listener; i++) {
    if (port_of(&c->inbound_listeners[i].listen) == port) return 1;
  }
  return 0;
}

static void emit_inbound(strbuf *b, const mt_config *c) {
  const mt_interception_config *ic = &c->interception;
  const char *ret = "-A " MT_CHAIN_INBOUND " -p tcp -m tcp --dport %u -j RETURN\n";
  for (size_t i = 0; i < ic->exclude_inbound_ports.count; i++) {
    uint16_t p = ic->exclude_inbound_ports.ports[i];
    if (!list_has(ic->exclude_inbound_ports.ports, i, p)) sb_printf(b, ret, p);
  }
  for (size_t i = 0; i < c->num_inbound_listeners; i++) {
    uint16_t p = port_of(&c->inbound_listeners[i].listen);
    if (!inbound_port_returns(c, p, i)) sb_printf(b, ret, p);
  }
  if (ic->include_inbound_ports.all) {
    sb_printf(b, "-A " MT_CHAIN_INBOUND " -p tcp -j " MT_CHAIN_IN_REDIRECT "\n");
    return;
  }
  for (size_t i = 0; i < ic->include_inbound_ports.count; i++) {
    uint16_t p = ic->include_inbound_ports.ports[i];
    if (list_has(ic->include_inbound_ports.ports, i, p)) continue;
    if (inbound_port_returns(c, p, c->num_inbound_listeners)) continue; /* returned above */
    sb_printf(b, "-A " MT_CHAIN_INBOUND " -p tcp -m tcp --dport %u -j " MT_CHAIN_IN_REDIRECT "\n",
              p);
  }
}

/* Outbound listeners reachable through a local address other than the
 * loopback one: an app dialling one directly (a fixed destination mapping
 * on 0.0.0.0) must reach it, not be captured and wrapped twice. Local
 * destinations leave through lo. */
static void emit_output_listener_returns(strbuf *b, const mt_config *c) {
  for (size_t i = 0; i < c->num_outbound_listeners; i++) {
    const mt_sockaddr *l = &c->outbound_listeners[i].listen;
    if (is_loopback_host(l)) continue;
    int seen = 0;
    for (size_t j = 0; j < i; j++) {
      const mt_sockaddr *e = &c->outbound_listeners[j].listen;
      seen |= !is_loopback_host(e) && port_of(e) == port_of(l);
    }
    if (!seen)
      sb_printf(b, "-A " MT_CHAIN_OUTPUT " -o lo -p tcp -m tcp --dport %u -j RETURN\n", port_of(l));
  }
}

/* The control plane and the excluded destinations are never captured. */
static void emit_outbound_returns(strbuf *b, const mt_config *c, int family, const char *chain) {
  const mt_interception_config *ic = &c->interception;
  char text[INET6_ADDRSTRLEN + 8];
  mt_sockaddr cp;
  if (c->has_control_plane && c->cp_address != NULL && mt_sockaddr_parse(c->cp_address, &cp, 1) &&
      family_of(&cp) == family) {
    format_host(&cp, text, sizeof(text));
    sb_printf(b, "-A %s -d %s -p tcp -m tcp --dport %u -j RETURN\n", chain, text, port_of(&cp));
  }
  for (size_t i = 0; i < ic->exclude_outbound_cidrs.count; i++) {
    const mt_cidr *x = &ic->exclude_outbound_cidrs.cidrs[i];
    if (x->family != family) continue;
    format_cidr(x, text, sizeof(text));
    if (x->prefix_len == 0)
      sb_printf(b, "-A %s -j RETURN\n", chain);
    else
      sb_printf(b, "-A %s -d %s -j RETURN\n", chain, text);
  }
  for (size_t i = 0; i < ic->exclude_outbound_ports.count; i++) {
    uint16_t p = ic->exclude_outbound_ports.ports[i];
    if (!list_has(ic->exclude_outbound_ports.ports, i, p))
      sb_printf(b, "-A %s -p tcp -m tcp --dport %u -j RETURN\n", chain, p);
  }
  if (ic->include_outbound_cidrs.all) {
    sb_printf(b, "-A %s -j " MT_CHAIN_REDIRECT "\n", chain);
    return;
  }
  for (size_t i = 0; i < ic->include_outbound_cidrs.count; i++) {
    const mt_cidr *x = &ic->include_outbound_cidrs.cidrs[i];
    if (x->family != family) continue;
    format_cidr(x, text, sizeof(text));
    if (x->prefix_len == 0)
      sb_printf(b, "-A %s -j " MT_CHAIN_REDIRECT "\n", chain);
    else
      sb_printf(b, "-A %s -d %s -j " MT_CHAIN_REDIRECT "\n", chain, text);
  }
}

static void emit_output(strbuf *b, const mt_config *c, int family) {
  const mt_interception_config *ic = &c->interception;
  char text[INET6_ADDRSTRLEN + 8];
  sb_printf(b, "-A " MT_CHAIN_OUTPUT " -m owner --uid-owner %d -j RETURN\n", ic->proxy_uid);
  if (ic->has_proxy_gid)
    sb_printf(b, "-A " MT_CHAIN_OUTPUT " -m owner --gid-owner %d -j RETURN\n", ic->proxy_gid);
  if (family_of(&ic->app_source_address) == family) {
    format_host(&ic->app_source_address, text, sizeof(text));
    sb_printf(b, "-A " MT_CHAIN_OUTPUT " -s %s -j RETURN\n", text);
  }
  sb_printf(b, "-A " MT_CHAIN_OUTPUT " -d %s -j RETURN\n",
            family == AF_INET6 ? "::1/128" : "127.0.0.1/32");
  emit_output_listener_returns(b, c);
  emit_outbound_returns(b, c, family, MT_CHAIN_OUTPUT);
}

/* Node mode, from PREROUTING: a packet from one of our pods is outbound
 * (MTLSD_NODE_OUT, which also catches pod-to-pod calls on this node); one
 * for our pods from anywhere else is inbound. Packets the agent itself
 * sends never pass PREROUTING, so no owner match is needed (nor allowed). */
static void emit_node(strbuf *b, const mt_config *c, const mt_cidr_list *pods, int family) {
  const mt_interception_config *ic = &c->interception;
  char text[INET6_ADDRSTRLEN + 8];
  for (size_t i = 0; i < pods->count; i++) {
    const mt_cidr *x = &pods->cidrs[i];
    if (x->family != family) continue;
    format_cidr(x, text, sizeof(text));
    sb_printf(b, "-A " MT_CHAIN_INBOUND " -s %s -j " MT_CHAIN_NODE_OUT "\n", text);
  }
  const char *ret = "-A " MT_CHAIN_INBOUND " -p tcp -m tcp --dport %u -j RETURN\n";
  for (size_t i = 0; i < ic->exclude_inbound_ports.count; i++) {
    uint16_t p = ic->exclude_inbound_ports.ports[i];
    if (!list_has(ic->exclude_inbound_ports.ports, i, p)) sb_printf(b, ret, p);
  }
  for (size_t i = 0; i < pods->count; i++) {
    const mt_cidr *x = &pods->cidrs[i];
    if (x->family != family) continue;
    format_cidr(x, text, sizeof(text));
    if (ic->include_inbound_ports.all) {
      sb_printf(b, "-A " MT_CHAIN_INBOUND " -d %s -j " MT_CHAIN_IN_REDIRECT "\n", text);
      continue;
    }
    for (size_t j = 0; j < ic->include_inbound_ports.count; j++) {
      uint16_t p = ic->include_inbound_ports.ports[j];
      if (!list_has(ic->include_inbound_ports.ports, j, p))
        sb_printf(b,
                  "-A " MT_CHAIN_INBOUND " -d %s -p tcp -m tcp --dport %u -j " MT_CHAIN_IN_REDIRECT
                  "\n",
                  text, p);
    }
  }
  emit_outbound_returns(b, c, family, MT_CHAIN_NODE_OUT);
}

/* One jump from a built-in chain: add it when missing, delete extras. */
static void emit_single_jump(strbuf *b, const char *jump, unsigned installed) {
  if (installed == 0) sb_printf(b, "-A %s\n", jump);
  for (unsigned k = 1; k < installed; k++) sb_printf(b, "-D %s\n", jump);
}

/* Node mode shares PREROUTING with kube-proxy, whose Service DNAT would
 * otherwise decide first (the nat table stops at the first target): our jump
 * goes to the top, re-inserted there on every apply. */
static void emit_first_jump(strbuf *b, const char *chain, const char *rule, unsigned installed) {
  for (unsigned k = 0; k < installed; k++) sb_printf(b, "-D %s %s\n", chain, rule);
  sb_printf(b, "-I %s 1 %s\n", chain, rule);
}

char *mt_redirect_install_text(const mt_config *c, const mt_cidr_list *pods, int family,
                               const mt_redirect_state *now) {
  const mt_interception_config *ic = &c->interception;
  strbuf b = {NULL, 0, 0, 0};
  if (pods == NULL) pods = &ic->node_pod_cidrs;
  int node = pods->count > 0;
  emit_header(&b);
  if (node)
    emit_node(&b, c, pods, family);
  else
    emit_inbound(&b, c);
  sb_printf(&b, "-A " MT_CHAIN_IN_REDIRECT " -p tcp -j REDIRECT --to-ports %u\n", ic->inbound_port);
  if (!node) emit_output(&b, c, family);
  sb_printf(&b, "-A " MT_CHAIN_REDIRECT " -p tcp -j REDIRECT --to-ports %u\n", ic->outbound_port);
  if (node)
    emit_first_jump(&b, "PREROUTING", "-p tcp -j " MT_CHAIN_INBOUND, now->prerouting_jumps);
  else
    emit_single_jump(&b, PREROUTING_JUMP, now->prerouting_jumps);
  /* Node mode leaves the node's own traffic alone: no OUTPUT jump at all. */
  if (node)
    for (unsigned k = 0; k < now->output_jumps; k++) sb_printf(&b, "-D %s\n", OUTPUT_JUMP);
  else
    emit_single_jump(&b, OUTPUT_JUMP, now->output_jumps);
  sb_printf(&b, "COMMIT\n");
  return sb_take(&b);
}

char *mt_redirect_remove_text(const mt_redirect_state *now) {
  strbuf b = {NULL, 0, 0, 0};
  if (now->prerouting_jumps == 0 && now->output_jumps == 0 && now->chains == 0) return sb_take(&b);
  /* The declarations create any missing chain, so every -X below succeeds;
   * they also flush the chains, dropping the references between them. */
  emit_header(&b);
  for (unsigned k = 0; k < now->prerouting_jumps; k++) sb_printf(&b, "-D %s\n", PREROUTING_JUMP);
  for (unsigned k = 0; k < now->output_jumps; k++) sb_printf(&b, "-D %s\n", OUTPUT_JUMP);
  for (size_t i = 0; i < NUM_CHAINS; i++) sb_printf(&b, "-X %s\n", our_chains[i]);
  sb_printf(&b, "COMMIT\n");
  return sb_take(&b);
}

static int line_is(const char *line, size_t len, const char *prefix, const char *rest) {
  size_t p = strlen(prefix), r = strlen(rest);
  return len == p + r && memcmp(line, prefix, p) == 0 && memcmp(line + p, rest, r) == 0;
}

void mt_redirect_state_parse(const char *listing, mt_redirect_state *out) {
  memset(out, 0, sizeof(*out));
  for (const char *line = listing; *line != '\0';) {
    const char *end = strchr(line, '\n');
    size_t len = end ? (size_t)(end - line) : strlen(line);
    if (len > 0 && line[len - 1] == '\r') len--;
    if (line_is(line, len, "-A ", PREROUTING_JUMP)) out->prerouting_jumps++;
    if (line_is(line, len, "-A ", OUTPUT_JUMP)) out->output_jumps++;
    for (size_t i = 0; i < NUM_CHAINS; i++) {
      if (line_is(line, len, "-N ", our_chains[i])) out->chains++;
    }
    line = end ? end + 1 : line + len;
  }
}

int mt_redirect_wants_ipv6(const mt_config *c, const mt_cidr_list *pods) {
  for (size_t i = 0; i < c->num_inbound_listeners; i++)
    if (family_of(&c->inbound_listeners[i].listen) == AF_INET6) return 1;
  for (size_t i = 0; i < c->num_outbound_listeners; i++)
    if (family_of(&c->outbound_listeners[i].listen) == AF_INET6) return 1;
  mt_sockaddr cp;
  if (c->has_control_plane && c->cp_address != NULL && mt_sockaddr_parse(c->cp_address, &cp, 1) &&
      family_of(&cp) == AF_INET6)
    return 1;
  if (!c->has_interception) return 0;
  const mt_interception_config *ic = &c->interception;
  if (family_of(&ic->app_source_address) == AF_INET6) return 1;
  for (size_t i = 0; i < ic->include_outbound_cidrs.count; i++)
    if (ic->include_outbound_cidrs.cidrs[i].family == AF_INET6) return 1;
  for (size_t i = 0; i < ic->exclude_outbound_cidrs.count; i++)
    if (ic->exclude_outbound_cidrs.cidrs[i].family == AF_INET6) return 1;
  if (pods == NULL) pods = &ic->node_pod_cidrs;
  for (size_t i = 0; i < pods->count; i++)
    if (pods->cidrs[i].family == AF_INET6) return 1;
  return 0;
}

/* ---- running iptables -------------------------------------------------- */

typedef struct {
  int status;    /* exit status; -1 when a signal ended it */
  int timed_out; /* killed after TOOL_TIMEOUT_MS */
  strbuf out, err;
} tool_result;

static void tool_result_dispose(tool_result *r) {
  free(r->out.data);
  free(r->err.data);
  memset(r, 0, sizeof(*r));
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Reads what is there; closes |*fd| at end of file. */
static void drain(int *fd, strbuf *into) {
  char chunk[READ_CHUNK];
  ssize_t n = read(*fd, chunk, sizeof(chunk));
  if (n > 0) {
    if (into->len < TOOL_OUTPUT_MAX) sb_bytes(into, chunk, (size_t)n);
  } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
    close_fd(fd);
  }
}

/* Feeds |input| to the child and collects its output until both output
 * pipes close or the deadline passes (then the child is killed). */
static void exchange(pid_t pid, int in_fd, const char *input, int out_fd, int err_fd,
                     tool_result *r) {
  size_t left = strlen(input);
  fcntl(in_fd, F_SETFL, fcntl(in_fd, F_GETFL) | O_NONBLOCK);
  if (left == 0) close_fd(&in_fd);
  long long deadline = now_ms() + TOOL_TIMEOUT_MS;
  while (out_fd >= 0 || err_fd >= 0) {
    long long wait_ms = deadline - now_ms();
    if (wait_ms <= 0) {
      r->timed_out = 1;
      kill(pid, SIGKILL);
      break;
    }
    struct pollfd fds[3] = {{in_fd, POLLOUT, 0}, {out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
    int n = poll(fds, 3, (int)wait_ms);
    if (n < 0 && errno != EINTR) break;
    if (n <= 0) continue;
    if (in_fd >= 0 && fds[0].revents != 0) {
      ssize_t w = write(in_fd, input, left);
      if (w > 0) {
        input += w;
        left -= (size_t)w;
      }
      if (left == 0 || (w < 0 && errno != EINTR && errno != EAGAIN)) close_fd(&in_fd);
    }
    if (out_fd >= 0 && fds[1].revents != 0) drain(&out_fd, &r->out);
    if (err_fd >= 0 && fds[2].revents != 0) drain(&err_fd, &r->err);
  }
  close_fd(&in_fd);
  close_fd(&out_fd);
  close_fd(&err_fd);
}

/* The child's side: wire the pipes to 0/1/2 and exec; on failure send errno
 * back through |report_fd| (close-on-exec, so success closes it silently). */
static void __attribute__((noreturn))
exec_child(char *const argv[], const int in[2], const int out[2], const int err[2], int report_fd) {
  signal(SIGPIPE, SIG_DFL);
  if (dup2(in[0], STDIN_FILENO) >= 0 && dup2(out[1], STDOUT_FILENO) >= 0 &&
      dup2(err[1], STDERR_FILENO) >= 0)
    execvp(argv[0], argv);
  int e = errno;
  ssize_t ignored = write(report_fd, &e, sizeof(e));
  (void)ignored;
  _exit(127);
}

/* Runs argv[0] (searched on PATH) with |input| on stdin. Returns 1 once it
 * ran (its status is in |r|), 0 with |why| when it could not be started. */
static int run_tool(char *const argv[], const char *input, tool_result *r, char *why,
                    size_t why_len) {
  memset(r, 0, sizeof(*r));
  int p[4][2] = {{-1, -1}, {-1, -1}, {-1, -1}, {-1, -1}}; /* stdin, stdout, stderr, report */
  int ok = 1;
  for (int i = 0; i < 4 && ok; i++) ok = pipe2(p[i], O_CLOEXEC) == 0;
  pid_t pid = ok ? fork() : -1;
  if (pid == 0) exec_child(argv, p[0], p[1], p[2], p[3][1]);
  int fork_errno = errno;
  close_fd(&p[0][0]);
  close_fd(&p[1][1]);
  close_fd(&p[2][1]);
  close_fd(&p[3][1]);
  if (pid < 0) {
    snprintf(why, why_len, "cannot run '%s': %s", argv[0], strerror(fork_errno));
    for (int i = 0; i < 4; i++) {
      close_fd(&p[i][0]);
      close_fd(&p[i][1]);
    }
    return 0;
  }
  exchange(pid, p[0][1], input, p[1][0], p[2][0], r);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  int exec_errno = 0;
  ssize_t n = read(p[3][0], &exec_errno, sizeof(exec_errno));
  close_fd(&p[3][0]);
  if (n == (ssize_t)sizeof(exec_errno)) {
    snprintf(why, why_len, "cannot run '%s': %s", argv[0], strerror(exec_errno));
    tool_result_dispose(r);
    return 0;
  }
  r->status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return 1;
}

/* The tools of one address family. */
typedef struct {
  int family;
  const char *name; /* "IPv4" */
  const char *list_tool;
  const char *restore_tool;
} family_tools;

static const family_tools ipv4_tools = {AF_INET, "IPv4", "iptables", "iptables-restore"};
static const family_tools ipv6_tools = {AF_INET6, "IPv6", "ip6tables", "ip6tables-restore"};

/* The line number iptables-restore blames ("Error occurred at line: N",
 * or "line N: ..." from the nf_tables variant); 0 when there is none. */
static long blamed_line(const char *stderr_text) {
  for (const char *at = strstr(stderr_text, "line"); at != NULL; at = strstr(at + 1, "line")) {
    const char *p = at + strlen("line");
    if (*p == ':') p++;
    while (*p == ' ') p++;
    if (*p >= '1' && *p <= '9') return strtol(p, NULL, 10);
  }
  return 0;
}

/* Quotes the line of our input that iptables-restore blamed, if any. */
static void quote_failed_line(const char *stderr_text, const char *input, char *buf, size_t len) {
  buf[0] = '\0';
  long want = blamed_line(stderr_text);
  const char *line = input;
  for (long k = 1; k < want && line != NULL; k++) {
    line = strchr(line, '\n');
    if (line != NULL) line++;
  }
  if (want < 1 || line == NULL || *line == '\0') return;
  const char *end = strchr(line, '\n');
  int n = end ? (int)(end - line) : (int)strlen(line);
  snprintf(buf, len, "\n  line %ld of the input: %.*s", want, n, line);
}

/* Describes a run that did not succeed: status and the tool's own words. */
static void describe_failure(const char *what, const tool_result *r, const char *input, char *why,
                             size_t why_len) {
  char status[64];
  if (r->timed_out)
    snprintf(status, sizeof(status), "timed out after %d ms", TOOL_TIMEOUT_MS);
  else if (r->status < 0)
    snprintf(status, sizeof(status), "killed by a signal");
  else
    snprintf(status, sizeof(status), "exit status %d", r->status);
  const char *text = r->err.data ? r->err.data : "";
  size_t n = strlen(text);
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' ')) n--;
  char quoted[512] = "";
  if (input != NULL) quote_failed_line(text, input, quoted, sizeof(quoted));
  snprintf(why, why_len, "`%s` failed (%s)%s%.*s%s", what, status, n ? ": " : "", (int)n, text,
           quoted);
}

static int read_state(const family_tools *f, mt_redirect_state *st, char *why, size_t why_len) {
  char *argv[] = {(char *)f->list_tool, XTABLES_WAIT, "-t", "nat", "-S", NULL};
  tool_result r;
  if (!run_tool(argv, "", &r, why, why_len)) return 0;
  int ok = r.status == 0 && !r.timed_out && !r.out.oom;
  if (ok) {
    mt_redirect_state_parse(r.out.data ? r.out.data : "", st);
  } else {
    char what[64];
    snprintf(what, sizeof(what), "%s -t nat -S", f->list_tool);
    describe_failure(what, &r, NULL, why, why_len);
  }
  tool_result_dispose(&r);
  return ok;
}

static int restore(const family_tools *f, const char *text, char *why, size_t why_len) {
  char *argv[] = {(char *)f->restore_tool, XTABLES_WAIT, "--noflush", NULL};
  tool_result r;
  if (!run_tool(argv, text, &r, why, why_len)) return 0;
  int ok = r.status == 0 && !r.timed_out;
  if (!ok) {
    char what[64];
    snprintf(what, sizeof(what), "%s --noflush", f->restore_tool);
    describe_failure(what, &r, text, why, why_len);
  }
  tool_result_dispose(&r);
  return ok;
}

static int install(const mt_config *c, const mt_cidr_list *pods, const family_tools *f, char *why,
                   size_t why_len) {
  mt_redirect_state now;
  if (!read_state(f, &now, why, why_len)) return 0;
  char *text = mt_redirect_install_text(c, pods, f->family, &now);
  if (text == NULL) {
    snprintf(why, why_len, "out of memory");
    return 0;
  }
  int ok = restore(f, text, why, why_len);
  free(text);
  if (ok)
    printf("%s: interception rules installed (outbound -> :%u, inbound -> :%u)\n", f->name,
           c->interception.outbound_port, c->interception.inbound_port);
  return ok;
}

/* |required| = 0: a family whose tables cannot be listed (no ip6tables, no
 * IPv6 in the kernel) holds nothing of ours, so there is nothing to do. */
static int uninstall(const family_tools *f, int required, char *why, size_t why_len) {
  mt_redirect_state now;
  if (!read_state(f, &now, why, why_len)) return !required;
  char *text = mt_redirect_remove_text(&now);
  if (text == NULL) {
    snprintf(why, why_len, "out of memory");
    return 0;
  }
  int ok = 1;
  if (*text == '\0') {
    if (required) printf("%s: no interception rules installed\n", f->name);
  } else if ((ok = restore(f, text, why, why_len))) {
    printf("%s: interception rules removed\n", f->name);
  }
  free(text);
  return ok;
}

/* ---- the command ------------------------------------------------------- */

typedef enum { ACTION_NONE, ACTION_APPLY, ACTION_REMOVE, ACTION_PRINT } redirect_action;

static void usage(FILE *out) {
  fprintf(out,
          "usage: mtlsd init-iptables --config FILE (--apply | --remove | --print)\n"
          "  --apply   install the interception rules (nat table; idempotent)\n"
          "  --remove  delete them (nothing installed is not an error)\n"
          "  --print   write the iptables-restore input to stdout, change nothing\n");
}

/* Fork/exec wires pipes to fds 0-2; if one of them is closed in our process,
 * a pipe could land there and be clobbered. */
static void ensure_std_fds(void) {
  for (int fd = 0; fd <= STDERR_FILENO; fd++) {
    if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0) return;
  }
}

static void on_node_info_retry(void *ctx, const char *why, int64_t delay_ms) {
  (void)ctx;
  fprintf(stderr,
          "mtlsd init-iptables: asking the control plane for this node's pod CIDRs: %s; "
          "retrying in %.1f s\n",
          why, (double)delay_ms / 1000);
}

/* interception.node_pod_cidrs: from_control_plane. Says what it got (a
 * comment line ahead of --print's rules, a line of its own for --apply),
 * or why there is nothing to install. Returns 1 or 0. */
static int node_pod_cidrs_from_cp(const mt_config *c, redirect_action action, mt_node_info *node) {
  char why[ERR_TEXT_MAX];
  if (!mt_node_info_fetch(c, on_node_info_retry, NULL, node, why, sizeof(why))) {
    fprintf(stderr,
            "mtlsd init-iptables: cannot learn this node's pod CIDRs from the control plane: %s; "
            "%s\n",
            why, action == ACTION_APPLY ? "no rules installed or changed" : "nothing to print");
    return 0;
  }
  FILE *out = stdout;
  fprintf(out,
          "%snode pod CIDRs from the control plane (node %s):", action == ACTION_PRINT ? "# " : "",
          node->node_name);
  for (size_t i = 0; i < node->num_cidrs; i++) {
    char text[INET6_ADDRSTRLEN + 8];
    format_cidr(&node->cidrs[i], text, sizeof(text));
    fprintf(out, "%s %s", i ? "," : "", text);
  }
  fprintf(out, "\n");
  return 1;
}

static int print_rules(const mt_config *c, const mt_cidr_list *pods) {
  mt_redirect_state fresh = {0, 0, 0};
  int ok = 1;
  for (int v6 = 0; v6 <= mt_redirect_wants_ipv6(c, pods) && ok; v6++) {
    char *text = mt_redirect_install_text(c, pods, v6 ? AF_INET6 : AF_INET, &fresh);
    ok = text != NULL;
    if (ok) {
      if (v6) fputs("# IPv6: ip6tables-restore --noflush\n", stdout);
      fputs(text, stdout);
    }
    free(text);
  }
  if (!ok) fprintf(stderr, "mtlsd init-iptables: out of memory\n");
  return ok && fflush(stdout) == 0 ? 0 : 1;
}

static int run_action(const mt_config *c, const mt_cidr_list *pods, redirect_action action) {
  char why[ERR_TEXT_MAX];
  int v6 = mt_redirect_wants_ipv6(c, pods);
  int ok;
  if (action == ACTION_APPLY) {
    ok = install(c, pods, &ipv4_tools, why, sizeof(why));
    /* IPv6 follows the config: installed when it names IPv6 addresses,
     * otherwise any earlier IPv6 rules of ours are removed. */
    if (ok)
      ok = v6 ? install(c, pods, &ipv6_tools, why, sizeof(why))
              : uninstall(&ipv6_tools, 0, why, sizeof(why));
  } else {
    ok =
        uninstall(&ipv4_tools, 1, why, sizeof(why)) && uninstall(&ipv6_tools, v6, why, sizeof(why));
  }
  if (!ok) fprintf(stderr, "mtlsd init-iptables: %s\n", why);
  return ok ? 0 : 1;
}

int mt_redirect_main(int argc, char **argv) {
  static const struct option options[] = {
      {"config", required_argument, NULL, 'c'}, {"apply", no_argument, NULL, 'a'},
      {"remove", no_argument, NULL, 'r'},       {"print", no_argument, NULL, 'p'},
      {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
  };
  const char *path = NULL;
  redirect_action action = ACTION_NONE;
  int actions = 0, opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) != -1) {
    switch (opt) {
      case 'c': path = optarg; break;
      case 'a': action = ACTION_APPLY, actions++; break;
      case 'r': action = ACTION_REMOVE, actions++; break;
      case 'p': action = ACTION_PRINT, actions++; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  }
  if (path == NULL || actions != 1 || optind != argc) {
    usage(stderr);
    return 2;
  }
  ensure_std_fds();
  char err[ERR_TEXT_MAX];
  mt_config *c = mt_config_load(path, err, sizeof(err));
  if (c == NULL) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  int rc;
  mt_node_info node;
  mt_cidr_list pods = {0, node.cidrs, 0};
  if (!c->has_interception && action != ACTION_REMOVE) {
    fprintf(stderr, "%s: no 'interception' section: nothing to install\n", path);
    rc = 1;
  } else if (action != ACTION_REMOVE && c->interception.node_pod_cidrs_from_cp &&
             !node_pod_cidrs_from_cp(c, action, &node)) {
    rc = 1; /* fail closed: no layout without its capture */
  } else {
    pods.count = c->interception.node_pod_cidrs_from_cp ? node.num_cidrs : 0;
    const mt_cidr_list *which = pods.count > 0 ? &pods : NULL;
    rc = action == ACTION_PRINT ? print_rules(c, which) : run_action(c, which, action);
  }
  mt_config_free(c);
  return rc;
}
