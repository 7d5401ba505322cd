/* Instruction counting and stack measurement for the QEMU netduinoplus2 benchmark firmwares.
   With -icount shift=0, TIM2 counts one per executed instruction. */
#ifndef NANOFLY_BENCH_TIMER_H
#define NANOFLY_BENCH_TIMER_H

#include <stdint.h>

#define REG(addr) (*(volatile uint32_t *)(addr))
#define TIM2_BASE 0x40000000u

static inline void timer_start(void)
{
    REG(TIM2_BASE + 0x28u) = 0;           /* PSC: count every tick */
    REG(TIM2_BASE + 0x2Cu) = 0xFFFFFFFFu; /* ARR */
    REG(TIM2_BASE + 0x14u) = 1;           /* EGR.UG: load PSC */
    REG(TIM2_BASE + 0x00u) = 1;           /* CR1.CEN */
}

static inline uint32_t ticks(void) { return REG(TIM2_BASE + 0x24u); }

__attribute__((always_inline)) static inline uint32_t sp_now(void)
{
    uint32_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

#define PAINT_WORDS 2048u /* 8 KB below the caller's stack pointer */
#define PATTERN 0xA5C3A5C3u

/* Paint the free stack below the caller's stack pointer sp (right before the measured code;
   always inlined, so that no frame of its own lies in the painted area), and afterwards how many
   bytes below sp the measured code touched. */
__attribute__((always_inline)) static inline void stack_paint(uint32_t sp)
{
    volatile uint32_t *p = (volatile uint32_t *)(uintptr_t)(sp - 4u * PAINT_WORDS);
    for (; p < (volatile uint32_t *)(uintptr_t)sp; ++p) *p = PATTERN;
}

__attribute__((always_inline)) static inline uint32_t stack_touched(uint32_t sp)
{
    volatile uint32_t *p = (volatile uint32_t *)(uintptr_t)(sp - 4u * PAINT_WORDS);
    for (; p < (volatile uint32_t *)(uintptr_t)sp && *p == PATTERN; ++p) {
    }
    return sp - (uint32_t)(uintptr_t)p;
}

#endif /* NANOFLY_BENCH_TIMER_H */
