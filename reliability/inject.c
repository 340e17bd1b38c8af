/*
 * inject: a small ptrace tool that fails, pauses at, or kills on one chosen system call.
 *
 * Why not `strace -e inject`: strace counts `when=N` per thread, and Bun runs async fs calls on a
 * pool of threads, so "the 2nd fsync" is not a stable target. This tool counts across every
 * thread and process of the traced tree, and only calls whose subject (syscall name and the
 * paths it touches, resolved through /proc) matches a regular expression, so "the 2nd fsync of a
 * file in this directory" is exact however the threads are scheduled.
 *
 *   inject [--watch NAMES] [--match ERE] [--nth N] [--errno E | --kill] [--step OUT IN]
 *          [--log FILE] -- COMMAND...
 *
 *   --watch  comma-separated syscall names to consider (default: every name in the table below)
 *   --match  extended regex matched against the subject, e.g. "fsync /dir/#123 (deleted)"
 *   --nth    act on the N-th matching call (default 1)
 *   --errno  skip that call and make it fail with errno E (as strace's error= does)
 *   --kill   let that call complete, then SIGKILL its process
 *   --step   after every matching call completes, write "N SUBJECT = RET" to the FIFO OUT and
 *            wait for a line on the FIFO IN; new system calls are held until then
 *   --log    one line per watched call: thread, subject, result, COUNT asked (writes), MATCH n,
 *            INJECTED
 *
 * Exits with the command's exit status (128+signal if it was killed). x86-64 Linux only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <regex.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef __x86_64__
#error "inject.c reads x86-64 registers; other architectures are not supported"
#endif

/* The kernel's struct ptrace_syscall_info (linux/ptrace.h), declared here to avoid header clashes. */
struct syscall_info {
  uint8_t op;
  uint8_t pad[3];
  uint32_t arch;
  uint64_t instruction_pointer;
  uint64_t stack_pointer;
  union {
    struct {
      uint64_t nr;
      uint64_t args[6];
    } entry;
    struct {
      int64_t rval;
      uint8_t is_error;
    } exit;
  };
};
#define GET_SYSCALL_INFO 0x420e
#define INFO_ENTRY 1
#define INFO_EXIT 2
#define INFO_SECCOMP 3

enum shape { FD, PATH, AT_PATH, OPEN, OPENAT, TWO_PATHS, TWO_AT_PATHS, NONE };

struct call {
  int nr;
  const char *name;
  enum shape shape;
};

static const struct call CALLS[] = {
    {0, "read", FD},           {1, "write", FD},          {2, "open", OPEN},
    {3, "close", FD},          {17, "pread64", FD},       {18, "pwrite64", FD},
    {20, "writev", FD},        {74, "fsync", FD},         {75, "fdatasync", FD},
    {76, "truncate", PATH},    {77, "ftruncate", FD},     {82, "rename", TWO_PATHS},
    {85, "creat", PATH},       {86, "link", TWO_PATHS},   {87, "unlink", PATH},
    {90, "chmod", PATH},       {91, "fchmod", FD},        {92, "chown", PATH},
    {93, "fchown", FD},        {162, "sync", NONE},       {257, "openat", OPENAT},
    {260, "fchownat", AT_PATH}, {263, "unlinkat", AT_PATH}, {264, "renameat", TWO_AT_PATHS},
    {265, "linkat", TWO_AT_PATHS}, {268, "fchmodat", AT_PATH}, {285, "fallocate", FD},
    {296, "pwritev", FD},      {306, "syncfs", FD},       {316, "renameat2", TWO_AT_PATHS},
    {328, "pwritev2", FD},
};
#define NCALLS (sizeof CALLS / sizeof CALLS[0])

static int watched[NCALLS];
static regex_t pattern;
static int have_pattern;
static long nth = 1;
static int inject_errno;
static int kill_after;
static FILE *step_out;
static FILE *step_in;
static FILE *log_file;
static long matches;

/* Per-thread state between a call's entry and its exit. */
#define MAX_THREADS 4096
static struct thread {
  pid_t tid;
  int active;
  int known;
  const struct call *call;
  long match; /* 0: not matching; else its number */
  int injected;
  long count; /* the byte count asked of write and pwrite64, else -1 */
  char subject[2 * PATH_MAX + 64];
} threads[MAX_THREADS];

static struct thread *thread_of(pid_t tid) {
  struct thread *free_slot = NULL;
  for (int i = 0; i < MAX_THREADS; i++) {
    if (threads[i].active && threads[i].tid == tid) return &threads[i];
    if (!threads[i].active && free_slot == NULL) free_slot = &threads[i];
  }
  if (free_slot == NULL) {
    fprintf(stderr, "inject: more than %d threads\n", MAX_THREADS);
    exit(98);
  }
  memset(free_slot, 0, sizeof *free_slot);
  free_slot->tid = tid;
  free_slot->active = 1;
  return free_slot;
}

static void die(const char *what) {
  fprintf(stderr, "inject: %s: %s\n", what, strerror(errno));
  exit(98);
}

/* A NUL-terminated string from the tracee's memory. */
static void read_string(pid_t tid, uint64_t address, char *out, size_t size) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/mem", tid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  out[0] = 0;
  if (fd < 0) return;
  ssize_t got = pread(fd, out, size - 1, (off_t)address);
  if (got < 0) {
    /* The string may end just before an unmapped page: read byte by byte up to it. */
    got = 0;
    while ((size_t)got < size - 1 && pread(fd, out + got, 1, (off_t)(address + got)) == 1 && out[got] != 0) got++;
  }
  out[got < 0 ? 0 : got] = 0;
  close(fd);
}

static void fd_path(pid_t tid, long fd, char *out, size_t size) {
  char link[64];
  if (fd == -100) snprintf(link, sizeof link, "/proc/%d/cwd", tid);
  else snprintf(link, sizeof link, "/proc/%d/fd/%ld", tid, fd);
  ssize_t n = readlink(link, out, size - 1);
  if (n < 0) n = snprintf(out, size, "fd:%ld", fd) > 0 ? (ssize_t)strlen(out) : 0;
  out[n] = 0;
}

/* The absolute form of a path argument, relative ones joined to their directory descriptor. */
static void at_path(pid_t tid, long dirfd, uint64_t address, char *out, size_t size) {
  char raw[PATH_MAX];
  read_string(tid, address, raw, sizeof raw);
  if (raw[0] == '/' || raw[0] == 0) {
    snprintf(out, size, "%s", raw);
    return;
  }
  char base[PATH_MAX];
  fd_path(tid, dirfd, base, sizeof base);
  snprintf(out, size, "%s/%s", base, raw);
}

static void describe(pid_t tid, const struct call *call, const uint64_t *args, char *out, size_t size) {
  char a[PATH_MAX + 32], b[PATH_MAX + 32];
  a[0] = b[0] = 0;
  long flags = 0;
  switch (call->shape) {
  case FD: fd_path(tid, (long)(int)args[0], a, sizeof a); break;
  case PATH: at_path(tid, -100, args[0], a, sizeof a); break;
  case AT_PATH: at_path(tid, (long)(int)args[0], args[1], a, sizeof a); break;
  case OPEN: at_path(tid, -100, args[0], a, sizeof a); flags = (long)args[1]; break;
  case OPENAT: at_path(tid, (long)(int)args[0], args[1], a, sizeof a); flags = (long)args[2]; break;
  case TWO_PATHS:
    at_path(tid, -100, args[0], a, sizeof a);
    at_path(tid, -100, args[1], b, sizeof b);
    break;
  case TWO_AT_PATHS:
    at_path(tid, (long)(int)args[0], args[1], a, sizeof a);
    at_path(tid, (long)(int)args[2], args[3], b, sizeof b);
    break;
  case NONE: break;
  }
  int n = snprintf(out, size, "%s %s", call->name, a);
  if (b[0] && n > 0 && (size_t)n < size) n += snprintf(out + n, size - n, " -> %s", b);
  if (call->shape == OPEN || call->shape == OPENAT) {
    if ((flags & 020200000) == 020200000) n += snprintf(out + n, size - n, " tmpfile");
    else if (flags & 0200000) n += snprintf(out + n, size - n, " directory");
    if (flags & 010000000) n += snprintf(out + n, size - n, " path");
    if (flags & 0100) n += snprintf(out + n, size - n, " creat");
    if (flags & 01000) n += snprintf(out + n, size - n, " trunc");
  }
}

/*
 * Stopping only at watched calls: a seccomp filter in the traced tree marks them for the tracer
 * and lets every other call run untraced (as strace --seccomp-bpf does), so Bun's thousands of
 * other calls cost nothing. Where the filter cannot be installed, every call stops instead.
 */
static int use_seccomp;

static int install_filter(void) {
  struct sock_filter program[4 + 2 * NCALLS + 1];
  size_t n = 0;
  program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
  for (size_t i = 0; i < NCALLS; i++) {
    if (!watched[i]) continue;
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)CALLS[i].nr, 0, 1);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE);
  }
  program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
  struct sock_fprog fprog = {.len = (unsigned short)n, .filter = program};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return -1;
  return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &fprog);
}

/* Resumes a stopped thread: to its syscall-exit-stop after a watched entry, else freely. */
static void resume(pid_t tid, int sig, int to_exit) {
  ptrace(use_seccomp && !to_exit ? PTRACE_CONT : PTRACE_SYSCALL, tid, NULL, (void *)(long)sig);
}

static const struct call *lookup(long nr) {
  for (size_t i = 0; i < NCALLS; i++)
    if (CALLS[i].nr == nr) return watched[i] ? &CALLS[i] : NULL;
  return NULL;
}

static pid_t process_of(pid_t tid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", tid);
  FILE *f = fopen(path, "r");
  pid_t tgid = tid;
  if (f == NULL) return tid;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Tgid: %d", &tgid) == 1) break;
  fclose(f);
  return tgid;
}

/* Handles a syscall stop; returns whether the thread must next stop at that call's exit. */
static int on_syscall(pid_t tid) {
  struct syscall_info info;
  memset(&info, 0, sizeof info);
  if (ptrace(GET_SYSCALL_INFO, tid, (void *)sizeof info, &info) < 0) return 0;
  struct thread *t = thread_of(tid);
  if (info.op == INFO_ENTRY || info.op == INFO_SECCOMP) {
    t->call = lookup((long)info.entry.nr);
    t->match = 0;
    t->injected = 0;
    if (t->call == NULL) return 0;
    describe(tid, t->call, info.entry.args, t->subject, sizeof t->subject);
    t->count = (t->call->nr == 1 || t->call->nr == 18) ? (long)info.entry.args[2] : -1;
    if (have_pattern && regexec(&pattern, t->subject, 0, NULL, 0) != 0) return 1;
    t->match = ++matches;
    if (t->match == nth && inject_errno) {
      struct user_regs_struct regs;
      if (ptrace(PTRACE_GETREGS, tid, NULL, &regs) < 0) die("GETREGS");
      regs.orig_rax = (unsigned long long)-1; /* no such syscall: the kernel skips it */
      if (ptrace(PTRACE_SETREGS, tid, NULL, &regs) < 0) die("SETREGS");
      t->injected = 1;
    }
    return 1;
  } else if (info.op == INFO_EXIT && t->call != NULL) {
    long ret = (long)info.exit.rval;
    if (t->injected) {
      struct user_regs_struct regs;
      if (ptrace(PTRACE_GETREGS, tid, NULL, &regs) < 0) die("GETREGS");
      regs.rax = (unsigned long long)(long)-inject_errno;
      if (ptrace(PTRACE_SETREGS, tid, NULL, &regs) < 0) die("SETREGS");
      ret = -inject_errno;
    }
    if (log_file) {
      fprintf(log_file, "%d\t%s\t%ld", tid, t->subject, ret);
      if (t->count >= 0) fprintf(log_file, "\tCOUNT %ld", t->count);
      if (t->match) fprintf(log_file, "\tMATCH %ld", t->match);
      if (t->injected) fprintf(log_file, "\tINJECTED %d", inject_errno);
      fputc('\n', log_file);
      fflush(log_file);
    }
    if (t->match && step_out) {
      char answer[64];
      fprintf(step_out, "%ld\t%s\t%ld\n", t->match, t->subject, ret);
      fflush(step_out);
      if (fgets(answer, sizeof answer, step_in) == NULL) step_out = NULL; /* the stepper left: run on */
    }
    if (t->match == nth && kill_after) {
      if (log_file) fprintf(log_file, "%d\tKILLED after MATCH %ld\n", tid, t->match), fflush(log_file);
      kill(process_of(tid), SIGKILL);
    }
    t->call = NULL;
  }
  return 0;
}

static void watch(const char *names) {
  char *copy = strdup(names);
  for (char *name = strtok(copy, ","); name; name = strtok(NULL, ",")) {
    size_t i = 0;
    while (i < NCALLS && strcmp(CALLS[i].name, name) != 0) i++;
    if (i == NCALLS) {
      fprintf(stderr, "inject: unknown syscall %s\n", name);
      exit(2);
    }
    watched[i] = 1;
  }
  free(copy);
}

int main(int argc, char **argv) {
  int i = 1, any = 0;
  for (; i < argc && strcmp(argv[i], "--") != 0; i++) {
    const char *option = argv[i];
    const char *value = i + 1 < argc ? argv[i + 1] : NULL;
    if (value == NULL) break;
    if (!strcmp(option, "--watch")) watch(value), any = 1, i++;
    else if (!strcmp(option, "--match")) {
      if (regcomp(&pattern, value, REG_EXTENDED | REG_NOSUB) != 0) {
        fprintf(stderr, "inject: bad regex %s\n", value);
        return 2;
      }
      have_pattern = 1, i++;
    } else if (!strcmp(option, "--nth")) nth = atol(value), i++;
    else if (!strcmp(option, "--errno")) inject_errno = atoi(value), i++;
    else if (!strcmp(option, "--kill")) kill_after = 1;
    else if (!strcmp(option, "--log")) {
      if ((log_file = fopen(value, "w")) == NULL) die("log");
      i++;
    } else if (!strcmp(option, "--step") && i + 2 < argc) {
      if ((step_out = fopen(argv[i + 1], "w")) == NULL) die("step out");
      if ((step_in = fopen(argv[i + 2], "r")) == NULL) die("step in");
      i += 2;
    } else {
      fprintf(stderr, "inject: unknown option %s\n", option);
      return 2;
    }
  }
  if (i >= argc - 1) {
    fprintf(stderr, "usage: inject [--watch NAMES] [--match ERE] [--nth N] [--errno E|--kill] [--step OUT IN] [--log FILE] -- COMMAND...\n");
    return 2;
  }
  if (!any)
    for (size_t k = 0; k < NCALLS; k++) watched[k] = 1;
  char **command = argv + i + 1;

  pid_t root = fork();
  if (root < 0) die("fork");
  if (root == 0) {
    if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0) die("TRACEME");
    raise(SIGSTOP);
    if (getenv("INJECT_NO_SECCOMP") == NULL && install_filter() < 0) {
      fprintf(stderr, "inject: no seccomp filter (%s); stopping at every call\n", strerror(errno));
      kill(getppid(), SIGUSR1);
    }
    execvp(command[0], command);
    die(command[0]);
  }
  int status;
  if (waitpid(root, &status, 0) < 0) die("waitpid");
  use_seccomp = getenv("INJECT_NO_SECCOMP") == NULL;
  long options = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK |
                 PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL | (use_seccomp ? PTRACE_O_TRACESECCOMP : 0);
  if (ptrace(PTRACE_SETOPTIONS, root, NULL, (void *)options) < 0) die("SETOPTIONS");
  thread_of(root)->known = 1;
  /* Until the filter is in place (right before exec), stop at every call. */
  ptrace(PTRACE_SYSCALL, root, NULL, NULL);

  int root_status = 0;
  for (;;) {
    pid_t tid = waitpid(-1, &status, __WALL);
    if (tid < 0) {
      if (errno == EINTR) continue;
      if (errno == ECHILD) break;
      die("waitpid");
    }
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
      if (tid == root) root_status = status;
      thread_of(tid)->active = 0;
      continue;
    }
    if (!WIFSTOPPED(status)) continue;
    int sig = WSTOPSIG(status);
    int event = status >> 16;
    struct thread *t = thread_of(tid);
    int to_exit = 0;
    if (sig == (SIGTRAP | 0x80) || event == PTRACE_EVENT_SECCOMP) {
      t->known = 1;
      to_exit = on_syscall(tid);
      sig = 0;
    } else if (event != 0) {
      t->known = 1;
      sig = 0;
    } else if (sig == SIGSTOP && !t->known) {
      t->known = 1; /* a new thread or child's first stop, not a signal for it */
      sig = 0;
    }
    resume(tid, sig, to_exit);
  }
  if (log_file) fclose(log_file);
  if (WIFSIGNALED(root_status)) return 128 + WTERMSIG(root_status);
  return WEXITSTATUS(root_status);
}
