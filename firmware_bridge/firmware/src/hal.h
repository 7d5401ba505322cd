/* What the protocol and command handler need from the board. The MCU build implements it in
 * board.c; the host fuzz build in host/hal_host.c. */
#ifndef NF_HAL_H
#define NF_HAL_H
#include <stddef.h>
#include <stdint.h>

uint32_t hal_millis(void);                 /* emulated/real milliseconds since boot */
/* Timer tick period: 1 ms while armed (dead man's switch, 500 Hz control loop), 10 ms while
 * disarmed so an idle board wakes 100 times a second instead of 1000 (QEMU's CPU use). */
void hal_set_tick_ms(uint32_t ms);
uint32_t hal_cost_counter(void);           /* inference cost counter (see hal_cost_counter_kind) */
uint8_t hal_cost_counter_kind(void);       /* NF_COUNTER_* */
uint32_t hal_sysclk_hz(void);              /* system clock actually configured */
uint8_t hal_clock_flags(void);             /* bit0: PLL at 168 MHz locked */
void hal_uart_write(const uint8_t *data, size_t len);
void hal_motors_write(const float ratio[4]); /* PWM ratios in [0, 1] */
uint32_t hal_irq_save(void);               /* disable interrupts, return the previous state */
void hal_irq_restore(uint32_t state);
#endif
