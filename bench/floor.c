/*
 * The floor: the write protocol of SPEC.md in plain C, with nothing a C program could leave out.
 *
 *   lstat target (to keep its mode) - open temp O_CREAT|O_EXCL - write loop - fchmod - fsync - close
 *   - rename - open dir - fsync dir - close                              = 10 system calls
 *
 * `aw_floor_write_tmpfile` is what index.ts does on Linux: the temp is an anonymous O_TMPFILE inode,
 * given the old file's owner and group (fchown: SPEC keeps them, and in a setgid directory the temp
 * takes the directory's group even when the old owner is the process), and given its name by linkat
 * (by descriptor, else through /proc/self/fd) just before the rename: 12 system calls on an overwrite.
 *
 * Built by bench/run.ts twice: as a shared library called through bun:ffi (`aw_floor_write`), and,
 * with -DFLOOR_MAIN, as a command that streams stdin to a file (the floor of the CLI benchmark).
 * Symlinks are not followed, and the named floor does not keep ownership (issue 5 defines it as 10
 * calls): the cheapest sequence for the benchmarks, whose files are the process's own.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t name_state;

/* Unpredictable temp names without a system call per write: one getrandom, then a 64-bit mixer. */
static uint64_t next_name(void) {
  if (name_state == 0 && getrandom(&name_state, sizeof name_state, 0) != sizeof name_state) {
    name_state = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
  }
  uint64_t z = (name_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct temp {
  int fd;
  char path[4096];
  char dir[4096];
  mode_t mode; /* the target's permission bits; keep_mode == 0 when there was no target */
  uid_t uid;   /* the target's owner and group, when keep_mode */
  gid_t gid;
  int keep_mode;
};

/* lstat + the temp's name (+ its exclusive create when `create`). Returns 0, or -errno. */
static int begin_named(const char *path, struct temp *t, int create) {
  struct stat st;
  t->fd = -1;
  t->mode = 0666; /* a new file gets what open() gives it: umask applies, no fchmod */
  t->keep_mode = lstat(path, &st) == 0;
  if (t->keep_mode) {
    t->mode = st.st_mode & 07777;
    t->uid = st.st_uid;
    t->gid = st.st_gid;
  }
  else if (errno != ENOENT) return -errno;

  size_t len = strlen(path);
  if (len + 32 >= sizeof t->path) return -ENAMETOOLONG;
  memcpy(t->dir, path, len + 1);
  char *dir = dirname(t->dir);
  if (dir != t->dir) memmove(t->dir, dir, strlen(dir) + 1);
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  snprintf(t->path, sizeof t->path, "%s/.%s.%012llx.tmp", t->dir, base,
           (unsigned long long)(next_name() & 0xFFFFFFFFFFFFull));

  if (!create) return 0;
  t->fd = open(t->path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, t->keep_mode ? t->mode & 0600 : t->mode);
  return t->fd < 0 ? -errno : 0;
}

static int begin(const char *path, struct temp *t) { return begin_named(path, t, 1); }

static int put(struct temp *t, const uint8_t *data, size_t length) {
  while (length > 0) {
    ssize_t n = write(t->fd, data, length);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EIO;
    data += n;
    length -= (size_t)n;
  }
  return 0;
}

/* fchmod - fsync - close - rename - open dir - fsync dir - close. */
static int finish(const char *path, struct temp *t, int durable) {
  int error = 0;
  if ((t->keep_mode && fchmod(t->fd, t->mode) != 0) || (durable && fsync(t->fd) != 0)) error = -errno;
  close(t->fd);
  if (error == 0 && rename(t->path, path) != 0) error = -errno;
  if (error != 0) {
    unlink(t->path);
    return error;
  }
  if (!durable) return 0;
  int dir = open(t->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return -errno;
  if (fsync(dir) != 0) error = -errno;
  close(dir);
  return error;
}

static void discard(struct temp *t) {
  close(t->fd);
  unlink(t->path);
}

/* One atomic, durable write of `length` bytes. Returns 0, or -errno. */
int aw_floor_write(const char *path, const uint8_t *data, size_t length) {
  struct temp t;
  int error = begin(path, &t);
  if (error != 0) return error;
  if ((error = put(&t, data, length)) != 0) {
    discard(&t);
    return error;
  }
  return finish(path, &t, 1);
}

/* The O_TMPFILE variant: open(dir, O_TMPFILE) - write - fchown - fchmod - fsync - linkat - close - rename - dir. */
int aw_floor_write_tmpfile(const char *path, const uint8_t *data, size_t length) {
  struct temp t;
  int error = begin_named(path, &t, 0);
  if (error != 0) return error;
  t.fd = open(t.dir, O_TMPFILE | O_WRONLY | O_CLOEXEC, t.keep_mode ? t.mode & 0600 : t.mode);
  if (t.fd < 0) return -errno;
  error = put(&t, data, length);
  if (error == 0 && t.keep_mode && fchown(t.fd, t.uid, t.gid) != 0) error = -errno;
  if (error == 0 && t.keep_mode && fchmod(t.fd, t.mode) != 0) error = -errno;
  if (error == 0 && fsync(t.fd) != 0) error = -errno;
  if (error != 0) {
    close(t.fd); /* an anonymous inode: closing it is the whole clean-up */
    return error;
  }
  /* By the descriptor itself where the kernel allows it (Linux >= 6.10, or CAP_DAC_READ_SEARCH), as
     index.ts does: it skips the path walk through /proc. */
  int linked = linkat(t.fd, "", AT_FDCWD, t.path, AT_EMPTY_PATH);
  if (linked != 0 && (errno == ENOENT || errno == EINVAL || errno == EPERM)) {
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", t.fd);
    linked = linkat(AT_FDCWD, self, AT_FDCWD, t.path, AT_SYMLINK_FOLLOW);
  }
  if (linked != 0) {
    error = -errno;
    close(t.fd);
    return error;
  }
  close(t.fd);
  if (rename(t.path, path) != 0) {
    error = -errno;
    unlink(t.path);
    return error;
  }
  int dir = open(t.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return -errno;
  if (fsync(dir) != 0) error = -errno;
  close(dir);
  return error;
}

#ifdef FLOOR_MAIN
/* floor-cli <path>: stdin to <path> through the same protocol, 1 MiB at a time. */
int main(int argc, char **argv) {
  if (argc != 2) {
    fputs("usage: floor-cli <path>\n", stderr);
    return 2;
  }
  static uint8_t buffer[1 << 20];
  struct temp t;
  int error = begin(argv[1], &t);
  for (ssize_t n; error == 0 && (n = read(0, buffer, sizeof buffer)) != 0;) {
    if (n < 0) error = errno == EINTR ? 0 : -errno;
    else error = put(&t, buffer, (size_t)n);
  }
  if (error == 0) error = finish(argv[1], &t, 1);
  else if (t.fd >= 0) discard(&t);
  if (error != 0) {
    fprintf(stderr, "floor-cli: %s: %s\n", argv[1], strerror(-error));
    return 1;
  }
  return 0;
}
#endif
