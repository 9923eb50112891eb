// Turns SIGBUS raised while reading a memory-mapped input (the file was
// truncated or replaced under the mapping) into an ordinary return value, so
// the engine can raise a ladle error instead of the process being killed.
#pragma once

namespace ladle {

// Runs fn(arg). Returns nullptr when it completed, or the faulting address
// when a SIGBUS interrupted it; the thread then continues normally. fn must
// hold no locks and own no objects with destructors at the fault (plain
// loads/stores: the kernels, memcpy, memcmp). Exceptions from fn propagate.
// SIGBUS outside a guarded call goes to the handler installed before ladle's.
// Cheap when nothing faults (a setjmp, no system call): fine once per tile.
const void* call_catching_sigbus(void (*fn)(void*), void* arg);

// Installs the SIGBUS handler call_catching_sigbus relies on (again, if
// something replaced it since). Call before starting guarded work.
void install_sigbus_handler();

}  // namespace ladle
