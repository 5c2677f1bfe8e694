/* LD_PRELOAD helper for GPU debugging sessions (the device image has no gdb): on SIGSEGV/SIGBUS/
 * SIGABRT print the native backtrace (glibc backtrace + dladdr) and the faulting address to stderr,
 * then re-raise with the default action.  Build: gcc -shared -fPIC -O1 -o segv_trace.so segv_trace.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

static void print_addr(const char* what, void* a) {
  char buf[320];
  Dl_info info;
  int n;
  if (dladdr(a, &info) && info.dli_fname)
    n = snprintf(buf, sizeof buf, "  %s %p %s(%s+0x%lx) [base %p]\n", what, a, info.dli_fname,
                 info.dli_sname ? info.dli_sname : "?",
                 (unsigned long)((char*)a - (char*)(info.dli_sname ? info.dli_saddr : info.dli_fbase)), info.dli_fbase);
  else
    n = snprintf(buf, sizeof buf, "  %s %p (no object)\n", what, a);
  write(2, buf, n);
}

static void handler(int sig, siginfo_t* si, void* ctx) {
  char buf[256];
  int n = snprintf(buf, sizeof buf, "\n*** segv_trace: signal %d (%s) at address %p; native backtrace:\n", sig,
                   strsignal(sig), si ? si->si_addr : 0);
  write(2, buf, n);
#if defined(__x86_64__)
  if (ctx) print_addr("faulting pc:", (void*)((ucontext_t*)ctx)->uc_mcontext.gregs[REG_RIP]);
#endif
  void* frames[64];
  int k = backtrace(frames, 64);
  for (int i = 0; i < k; ++i) {
    Dl_info info;
    if (dladdr(frames[i], &info) && info.dli_fname) {
      n = snprintf(buf, sizeof buf, "  #%-2d %p %s(%s+0x%lx)\n", i, frames[i], info.dli_fname,
                   info.dli_sname ? info.dli_sname : "?",
                   (unsigned long)((char*)frames[i] - (char*)(info.dli_sname ? info.dli_saddr : info.dli_fbase)));
    } else {
      n = snprintf(buf, sizeof buf, "  #%-2d %p ?\n", i, frames[i]);
    }
    write(2, buf, n);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

__attribute__((constructor)) static void install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, 0);
  sigaction(SIGBUS, &sa, 0);
  sigaction(SIGABRT, &sa, 0);
}
