/* low_fds.c: placeholders on /dev/null, replaced and restored with dup3. */
#include "agent/low_fds.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
  int fd;
  int in_use;
} slot;

struct mt_low_fds {
  int null_fd; /* what a free slot is a copy of */
  slot *slots;
  size_t count;
};

mt_low_fds *mt_low_fds_new(size_t count) {
  mt_low_fds *r = calloc(1, sizeof(*r));
  if (r == NULL) return NULL;
  r->slots = calloc(count ? count : 1, sizeof(slot));
  r->null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (r->slots == NULL || r->null_fd < 0) {
    if (r->null_fd >= 0) close(r->null_fd);
    free(r->slots);
    free(r);
    return NULL;
  }
  for (; r->count < count; r->count++) {
    int fd = fcntl(r->null_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) break;
    r->slots[r->count].fd = fd;
  }
  return r;
}

void mt_low_fds_free(mt_low_fds *r) {
  if (r == NULL) return;
  for (size_t i = 0; i < r->count; i++) close(r->slots[i].fd);
  close(r->null_fd);
  free(r->slots);
  free(r);
}

int mt_low_fds_take(mt_low_fds *r, int fd) {
  if (r == NULL) return fd;
  for (size_t i = 0; i < r->count; i++) {
    slot *s = &r->slots[i];
    if (s->in_use || s->fd > fd) continue;
    if (dup3(fd, s->fd, O_CLOEXEC) < 0) return fd;
    close(fd);
    s->in_use = 1;
    return s->fd;
  }
  return fd;
}

void mt_low_fds_close(mt_low_fds *r, int fd) {
  for (size_t i = 0; r != NULL && i < r->count; i++) {
    slot *s = &r->slots[i];
    if (!s->in_use || s->fd != fd) continue;
    /* Atomically: the socket's last reference goes, the placeholder is back. */
    if (dup3(r->null_fd, s->fd, O_CLOEXEC) >= 0) {
      s->in_use = 0;
      return;
    }
    /* Could not restore: the number leaves the reserve. */
    close(fd);
    s->fd = r->slots[r->count - 1].fd;
    s->in_use = r->slots[r->count - 1].in_use;
    r->count--;
    return;
  }
  close(fd);
}

size_t mt_low_fds_in_use(const mt_low_fds *r) {
  size_t n = 0;
  for (size_t i = 0; r != NULL && i < r->count; i++) n += r->slots[i].in_use != 0;
  return n;
}
