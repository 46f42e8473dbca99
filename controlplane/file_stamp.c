/* file_stamp.c: change detection by stat(2). */
#include "controlplane/file_stamp.h"

#include <string.h>
#include <sys/stat.h>

void mt_file_stamp_read(const char *path, mt_file_stamp *out) {
  struct stat st;
  memset(out, 0, sizeof(*out));
  if (stat(path, &st) != 0) return;
  out->exists = 1;
  out->dev = st.st_dev;
  out->ino = st.st_ino;
  out->size = st.st_size;
  out->mtime = st.st_mtim;
  out->ctime = st.st_ctim;
}

int mt_file_stamp_equal(const mt_file_stamp *a, const mt_file_stamp *b) {
  return a->exists == b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
         a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
         a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}
