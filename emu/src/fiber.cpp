/*
 * fiber.cpp -- context switching for the emulator's threads (see fiber.h).
 */
#include "fiber.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef FAB_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

namespace fab_emu {

/* The scheduler's context on this OS thread, and its stack bounds (for ASan). */
static thread_local void *tl_sched_sp;
#if !defined(__x86_64__)
static thread_local ucontext_t tl_sched_ctx;
#endif
#ifdef FAB_EMU_ASAN
static thread_local void *tl_sched_fake_stack;
static thread_local const void *tl_sched_stack_bottom;
static thread_local size_t tl_sched_stack_size;
#endif

void fiber_alloc(Fiber &f, size_t stack_size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    stack_size = (stack_size + page - 1) / page * page;
    void *mem = mmap(nullptr, stack_size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        fprintf(stderr, "fab_emu: cannot allocate a %zu-byte fiber stack\n", stack_size);
        abort();
    }
    /* Guard page: a kernel that overflows its thread's stack faults instead of corrupting. */
    mprotect(mem, page, PROT_NONE);
    f.stack = (char *)mem + page;
    f.stack_size = stack_size;
}

void fiber_free(Fiber &f)
{
    if (!f.stack) return;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    munmap(f.stack - page, f.stack_size + page);
    f.stack = nullptr;
}

static void fiber_start(Fiber *f)
{
#ifdef FAB_EMU_ASAN
    /* First entry: finish the switch the scheduler started; remember its stack. */
    __sanitizer_finish_switch_fiber(nullptr, &tl_sched_stack_bottom, &tl_sched_stack_size);
#endif
    f->entry(f->arg);
    fiber_exit(*f);
}

#if defined(__x86_64__)
/*
 * fab_emu_switch(save, next): push the callee-saved registers and the FP control
 * state on the current stack, store rsp in *save, load next as rsp, pop the same
 * state from there and return into that context.
 * fab_emu_trampoline: the first "return address" of a new fiber; calls
 * fiber_start(r12).  CFI marks it as the outermost frame for debuggers.
 */
extern "C" void fab_emu_switch(void **save, void *next);
extern "C" void fab_emu_trampoline();
asm(R"(
    .text
    .globl fab_emu_switch
    .type fab_emu_switch,@function
fab_emu_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size fab_emu_switch,.-fab_emu_switch

    .globl fab_emu_trampoline
    .type fab_emu_trampoline,@function
fab_emu_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    call *%r13
    ud2
    .cfi_endproc
    .size fab_emu_trampoline,.-fab_emu_trampoline
)");

void fiber_prepare(Fiber &f, void (*entry)(void *), void *arg)
{
    f.entry = entry;
    f.arg = arg;
#ifdef FAB_EMU_ASAN
    /* Frames abandoned on this stack by an earlier run may have left poisoned redzones. */
    __asan_unpoison_memory_region(f.stack, f.stack_size);
#endif
    /* Initial frame, matching what fab_emu_switch pops: [fp ctl][r15 r14 r13 r12 rbx rbp][ret].
     * After `ret` rsp must be 16-byte aligned so that the trampoline's `call` is ABI-aligned. */
    unsigned long long *top = (unsigned long long *)(f.stack + f.stack_size);
    top -= 2; /* keep 16 bytes spare at the very top; top stays 16-aligned */
    unsigned long long *sp = top - 8;
    unsigned int mxcsr = 0x1f80;   /* round to nearest, all exceptions masked, no FTZ/DAZ */
    unsigned short fpucw = 0x037f; /* x87 default */
    unsigned long long ctl = 0;
    memcpy(&ctl, &mxcsr, 4);
    memcpy((char *)&ctl + 4, &fpucw, 2);
    sp[0] = ctl;
    sp[1] = 0;                                        /* r15 */
    sp[2] = 0;                                        /* r14 */
    sp[3] = (unsigned long long)(void (*)(Fiber *))fiber_start; /* r13: function to call */
    sp[4] = (unsigned long long)&f;                   /* r12: its argument */
    sp[5] = 0;                                        /* rbx */
    sp[6] = 0;                                        /* rbp: end of frame chain */
    sp[7] = (unsigned long long)fab_emu_trampoline;   /* return address */
    f.sp = sp;
}

void fiber_resume(Fiber &f)
{
#ifdef FAB_EMU_ASAN
    __sanitizer_start_switch_fiber(&tl_sched_fake_stack, f.stack, f.stack_size);
#endif
    fab_emu_switch(&tl_sched_sp, f.sp);
#ifdef FAB_EMU_ASAN
    __sanitizer_finish_switch_fiber(tl_sched_fake_stack, nullptr, nullptr);
#endif
}

void fiber_suspend(Fiber &f)
{
#ifdef FAB_EMU_ASAN
    __sanitizer_start_switch_fiber(&f.asan_fake_stack, tl_sched_stack_bottom, tl_sched_stack_size);
#endif
    fab_emu_switch(&f.sp, tl_sched_sp);
#ifdef FAB_EMU_ASAN
    __sanitizer_finish_switch_fiber(f.asan_fake_stack, &tl_sched_stack_bottom, &tl_sched_stack_size);
#endif
}

void fiber_exit(Fiber &f)
{
    (void)f;
#ifdef FAB_EMU_ASAN
    /* nullptr: this fiber's fake stack may be destroyed. */
    __sanitizer_start_switch_fiber(nullptr, tl_sched_stack_bottom, tl_sched_stack_size);
#endif
    void *dummy;
    fab_emu_switch(&dummy, tl_sched_sp);
    __builtin_unreachable();
}

#else /* portable ucontext version */

static void ucontext_entry(unsigned hi, unsigned lo)
{
    Fiber *f = (Fiber *)(((unsigned long long)hi << 32) | lo);
    fiber_start(f);
}

void fiber_prepare(Fiber &f, void (*entry)(void *), void *arg)
{
    f.entry = entry;
    f.arg = arg;
#ifdef FAB_EMU_ASAN
    __asan_unpoison_memory_region(f.stack, f.stack_size);
#endif
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = f.stack_size;
    f.ctx.uc_link = nullptr;
    unsigned long long p = (unsigned long long)&f;
    makecontext(&f.ctx, (void (*)())ucontext_entry, 2, (unsigned)(p >> 32), (unsigned)p);
}

void fiber_resume(Fiber &f)
{
#ifdef FAB_EMU_ASAN
    __sanitizer_start_switch_fiber(&tl_sched_fake_stack, f.stack, f.stack_size);
#endif
    swapcontext(&tl_sched_ctx, &f.ctx);
#ifdef FAB_EMU_ASAN
    __sanitizer_finish_switch_fiber(tl_sched_fake_stack, nullptr, nullptr);
#endif
}

void fiber_suspend(Fiber &f)
{
#ifdef FAB_EMU_ASAN
    __sanitizer_start_switch_fiber(&f.asan_fake_stack, tl_sched_stack_bottom, tl_sched_stack_size);
#endif
    swapcontext(&f.ctx, &tl_sched_ctx);
#ifdef FAB_EMU_ASAN
    __sanitizer_finish_switch_fiber(f.asan_fake_stack, &tl_sched_stack_bottom, &tl_sched_stack_size);
#endif
}

void fiber_exit(Fiber &f)
{
    (void)f;
#ifdef FAB_EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, tl_sched_stack_bottom, tl_sched_stack_size);
#endif
    setcontext(&tl_sched_ctx);
    abort();
}
#endif

} // namespace fab_emu
