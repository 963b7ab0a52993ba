/* Runs a command under the system call filter and the W^X rule of systemd/gputext.service, as far as they
 * can be had without systemd: a seccomp filter that answers EPERM to every system call not in ALLOWED
 * (SystemCallFilter= with SystemCallErrorNumber=EPERM), and PR_SET_MDWE (MemoryDenyWriteExecute=; Linux
 * 6.3 and newer, skipped on older kernels). tests/test_systemd.py writes allowed.h from the unit.
 *
 *   sandbox COMMAND ARGS...
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "add this architecture's AUDIT_ARCH_ value"
#endif

#ifndef PR_SET_MDWE
#define PR_SET_MDWE 65
#define PR_MDWE_REFUSE_EXEC_GAIN 1
#endif

static const int allowed[] = {
#include "allowed.h"
};
#define COUNT (sizeof(allowed) / sizeof(allowed[0]))

int main(int argc, char **argv) {
    struct sock_filter program[4 + 2 * COUNT + 1];
    size_t n = 0;
    if (argc < 2) {
        fprintf(stderr, "usage: sandbox COMMAND ARGS...\n");
        return 2;
    }
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS);
    program[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
    for (size_t i = 0; i < COUNT; i++) {
        program[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, allowed[i], 0, 1);
        program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    }
    program[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM);
    struct sock_fprog filter = {.len = (unsigned short)n, .filter = program};

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("sandbox: no_new_privs");
        return 125;
    }
    if (prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0 && errno != EINVAL) {
        perror("sandbox: mdwe");
        return 125;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &filter) != 0) {
        perror("sandbox: seccomp");
        return 125;
    }
    execvp(argv[1], argv + 1);
    perror("sandbox: exec");
    return 127;
}
