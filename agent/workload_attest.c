/* workload_attest.c: uid/gid selectors, a caller's network namespace read
 * from /proc with the PID-reuse checks, and the pod those addresses name. */
#include "agent/workload_attest.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/errmsg.h"

/* Room for "[1000, 1001, ...]" in a refusal; longer lists end in "...". */
#define ID_LIST_TEXT_MAX 160
/* /proc/<pid>/stat and /proc/self/fdinfo/<fd> are well under a page. */
#define SMALL_PROC_FILE_MAX 4096
#define FIRST_READ_BYTES 16384
/* Field 22 of /proc/<pid>/stat (starttime) is the 20th after the ")" that
 * ends the command name (field 2), field 3 (state) being the 1st. */
#define STAT_STARTTIME_AFTER_COMM 20
#define PROC_PATH_MAX 64

/* ---- sidecar mode -------------------------------------------------------------- */

struct mt_attest_selector {
  size_t uid_count, gid_count;
  uid_t *uids;
  gid_t *gids;
};

_Static_assert(sizeof(uid_t) == sizeof(unsigned) && sizeof(gid_t) == sizeof(unsigned),
               "ids are formatted as unsigned");

static void *copy_array(const void *from, size_t count, size_t size) {
  if (count == 0) return NULL;
  void *to = calloc(count, size);
  if (to != NULL) memcpy(to, from, count * size);
  return to;
}

mt_attest_selector *mt_attest_selector_new(const uid_t *uids, size_t uid_count, const gid_t *gids,
                                           size_t gid_count) {
  mt_attest_selector *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->uids = copy_array(uids, uid_count, sizeof(uid_t));
  s->gids = copy_array(gids, gid_count, sizeof(gid_t));
  s->uid_count = uid_count;
  s->gid_count = gid_count;
  if ((uid_count > 0 && s->uids == NULL) || (gid_count > 0 && s->gids == NULL)) {
    mt_attest_selector_free(s);
    return NULL;
  }
  return s;
}

void mt_attest_selector_free(mt_attest_selector *s) {
  if (s == NULL) return;
  free(s->uids);
  free(s->gids);
  free(s);
}

static int listed(const unsigned *ids, size_t count, unsigned id) {
  for (size_t i = 0; i < count; i++)
    if (ids[i] == id) return 1;
  return 0;
}

/* "[1000, 1001]" into |buf|, cut with "...]" when it does not fit. */
static void format_ids(const unsigned *ids, size_t count, char *buf, size_t len) {
  size_t used = (size_t)snprintf(buf, len, "[");
  for (size_t i = 0; i < count; i++) {
    int n = snprintf(buf + used, len - used, "%s%u", i > 0 ? ", " : "", ids[i]);
    if (n < 0 || (size_t)n >= len - used - 1) { /* keep room for "]" */
      snprintf(buf + len - 5, 5, "...]");
      return;
    }
    used += (size_t)n;
  }
  snprintf(buf + used, len - used, "]");
}

int mt_attest_selector_admits(const mt_attest_selector *s, const mt_peer_cred *cred, char *why,
                              size_t why_len) {
  size_t group_count = cred->groups != NULL ? cred->group_count : 0;
  if (s != NULL) {
    if (listed(s->uids, s->uid_count, cred->uid) || listed(s->gids, s->gid_count, cred->gid))
      return 1;
    for (size_t i = 0; i < group_count; i++)
      if (listed(s->gids, s->gid_count, cred->groups[i])) return 1;
  }
  char uids[ID_LIST_TEXT_MAX], gids[ID_LIST_TEXT_MAX],
      groups[sizeof(" groups ") + ID_LIST_TEXT_MAX] = "";
  format_ids(s != NULL ? s->uids : NULL, s != NULL ? s->uid_count : 0, uids, sizeof(uids));
  format_ids(s != NULL ? s->gids : NULL, s != NULL ? s->gid_count : 0, gids, sizeof(gids));
  if (group_count > 0) {
    char list[ID_LIST_TEXT_MAX];
    format_ids(cred->groups, group_count, list, sizeof(list));
    snprintf(groups, sizeof(groups), " groups %s", list);
  }
  mt_errmsg_set(why, why_len,
                "uid %u gid %u%s is not in workload_api.allowed_uids %s or allowed_gids %s",
                (unsigned)cred->uid, (unsigned)cred->gid, groups, uids, gids);
  return 0;
}

/* ---- reading /proc ------------------------------------------------------------- */

/* The whole of open file |fd| into a new NUL-terminated buffer (the caller
 * frees it), at most |max| bytes. Returns 1, or 0 with errno set (EFBIG
 * when larger). */
static int read_fd(int fd, size_t max, char **out, size_t *out_len) {
  /* Room for one byte more than |max|, to see that a file is larger. */
  size_t limit = max + 1, cap = limit < FIRST_READ_BYTES ? limit : FIRST_READ_BYTES, len = 0;
  char *buf = malloc(cap + 1);
  int failure = buf == NULL ? ENOMEM : 0;
  while (failure == 0) {
    if (len == cap && cap < limit) {
      size_t grown = cap * 2 < limit ? cap * 2 : limit;
      char *bigger = realloc(buf, grown + 1);
      if (bigger == NULL) {
        failure = ENOMEM;
        break;
      }
      buf = bigger;
      cap = grown;
    }
    ssize_t n = read(fd, buf + len, cap - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) failure = errno;
    if (n <= 0) break;
    len += (size_t)n;
    if (len > max) failure = EFBIG;
  }
  if (failure != 0) {
    free(buf);
    errno = failure;
    return 0;
  }
  buf[len] = '\0';
  *out = buf;
  *out_len = len;
  return 1;
}

static int open_file(int dir, const char *name) {
  return openat(dir, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
}

/* read_fd of file |name| under |dir|. */
static int read_file(int dir, const char *name, size_t max, char **out, size_t *out_len) {
  int fd = open_file(dir, name);
  if (fd < 0) return 0;
  int ok = read_fd(fd, max, out, out_len);
  int saved = errno;
  close(fd);
  errno = saved;
  return ok;
}

/* State (field 3) and start time (field 22) of the process behind |dir|. */
static int read_start_time(int dir, char *state, unsigned long long *start) {
  char *text;
  size_t len;
  if (!read_file(dir, "stat", SMALL_PROC_FILE_MAX, &text, &len)) return 0;
  /* The command name (field 2) may hold spaces and ")": fields follow the last ")". */
  const char *p = strrchr(text, ')');
  int ok = p != NULL && p[1] == ' ' && p[2] != '\0' && p[3] == ' ';
  if (ok) {
    *state = p[2];
    p += 3; /* the space before the 2nd field after ")" */
    for (int field = 2; ok && field < STAT_STARTTIME_AFTER_COMM; field++) {
      p = strchr(p + 1, ' ');
      ok = p != NULL;
    }
  }
  if (ok) {
    char *end;
    errno = 0;
    *start = strtoull(p + 1, &end, 10);
    ok = errno == 0 && end != p + 1 && (*end == ' ' || *end == '\n' || *end == '\0');
  }
  free(text);
  if (!ok) errno = EPROTO;
  return ok;
}

/* The "Pid:" of |pidfd| as /proc/self/fdinfo shows it: the process's PID in
 * our namespace, -1 once it has been reaped, 0 when outside our namespace. */
static int pidfd_pid(int pidfd, long *pid) {
  char path[PROC_PATH_MAX], *text;
  size_t len;
  snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pidfd);
  if (!read_file(AT_FDCWD, path, SMALL_PROC_FILE_MAX, &text, &len)) return 0;
  int ok = 0;
  for (char *line = text; line != NULL && *line != '\0';) {
    char *next = strchr(line, '\n');
    if (next != NULL) *next++ = '\0';
    if (strncmp(line, "Pid:\t", 5) == 0) {
      char *end;
      errno = 0;
      *pid = strtol(line + 5, &end, 10);
      ok = errno == 0 && end != line + 5 && *end == '\0';
      break;
    }
    line = next;
  }
  free(text);
  if (!ok) errno = EBADF; /* not a pidfd */
  return ok;
}

typedef enum { CALLER_SAME, CALLER_GONE, CALLER_UNKNOWN } caller_check;

/* Is |pid| still the process that connected? |err| only for CALLER_UNKNOWN.
 * The fdinfo first: it also tells a pidfd from any other fd (a plain file
 * polls readable too). */
static caller_check check_pidfd(int pidfd, pid_t pid, char *err, size_t err_len) {
  long now;
  if (!pidfd_pid(pidfd, &now)) {
    mt_errmsg_set(err, err_len, "caller pid %d: fd %d is not a pidfd (%s)", (int)pid, pidfd,
                  strerror(errno));
    return CALLER_UNKNOWN;
  }
  struct pollfd p = {.fd = pidfd, .events = POLLIN, .revents = 0};
  int ready;
  do ready = poll(&p, 1, 0);
  while (ready < 0 && errno == EINTR);
  if (ready < 0) {
    mt_errmsg_set(err, err_len, "caller pid %d: cannot poll its pidfd %d: %s", (int)pid, pidfd,
                  strerror(errno));
    return CALLER_UNKNOWN;
  }
  /* Readable: the process has exited. Not readable: it is alive, so the PID
   * read above is still its own. */
  return ready == 0 && now == (long)pid ? CALLER_SAME : CALLER_GONE;
}

static caller_check check_start_time(int dir, char state_before, unsigned long long before) {
  char state;
  unsigned long long after;
  if (state_before == 'Z' || !read_start_time(dir, &state, &after)) return CALLER_GONE;
  return state != 'Z' && after == before ? CALLER_SAME : CALLER_GONE;
}

typedef enum { READ_OK, READ_FAILED, READ_AGENT_NETNS } read_result;

/* Adds the addresses of one file under |dir| to |out|; READ_AGENT_NETNS,
 * without reading, when it is |agent|'s fib_trie. */
static read_result read_addresses(int dir, const char *name, const mt_netns_id *agent,
                                  mt_netns_addresses *out, pid_t pid, char *err, size_t err_len) {
  int is_fib_trie = strcmp(name, "net/fib_trie") == 0;
  char *text = NULL;
  size_t len = 0;
  int fd = open_file(dir, name), ok = fd >= 0;
  struct stat st;
  if (ok && is_fib_trie && fstat(fd, &st) == 0 && st.st_dev == agent->dev &&
      st.st_ino == agent->ino) {
    close(fd);
    return READ_AGENT_NETNS;
  }
  if (ok) ok = read_fd(fd, MT_ATTEST_MAX_FILE_BYTES, &text, &len);
  int saved = errno;
  if (fd >= 0) close(fd);
  if (!ok) {
    if (!is_fib_trie && saved == ENOENT) return READ_OK; /* IPv6 disabled */
    mt_errmsg_set(err, err_len, "caller pid %d: cannot read %s: %s", (int)pid, name,
                  saved == EFBIG ? "larger than MT_ATTEST_MAX_FILE_BYTES" : strerror(saved));
    return READ_FAILED;
  }
  char why[256];
  ok = is_fib_trie ? mt_proc_net_parse_fib_trie(text, len, out, why, sizeof(why))
                   : mt_proc_net_parse_if_inet6(text, len, out, why, sizeof(why));
  free(text);
  if (!ok) mt_errmsg_set(err, err_len, "caller pid %d: %s", (int)pid, why);
  return ok ? READ_OK : READ_FAILED;
}

/* The namespace of /proc/<|proc|>/ ("self" or a pid). */
static int netns_at(const char *proc, mt_netns_id *out, char *err, size_t err_len) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%s/net/fib_trie", proc);
  struct stat st;
  if (stat(path, &st) != 0) {
    mt_errmsg_set(err, err_len, "cannot stat %s: %s", path, strerror(errno));
    return 0;
  }
  out->dev = st.st_dev;
  out->ino = st.st_ino;
  return 1;
}

int mt_attest_agent_netns(mt_netns_id *out, char *err, size_t err_len) {
  return netns_at("self", out, err, err_len);
}

int mt_attest_netns_of(pid_t pid, mt_netns_id *out, char *err, size_t err_len) {
  char proc[24];
  snprintf(proc, sizeof(proc), "%ld", (long)pid);
  return netns_at(proc, out, err, err_len);
}

int mt_attest_read_netns(pid_t pid, int pidfd, const mt_netns_id *agent, mt_netns_addresses *out,
                         char *err, size_t err_len) {
  out->count = 0;
  if (pid <= 0) {
    mt_errmsg_set(err, err_len, "caller pid %d is not in the agent's PID namespace", (int)pid);
    return 0;
  }
  if (agent == NULL) { /* fail closed: the host check cannot be skipped */
    mt_errmsg_set(err, err_len, "caller pid %d: the agent's network namespace is unknown",
                  (int)pid);
    return 0;
  }
  char path[PROC_PATH_MAX];
  snprintf(path, sizeof(path), "/proc/%d", (int)pid);
  int dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) {
    if (errno == ENOENT)
      mt_errmsg_set(err, err_len, "caller pid %d exited before attestation", (int)pid);
    else
      mt_errmsg_set(err, err_len, "caller pid %d: cannot open %s: %s", (int)pid, path,
                    strerror(errno));
    return 0;
  }
  char state = 0;
  unsigned long long started = 0;
  read_result got = READ_OK;
  if (pidfd < 0 && !read_start_time(dir, &state, &started)) {
    mt_errmsg_set(err, err_len, "caller pid %d: cannot read stat: %s", (int)pid, strerror(errno));
    got = READ_FAILED;
  }
  if (got == READ_OK) got = read_addresses(dir, "net/fib_trie", agent, out, pid, err, err_len);
  if (got == READ_OK) got = read_addresses(dir, "net/if_inet6", agent, out, pid, err, err_len);
  /* Checked whatever the reads gave: a read fails when the process has
   * gone, and "exited" is then the reason to give. */
  char check_err[256];
  caller_check same = pidfd >= 0 ? check_pidfd(pidfd, pid, check_err, sizeof(check_err))
                                 : check_start_time(dir, state, started);
  close(dir);
  if (same == CALLER_GONE) {
    mt_errmsg_set(err, err_len, "caller pid %d exited during attestation", (int)pid);
  } else if (same == CALLER_UNKNOWN) {
    mt_errmsg_set(err, err_len, "%s", check_err);
  } else if (got == READ_AGENT_NETNS) {
    mt_errmsg_set(err, err_len,
                  "caller pid %d is in the agent's network namespace (host network), not a pod",
                  (int)pid);
  }
  if (same != CALLER_SAME || got != READ_OK) {
    out->count = 0;
    return 0;
  }
  return 1;
}

/* ---- which workload ------------------------------------------------------------ */

static void format_ip(const struct sockaddr *sa, char *buf, size_t len) {
  const void *raw = sa->sa_family == AF_INET6
                        ? (const void *)&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr
                        : (const void *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
  if (inet_ntop(sa->sa_family, raw, buf, (socklen_t)len) == NULL) snprintf(buf, len, "?");
}

int mt_attest_pick_workload(const mt_workloads *table, pid_t pid, const mt_netns_addresses *caller,
                            size_t *index, char *why, size_t why_len) {
  char addresses[256], ip[INET6_ADDRSTRLEN], other_ip[INET6_ADDRSTRLEN];
  mt_netns_addresses_format(caller, addresses, sizeof(addresses));
  size_t found = SIZE_MAX;
  for (size_t i = 0; i < mt_workloads_count(table); i++) {
    const struct sockaddr *listed_address = mt_workloads_address_at(table, i);
    if (!mt_netns_addresses_contain(caller, listed_address)) continue;
    if (found == SIZE_MAX) {
      found = i;
      continue;
    }
    const char *first_id = mt_workloads_spiffe_id_at(table, found);
    const char *this_id = mt_workloads_spiffe_id_at(table, i);
    if (strcmp(first_id, this_id) == 0) continue; /* one workload, two addresses */
    format_ip(mt_workloads_address_at(table, found), ip, sizeof(ip));
    format_ip(listed_address, other_ip, sizeof(other_ip));
    mt_errmsg_set(why, why_len, "caller pid %d has addresses of two workloads: %s (%s) and %s (%s)",
                  (int)pid, ip, first_id, other_ip, this_id);
    return 0;
  }
  if (found == SIZE_MAX) {
    mt_errmsg_set(why, why_len, "caller pid %d (addresses %s) is not a pod of this node", (int)pid,
                  addresses);
    return 0;
  }
  *index = found;
  return 1;
}
