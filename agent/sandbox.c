/* sandbox.c: capabilities, no_new_privs and the seccomp allowlist (see
 * sandbox.h for the order of the steps). Capabilities go through the raw
 * capget/capset calls: the agent needs no library for three bit masks. */
#include "agent/sandbox.h"

#include <errno.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define MT_SANDBOX_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MT_SANDBOX_ASAN 1
#endif
#endif

enum {
  DEFAULT_UNPRIVILEGED_PORT_START = 1024, /* the kernel's default */
  PORT_SYSCTL_TEXT_MAX = 32,
};

#define UNPRIVILEGED_PORT_START_PATH "/proc/sys/net/ipv4/ip_unprivileged_port_start"

/* What the serving agent calls, by group. Derived from `strace -f -c` and
 * from the kernel's audit records of a `security.seccomp: log` run over the
 * integration suites (plain and AddressSanitizer builds); see README "Least
 * privilege". socket and clone are added with argument checks below. */
static const int allowed[] = {
    /* Bytes on sockets, pipes, eventfds and files. */
    SCMP_SYS(read),
    SCMP_SYS(write),
    SCMP_SYS(readv),
    SCMP_SYS(writev),
    SCMP_SYS(pread64),
    SCMP_SYS(close),
    SCMP_SYS(lseek),
    SCMP_SYS(fcntl),
    SCMP_SYS(dup3), /* low_fds.c: admin connections moved onto reserved low numbers */
    SCMP_SYS(ioctl),
    /* Files read after start: config and certificate reloads, the control
     * plane's token, /etc/{hosts,resolv.conf,nsswitch.conf,gai.conf} for DNS,
     * /sys/devices/system/cpu for glibc's arena sizing. */
    SCMP_SYS(openat),
    SCMP_SYS(open),
    SCMP_SYS(newfstatat),
    SCMP_SYS(fstat),
    SCMP_SYS(stat),
    SCMP_SYS(lstat),
    SCMP_SYS(statx),
    SCMP_SYS(readlink),
    SCMP_SYS(access),
    SCMP_SYS(faccessat),
    SCMP_SYS(faccessat2),
    SCMP_SYS(getdents64),
    SCMP_SYS(unlink), /* the Workload API's socket file, removed at stop */
    SCMP_SYS(unlinkat),
    /* Memory: malloc, thread stacks, mem_trim's malloc_trim (madvise). */
    SCMP_SYS(mmap),
    SCMP_SYS(munmap),
    SCMP_SYS(mprotect),
    SCMP_SYS(mremap),
    SCMP_SYS(brk),
    SCMP_SYS(madvise),
    /* libev: epoll, its async pipe/eventfd; the resolver's eventfd; poll. */
    SCMP_SYS(epoll_create1),
    SCMP_SYS(epoll_ctl),
    SCMP_SYS(epoll_wait),
    SCMP_SYS(epoll_pwait),
    SCMP_SYS(eventfd2),
    SCMP_SYS(pipe2),
    SCMP_SYS(poll),
    SCMP_SYS(ppoll),
    /* Time (the vDSO answers most; these are its fallbacks). */
    SCMP_SYS(clock_gettime),
    SCMP_SYS(clock_getres),
    SCMP_SYS(gettimeofday),
    SCMP_SYS(time),
    SCMP_SYS(nanosleep),
    SCMP_SYS(clock_nanosleep),
    /* Threads (the resolver's detached thread is created after start) and
     * their exit; glibc's per-thread set-up. */
    SCMP_SYS(futex),
    SCMP_SYS(set_robust_list),
    SCMP_SYS(rseq),
    SCMP_SYS(sched_yield),
    SCMP_SYS(sched_getaffinity),
    SCMP_SYS(gettid),
    SCMP_SYS(getpid),
    SCMP_SYS(exit),
    SCMP_SYS(exit_group),
    /* Signals: libev's handlers and masks, abort(). */
    SCMP_SYS(rt_sigaction),
    SCMP_SYS(rt_sigprocmask),
    SCMP_SYS(rt_sigreturn),
    SCMP_SYS(sigaltstack),
    SCMP_SYS(tgkill),
    /* Connections: accept on the bound listeners, connect to apps, peers and
     * the control plane (bind: inbound.source_address), DNS over UDP/TCP. No
     * listen: every listener is bound before the filter is installed. */
    SCMP_SYS(accept),
    SCMP_SYS(accept4),
    SCMP_SYS(connect),
    SCMP_SYS(bind),
    SCMP_SYS(shutdown),
    SCMP_SYS(getsockname),
    SCMP_SYS(getpeername),
    SCMP_SYS(getsockopt),
    SCMP_SYS(setsockopt),
    SCMP_SYS(sendto),
    SCMP_SYS(recvfrom),
    SCMP_SYS(sendmsg),
    SCMP_SYS(recvmsg),
    SCMP_SYS(sendmmsg),
    SCMP_SYS(recvmmsg),
    /* Keys, nonces, session tickets. */
    SCMP_SYS(getrandom),
    /* glibc asks these in getaddrinfo and secure_getenv. */
    SCMP_SYS(uname),
    SCMP_SYS(getuid),
    SCMP_SYS(geteuid),
    SCMP_SYS(getgid),
    SCMP_SYS(getegid),
};

#ifdef MT_SANDBOX_ASAN
/* LeakSanitizer's exit-time scan stops the threads from a helper process it
 * clones (not a thread) and ptraces; the ASan runtime also reads
 * /proc/self/{maps,task} and names its threads. */
static const int allowed_asan[] = {
    SCMP_SYS(getdents), /* the sanitizer runtime's own directory reads */
    SCMP_SYS(ptrace),   SCMP_SYS(wait4),          SCMP_SYS(prctl),     SCMP_SYS(getppid),
    SCMP_SYS(kill),     SCMP_SYS(sched_getparam), SCMP_SYS(getrlimit), SCMP_SYS(prlimit64),
};
#endif

/* The address families socket() may create. AF_PACKET, AF_KEY, raw
 * sockets of other families and the like stay out. */
static const int allowed_families[] = {AF_INET, AF_INET6, AF_UNIX, AF_NETLINK};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const char *mt_seccomp_mode_str(mt_seccomp_mode mode) {
  switch (mode) {
    case MT_SECCOMP_ON: return "true";
    case MT_SECCOMP_OFF: return "false";
    case MT_SECCOMP_LOG: return "log";
  }
  return "?";
}

size_t mt_sandbox_allowed_count(void) {
  size_t n = COUNT(allowed) + 2; /* + socket, clone */
#ifdef MT_SANDBOX_ASAN
  n += COUNT(allowed_asan);
#endif
  return n;
}

int mt_sandbox_port_is_privileged(uint16_t port) {
  if (port == 0) return 0;
  long start = DEFAULT_UNPRIVILEGED_PORT_START;
  FILE *f = fopen(UNPRIVILEGED_PORT_START_PATH, "re");
  if (f != NULL) {
    char text[PORT_SYSCTL_TEXT_MAX];
    if (fgets(text, sizeof(text), f) != NULL) start = strtol(text, NULL, 10);
    fclose(f);
  }
  return port < start;
}

/* ---- capabilities ------------------------------------------------------ */

typedef struct {
  struct __user_cap_header_struct header;
  struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
} caps;

static int caps_get(caps *c) {
  memset(c, 0, sizeof(*c));
  c->header.version = _LINUX_CAPABILITY_VERSION_3;
  return syscall(SYS_capget, &c->header, c->data) == 0;
}

static int caps_set(caps *c) {
  c->header.version = _LINUX_CAPABILITY_VERSION_3;
  c->header.pid = 0;
  return syscall(SYS_capset, &c->header, c->data) == 0;
}

static int has_cap(const caps *c, int cap, int effective) {
  const struct __user_cap_data_struct *d = &c->data[CAP_TO_INDEX(cap)];
  return ((effective ? d->effective : d->permitted) & CAP_TO_MASK(cap)) != 0;
}

/* The bounding set limits what any later execve could gain; emptying it
 * needs CAP_SETPCAP, which a non-root agent does not have (and then has no
 * capability an execve could raise past no_new_privs anyway). */
static int drop_bounding(int keep_bind, char *err, size_t err_len) {
  /* Past the kernel's last capability, PR_CAPBSET_READ answers EINVAL. */
  for (int cap = 0;; cap++) {
    int held = prctl(PR_CAPBSET_READ, cap);
    if (held < 0) break;
    if (held == 0 || (keep_bind && cap == CAP_NET_BIND_SERVICE)) continue;
    if (prctl(PR_CAPBSET_DROP, cap) != 0) {
      snprintf(err, err_len, "dropping capability %d from the bounding set: %s", cap,
               strerror(errno));
      return 0;
    }
  }
  return 1;
}

/* Keeps only CAP_NET_BIND_SERVICE (if asked and held) in the permitted and
 * effective sets, nothing inheritable. */
static int limit_sets(int keep_bind, char *err, size_t err_len) {
  caps c;
  if (!caps_get(&c)) {
    snprintf(err, err_len, "capget: %s", strerror(errno));
    return 0;
  }
  int bind = keep_bind && has_cap(&c, CAP_NET_BIND_SERVICE, 0);
  memset(c.data, 0, sizeof(c.data));
  if (bind) {
    c.data[CAP_TO_INDEX(CAP_NET_BIND_SERVICE)].permitted |= CAP_TO_MASK(CAP_NET_BIND_SERVICE);
    c.data[CAP_TO_INDEX(CAP_NET_BIND_SERVICE)].effective |= CAP_TO_MASK(CAP_NET_BIND_SERVICE);
  }
  if (!caps_set(&c)) {
    snprintf(err, err_len, "capset: %s", strerror(errno));
    return 0;
  }
  return 1;
}

int mt_sandbox_enter(int keep_bind, char *err, size_t err_len) {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    snprintf(err, err_len, "setting no_new_privs: %s", strerror(errno));
    return 0;
  }
  /* Ambient capabilities survive execve for non-root; none are wanted. Old
   * kernels without them answer EINVAL, which is just as good. */
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) {
    snprintf(err, err_len, "clearing ambient capabilities: %s", strerror(errno));
    return 0;
  }
  caps c;
  if (!caps_get(&c)) {
    snprintf(err, err_len, "capget: %s", strerror(errno));
    return 0;
  }
  if (has_cap(&c, CAP_SETPCAP, 1) && !drop_bounding(keep_bind, err, err_len)) return 0;
  return limit_sets(keep_bind, err, err_len);
}

/* ---- seccomp ------------------------------------------------------------ */

static int add_rule(scmp_filter_ctx ctx, int nr, char *err, size_t err_len) {
  int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
  if (rc == 0) return 1;
  char *name = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, nr);
  snprintf(err, err_len, "seccomp: allowing %s: %s", name ? name : "?", strerror(-rc));
  free(name);
  return 0;
}

static int add_list(scmp_filter_ctx ctx, const int *list, size_t n, char *err, size_t err_len) {
  for (size_t i = 0; i < n; i++)
    if (!add_rule(ctx, list[i], err, err_len)) return 0;
  return 1;
}

/* socket() by address family; clone() for threads only (fork would need no
 * CLONE_THREAD); clone3 keeps its flags in memory a filter cannot read, so
 * it answers ENOSYS and glibc falls back to clone(). */
static int add_argument_rules(scmp_filter_ctx ctx, char *err, size_t err_len) {
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < COUNT(allowed_families); i++)
    rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                          SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)allowed_families[i]));
  if (rc == 0) {
#ifdef MT_SANDBOX_ASAN
    rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 0);
#else
    rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(clone), 1,
                          SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
#endif
  }
  if (rc == 0) rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  if (rc != 0) snprintf(err, err_len, "seccomp: argument rules: %s", strerror(-rc));
  return rc == 0;
}

int mt_sandbox_apply_seccomp(mt_seccomp_mode mode, char *err, size_t err_len) {
  if (mode == MT_SECCOMP_OFF) return 1;
  uint32_t deny = mode == MT_SECCOMP_LOG ? SCMP_ACT_LOG : SCMP_ACT_ERRNO(EPERM);
  scmp_filter_ctx ctx = seccomp_init(deny);
  if (ctx == NULL) {
    snprintf(err, err_len, "seccomp: cannot create a filter (out of memory)");
    return 0;
  }
  /* Every thread, not only the caller; the kernel also gives each thread
   * the caller's no_new_privs. */
  int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
  int ok = rc == 0;
  if (!ok) snprintf(err, err_len, "seccomp: thread synchronisation: %s", strerror(-rc));
  ok = ok && add_list(ctx, allowed, COUNT(allowed), err, err_len);
#ifdef MT_SANDBOX_ASAN
  ok = ok && add_list(ctx, allowed_asan, COUNT(allowed_asan), err, err_len);
#endif
  ok = ok && add_argument_rules(ctx, err, err_len);
  if (ok) {
    rc = seccomp_load(ctx);
    if (rc != 0) snprintf(err, err_len, "seccomp: loading the filter: %s", strerror(-rc));
    ok = rc == 0;
  }
  seccomp_release(ctx);
  return ok;
}

int mt_sandbox_lock(mt_seccomp_mode mode, char *err, size_t err_len) {
  if (!limit_sets(0, err, err_len)) return 0;
  return mt_sandbox_apply_seccomp(mode, err, err_len);
}
