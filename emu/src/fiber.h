/*
 * fiber.h -- minimal stackful coroutines for the emulator's threads.
 *
 * A Fiber runs entry(arg) on its own stack.  resume() switches from the
 * scheduler into the fiber; the fiber returns control with suspend().  Only the
 * scheduler resumes fibers, and a fiber always suspends back to the scheduler
 * that resumed it, so one saved scheduler context per OS thread suffices.
 *
 * x86-64 uses a hand-written switch (callee-saved registers + MXCSR/x87 control
 * word, ~10 ns); other targets use ucontext.  Under AddressSanitizer every switch
 * is announced with __sanitizer_start/finish_switch_fiber.
 */
#ifndef FAB_EMU_FIBER_H
#define FAB_EMU_FIBER_H

#include <stddef.h>

/* FAB_EMU_ASAN: built with AddressSanitizer (fibers announce their switches; device
 * allocations get no redzones of the emulator's, as ASan's own report at the access) */
#if defined(__SANITIZE_ADDRESS__)
#define FAB_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FAB_EMU_ASAN 1
#endif
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace fab_emu {

struct Fiber {
    void (*entry)(void *) = nullptr;
    void *arg = nullptr;
    char *stack = nullptr; /* usable stack (above the guard page) */
    size_t stack_size = 0;
    void *asan_fake_stack = nullptr;
#if defined(__x86_64__)
    void *sp = nullptr; /* saved stack pointer while suspended */
#else
    ucontext_t ctx;
#endif
};

/* Allocate the stack (mmap, with a PROT_NONE guard page below it). */
void fiber_alloc(Fiber &f, size_t stack_size);
void fiber_free(Fiber &f);
/* Prepare f to start entry(arg) from the top of its stack at the next resume. */
void fiber_prepare(Fiber &f, void (*entry)(void *), void *arg);
/* Scheduler side: run f until it suspends or finishes. */
void fiber_resume(Fiber &f);
/* Fiber side: return to the scheduler; returns when resumed again. */
void fiber_suspend(Fiber &f);
/* Fiber side: return to the scheduler for good (the fiber is finished or abandoned). */
[[noreturn]] void fiber_exit(Fiber &f);

} // namespace fab_emu

#endif
