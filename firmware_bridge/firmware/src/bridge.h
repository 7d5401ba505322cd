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
/* Observation layout [state (NF_STATE_DIM) | action history, NF_HIST_LEN actions newest first].
 * INFER_STATE sends only the state part; the firmware keeps one history per environment.
 * NF_STATE_DIM 0 (or an input that does not split that way) disables INFER_STATE. */
#ifndef NF_STATE_DIM
#define NF_STATE_DIM 18
#endif
#if NF_STATE_DIM > 0 && NF_STATE_DIM < NF_OBS_DIM && (NF_OBS_DIM - NF_STATE_DIM) % NF_ACT_DIM == 0
#define NF_HIST_LEN ((NF_OBS_DIM - NF_STATE_DIM) / NF_ACT_DIM)
#else
#define NF_HIST_LEN 0
#endif
#define NF_HIST_FLOATS (NF_HIST_LEN * NF_ACT_DIM)
/* The histories live in the staging model slot while no upload uses it (SRAM outside the two
 * slots has room for only ~13 of them): 56 KiB / 512 B = 112 environments. An upload (BEGIN)
 * forgets them all; the host then reloads each with a full INFER. */
#if NF_HIST_LEN > 0
#define NF_MAX_HISTORIES (NF_SLOT_BYTES / (4u * NF_HIST_FLOATS) < 255u ? NF_SLOT_BYTES / (4u * NF_HIST_FLOATS) : 255u)
#else
#define NF_MAX_HISTORIES 0u
#endif
/* INFER_STATE rows per frame: u16 count, u16 env[count], float32 state[count][NF_STATE_DIM]. */
#define NF_STATE_ROW_BYTES (2u + 4u * NF_STATE_DIM)
#define NF_MAX_STATE_ROWS ((NF_MAX_PAYLOAD - 2u) / NF_STATE_ROW_BYTES)
#define NF_STATE_REPLY_ROW_BYTES (4u * NF_ACT_DIM + 4u)

void bridge_init(void);
/* Handle one valid frame and write its reply with hal_uart_write. */
void bridge_handle_frame(const nf_frame *frame);
/* 1 kHz tick from the control-loop timer interrupt: dead man's switch and motor outputs. */
void bridge_control_tick(uint32_t now_ms);
/* 0 when the active model's bytes still match its CRC and disarmed motors are zero
 * (used by the fuzzer after each input). */
int bridge_self_check(void);
/* 1 while armed (the fuzzer checks every ARM reply against it). */
int bridge_is_armed(void);
/* Parser counters for STATUS. */
void bridge_set_parser(const nf_parser *parser);
void bridge_count_rx_overflow(uint32_t total);
#endif
