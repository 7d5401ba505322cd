/* The bridge firmware's target of the protocol core: INFER / INFER_STATE (on-board action
 * histories), ARM / DISARM / HEARTBEAT (dead man's switch) and the core's hooks. */
#ifndef NF_BRIDGE_H
#define NF_BRIDGE_H
#include <stddef.h>
#include <stdint.h>
#include "frame.h"
#include "nf_core.h"

/* Observation and action sizes the firmware is built for (the Crazyflie policy interface). */
#ifndef NF_OBS_DIM
#define NF_OBS_DIM 146
#endif
#ifndef NF_ACT_DIM
#define NF_ACT_DIM 4
#endif
/* Largest model (bytes) the store's slots take: a 146-64-64-4 float32 blob is 55 340 bytes,
 * so both formats fit. Each slot holds a 32-byte header and the model. */
#ifndef NF_MAX_MODEL_BYTES
#define NF_MAX_MODEL_BYTES (56u * 1024u)
#endif
#define NF_SLOT_BYTES (NF_SLOT_HEADER_BYTES + NF_MAX_MODEL_BYTES)
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
/* On-board histories: 56 KiB of SRAM, 512 B each = 112 environments (as in firmware 0.2,
 * where they shared the RAM staging slot). */
#ifndef NF_HISTORY_BYTES
#define NF_HISTORY_BYTES (56u * 1024u)
#endif
#if NF_HIST_LEN > 0
#define NF_MAX_HISTORIES (NF_HISTORY_BYTES / (4u * NF_HIST_FLOATS) < 255u ? NF_HISTORY_BYTES / (4u * NF_HIST_FLOATS) : 255u)
#else
#define NF_MAX_HISTORIES 0u
#endif
/* INFER_STATE rows per frame: u16 count, u16 env[count], float32 state[count][NF_STATE_DIM]. */
#define NF_STATE_ROW_BYTES (2u + 4u * NF_STATE_DIM)
#define NF_MAX_STATE_ROWS ((NF_MAX_PAYLOAD - 2u) / NF_STATE_ROW_BYTES)
#define NF_STATE_REPLY_ROW_BYTES (4u * NF_ACT_DIM + 4u)

/* Reset the firmware state, boot the core over the model store in *flash (the newest valid
 * slot becomes the running model). Returns the slot activated, or -1 (no model). */
int bridge_init(const nf_flash_ops *flash);
/* Received bytes: frames are handled and answered (hal_uart_write) as they complete. */
void bridge_feed(const uint8_t *data, size_t len);
/* 1 kHz tick from the control-loop timer interrupt: dead man's switch and motor outputs. */
void bridge_control_tick(uint32_t now_ms);
/* 0 when the active model's flash bytes still match its CRC and disarmed motors are zero
 * (used by the fuzzer after each input). */
int bridge_self_check(void);
/* 1 while armed (the fuzzer checks every ARM reply against it). */
int bridge_is_armed(void);
void bridge_count_rx_overflow(uint32_t total);
const nf_core *bridge_core(void);
#endif
