/* Command handler, model store (staging + active slot) and dead man's switch. */
#ifndef NF_BRIDGE_H
#define NF_BRIDGE_H
#include <stdint.h>
#include "frame.h"

/* Observation and action sizes the firmware is built for (the Crazyflie policy interface). */
#ifndef NF_OBS_DIM
#define NF_OBS_DIM 146
#endif
#ifndef NF_ACT_DIM
#define NF_ACT_DIM 4
#endif
/* One model slot; two of them (staging + active) live in SRAM. A 146-64-64-4 float32 blob
 * is 55 340 bytes, so both formats fit and 128 KB SRAM keeps ~14 KB for everything else. */
#ifndef NF_SLOT_BYTES
#define NF_SLOT_BYTES (56u * 1024u)
#endif

void bridge_init(void);
/* Handle one valid frame and write its reply with hal_uart_write. */
void bridge_handle_frame(const nf_frame *frame);
/* 1 kHz tick from the control-loop timer interrupt: dead man's switch and motor outputs. */
void bridge_control_tick(uint32_t now_ms);
/* 0 when the active model's bytes still match its CRC and disarmed motors are zero
 * (used by the fuzzer after each input). */
int bridge_self_check(void);
/* Parser counters for STATUS. */
void bridge_set_parser(const nf_parser *parser);
void bridge_count_rx_overflow(uint32_t total);
#endif
