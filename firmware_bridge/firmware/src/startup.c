/* Reset handler and vector table for the STM32F405 (16 core exceptions + 82 interrupts). */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "stm32f405.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
int main(void);

void Reset_Handler(void);
void Default_Handler(void);

/* Faults and unexpected interrupts: motor outputs to zero at once (the dead man's switch runs
 * in the SysTick interrupt, which cannot preempt a fault handler, so it never would), then
 * wait here without reloading the independent watchdog, which resets the chip (a debugger
 * attached in time still sees the state). */
void Default_Handler(void) {
    __asm volatile("cpsid i" ::: "memory");
    board_motors_off();
    for (;;) {
    }
}

#define WEAK_ALIAS __attribute__((weak, alias("Default_Handler")))
void NMI_Handler(void) WEAK_ALIAS;
void HardFault_Handler(void) WEAK_ALIAS;
void MemManage_Handler(void) WEAK_ALIAS;
void BusFault_Handler(void) WEAK_ALIAS;
void UsageFault_Handler(void) WEAK_ALIAS;
void SVC_Handler(void) WEAK_ALIAS;
void DebugMon_Handler(void) WEAK_ALIAS;
void PendSV_Handler(void) WEAK_ALIAS;
void SysTick_Handler(void) WEAK_ALIAS;
void USART1_IRQHandler(void) WEAK_ALIAS;

#define N_IRQ 82
#pragma GCC diagnostic ignored "-Woverride-init"
__attribute__((section(".isr_vector"), used)) void (*const vector_table[16 + N_IRQ])(void) = {
    /* Every interrupt slot defaults to Default_Handler (GNU range initializer); the ones
     * the bridge uses are named after it. */
    [16 ... 16 + N_IRQ - 1] = Default_Handler,
    [0] = (void (*)(void))(&_estack),
    [1] = Reset_Handler,
    [2] = NMI_Handler,
    [3] = HardFault_Handler,
    [4] = MemManage_Handler,
    [5] = BusFault_Handler,
    [6] = UsageFault_Handler,
    [11] = SVC_Handler,
    [12] = DebugMon_Handler,
    [14] = PendSV_Handler,
    [15] = SysTick_Handler,
    [16 + 37] = USART1_IRQHandler,
};

void Reset_Handler(void) {
    /* FPU first: the C library and the policy runtime use single-precision floats. */
    SCB_CPACR |= 0xFu << 20;
    __asm volatile("dsb\n isb" ::: "memory");
    uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) *dst++ = *src++;
    for (uint32_t *dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    main();
    for (;;) {
    }
}
