#include "fault_guard.h"

#include <csetjmp>
#include <csignal>
#include <cstring>
#include <mutex>

namespace ladle {
namespace {

thread_local sigjmp_buf* t_jump = nullptr;
thread_local const void* t_fault_addr = nullptr;
struct sigaction g_previous;
std::mutex g_install_mu;

void on_sigbus(int sig, siginfo_t* info, void* context) {
  if (t_jump != nullptr) {
    t_fault_addr = info->si_addr;
    siglongjmp(*t_jump, 1);
  }
  // Not a guarded read: behave as if ladle had installed nothing.
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction != nullptr) g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler == SIG_DFL || g_previous.sa_handler == SIG_IGN) {
    std::signal(sig, SIG_DFL);  // delivered again on return: the default action
    std::raise(sig);
    return;
  }
  g_previous.sa_handler(sig);
}

}  // namespace

// (Re)installs the handler when someone (e.g. Python's faulthandler) replaced it.
void install_sigbus_handler() {
  std::lock_guard<std::mutex> guard(g_install_mu);
  struct sigaction current;
  if (sigaction(SIGBUS, nullptr, &current) != 0) return;
  if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_sigbus) return;
  struct sigaction ours;
  std::memset(&ours, 0, sizeof(ours));
  ours.sa_sigaction = on_sigbus;
  ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&ours.sa_mask);
  sigaction(SIGBUS, &ours, &g_previous);
}

const void* call_catching_sigbus(void (*fn)(void*), void* arg) {
  sigjmp_buf jump;
  // The mask is not saved (that would be a system call per guarded call, and
  // the method passes guard every tile): after a fault, only SIGBUS, blocked
  // while its handler ran, needs unblocking.
  if (sigsetjmp(jump, 0) != 0) {  // arrived here from on_sigbus
    t_jump = nullptr;
    sigset_t bus;
    sigemptyset(&bus);
    sigaddset(&bus, SIGBUS);
    pthread_sigmask(SIG_UNBLOCK, &bus, nullptr);
    return t_fault_addr != nullptr ? t_fault_addr : reinterpret_cast<const void*>(1);
  }
  t_jump = &jump;
  try {
    fn(arg);
  } catch (...) {
    t_jump = nullptr;
    throw;
  }
  t_jump = nullptr;
  return nullptr;
}

}  // namespace ladle
