/* file_stamp: "has this file changed since I read it?", answered with
 * stat(2) alone (device, inode, size, mtime, ctime), so a poll costs no
 * read. A rename over the file (how Kubernetes updates a mounted
 * ConfigMap) changes the inode; an edit in place changes size or times. A
 * missing file is a state of its own. Pure: nothing here keeps state. */
#ifndef MT_CP_FILE_STAMP_H
#define MT_CP_FILE_STAMP_H

#include <sys/types.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  int exists;
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime, ctime;
} mt_file_stamp;

/* Fills |out| for |path| now (all zero when it cannot be stat'ed). */
void mt_file_stamp_read(const char *path, mt_file_stamp *out);

/* 1 when both stamps describe the same file content as far as stat knows. */
int mt_file_stamp_equal(const mt_file_stamp *a, const mt_file_stamp *b);

#ifdef __cplusplus
}
#endif

#endif /* MT_CP_FILE_STAMP_H */
