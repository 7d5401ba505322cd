/* Minimal Cortex-M4F startup for the QEMU netduinoplus2 benchmark firmware: vector table,
   .data/.bss set-up, FPU enable, semihosting, main's return value as QEMU's exit status. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
#ifdef NANOFLY_SEMIHOSTING
extern void initialise_monitor_handles(void);
#endif
int main(void);

void Reset_Handler(void)
{
    uint32_t *src = &_sidata, *dst;
    for (dst = &_sdata; dst < &_edata;) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss;) *dst++ = 0;
    /* CPACR: full access to CP10/CP11 (the FPU), then let it take effect */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#ifdef NANOFLY_SEMIHOSTING
    initialise_monitor_handles(); /* newlib rdimon: stdio and exit() through the debugger */
#endif
    exit(main());
}

/* Any fault ends the run with status 99 instead of hanging QEMU. */
void Fault_Handler(void)
{
    printf("FAULT cfsr=%08lx\n", (unsigned long)*(volatile uint32_t *)0xE000ED28u);
    exit(99);
}

__attribute__((section(".isr_vector"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))(&_estack), Reset_Handler, Fault_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0, Fault_Handler,
    Fault_Handler};
