/* hal.h for the host build (fuzzer): a settable clock and a reply sink. */
#include "hal_host.h"

#include "hal.h"
#include "protocol.h"

uint32_t host_now_ms;
void (*host_uart_sink)(const uint8_t *data, size_t len);
float host_motors[4];

uint32_t hal_millis(void) { return host_now_ms; }
void hal_set_tick_ms(uint32_t ms) { (void)ms; } /* the harness ticks every millisecond */
uint32_t hal_cost_counter(void) { static uint32_t c; return c += 1000; }
uint8_t hal_cost_counter_kind(void) { return NF_COUNTER_NONE; }
uint32_t hal_sysclk_hz(void) { return 168000000u; }
uint8_t hal_clock_flags(void) { return 0; }
void hal_uart_write(const uint8_t *data, size_t len) {
    if (host_uart_sink) host_uart_sink(data, len);
}
void hal_motors_write(const float ratio[4]) {
    for (int i = 0; i < 4; i++) host_motors[i] = ratio[i];
}
uint32_t hal_irq_save(void) { return 0; }
void hal_irq_restore(uint32_t state) { (void)state; }
